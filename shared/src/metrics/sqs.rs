//! Usage events to an SQS queue, in batches: events are buffered, packed many to a message
//! (`{"events": [...]}`) and sent ten messages per `SendMessageBatch`, so the request path
//! never makes an SQS call of its own. The aggregator Lambda reads the queue.
//!
//! Messages are packed by size as well as by count ([`pack`]): a message body stays within
//! SQS's 256 KiB and a call's bodies within 1 MiB together, so one large event (a long error
//! text, a long model name) never makes a whole `SendMessageBatch` fail. An event too large on
//! its own has its text fields cut ([`fit`]).
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

/// Events per message at most (the aggregator stores each message's rollups in one go).
const EVENTS_PER_MESSAGE: usize = 200;
/// Messages per `SendMessageBatch` (the SQS maximum).
const MESSAGES_PER_CALL: usize = 10;
/// A buffer this full is sent at once instead of waiting for the next tick.
const SEND_AT: usize = EVENTS_PER_MESSAGE * MESSAGES_PER_CALL;
/// The largest message body this sink sends, in bytes: SQS's long-standing limit of 256 KiB
/// (a queue's `MaximumMessageSize` may be set lower; the template leaves it at the default).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The largest total of one `SendMessageBatch`'s bodies, in bytes (SQS's batch payload limit).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// An event larger than this once serialized has its text fields cut to [`MAX_FIELD_BYTES`].
pub const MAX_EVENT_BYTES: usize = 16 * 1024;
/// What each text field of an oversized event is cut to, in bytes.
pub const MAX_FIELD_BYTES: usize = 1024;
/// `{"events":[` + `]}` around the events.
const ENVELOPE_BYTES: usize = r#"{"events":[]}"#.len();

/// One packed message body and how many events it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// `{"events":[...]}`, at most [`MAX_MESSAGE_BYTES`].
    pub body: String,
    /// Events in it.
    pub events: usize,
}

/// Serializes an event, cutting its text fields when it is larger than [`MAX_EVENT_BYTES`]
/// (a client's model name and a provider's error text are not bounded by anything else).
/// `None` only if it cannot be serialized.
pub fn fit(event: &UsageEvent) -> Option<String> {
    let json = serde_json::to_string(event).ok()?;
    if json.len() <= MAX_EVENT_BYTES {
        return Some(json);
    }
    let mut cut = event.clone();
    for field in [
        &mut cut.request_id,
        &mut cut.tenant,
        &mut cut.cache,
        &mut cut.event_id,
    ] {
        truncate(field);
    }
    for field in [
        &mut cut.key_id,
        &mut cut.model,
        &mut cut.deployment,
        &mut cut.error,
        &mut cut.fallback,
    ]
    .into_iter()
    .flatten()
    {
        truncate(field);
    }
    tracing::warn!(target: "sluice::metrics", request_id = %cut.request_id, bytes = json.len(), "usage event too large: its text fields were cut");
    serde_json::to_string(&cut).ok()
}

/// Cuts `s` to at most [`MAX_FIELD_BYTES`] bytes on a character boundary, marking the cut.
fn truncate(s: &mut String) {
    if s.len() <= MAX_FIELD_BYTES {
        return;
    }
    let mut end = MAX_FIELD_BYTES - '…'.len_utf8();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push('…');
}

/// Packs serialized events into calls of message bodies: at most [`EVENTS_PER_MESSAGE`]
/// events and [`MAX_MESSAGE_BYTES`] per body, at most [`MESSAGES_PER_CALL`] bodies and
/// [`MAX_BATCH_BYTES`] per call. Events keep their order. Every event must be at most
/// [`MAX_EVENT_BYTES`] (see [`fit`]), so each fits a message of its own.
pub fn pack(events: &[String]) -> Vec<Vec<Packed>> {
    let mut calls: Vec<Vec<Packed>> = Vec::new();
    let mut call_bytes = 0;
    let mut body = String::new();
    let mut in_body = 0;
    let mut close = |body: &mut String, in_body: &mut usize, calls: &mut Vec<Vec<Packed>>| {
        if *in_body == 0 {
            return;
        }
        body.push_str("]}");
        let len = body.len();
        let room = calls
            .last()
            .is_some_and(|c| c.len() < MESSAGES_PER_CALL && call_bytes + len <= MAX_BATCH_BYTES);
        if !room {
            calls.push(Vec::new());
            call_bytes = 0;
        }
        call_bytes += len;
        if let Some(call) = calls.last_mut() {
            call.push(Packed {
                body: std::mem::take(body),
                events: *in_body,
            });
        }
        *in_body = 0;
    };
    for event in events {
        // The body with this event and the closing `]}`.
        let grown = if in_body == 0 {
            ENVELOPE_BYTES + event.len()
        } else {
            body.len() + 1 + event.len() + 2
        };
        if in_body > 0 && (in_body == EVENTS_PER_MESSAGE || grown > MAX_MESSAGE_BYTES) {
            close(&mut body, &mut in_body, &mut calls);
        }
        if in_body == 0 {
            body.push_str(r#"{"events":["#);
        } else {
            body.push(',');
        }
        body.push_str(event);
        in_body += 1;
    }
    close(&mut body, &mut in_body, &mut calls);
    calls
}

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

/// Sends events packed by [`pack`]; returns how many were lost after a retry.
async fn send_events(client: &Client, queue_url: &str, events: Vec<UsageEvent>) -> usize {
    let serialized: Vec<String> = events.iter().filter_map(fit).collect();
    let mut lost = events.len() - serialized.len();
    for call in pack(&serialized) {
        let entries: Vec<SendMessageBatchRequestEntry> = call
            .iter()
            .enumerate()
            .filter_map(|(i, packed)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(packed.body.clone())
                    .build()
                    .ok()
            })
            .collect();
        let unsent = send_batch(client, queue_url, entries).await;
        lost += unsent
            .iter()
            .map(|&i| call.get(i).map_or(0, |m| m.events))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::rollup::tests::event;

    /// An event whose error text is `error_bytes` long (multi-byte characters included).
    fn sized(i: usize, error_bytes: usize) -> UsageEvent {
        let mut e = event(60_000 + i as u64, &format!("model-{i}"), 502, 1.0);
        if error_bytes > 0 {
            let mut text = "é".repeat(error_bytes / 4);
            text.push_str(&"x".repeat(error_bytes - text.len()));
            e.error = Some(text);
        }
        e
    }

    fn check(calls: &[Vec<Packed>], events: &[String]) {
        let mut seen = Vec::new();
        let mut next = 0;
        for call in calls {
            assert!(!call.is_empty() && call.len() <= MESSAGES_PER_CALL);
            let total: usize = call.iter().map(|p| p.body.len()).sum();
            assert!(total <= MAX_BATCH_BYTES, "a call of {total} bytes");
            for packed in call {
                assert!(
                    packed.body.len() <= MAX_MESSAGE_BYTES,
                    "{}",
                    packed.body.len()
                );
                assert!(packed.events >= 1 && packed.events <= EVENTS_PER_MESSAGE);
                let v: serde_json::Value = serde_json::from_str(&packed.body).unwrap();
                let list = v["events"].as_array().unwrap();
                assert_eq!(list.len(), packed.events);
                seen.extend(list.iter().cloned());
                next += packed.events;
                // A message is closed early only when the next event would not fit it.
                if let Some(following) = events.get(next) {
                    assert!(
                        packed.events == EVENTS_PER_MESSAGE
                            || packed.body.len() + 1 + following.len() > MAX_MESSAGE_BYTES
                    );
                }
            }
        }
        let expected: Vec<serde_json::Value> = events
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        assert_eq!(seen, expected, "every event once, in order");
    }

    #[test]
    fn small_events_pack_by_count() {
        let events: Vec<String> = (0..2_001).map(|i| fit(&sized(i, 0)).unwrap()).collect();
        let calls = pack(&events);
        check(&calls, &events);
        // 2,001 events of ~400 bytes: 200 a message, ten messages a call, then one left over.
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].len(), 10);
        assert!(calls[0].iter().all(|p| p.events == 200));
        assert_eq!(
            calls[1],
            vec![Packed {
                body: calls[1][0].body.clone(),
                events: 1
            }]
        );
    }

    #[test]
    fn large_events_pack_by_bytes() {
        // 15 KiB events: 16 fit a 256 KiB message, and a call holds four such messages.
        let events: Vec<String> = (0..200)
            .map(|i| fit(&sized(i, 15 * 1024)).unwrap())
            .collect();
        assert!(events.iter().all(|e| e.len() <= MAX_EVENT_BYTES));
        let calls = pack(&events);
        check(&calls, &events);
        assert_eq!(calls[0][0].events, 16);
        assert_eq!(
            calls[0].len(),
            4,
            "1 MiB per call: four nearly full messages"
        );
        assert!(calls.iter().all(|c| c.len() <= 4));
    }

    #[test]
    fn mixed_sizes_never_pass_a_limit() {
        let sizes = [0, 16_000, 0, 0, 9_000, 300, 15_900, 0, 12_345, 1];
        let events: Vec<String> = (0..1_500)
            .map(|i| fit(&sized(i, sizes[i % sizes.len()] * (i % 3))).unwrap())
            .collect();
        check(&pack(&events), &events);
        assert!(pack(&[]).is_empty());
    }

    #[test]
    fn an_oversized_event_has_its_text_cut_not_dropped() {
        let mut e = sized(1, 300 * 1024);
        e.model = Some("m".repeat(100_000));
        let json = fit(&e).unwrap();
        assert!(json.len() <= MAX_EVENT_BYTES, "{}", json.len());
        let back: UsageEvent = serde_json::from_str(&json).unwrap();
        let error = back.error.unwrap();
        assert!(error.len() <= MAX_FIELD_BYTES && error.ends_with('…') && error.starts_with("éé"));
        assert_eq!(back.model.unwrap().len(), MAX_FIELD_BYTES);
        assert_eq!(
            (back.tokens_in, back.cost_nano_usd, back.status),
            (e.tokens_in, e.cost_nano_usd, 502)
        );
        // A small event is left alone.
        let small = sized(2, 100);
        assert_eq!(fit(&small).unwrap(), serde_json::to_string(&small).unwrap());
    }
}
