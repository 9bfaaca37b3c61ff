//! The worker loop of `sluice serve` (and of any process polling the queue): receive, wait a
//! short batching window for more, process, delete what is done. The Lambda processor does not
//! use this; SQS events drive it instead.

use std::sync::Arc;
use std::time::Duration;

use super::processor::{Disposition, Processor};
use crate::queue::{Delivery, JobQueue};

/// Most messages handled in one round (SQS's receive maximum).
const MAX_BATCH: u32 = 10;

/// Polls `queue` forever, handing batches to `processor`.
pub async fn run(processor: Arc<Processor>, queue: Arc<dyn JobQueue>, batch_window: Duration) {
    loop {
        let mut deliveries = match queue.receive(MAX_BATCH, Duration::from_secs(1)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", error = %e, "queue receive failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if deliveries.is_empty() {
            continue;
        }
        if !batch_window.is_zero() && crate::num::usize_to_u32(deliveries.len()) < MAX_BATCH {
            // Give other small jobs a moment to arrive so they can share upstream calls.
            tokio::time::sleep(batch_window).await;
            if let Ok(more) = queue
                .receive(
                    MAX_BATCH.saturating_sub(crate::num::usize_to_u32(deliveries.len())),
                    Duration::ZERO,
                )
                .await
            {
                deliveries.extend(more);
            }
        }
        process_deliveries(&processor, &*queue, &deliveries).await;
    }
}

/// Processes one batch of deliveries and deletes the messages that are done; the others come
/// again after their visibility timeout.
pub async fn process_deliveries(
    processor: &Processor,
    queue: &dyn JobQueue,
    deliveries: &[Delivery],
) {
    let bodies: Vec<String> = deliveries.iter().map(|d| d.body.clone()).collect();
    let dispositions = processor.process(&bodies).await;
    for (delivery, disposition) in deliveries.iter().zip(dispositions) {
        if disposition == Disposition::Done
            && let Err(e) = queue.delete(&delivery.receipt).await
        {
            tracing::warn!(target: "sluice::jobs", error = %e, "queue delete failed; the message will come again");
        }
    }
}
