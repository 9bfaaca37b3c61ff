//! Where usage events go: a bounded in-process channel to the aggregator in `sluice serve`,
//! batched SQS messages on Lambda (`queue::sqs::UsageQueue`). Recording never waits: the
//! request path hands the event over and goes on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::event::UsageEvent;
use super::rollup::roll_up;
use crate::store::{MetricsStore, StoreError};

/// Takes usage events.
pub trait UsageSink: Send + Sync {
    /// Hands one event over without waiting.
    fn record(&self, event: UsageEvent);

    /// Records an event the caller keeps (a fan-out handing it to several sinks): a copy for
    /// sinks that keep events, none for sinks that only read them.
    fn record_ref(&self, event: &UsageEvent) {
        self.record(event.clone());
    }

    /// Sends what is buffered now (a Lambda calls it before its invocation ends).
    fn flush(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Drops every event (for processes that do not report usage).
#[derive(Debug, Default)]
pub struct Discard;

impl UsageSink for Discard {
    fn record(&self, _event: UsageEvent) {}
}

/// The sending half of the local channel. When the aggregator falls behind by `capacity`
/// events, new events are dropped and counted rather than held without bound.
pub struct ChannelSink {
    tx: mpsc::Sender<UsageEvent>,
    dropped: AtomicU64,
}

/// A bounded channel: the sink for request handlers, the receiver for [`aggregate_loop`].
pub fn channel(capacity: usize) -> (Arc<ChannelSink>, mpsc::Receiver<UsageEvent>) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let sink = ChannelSink {
        tx,
        dropped: AtomicU64::new(0),
    };
    (Arc::new(sink), rx)
}

impl ChannelSink {
    /// Events dropped because the aggregator was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl UsageSink for ChannelSink {
    fn record(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(target: "sluice::metrics", dropped = n, "usage events dropped: the aggregator is behind");
            }
        }
    }
}

/// Rolls a batch of events up and stores the rollups, once per `batch_id`: a batch that
/// was stored before (a redelivered queue message) is not counted again. Returns whether
/// anything was added.
pub async fn aggregate(
    store: &dyn MetricsStore,
    batch_id: &str,
    events: &[UsageEvent],
) -> Result<bool, StoreError> {
    if events.is_empty() {
        return Ok(false);
    }
    store.add_rollups(batch_id, &roll_up(events)).await
}

/// Most events rolled up in one store write.
const MAX_BATCH: usize = 5_000;

/// The local aggregator: collects events for up to `every`, then stores their rollups in
/// one write. Runs until every sender is gone, storing what is left.
pub async fn aggregate_loop(
    mut rx: mpsc::Receiver<UsageEvent>,
    store: Arc<dyn MetricsStore>,
    every: Duration,
) {
    let mut batch = Vec::new();
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + every;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                Ok(None) | Err(_) => break,
            }
        }
        // Retried under the same batch id, which the store applies at most once: a try that
        // landed with its answer lost is not counted twice.
        let id = crate::keys::random_id("local-", 16);
        let stored =
            crate::store::retrying("storing usage rollups", |_| aggregate(&*store, &id, &batch))
                .await;
        if let Err(e) = stored {
            tracing::error!(target: "sluice::metrics", error = %e, events = batch.len(), "could not store usage rollups");
        }
        batch.clear();
    }
}
