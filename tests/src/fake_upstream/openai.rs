//! OpenAI's format: chat completions (plain and SSE), embeddings (float and base64), errors.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::Behaviour;

fn error_body(status: u16) -> Value {
    let (kind, code) = match status {
        400 => ("invalid_request_error", "invalid_value"),
        401 => ("invalid_request_error", "invalid_api_key"),
        429 => ("requests", "rate_limit_exceeded"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": format!("fake upstream error {status}"), "type": kind, "param": null, "code": code}})
}

/// Answers one OpenAI-format request (`Slow` has already waited).
pub(super) fn answer(behaviour: &Behaviour, n: usize, path: &str, body: &Value) -> Response {
    match *behaviour {
        // `EchoKey` is answered before the format is chosen.
        Behaviour::Ok
        | Behaviour::Slow(_)
        | Behaviour::EchoKey(_)
        | Behaviour::CutOff
        | Behaviour::Truncated
        | Behaviour::Drip(_) => {}
        Behaviour::Status(status, retry_after) => {
            let mut r = (
                StatusCode::from_u16(status).unwrap(),
                axum::Json(error_body(status)),
            )
                .into_response();
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            return r;
        }
        Behaviour::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Behaviour::ErrorIn200 => return axum::Json(error_body(500)).into_response(),
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    if path.ends_with("/embeddings") {
        if let Some(refusal) = refuse_input(body, &model) {
            return refusal;
        }
        return axum::Json(embeddings(body, &model)).into_response();
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    // With tools and no tool result yet: call the first tool with the user's words.
    let tool = body["tools"][0]["function"]["name"]
        .as_str()
        .filter(|_| last["role"] != "tool");
    let (content, tool_calls, finish) = match tool {
        Some(name) => {
            let query = last["content"].as_str().unwrap_or("").to_owned();
            let call = json!({"id": format!("call_fake{n}"), "type": "function",
                "function": {"name": name, "arguments": json!({"query": query}).to_string()}});
            (Value::Null, Some(call), "tool_calls")
        }
        None if last["role"] == "tool" => (
            json!(format!(
                "tool said: {}",
                last["content"].as_str().unwrap_or("")
            )),
            None,
            "stop",
        ),
        None => (json!(format!("fake answer #{n}")), None, "stop"),
    };
    if body["stream"] == json!(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": format!("chatcmpl-fake{n}"), "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut sse = String::new();
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        match &tool_calls {
            Some(call) => {
                // The call's name first, its arguments in two pieces, as OpenAI streams them.
                let arguments = call["function"]["arguments"].as_str().unwrap();
                let (a, b) = super::halves(arguments);
                events.push(chunk(
                    json!({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""}}]}),
                    Value::Null,
                ));
                for piece in [a, b] {
                    events.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
            }
            None => events.push(chunk(json!({"content": content}), Value::Null)),
        }
        events.push(chunk(json!({}), json!(finish)));
        if body["stream_options"]["include_usage"] == json!(true) {
            events.push(
                json!({"id": format!("chatcmpl-fake{n}"), "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": model, "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
            );
        }
        for event in events {
            sse.push_str(&format!("data: {event}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from(sse),
        )
            .into_response();
    }
    let mut message = json!({"role": "assistant", "content": content, "refusal": null});
    if let Some(call) = tool_calls {
        message["tool_calls"] = json!([call]);
    }
    axum::Json(json!({
        "id": format!("chatcmpl-fake{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

/// OpenAI's context length for its embedding models, in tokens per input.
const EMBEDDING_CONTEXT_TOKENS: usize = 8192;

/// The context length of an upstream embedding model: OpenAI's, or `N` for a model whose
/// name ends in `-max-N` (so tests can reach it with small inputs the gateway cannot judge).
fn context_tokens(model: &str) -> usize {
    model
        .rsplit_once("-max-")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(EMBEDDING_CONTEXT_TOKENS)
}

/// Refuses an embeddings request whose inputs OpenAI would refuse — an empty string, or an
/// input over the model's context length (about four characters a token) — with a 400
/// `invalid_request_error` naming the input by its index, as OpenAI does, and quoting its
/// start, as some OpenAI-compatible servers do: the worst case for a batch, where the index
/// and the text belong to whichever job sent that input.
fn refuse_input(body: &Value, model: &str) -> Option<Response> {
    let items: Vec<&Value> = match &body["input"] {
        Value::Array(items) if items.iter().all(Value::is_u64) => vec![&body["input"]],
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    let limit = context_tokens(model);
    let message = items.iter().enumerate().find_map(|(i, item)| {
        let tokens = match item {
            Value::String(s) => s.chars().count().div_ceil(4),
            Value::Array(ids) => ids.len(),
            _ => 0,
        };
        match item {
            Value::String(s) if s.is_empty() => Some(format!(
                "'$.input[{i}]' is invalid: an input must not be an empty string."
            )),
            _ if tokens > limit => {
                let text = item
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| item.to_string());
                let start: String = text.chars().take(80).collect();
                Some(format!(
                    "This model's maximum context length is {limit} tokens, however you \
                     requested {tokens} tokens in input[{i}] ('{start}…'). Please reduce the \
                     length of the input."
                ))
            }
            _ => None,
        }
    })?;
    let error = json!({"error": {"message": message, "type": "invalid_request_error",
        "param": "input", "code": null}});
    Some((StatusCode::BAD_REQUEST, axum::Json(error)).into_response())
}

fn embeddings(body: &Value, model: &str) -> Value {
    let inputs = match &body["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let base64 = body["encoding_format"] == json!("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v = [0.25f32, -0.5, i as f32];
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": 4 * inputs, "total_tokens": 4 * inputs}})
}
