//! Server-sent events from a provider's byte stream, as parsed JSON objects.

use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde_json::Value;

use super::ProviderError;

/// One event: its `event:` name (`message`, the SSE default, if none) and its `data:` parsed as JSON.
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

/// Property tests: any bytes cut anywhere never panic, and a valid stream decodes the same
/// however the network cuts it.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{self, block_on, cuts, json_value, split};

    /// The events (name, data) or the error message, in order.
    fn decode(chunks: Vec<Bytes>) -> Vec<Result<(String, Value), String>> {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok));
        block_on(
            json_events(stream)
                .map(|e| e.map(|e| (e.name, e.data)).map_err(|e| e.to_string()))
                .collect(),
        )
    }

    fn valid_stream() -> impl Strategy<Value = (Vec<u8>, Vec<(String, Value)>)> {
        let event = (
            proptest::option::of("[a-z_]{1,12}"),
            json_value(),
            any::<bool>(),
        );
        (proptest::collection::vec(event, 0..8), any::<bool>()).prop_map(|(events, crlf)| {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            let mut expected = Vec::new();
            for (name, data, comment) in events {
                if comment {
                    text.push_str(&format!(": keep-alive{nl}{nl}"));
                }
                if let Some(name) = &name {
                    text.push_str(&format!("event: {name}{nl}"));
                }
                let data = data.to_string();
                text.push_str(&format!("data: {data}{nl}{nl}"));
                // Read back as serde reads it (its float parsing may differ from the
                // generated value in the last bit; that is not the stream's doing).
                let parsed = serde_json::from_str::<Value>(&data).unwrap_or(Value::Null);
                expected.push((name.unwrap_or_else(|| "message".into()), parsed));
            }
            text.push_str(&format!(
                "data: [DONE]{nl}{nl}data: {{\"after\":1}}{nl}{nl}"
            ));
            (text.into_bytes(), expected)
        })
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
            for item in decode(split(&bytes, &at)) {
                if let Err(message) = item {
                    prop_assert!(message.starts_with("upstream answer is malformed"), "{message}");
                }
            }
        }

        #[test]
        fn fuzz_a_valid_stream_decodes_the_same_however_it_is_cut((bytes, expected) in valid_stream(), at in cuts(12)) {
            let whole = decode(vec![Bytes::from(bytes.clone())]);
            let want: Vec<Result<(String, Value), String>> = expected.into_iter().map(Ok).collect();
            prop_assert_eq!(&whole, &want);
            prop_assert_eq!(decode(split(&bytes, &at)), want);
        }
    }
}
