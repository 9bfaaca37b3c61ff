//! Usage events to an SQS queue, in batches: events are buffered, packed many to a message
//! (`{"events": [...]}`) and sent ten messages per `SendMessageBatch`, so the request path
//! never makes an SQS call of its own. The aggregator Lambda reads the queue.
//!
//! On Lambda the buffer is sent at the end of every invocation ([`UsageSink::flush`], called
//! by the ingest function's `invocation::settle_before_answering` and by the processor), never
//! by a timer: a frozen environment runs no timer, and one shut down would lose what waited.
//! The graceful-shutdown hook flushes once more on SIGTERM. A process that is not a Lambda
//! function may still run [`SqsUsageSink::spawn_flusher`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::event::UsageEvent;
use super::sink::UsageSink;

/// Events per message (about 400 bytes each: well under SQS's message size limit).
const EVENTS_PER_MESSAGE: usize = 200;
/// Messages per `SendMessageBatch` (the SQS maximum).
const MESSAGES_PER_CALL: usize = 10;
/// A buffer this full is sent at once instead of waiting for the next tick.
const SEND_AT: usize = EVENTS_PER_MESSAGE * MESSAGES_PER_CALL;

/// Buffers events and sends them to the usage queue.
pub struct SqsUsageSink {
    client: Client,
    queue_url: String,
    buffer: Mutex<Vec<UsageEvent>>,
    /// One send at a time, so a slow call cannot pile up concurrent sends.
    sending: tokio::sync::Mutex<()>,
}

impl SqsUsageSink {
    /// A sink for the queue at `queue_url`.
    pub fn new(client: Client, queue_url: String) -> Arc<Self> {
        Arc::new(Self {
            client,
            queue_url,
            buffer: Mutex::new(Vec::new()),
            sending: tokio::sync::Mutex::new(()),
        })
    }

    fn take(&self) -> Vec<UsageEvent> {
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Sends every buffered event; returns how many could not be sent (they are logged and
    /// dropped, so a queue outage cannot grow memory without bound).
    pub async fn send_now(&self) -> usize {
        let _one_at_a_time = self.sending.lock().await;
        send_events(&self.client, &self.queue_url, self.take()).await
    }

    /// Flushes every `every` in the background, for as long as the sink lives.
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) {
        let sink = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(sink) = sink.upgrade() else { return };
                sink.send_now().await;
            }
        });
    }
}

impl UsageSink for SqsUsageSink {
    fn record(&self, event: UsageEvent) {
        let full = {
            let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
            buffer.push(event);
            buffer.len() >= SEND_AT
        };
        if full {
            // A whole call's worth is waiting: send it now rather than at the next flush
            // (owed by the Lambda invocation, which waits for it before it ends).
            let (client, url, events) = (self.client.clone(), self.queue_url.clone(), self.take());
            crate::invocation::after_response(async move {
                send_events(&client, &url, events).await;
            });
        }
    }

    fn flush(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {
            self.send_now().await;
        })
    }
}

/// Sends events, ten messages of up to [`EVENTS_PER_MESSAGE`] per call; returns how many were
/// lost after a retry.
async fn send_events(client: &Client, queue_url: &str, events: Vec<UsageEvent>) -> usize {
    let mut lost = 0;
    for call in events.chunks(EVENTS_PER_MESSAGE * MESSAGES_PER_CALL) {
        let messages: Vec<&[UsageEvent]> = call.chunks(EVENTS_PER_MESSAGE).collect();
        let entries: Vec<SendMessageBatchRequestEntry> = messages
            .iter()
            .enumerate()
            .filter_map(|(i, events)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(serde_json::json!({ "events": events }).to_string())
                    .build()
                    .ok()
            })
            .collect();
        let unsent = send_batch(client, queue_url, entries).await;
        lost += unsent
            .iter()
            .map(|&i| messages.get(i).map_or(0, |m| m.len()))
            .sum::<usize>();
    }
    if lost > 0 {
        tracing::error!(target: "sluice::metrics", lost, "usage events could not be sent to the usage queue");
    }
    lost
}

/// One `SendMessageBatch` and one retry of what it did not take; returns the indexes of the
/// entries that were not sent.
async fn send_batch(
    client: &Client,
    queue_url: &str,
    mut entries: Vec<SendMessageBatchRequestEntry>,
) -> Vec<usize> {
    for attempt in 0..2 {
        let result = client
            .send_message_batch()
            .queue_url(queue_url)
            .set_entries(Some(entries.clone()))
            .send()
            .await;
        match result {
            Ok(out) if out.failed().is_empty() => return Vec::new(),
            Ok(out) => {
                let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                entries.retain(|e| failed.contains(&e.id()));
            }
            Err(e) => {
                tracing::warn!(target: "sluice::metrics", error = %aws_sdk_sqs::error::DisplayErrorContext(&e), attempt, "SendMessageBatch failed");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    entries.iter().filter_map(|e| e.id().parse().ok()).collect()
}
