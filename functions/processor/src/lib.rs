//! Lambda `processor`: an SQS batch of job messages → `sluice::jobs`, answered with the ids
//! of the messages to deliver again (`ReportBatchItemFailures`), so one bad message does not
//! send the whole batch back.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use sluice::jobs::processor::{Disposition, Processor};

/// Processes one SQS batch; only the messages that must come again are reported.
pub async fn handle_batch(processor: &Processor, event: SqsEvent) -> SqsBatchResponse {
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap_or_default())
        .collect();
    let bodies: Vec<String> = event
        .records
        .into_iter()
        .map(|r| r.body.unwrap_or_default())
        .collect();
    let dispositions = processor.process(&bodies).await;
    let mut response = SqsBatchResponse::default();
    for (id, disposition) in ids.into_iter().zip(dispositions) {
        if disposition == Disposition::Retry {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
