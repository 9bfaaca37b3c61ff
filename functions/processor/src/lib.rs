//! Lambda `processor`: an SQS batch of job messages → `sluice::jobs`, answered with the ids
//! of the messages to deliver again (`ReportBatchItemFailures`), so one bad message does not
//! send the whole batch back. Its schedule (an EventBridge `Scheduled Event` every minute)
//! runs one provider Batch API pass instead (`sluice::jobs::batch_api`).

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use sluice::jobs::batch_api::Batcher;
use sluice::jobs::processor::{Disposition, Processor};
use sluice::metrics::UsageSink;

/// What an invocation of the processor is for.
pub enum Invocation {
    /// A batch of job messages from the SQS event source.
    Jobs(SqsEvent),
    /// The schedule: one provider Batch API pass.
    BatchPass,
}

/// Tells the two kinds of event apart: SQS events have `Records`, scheduled EventBridge
/// events have `"source": "aws.events"` and `"detail-type": "Scheduled Event"`.
pub fn classify(payload: Value) -> Result<Invocation, String> {
    if payload.get("Records").is_some() {
        return serde_json::from_value(payload)
            .map(Invocation::Jobs)
            .map_err(|e| format!("not an SQS event: {e}"));
    }
    if payload["source"] == "aws.events" && payload["detail-type"] == "Scheduled Event" {
        return Ok(Invocation::BatchPass);
    }
    Err("neither an SQS event nor the scheduled batch pass".into())
}

/// One invocation of either kind; the answer is the SQS batch response, or the pass's report
/// (an empty one when provider Batch APIs are off).
pub async fn handle_any(
    processor: &Processor,
    batcher: Option<&Batcher>,
    usage: &dyn UsageSink,
    event: LambdaEvent<Value>,
) -> Result<Value, String> {
    let deadline_ms = event.context.deadline;
    match classify(event.payload)? {
        Invocation::Jobs(sqs) => {
            let response =
                sluice::invocation::complete(deadline_ms, usage, handle_batch(processor, sqs))
                    .await;
            serde_json::to_value(response).map_err(|e| e.to_string())
        }
        Invocation::BatchPass => {
            let Some(batcher) = batcher else {
                return Ok(Value::Null);
            };
            let report = sluice::invocation::complete(deadline_ms, usage, batcher.run_once())
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
    }
}

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
