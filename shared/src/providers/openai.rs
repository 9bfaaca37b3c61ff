//! OpenAI and every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, …).
//!
//! The body is forwarded as the client sent it (every field preserved, only `model` replaced);
//! the answer is checked for shape but returned byte for byte.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;

use super::http::{self, error_message, stream_error};
use super::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, usage_from_openai,
};

/// An OpenAI-compatible API at a base URL such as `https://api.openai.com/v1`.
#[derive(Debug, Clone)]
pub struct OpenAi {
    base_url: String,
}

impl OpenAi {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }

    fn url(&self, endpoint: Endpoint) -> String {
        format!("{}/{}", self.base_url, endpoint.path())
    }
}

impl ProviderApi for OpenAi {
    async fn call(
        &self,
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let post = client
            .post(self.url(request.endpoint))
            .bearer_auth(request.api_key);
        if request.stream {
            // Ask for the usage chunk so the stream can be metered; the gateway hides it from
            // clients that did not ask for it themselves.
            let mut body = request.body.clone();
            body.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
            let (events, headroom) =
                http::send_for_events(post.json(&body), request.timeout).await?;
            let chunks = events.map(|e| {
                let e = e?;
                match stream_error(&e.data) {
                    Some(error) => Err(error),
                    None => Ok(e.data),
                }
            });
            return Ok(UpstreamResponse::Stream {
                chunks: http::boxed(chunks),
                headroom,
            });
        }
        let (body, headroom) =
            http::send_for_body(post.json(request.body), request.timeout).await?;
        let usage = validate(request.endpoint, &body)?;
        Ok(UpstreamResponse::Complete {
            body,
            usage,
            headroom,
        })
    }
}

/// Checks that a 200 body is the JSON the endpoint promises, and reads its usage.
fn validate(endpoint: Endpoint, body: &Bytes) -> Result<Option<super::Usage>, ProviderError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
    if v.get("error").is_some_and(|e| !e.is_null()) {
        return Err(ProviderError::Malformed(
            error_message(&v).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    let list = match endpoint {
        Endpoint::ChatCompletions => "choices",
        Endpoint::Embeddings => "data",
    };
    if !v.get(list).is_some_and(Value::is_array) {
        return Err(ProviderError::Malformed(format!("no `{list}` array")));
    }
    Ok(usage_from_openai(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_garbage_and_error_bodies() {
        let chat = Endpoint::ChatCompletions;
        assert!(validate(chat, &Bytes::from_static(b"<html>")).is_err());
        assert!(validate(chat, &Bytes::from_static(b"{\"id\":\"x\"}")).is_err());
        assert!(
            validate(
                chat,
                &Bytes::from_static(br#"{"error":{"message":"boom"},"choices":[]}"#)
            )
            .is_err()
        );
        let ok = validate(
            chat,
            &Bytes::from_static(
                br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#,
            ),
        )
        .unwrap()
        .unwrap();
        assert_eq!((ok.prompt_tokens, ok.completion_tokens), (3, 5));
    }
}

/// Property tests: any 200 body is checked without panicking, and one that passes has the
/// list the endpoint promises.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::fuzzing::{
        self, assemble, block_on, cuts, event_stream, json_value, mutated, split, sse_text, text,
    };

    /// A streamed answer as OpenAI sends it: role, text deltas, one tool call in pieces, the
    /// finish, the usage chunk. Returns the SSE bytes, the full text and the full arguments.
    fn valid_stream() -> impl Strategy<Value = (Vec<u8>, String, String)> {
        (
            proptest::collection::vec(text(), 0..6),
            proptest::collection::vec(text(), 0..4),
            0u64..1_000_000,
        )
            .prop_map(|(pieces, args, tokens)| {
                let chunk = |delta: Value, finish: Value| {
                    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
                };
                let mut events = vec![(None, chunk(json!({"role": "assistant", "content": ""}), Value::Null))];
                for p in &pieces {
                    events.push((None, chunk(json!({"content": p}), Value::Null)));
                }
                for (i, a) in args.iter().enumerate() {
                    let mut call = json!({"index": 0, "function": {"arguments": a}});
                    if i == 0 {
                        call["id"] = json!("call_1");
                        call["function"]["name"] = json!("f");
                    }
                    events.push((None, chunk(json!({"tool_calls": [call]}), Value::Null)));
                }
                events.push((None, chunk(json!({}), json!("stop"))));
                events.push((None, json!({"id": "c1", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": tokens, "completion_tokens": tokens}})));
                (sse_text(&events), pieces.concat(), args.concat())
            })
    }

    /// The stream as [`OpenAi::call`] reads it: events, with error events as errors.
    fn read(chunks: Vec<Bytes>) -> Result<Value, Vec<String>> {
        let chunks = block_on(
            event_stream(chunks)
                .map(|e| {
                    let e = e?;
                    match stream_error(&e.data) {
                        Some(error) => Err(error),
                        None => Ok(e.data),
                    }
                })
                .collect::<Vec<_>>(),
        );
        assemble(chunks)
    }

    fn valid_chat() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_body_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
                if let Err(e) = validate(endpoint, &Bytes::from(bytes.clone())) {
                    prop_assert!(matches!(e, ProviderError::Malformed(_)));
                }
            }
        }

        #[test]
        fn fuzz_any_json_body(body in prop_oneof![json_value(), mutated(valid_chat())]) {
            let bytes = Bytes::from(body.to_string());
            for (endpoint, list) in [(Endpoint::ChatCompletions, "choices"), (Endpoint::Embeddings, "data")] {
                match validate(endpoint, &bytes) {
                    Ok(usage) => {
                        prop_assert!(body[list].is_array());
                        prop_assert_eq!(usage, usage_from_openai(&body));
                    }
                    Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
                }
            }
        }

        #[test]
        fn fuzz_a_stream_reads_the_same_however_it_is_cut((bytes, text, args) in valid_stream(), at in cuts(16)) {
            let whole = read(vec![Bytes::from(bytes.clone())]);
            let done = whole.clone().unwrap();
            let message = &done["choices"][0]["message"];
            prop_assert_eq!(message["content"].as_str(), Some(text.as_str()));
            if !args.is_empty() || message.get("tool_calls").is_some() {
                prop_assert_eq!(message["tool_calls"][0]["function"]["arguments"].as_str(), Some(args.as_str()));
            }
            prop_assert_eq!(read(split(&bytes, &at)), whole);
        }

        #[test]
        fn fuzz_any_stream_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
            let _ = read(split(&bytes, &at));
        }
    }
}
