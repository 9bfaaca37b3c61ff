//! Lambda `aggregator`: an SQS batch of usage messages → per-minute rollups in the store,
//! once per message id, and one CloudWatch Embedded Metric Format line per new rollup row.
//! Messages the store could not take come back in `batchItemFailures`; malformed ones are
//! logged and dropped (delivering them again cannot fix them).

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use sluice::metrics::aggregator::{self, Message};
use sluice::store::MetricsStore;

/// Handles one batch; `emit` receives each EMF line (stdout on Lambda).
pub async fn handle_batch(
    store: &dyn MetricsStore,
    event: SqsEvent,
    mut emit: impl FnMut(String),
) -> SqsBatchResponse {
    let messages: Vec<Message> = event
        .records
        .into_iter()
        .map(|r| Message {
            id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let outcome = aggregator::handle(store, &messages).await;
    for row in &outcome.rows {
        emit(aggregator::emf(row).to_string());
    }
    let mut response = SqsBatchResponse::default();
    for id in outcome.retry {
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    response
}
