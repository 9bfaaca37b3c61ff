//! OpenAI's format: chat completions (plain and SSE), embeddings (float and base64), errors.
//!
//! Strict: a request OpenAI's API refuses is refused here too, with OpenAI's error shape
//! (`{"error":{"message","type":"invalid_request_error","param","code"}}`, 400), each rule
//! citing where OpenAI documents it ([`refuse_chat`], [`refuse_embeddings`]). Usage is
//! reported as OpenAI reports it: `completion_tokens_details.reasoning_tokens` for reasoning
//! models, and `prompt_tokens_details.cached_tokens` when a long prompt's prefix was seen
//! before (OpenAI caches prompts of 1,024 tokens and more, in steps of 128).

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

/// A refusal as OpenAI words it: the field, OpenAI's `code`, and the message.
struct Refusal {
    param: String,
    code: &'static str,
    message: String,
}

fn refusal(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        param: param.into(),
        code,
        message: message.into(),
    }
}

impl Refusal {
    fn into_response(self) -> Response {
        let error = json!({"error": {"message": self.message, "type": "invalid_request_error",
            "param": self.param, "code": self.code}});
        (StatusCode::BAD_REQUEST, axum::Json(error)).into_response()
    }
}

/// Whether `model` is one of OpenAI's reasoning models (o1, o3, o4-mini, codex-mini, gpt-5
/// and later, not gpt-5-chat): the models guide lists them as reasoning models.
pub fn is_reasoning(model: &str) -> bool {
    let family = |p: &str| {
        model == p
            || model
                .strip_prefix(p)
                .is_some_and(|r| r.starts_with('-') || (p == "gpt-5" && r.starts_with('.')))
    };
    !family("gpt-5-chat")
        && ["o1", "o3", "o4-mini", "codex-mini", "gpt-5"]
            .iter()
            .any(|p| family(p))
}

/// A number in `range`, or a refusal naming `field` as OpenAI words it ("Invalid
/// 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 instead.").
fn in_range(body: &Value, field: &str, min: f64, max: f64) -> Result<(), Refusal> {
    match &body[field] {
        Value::Null => Ok(()),
        Value::Number(n) => match n.as_f64() {
            Some(v) if v < min => Err(refusal(
                field,
                "decimal_below_min_value",
                format!(
                    "Invalid '{field}': decimal below minimum value. Expected a value >= {min}, but got {v} instead."
                ),
            )),
            Some(v) if v > max => Err(refusal(
                field,
                "decimal_above_max_value",
                format!(
                    "Invalid '{field}': decimal above maximum value. Expected a value <= {max}, but got {v} instead."
                ),
            )),
            _ => Ok(()),
        },
        _ => Err(refusal(
            field,
            "invalid_type",
            format!("Invalid type for '{field}': expected a decimal."),
        )),
    }
}

/// Whether a function name is what OpenAI accepts: "a-z, A-Z, 0-9, or contain underscores
/// and dashes, with a maximum length of 64" (API reference, `tools[].function.name`).
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The first rule of OpenAI's chat completions API (`POST /v1/chat/completions`, API
/// reference) that `body` breaks.
fn refuse_chat(body: &Value) -> Result<(), Refusal> {
    let model = body["model"].as_str().unwrap_or("");
    if is_reasoning(model) {
        // Reasoning guide and API reference: `max_tokens` "is not compatible with o-series
        // models"; OpenAI answers 400 unsupported_parameter.
        if !body["max_tokens"].is_null() {
            return Err(refusal(
                "max_tokens",
                "unsupported_parameter",
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            ));
        }
        // Reasoning models take only the default sampling: "'temperature' does not support
        // 0.7 with this model. Only the default (1) value is supported." (unsupported_value).
        // gpt-5.1 and later accept sampling with `reasoning_effort: none`.
        let effort_none = model.starts_with("gpt-5.")
            && matches!(body["reasoning_effort"].as_str(), None | Some("none"));
        for (field, default) in [("temperature", 1.0), ("top_p", 1.0)] {
            if let Some(v) = body[field].as_f64()
                && v != default
                && !effort_none
            {
                return Err(refusal(
                    field,
                    "unsupported_value",
                    format!(
                        "Unsupported value: '{field}' does not support {v} with this model. Only the default ({default}) value is supported."
                    ),
                ));
            }
        }
        // Penalties, log probabilities and token biases: "not supported with reasoning
        // models" (OpenAI's reasoning guide, limitations; LiteLLM's o-series/gpt-5 maps).
        let unsupported = [
            (
                "presence_penalty",
                body["presence_penalty"].as_f64().is_some_and(|v| v != 0.0),
            ),
            (
                "frequency_penalty",
                body["frequency_penalty"].as_f64().is_some_and(|v| v != 0.0),
            ),
            ("logprobs", body["logprobs"] == json!(true) && !effort_none),
            (
                "top_logprobs",
                !body["top_logprobs"].is_null() && !effort_none,
            ),
            (
                "logit_bias",
                body["logit_bias"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty()),
            ),
            // `stop`: "Not supported with latest reasoning models o3 and o4-mini" (API
            // reference); gpt-5 answers the same.
            (
                "stop",
                !model.starts_with("o1")
                    && match &body["stop"] {
                        Value::String(s) => !s.is_empty(),
                        Value::Array(a) => !a.is_empty(),
                        _ => false,
                    },
            ),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, bad)| *bad) {
            return Err(refusal(
                *field,
                "unsupported_parameter",
                format!("Unsupported parameter: '{field}' is not supported with this model."),
            ));
        }
    }
    // `messages`: "A list of messages comprising the conversation so far", at least one.
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Err(refusal(
            "messages",
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    };
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        let content = &m["content"];
        match role {
            // System, developer and user messages: `content` is required.
            "system" | "developer" | "user" if content.is_null() => {
                return Err(refusal(
                    format!("messages.[{i}].content"),
                    "missing_required_parameter",
                    format!("Missing required parameter: 'messages.[{i}].content'."),
                ));
            }
            "system" | "developer" | "user" => open_calls.clear(),
            // Assistant messages: "content: Required unless tool_calls or function_call is
            // specified."
            "assistant" => {
                let calls = m["tool_calls"].as_array().filter(|c| !c.is_empty());
                if content.is_null() && calls.is_none() && m["function_call"].is_null() {
                    return Err(refusal(
                        format!("messages.[{i}].content"),
                        "missing_required_parameter",
                        format!(
                            "Invalid value for 'content': expected a string, got null. (messages.[{i}].content)"
                        ),
                    ));
                }
                // Tool-call ids: "Invalid 'messages[1].tool_calls[0].id': string too long.
                // Expected a string with maximum length 40" (OpenAI's answer to longer ids,
                // e.g. ones that carry another provider's signatures).
                for (j, call) in calls.into_iter().flatten().enumerate() {
                    let id = call["id"].as_str().unwrap_or("");
                    if id.len() > 40 {
                        return Err(refusal(
                            format!("messages[{i}].tool_calls[{j}].id"),
                            "string_above_max_length",
                            format!(
                                "Invalid 'messages[{i}].tool_calls[{j}].id': string too long. Expected a string with maximum length 40, but got a string with length {} instead.",
                                id.len()
                            ),
                        ));
                    }
                }
                open_calls = calls
                    .map(|c| {
                        c.iter()
                            .filter_map(|c| c["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
            }
            // Tool messages: `tool_call_id` and `content` are required, and each answers a
            // call of the assistant message before it ("messages with role 'tool' must be a
            // response to a preceeding message with 'tool_calls'").
            "tool" => {
                let Some(id) = m["tool_call_id"].as_str() else {
                    return Err(refusal(
                        format!("messages.[{i}].tool_call_id"),
                        "missing_required_parameter",
                        format!("Missing required parameter: 'messages.[{i}].tool_call_id'."),
                    ));
                };
                if content.is_null() {
                    return Err(refusal(
                        format!("messages.[{i}].content"),
                        "missing_required_parameter",
                        format!("Missing required parameter: 'messages.[{i}].content'."),
                    ));
                }
                if !open_calls.iter().any(|c| c == id) {
                    return Err(refusal(
                        format!("messages.[{i}].role"),
                        "invalid_value",
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    ));
                }
            }
            // The legacy `function` role (deprecated, still accepted) needs a `name`.
            "function" if m["name"].is_string() => {}
            _ => {
                return Err(refusal(
                    format!("messages.[{i}].role"),
                    "invalid_value",
                    format!(
                        "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                    ),
                ));
            }
        }
    }
    // `n`: "How many chat completion choices to generate"; 1 to 128.
    if let Some(n) = body.get("n").filter(|n| !n.is_null()) {
        match n.as_u64() {
            Some(1..=128) => {}
            _ => {
                return Err(refusal(
                    "n",
                    "integer_out_of_range",
                    format!(
                        "Invalid 'n': integer out of range. Expected a value between 1 and 128, but got {n} instead."
                    ),
                ));
            }
        }
    }
    // `temperature` "between 0 and 2"; `top_p` 0 to 1; penalties "between -2.0 and 2.0".
    in_range(body, "temperature", 0.0, 2.0)?;
    in_range(body, "top_p", 0.0, 1.0)?;
    in_range(body, "presence_penalty", -2.0, 2.0)?;
    in_range(body, "frequency_penalty", -2.0, 2.0)?;
    // `max_tokens`, `max_completion_tokens`: integers of at least 1.
    for field in ["max_tokens", "max_completion_tokens"] {
        if !body[field].is_null() && body[field].as_u64().is_none_or(|v| v < 1) {
            return Err(refusal(
                field,
                "integer_below_min_value",
                format!("Invalid '{field}': integer below minimum value. Expected a value >= 1."),
            ));
        }
    }
    // `top_logprobs`: "An integer between 0 and 20 … logprobs must be set to true if this
    // parameter is used."
    if !body["top_logprobs"].is_null() {
        if body["top_logprobs"].as_u64().is_none_or(|v| v > 20) {
            return Err(refusal(
                "top_logprobs",
                "integer_above_max_value",
                "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20.",
            ));
        }
        if body["logprobs"] != json!(true) {
            return Err(refusal(
                "top_logprobs",
                "invalid_value",
                "Invalid value for 'logprobs': must be true when 'top_logprobs' is specified.",
            ));
        }
    }
    // `stop`: "Up to 4 sequences where the API will stop generating further tokens."
    if let Some(stops) = body["stop"].as_array()
        && stops.len() > 4
    {
        return Err(refusal(
            "stop",
            "array_above_max_length",
            format!(
                "Invalid 'stop': array too long. Expected an array with maximum length 4, but got an array with length {} instead.",
                stops.len()
            ),
        ));
    }
    // `tools`: "A max of 128 functions are supported", each function name "a-z, A-Z, 0-9,
    // or contain underscores and dashes, with a maximum length of 64".
    if let Some(tools) = body["tools"].as_array() {
        if tools.len() > 128 {
            return Err(refusal(
                "tools",
                "array_above_max_length",
                format!(
                    "Invalid 'tools': array too long. Expected an array with maximum length 128, but got an array with length {} instead.",
                    tools.len()
                ),
            ));
        }
        for (i, t) in tools.iter().enumerate() {
            let name = t["function"]["name"].as_str().unwrap_or("");
            if !valid_name(name) {
                return Err(refusal(
                    format!("tools[{i}].function.name"),
                    "invalid_value",
                    format!(
                        "Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
                    ),
                ));
            }
        }
    }
    // `response_format` of type `json_schema`: `json_schema.name` is required ("The name of
    // the response format. Must be a-z, A-Z, 0-9, or contain underscores and dashes").
    if body["response_format"]["type"] == "json_schema" {
        let name = body["response_format"]["json_schema"]["name"].as_str();
        if !name.is_some_and(valid_name) {
            return Err(refusal(
                "response_format.json_schema.name",
                "missing_required_parameter",
                "Missing required parameter: 'response_format.json_schema.name'.",
            ));
        }
    }
    Ok(())
}

/// The first rule of OpenAI's embeddings API (`POST /v1/embeddings`, API reference) that
/// `body` breaks.
fn refuse_embeddings(body: &Value, model: &str) -> Result<(), Refusal> {
    // `input`: "cannot be an empty string, and any array must be 2048 dimensions or less".
    match &body["input"] {
        Value::Array(items) if items.is_empty() => {
            return Err(refusal(
                "input",
                "empty_array",
                "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            ));
        }
        Value::Array(items) if items.len() > 2048 && !items.iter().all(Value::is_u64) => {
            return Err(refusal(
                "input",
                "array_above_max_length",
                format!(
                    "Invalid 'input': array too long. Expected an array with maximum length 2048, but got an array with length {} instead.",
                    items.len()
                ),
            ));
        }
        Value::Null => {
            return Err(refusal(
                "input",
                "missing_required_parameter",
                "Missing required parameter: 'input'.",
            ));
        }
        _ => {}
    }
    // `dimensions`: "Only supported in text-embedding-3 and later models."
    if !body["dimensions"].is_null() {
        if !model.starts_with("text-embedding-3") {
            return Err(refusal(
                "dimensions",
                "invalid_value",
                "This model does not support specifying dimensions.",
            ));
        }
        if body["dimensions"].as_u64().is_none_or(|d| d < 1) {
            return Err(refusal(
                "dimensions",
                "integer_below_min_value",
                "Invalid 'dimensions': integer below minimum value. Expected a value >= 1.",
            ));
        }
    }
    Ok(())
}

/// Tokens the fake bills for a prompt: 10, or for a long conversation (4 KiB of messages
/// and more) about four bytes a token, so prompts long enough for OpenAI's prompt cache
/// (1,024 tokens and more) exist.
fn prompt_tokens(body: &Value) -> u64 {
    let bytes = body["messages"].to_string().len() as u64;
    if bytes >= 4096 { bytes / 4 } else { 10 }
}

/// The usage of an answer: OpenAI's totals and details. A reasoning model spends up to 64
/// reasoning tokens (within `max_completion_tokens`) before its 5 visible ones; `cached` is
/// how much of the prompt was read from the prompt cache.
fn usage(body: &Value, cached: u64) -> Value {
    let prompt = prompt_tokens(body);
    let visible = 5;
    let reasoning = if is_reasoning(body["model"].as_str().unwrap_or("")) {
        let limit = body["max_completion_tokens"].as_u64().unwrap_or(u64::MAX);
        limit.saturating_sub(visible).min(64)
    } else {
        0
    };
    let completion = visible + reasoning;
    json!({"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached.min(prompt), "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}})
}

/// The prompt-cache key of a request: OpenAI caches "the longest prefix of a prompt that has
/// been previously computed, starting at 1,024 tokens and increasing in 128-token
/// increments". The fake keys on the model and the messages but the last; the cached part is
/// that prefix's tokens, rounded down to a step.
pub(super) fn cache_prefix(body: &Value) -> Option<(String, u64)> {
    if prompt_tokens(body) < 1024 {
        return None;
    }
    let messages = body["messages"].as_array()?;
    let prefix = Value::from(messages[..messages.len().saturating_sub(1)].to_vec()).to_string();
    let tokens = prefix.len() as u64 / 4;
    (tokens >= 1024).then(|| {
        let key = format!("{}\n{prefix}", body["model"]);
        (key, 1024 + (tokens - 1024) / 128 * 128)
    })
}

/// Answers one OpenAI-format request (`Slow` has already waited); `cached` prompt tokens
/// were read from the prompt cache.
pub(super) fn answer(
    behaviour: &Behaviour,
    n: usize,
    path: &str,
    body: &Value,
    cached: u64,
) -> Response {
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
        if let Err(refusal) = refuse_embeddings(body, &model) {
            return refusal.into_response();
        }
        if let Some(refusal) = refuse_input(body, &model) {
            return refusal;
        }
        return axum::Json(embeddings(body, &model)).into_response();
    }
    if let Err(refusal) = refuse_chat(body) {
        return refusal.into_response();
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
                "usage": usage(body, cached)}),
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
        "usage": usage(body, cached)
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
