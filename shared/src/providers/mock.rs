//! The built-in offline provider: answers in OpenAI's format without a network.
//!
//! Behaviour is picked by the upstream model name, so configs can demo failures:
//! names containing `error` answer HTTP 500, names containing `slow` wait 1.5 s first.
//! Everything else answers deterministically from the request, so caching is visible.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, Usage};
use crate::tokens;

/// Dimensions of mock embeddings unless the request asks for `dimensions`.
const DEFAULT_DIMENSIONS: usize = 16;

/// The offline provider.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mock;

impl ProviderApi for Mock {
    async fn call(
        &self,
        _http: &super::HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        let model = request
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("mock");
        if model.contains("slow") {
            tokio::time::timeout(
                request.timeout,
                tokio::time::sleep(Duration::from_millis(1500)),
            )
            .await
            .map_err(|_| ProviderError::Timeout)?;
        }
        if model.contains("error") {
            return Err(ProviderError::Status {
                status: 500,
                message: Some("mock provider failure (model name contains `error`)".into()),
                retry_after: None,
            });
        }
        match request.endpoint {
            Endpoint::ChatCompletions => Ok(chat(
                model,
                request.body,
                request.stream,
                request.now_ms / 1000,
            )),
            Endpoint::Embeddings => Ok(embeddings(model, request.body)),
        }
    }
}

/// Text of the last user message (string content, or the text parts of an array).
fn last_user_text(body: &Map<String, Value>) -> String {
    let messages = body.get("messages").and_then(Value::as_array);
    let Some(last) = messages.and_then(|m| {
        m.iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    }) else {
        return String::new();
    };
    match last.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn short_id(seed: &str) -> String {
    hex::encode(&Sha256::digest(seed.as_bytes())[..12])
}

fn chat(model: &str, body: &Map<String, Value>, stream: bool, created: u64) -> UpstreamResponse {
    let prompt: String = last_user_text(body).chars().take(200).collect();
    let mut words: Vec<String> = format!("Mock response to: {prompt}")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let limit = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64);
    let finish_reason = match limit {
        Some(n) if (words.len() as u64) > n => {
            words.truncate(usize::try_from(n).unwrap_or(usize::MAX));
            "length"
        }
        _ => "stop",
    };
    let content = words.join(" ");
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let usage = Usage::plain(
        tokens::estimate_chat_prompt(messages, body.get("tools")),
        words.len() as u64,
    );
    let id = format!("chatcmpl-mock-{}", short_id(&content));
    let usage_json = json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total(),
    });
    if stream {
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
        for (i, w) in words.iter().enumerate() {
            let piece = if i == 0 { w.clone() } else { format!(" {w}") };
            events.push(chunk(json!({ "content": piece }), None));
        }
        events.push(chunk(json!({}), Some(finish_reason)));
        // Always reported, like a provider asked for `stream_options.include_usage`; the
        // gateway passes it on only to clients that asked.
        events.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage_json,
        }));
        let frames: Vec<Result<Value, ProviderError>> = events.into_iter().map(Ok).collect();
        return UpstreamResponse::Stream {
            chunks: futures_util::stream::iter(frames).boxed(),
            headroom: Default::default(),
        };
    }
    let answer = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage_json,
        "system_fingerprint": "sluice-mock",
    });
    UpstreamResponse::Complete {
        body: Bytes::from(answer.to_string()),
        usage: Some(usage),
        headroom: Default::default(),
    }
}

/// A deterministic unit vector derived from the text.
fn embed(text: &str, dims: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(dims);
    let mut block = Sha256::digest(text.as_bytes());
    while v.len() < dims {
        for pair in block.chunks_exact(2) {
            if v.len() == dims {
                break;
            }
            let n = u16::from_le_bytes([pair[0], pair[1]]);
            v.push(f32::from(n) / 32768.0 - 1.0);
        }
        block = Sha256::digest(block);
    }
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The inputs of an embeddings request as texts to embed, each with its prompt tokens: a
/// string (estimated), or a token-id list (one token per id; a flat array of ids is one
/// input, as OpenAI reads it).
fn embedding_inputs(body: &Map<String, Value>) -> Vec<(String, u64)> {
    let text = |s: &str| (s.to_owned(), tokens::estimate_text(s));
    let ids = |items: &[Value]| (Value::from(items.to_vec()).to_string(), items.len() as u64);
    match body.get("input") {
        Some(Value::String(s)) => vec![text(s)],
        Some(Value::Array(items)) if items.iter().all(Value::is_u64) => vec![ids(items)],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => text(s),
                Value::Array(list) => ids(list),
                other => text(&other.to_string()),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The answer is written as text directly: the largest accepted request (2,048 inputs of
/// 3,072 dimensions) is tens of MB of JSON, and a `Value` tree of it would be ten times that.
fn embeddings(model: &str, body: &Map<String, Value>) -> UpstreamResponse {
    use std::fmt::Write as _;
    let inputs = embedding_inputs(body);
    let dims = body
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .map_or(DEFAULT_DIMENSIONS, |d| d.clamp(1, 3072));
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let per_input = if base64 { dims * 6 } else { dims * 12 } + 64;
    let mut out = String::with_capacity(inputs.len().saturating_mul(per_input) + 256);
    out.push_str(r#"{"object":"list","data":["#);
    for (index, (text, _)) in inputs.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        let vector = embed(text, dims);
        let _ = write!(
            out,
            r#"{{"object":"embedding","index":{index},"embedding":"#
        );
        if base64 {
            let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
            out.push('"');
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(bytes));
            out.push('"');
        } else {
            out.push('[');
            for (i, x) in vector.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{x}");
            }
            out.push(']');
        }
        out.push('}');
    }
    let prompt_tokens: u64 = inputs.iter().map(|(_, tokens)| tokens).sum();
    let _ = write!(
        out,
        r#"],"model":{},"usage":{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}}}"#,
        Value::String(model.to_owned())
    );
    UpstreamResponse::Complete {
        body: Bytes::from(out),
        usage: Some(Usage::plain(prompt_tokens, 0)),
        headroom: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embed("hello", 32);
        assert_eq!(a, embed("hello", 32));
        assert_ne!(a, embed("hullo", 32));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn embeddings_answer_is_valid_json_with_one_vector_per_input() {
        for (input, count) in [
            (json!("a"), 1),
            (json!(["a", "b", "c"]), 3),
            (json!([1, 2, 3]), 1),
            (json!([[1, 2], [3]]), 2),
        ] {
            for format in ["float", "base64"] {
                let body = json!({"model": "e", "input": input, "dimensions": 8,
                    "encoding_format": format});
                let UpstreamResponse::Complete { body, .. } =
                    embeddings("e\"x", body.as_object().unwrap())
                else {
                    panic!("expected a complete answer");
                };
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["data"].as_array().unwrap().len(), count, "{input}");
                assert_eq!(v["model"], "e\"x");
                if format == "float" {
                    let e: Vec<f32> =
                        serde_json::from_value(v["data"][0]["embedding"].clone()).unwrap();
                    assert_eq!(e.len(), 8);
                    if input == json!("a") {
                        assert_eq!(e, embed("a", 8), "floats survive the text round trip");
                    }
                }
            }
        }
    }

    #[test]
    fn chat_echoes_and_honours_max_tokens() {
        let body = json!({"model": "m", "max_tokens": 3,
            "messages": [{"role": "user", "content": "one two three four"}]});
        let UpstreamResponse::Complete { body, usage, .. } =
            chat("m", body.as_object().unwrap(), false, 0)
        else {
            panic!("expected a complete answer");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Mock response to:");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(usage.unwrap().completion_tokens, 3);
    }
}
