//! `POST /v1/messages`: Anthropic's Messages API as an ingress, so the official `anthropic`
//! SDKs work against Sluice unchanged.
//!
//! The request is translated into an OpenAI chat request and goes through the same pipeline
//! (auth, limits, cache, routing, fallbacks) to whichever provider the model is deployed on;
//! the answer is translated back into a `message`, or into Anthropic's named stream events.
//! Errors use Anthropic's shape, `{"type":"error","error":{"type","message"}}`, with the same
//! statuses and headers as the OpenAI routes. `Idempotency-Key` works as on the OpenAI routes
//! (see [`super::idempotency`]); replayed answers and errors are in this route's shape.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::idempotency;
use super::openai::{finish, options, read_body, reply_response};
use crate::gateway::stream::EventBytes;
use crate::gateway::{ReplyBody, Trace};
use crate::metrics::UsageTicket;
use crate::providers::{Endpoint, sse};

/// `POST /v1/messages`
#[utoipa::path(post, path = "/v1/messages", tag = "anthropic",
    params(super::openapi::MessagesHeaders),
    request_body = super::openapi::MessagesRequest,
    responses(
        (status = 200, description = "A `message`; Anthropic's named events with `stream: true`.",
            headers(("x-sluice-cache" = String, description = "`hit`, `miss`, `stale` or `bypass`")),
            content(
                (super::openapi::Message = "application/json"),
                (super::openapi::ServerSentEvent = "text/event-stream"),
            )),
        (status = 404, description = "Unknown model.", body = AnthropicError),
        (status = 409, description = "The provider rejected the request, or a request with this \
            `Idempotency-Key` is still running.", body = AnthropicError),
        (status = 422, description = "The provider rejected the request, or this \
            `Idempotency-Key` was used with another body.", body = AnthropicError),
        (status = 429, description = "Over a rate limit or spending cap, or the provider is \
            rate limiting (`Retry-After`).", body = AnthropicError),
        (status = 502, description = "The provider failed or answered malformed JSON.",
            body = AnthropicError),
        (status = 504, description = "The provider did not answer in time.", body = AnthropicError),
    ))]
pub async fn messages(
    State(state): State<Arc<AppState>>,
    ticket: Option<Extension<Arc<UsageTicket>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut outcome = Outcome {
        metered: true,
        ..Outcome::default()
    };
    let mut trace = Trace {
        usage: ticket.map(|Extension(t)| t),
        ..Trace::default()
    };
    let mut claim = None;
    let result = async {
        let caller = state.keys.authenticate(&headers).await?;
        outcome.tenant = Some(caller.tenant.clone());
        outcome.key_id = Some(caller.key_id.clone());
        let body = read_body(&state, body)?;
        if let Some(key) = idempotency::header_key(&headers)? {
            let request = idempotency::Request::Call {
                route: "messages",
                body: &body,
            };
            let now = state.clock.now_ms();
            match idempotency::begin(&*state.store, &caller.tenant, key, request, now).await? {
                idempotency::Begin::Run(c) => claim = Some(c),
                idempotency::Begin::Replay(stored) => return Ok(idempotency::replayed(stored)),
            }
        }
        let request: Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::invalid_request("The request body is not valid JSON.", None))?;
        let chat = to_chat_request(&request)?;
        let model = chat
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let bytes = serde_json::to_vec(&chat).unwrap_or_default();
        let mut reply = state
            .gateway
            .handle(
                &caller,
                Endpoint::ChatCompletions,
                &bytes,
                options(&headers)?,
                &mut trace,
            )
            .await?;
        outcome.record(&reply);
        reply.body = match reply.body {
            ReplyBody::Json(completion) => ReplyBody::Json(to_message_bytes(&completion, &model)?),
            ReplyBody::EventStream(events) => {
                // The key is held until the stream ends (judged on the OpenAI events, before
                // translation), then kept or released by the stream.
                let events = match claim.take() {
                    Some(c) => {
                        let refusal = finish_anthropic(
                            Err(idempotency::stream_not_replayable()),
                            Outcome::default(),
                        );
                        idempotency::guard_stream(
                            events,
                            Arc::clone(&state.store),
                            Arc::clone(&state.clock),
                            c,
                            idempotency::stored_error(refusal).await,
                        )
                    }
                    None => events,
                };
                ReplyBody::EventStream(to_message_events(events, model))
            }
        };
        Ok(reply_response(reply, trace.deployment.as_deref()))
    }
    .await;
    outcome.model = trace.model;
    outcome.deployment = trace.deployment;
    let response = finish_anthropic(result, outcome);
    match claim {
        Some(claim) => {
            let now = state.clock.now_ms();
            idempotency::respond(&*state.store, claim, response, now).await
        }
        None => response,
    }
}

/// Finishes a response, with errors in Anthropic's shape (same status and headers).
fn finish_anthropic(result: Result<Response, ApiError>, outcome: Outcome) -> Response {
    let Err(error) = result else {
        return finish(result, outcome);
    };
    let kind = match error.status.as_u16() {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let body = serde_json::to_vec(&AnthropicError {
        kind: "error",
        error: AnthropicErrorBody {
            kind,
            message: &error.message,
        },
    })
    .unwrap_or_default();
    let mut response = finish(Err(error), outcome);
    *response.body_mut() = Body::from(body);
    response
}

/// The body of an error answer on `/v1/messages`: Anthropic's error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicError<'a> {
    /// Always `error`.
    #[serde(rename = "type")]
    #[schema(pattern = "^error$")]
    pub kind: &'a str,
    /// What went wrong.
    #[schema(inline)]
    pub error: AnthropicErrorBody<'a>,
}

/// Anthropic's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicErrorBody<'a> {
    /// Anthropic's class of error, from the status: `invalid_request_error`,
    /// `authentication_error`, `permission_error`, `not_found_error`, `request_too_large`,
    /// `rate_limit_error`, `timeout_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// A sentence for humans.
    pub message: &'a str,
}

// ---- Anthropic request → OpenAI request ----------------------------------------------------

/// Translates a Messages API request into an OpenAI chat request.
pub fn to_chat_request(request: &Value) -> Result<Map<String, Value>, ApiError> {
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err(ApiError::invalid_request(
            "model: Field required",
            Some("model"),
        ));
    };
    let Some(max_tokens) = request.get("max_tokens").and_then(Value::as_u64) else {
        return Err(ApiError::invalid_request(
            "max_tokens: Field required (a positive integer)",
            Some("max_tokens"),
        ));
    };
    let Some(input) = request.get("messages").and_then(Value::as_array) else {
        return Err(ApiError::invalid_request(
            "messages: Field required",
            Some("messages"),
        ));
    };
    let mut messages = Vec::new();
    match request.get("system") {
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            let text = block_texts(blocks).join("\n");
            messages.push(json!({"role": "system", "content": text}));
        }
        _ => {}
    }
    for (i, message) in input.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str);
        match (role, message.get("content")) {
            (Some("user"), Some(Value::String(s))) => {
                messages.push(json!({"role": "user", "content": s}));
            }
            (Some("user"), Some(Value::Array(blocks))) => user_blocks(blocks, &mut messages),
            (Some("assistant"), Some(Value::String(s))) => {
                messages.push(json!({"role": "assistant", "content": s}));
            }
            (Some("assistant"), Some(Value::Array(blocks))) => {
                messages.push(assistant_message(blocks));
            }
            _ => {
                return Err(ApiError::invalid_request(
                    format!(
                        "messages.{i}: needs a role of \"user\" or \"assistant\" and a content string or array"
                    ),
                    Some(&format!("messages.{i}")),
                ));
            }
        }
    }
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("max_tokens".into(), json!(max_tokens));
    for field in ["temperature", "top_p"] {
        if let Some(v) = request.get(field).filter(|v| !v.is_null()) {
            chat.insert(field.into(), v.clone());
        }
    }
    if let Some(stop) = request.get("stop_sequences").filter(|v| v.is_array()) {
        chat.insert("stop".into(), stop.clone());
    }
    if let Some(user) = request
        .pointer("/metadata/user_id")
        .filter(|v| v.is_string())
    {
        chat.insert("user".into(), user.clone());
    }
    let tools: Vec<Value> = request
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let mut function = json!({
                "name": t.get("name")?,
                "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = t.get("description") {
                function["description"] = d.clone();
            }
            Some(json!({"type": "function", "function": function}))
        })
        .collect();
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.get("tool_choice") {
        let openai = match choice.get("type").and_then(Value::as_str) {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => json!("auto"),
        };
        chat.insert("tool_choice".into(), openai);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            chat.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    if request.get("stream") == Some(&Value::Bool(true)) {
        chat.insert("stream".into(), json!(true));
        // Anthropic streams always end with usage; ask the pipeline for it.
        chat.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(chat)
}

fn block_texts(blocks: &[Value]) -> Vec<&str> {
    blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect()
}

/// A user turn's blocks: tool results become `tool` messages (first, as OpenAI wants them
/// right after the assistant's calls), the rest one user message with text and image parts.
fn user_blocks(blocks: &[Value], messages: &mut Vec<Value>) {
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_result") => {
                let content = match block.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(inner)) => block_texts(inner).join("\n"),
                    _ => String::new(),
                };
                let content = if block.get("is_error") == Some(&Value::Bool(true)) {
                    format!("Error: {content}")
                } else {
                    content
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                    "content": content,
                }));
            }
            Some("text") => parts.push(
                json!({"type": "text", "text": block.get("text").cloned().unwrap_or(json!(""))}),
            ),
            Some("image") => {
                let source = block.get("source").unwrap_or(&Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    _ => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return;
    }
    // Text alone is sent as a string, the form every provider accepts.
    let only_text = parts.iter().all(|p| p["type"] == "text");
    let content = if only_text {
        json!(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        )
    } else {
        Value::Array(parts)
    };
    messages.push(json!({"role": "user", "content": content}));
}

/// An assistant turn's blocks: text, and `tool_use` blocks as tool calls.
fn assistant_message(blocks: &[Value]) -> Value {
    let text = block_texts(blocks).join("");
    let calls: Vec<Value> = blocks
        .iter()
        .filter(|b| b.get("type").and_then(Value::as_str) == Some("tool_use"))
        .map(|b| {
            json!({
                "id": b.get("id"),
                "type": "function",
                "function": {
                    "name": b.get("name"),
                    "arguments": b.get("input").unwrap_or(&json!({})).to_string(),
                },
            })
        })
        .collect();
    let mut message = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { json!(text) }});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

// ---- OpenAI answer → Anthropic answer ------------------------------------------------------

/// OpenAI's `finish_reason` as Anthropic's `stop_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn message_usage(usage: &Value) -> Value {
    json!({
        "input_tokens": usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0),
        "output_tokens": usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.pointer("/prompt_tokens_details/cached_tokens").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// A message id from a completion id (`chatcmpl-x` → `msg_x`; `msg_…` kept).
fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        None => "msg_sluice".to_owned(),
    }
}

/// A `chat.completion` as a Messages API `message`.
pub fn to_message(completion: &Value, model: &str) -> Value {
    let choice = &completion["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        content.push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
    }
    json!({
        "id": message_id(completion["id"].as_str()),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null,
        "usage": message_usage(&completion["usage"]),
    })
}

fn to_message_bytes(completion: &Bytes, model: &str) -> Result<Bytes, ApiError> {
    let completion: Value = serde_json::from_slice(completion).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            "upstream_bad_response",
            "The provider returned a malformed answer.",
        )
    })?;
    Ok(Bytes::from(to_message(&completion, model).to_string()))
}

/// Turns OpenAI chunks into Anthropic's event sequence: `message_start`, then per content
/// block `content_block_start` / `content_block_delta`… / `content_block_stop`, then
/// `message_delta` (stop reason and usage) and `message_stop`.
struct EventWriter {
    model: String,
    started: bool,
    /// Index and kind of the open content block.
    open: Option<(u64, BlockKind)>,
    next_index: u64,
    stop_reason: &'static str,
    usage: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
}

fn frame(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl EventWriter {
    fn new(model: String) -> Self {
        Self {
            model,
            started: false,
            open: None,
            next_index: 0,
            stop_reason: "end_turn",
            usage: json!({}),
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": message_id(chunk["id"].as_str()), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.push(frame(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        ));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            out.push(frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Opens a block of this kind unless it is already open; returns its index.
    fn open(&mut self, kind: BlockKind, block: Value, out: &mut Vec<Bytes>) -> u64 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        out.push(frame(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn chunk(&mut self, chunk: &Value) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(chunk, &mut out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage.clone();
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.open(
                BlockKind::Text,
                json!({"type": "text", "text": ""}),
                &mut out,
            );
            out.push(frame(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": text}}),
            ));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let tool = call["index"].as_u64().unwrap_or(0);
            let block = json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}});
            let index = self.open(BlockKind::Tool(tool), block, &mut out);
            if let Some(partial) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                out.push(frame(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": partial}}),
                ));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.stop_reason = stop_reason(reason);
        }
        out
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        let usage = message_usage(&self.usage);
        out.push(frame(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": null},
                    "usage": usage}),
        ));
        out.push(frame("message_stop", &json!({"type": "message_stop"})));
        out
    }
}

/// An OpenAI event stream as Anthropic's. A failure mid-stream becomes an `error` event.
fn to_message_events(events: EventBytes, model: String) -> EventBytes {
    let chunks = sse::json_events(events);
    let writer = EventWriter::new(model);
    // Events are sent after the handler returned: keep the request's span for the log.
    let span = tracing::Span::current();
    futures_util::stream::unfold(Some((chunks, writer, span)), |state| async move {
        let (mut chunks, mut writer, span) = state?;
        let frames = match chunks.next().await {
            // The gateway's own error event: the provider's stream broke off.
            Some(Ok(event)) if event.data.get("error").is_some() => {
                vec![frame("error", &stream_broke_off())]
            }
            Some(Ok(event)) => {
                let frames = writer.chunk(&event.data);
                return Some((frames, Some((chunks, writer, span))));
            }
            None => writer.end(),
            Some(Err(e)) => {
                tracing::warn!(parent: &span, error = %e, "stream failed after its first byte");
                vec![frame("error", &stream_broke_off())]
            }
        };
        Some((frames, None))
    })
    .flat_map(|frames| futures_util::stream::iter(frames.into_iter().map(Ok)))
    .boxed()
}

/// Anthropic's `error` event for a stream the provider broke off.
fn stream_broke_off() -> Value {
    json!({"type": "error", "error": {"type": "api_error",
           "message": "The provider's stream broke off."}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ProviderError;

    #[test]
    fn a_messages_request_becomes_a_chat_request() {
        let request = json!({
            "model": "claude", "max_tokens": 100, "system": [{"type": "text", "text": "Be kind."}],
            "stop_sequences": ["X"], "metadata": {"user_id": "u"}, "stream": true,
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Calling."},
                    {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]},
                    {"type": "text", "text": "and?"}]}
            ]
        });
        let chat = to_chat_request(&request).unwrap();
        let messages = chat["messages"].as_array().unwrap();
        let roles: Vec<&str> = messages
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "user"]);
        assert_eq!(
            messages[2]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(messages[3]["tool_call_id"], "toolu_1");
        assert_eq!(messages[3]["content"], "42");
        assert_eq!(chat["tool_choice"]["function"]["name"], "f");
        assert_eq!(chat["parallel_tool_calls"], false);
        assert_eq!(chat["stop"], json!(["X"]));
        assert_eq!(chat["stream_options"]["include_usage"], true);
        assert!(to_chat_request(&json!({"model": "m", "messages": []})).is_err());
    }

    #[test]
    fn a_completion_becomes_a_message() {
        let completion = json!({"id": "chatcmpl-abc", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "ok", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"q\":2}"}}]}}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}});
        let message = to_message(&completion, "claude");
        assert_eq!(message["id"], "msg_abc");
        assert_eq!(message["stop_reason"], "tool_use");
        assert_eq!(message["content"][0]["text"], "ok");
        assert_eq!(message["content"][1]["input"], json!({"q": 2}));
        assert_eq!(message["usage"]["input_tokens"], 7);
        assert_eq!(message["usage"]["output_tokens"], 3);
    }

    #[tokio::test]
    async fn chunks_become_the_anthropic_event_sequence() {
        let chunks = [
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}}]}),
            json!({"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}),
        ];
        let mut sse = String::new();
        for c in &chunks {
            sse.push_str(&format!("data: {c}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        let input: EventBytes =
            futures_util::stream::iter([Ok::<_, ProviderError>(Bytes::from(sse))]).boxed();
        let out: Vec<Bytes> = to_message_events(input, "claude".into())
            .map(Result::unwrap)
            .collect()
            .await;
        let names: Vec<String> = out
            .iter()
            .map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "event: message_start",
                "event: content_block_start",
                "event: content_block_delta",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: content_block_start",
                "event: content_block_delta",
                "event: content_block_stop",
                "event: message_delta",
                "event: message_stop",
            ]
        );
        let delta = String::from_utf8_lossy(&out[8]).into_owned();
        assert!(delta.contains("\"stop_reason\":\"tool_use\""), "{delta}");
        assert!(delta.contains("\"output_tokens\":6"), "{delta}");
    }
}
