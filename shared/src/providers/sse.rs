//! Server-sent events from a provider's byte stream, as parsed JSON objects.

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde_json::Value;

use super::ProviderError;

/// One event: its `event:` name (empty if none) and its `data:` parsed as JSON.
#[derive(Debug, Clone)]
pub struct Event {
    /// The event type (Anthropic names every event; OpenAI and Gemini send none).
    pub name: String,
    /// The data.
    pub data: Value,
}

/// A provider's parsed events.
pub type EventStream = BoxStream<'static, Result<Event, ProviderError>>;

/// Parses `text/event-stream` bytes into JSON events. OpenAI's `data: [DONE]` ends the
/// stream; data that is not JSON is a malformed answer.
pub fn json_events<S>(bytes: S) -> EventStream
where
    S: Stream<Item = Result<Bytes, ProviderError>> + Send + 'static,
{
    bytes
        .eventsource()
        .take_while(|e| {
            let done = matches!(e, Ok(ev) if ev.data.trim() == "[DONE]");
            futures_util::future::ready(!done)
        })
        .filter_map(|e| async move {
            match e {
                Ok(ev) if ev.data.trim().is_empty() => None,
                Ok(ev) => Some(
                    serde_json::from_str::<Value>(&ev.data)
                        .map(|data| Event {
                            name: ev.event,
                            data,
                        })
                        .map_err(|_| ProviderError::Malformed("stream event is not JSON".into())),
                ),
                Err(eventsource_stream::EventStreamError::Transport(e)) => Some(Err(e)),
                Err(_) => Some(Err(ProviderError::Malformed("broken event stream".into()))),
            }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_events_across_chunk_boundaries_and_stops_at_done() {
        let parts: Vec<Result<Bytes, ProviderError>> = vec![
            Ok(Bytes::from_static(b"data: {\"a\":")),
            Ok(Bytes::from_static(
                b"1}\n\nevent: ping\r\ndata: {\"b\":2}\r\n\r\n: comment\n\n",
            )),
            Ok(Bytes::from_static(
                b"data: [DONE]\n\ndata: {\"after\":true}\n\n",
            )),
        ];
        let events: Vec<Event> = json_events(futures_util::stream::iter(parts))
            .map(|e| e.unwrap())
            .collect()
            .await;
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].data["a"], 1);
        assert_eq!(events[1].name, "ping");
        assert_eq!(events[1].data["b"], 2);
    }
}
