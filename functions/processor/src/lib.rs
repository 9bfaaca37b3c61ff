//! Lambda `processor`: an SQS batch of job messages → `sluice::jobs`, answered with the ids
//! of the messages to deliver again (`ReportBatchItemFailures`), so one bad message does not
//! send the whole batch back.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use sluice::jobs::processor::{Disposition, Processor};
use sluice::metrics::UsageSink;

/// One invocation: the batch runs within the invocation's deadline, and this returns once
/// everything it owes is done and its usage events are sent (one `SendMessageBatch`).
pub async fn handle(
    processor: &Processor,
    usage: &dyn UsageSink,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let deadline_ms = event.context.deadline;
    sluice::invocation::complete(deadline_ms, usage, handle_batch(processor, event.payload)).await
}

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
