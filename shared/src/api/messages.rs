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
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::idempotency;
use super::openai::{finish, options, read_body, reply_response};
use crate::gateway::stream::EventBytes;
use crate::gateway::{ReplyBody, Trace};
use crate::metrics::UsageTicket;
pub use crate::providers::anthropic::wire::{AnthropicError, AnthropicErrorBody};
use crate::providers::anthropic::wire::{
    Block, Content, ContentBlock, Delta, Message, MessageDeltaBody, MessagesRequest, Source,
    StreamEvent, Tool,
};
use crate::providers::anthropic::{self, AnthropicUsage};
use crate::providers::{Endpoint, Usage, sse};

/// `POST /v1/messages`
#[utoipa::path(post, path = "/v1/messages", tag = "anthropic",
    params(super::openapi::MessagesHeaders),
    request_body = super::openapi::MessagesRequest,
    responses(
        (status = 200, description = "A `message`; Anthropic's named events with `stream: true`.",
            headers(("x-sluice-cache" = String, description = "`hit`, `coalesced`, `miss`, `stale` or `bypass`")),
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

// ---- Anthropic request → OpenAI request ----------------------------------------------------

/// A request field that cannot be translated: a 400 naming it, in Anthropic's path form
/// (`messages.2.content.0`).
fn untranslatable(field: &str, why: &str) -> ApiError {
    ApiError::invalid_request(format!("{field}: {why}"), Some(field))
}

/// The 400 for a request without a required field (or with one of the wrong type).
fn required(field: &str) -> ApiError {
    let message = match field {
        "max_tokens" => "max_tokens: Field required (a positive integer)".to_owned(),
        _ => format!("{field}: Field required"),
    };
    ApiError::invalid_request(message, Some(field))
}

/// Translates a Messages API request into an OpenAI chat request. Anthropic features with
/// no OpenAI field travel as the extensions the Anthropic provider maps back (see
/// [`crate::providers::extensions`]); a block that has no translation at all is a 400
/// naming it, never dropped.
pub fn to_chat_request(request: &Value) -> Result<Map<String, Value>, ApiError> {
    // Read leniently (see `anthropic::wire`): a field of the wrong type reads as absent.
    let request = match request {
        Value::Object(_) => MessagesRequest::deserialize(request).unwrap_or_default(),
        _ => MessagesRequest::default(),
    };
    let Some(model) = request.model else {
        return Err(required("model"));
    };
    let Some(max_tokens) = request.max_tokens else {
        return Err(required("max_tokens"));
    };
    let Some(input) = request.messages else {
        return Err(required("messages"));
    };
    let mut messages = Vec::new();
    match request.system {
        Some(Content::Text(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Content::Blocks(blocks)) => {
            let mut parts = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                if block.kind() != Some("text") {
                    return Err(untranslatable(
                        &format!("system.{j}"),
                        "system blocks are text blocks",
                    ));
                }
                parts.push(text_part(block));
            }
            messages.push(json!({"role": "system", "content": text_content(parts, "\n")}));
        }
        None => {}
    }
    for (i, message) in input.into_iter().enumerate() {
        match (message.role.as_deref(), message.content) {
            (Some("user"), Some(Content::Text(s))) => {
                messages.push(json!({"role": "user", "content": s}));
            }
            (Some("user"), Some(Content::Blocks(blocks))) => {
                user_blocks(&blocks, i, &mut messages)?;
            }
            (Some("assistant"), Some(Content::Text(s))) => {
                messages.push(json!({"role": "assistant", "content": s}));
            }
            (Some("assistant"), Some(Content::Blocks(blocks))) => {
                messages.push(assistant_message(&blocks, i)?);
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
    chat.insert("model".into(), Value::String(model));
    chat.insert("messages".into(), Value::Array(messages));
    chat.insert("max_tokens".into(), max_tokens.into());
    // `top_k`, `thinking`, `output_config` (effort, structured output) and the top-level
    // `cache_control` are Anthropic's own: carried as they are, for the Anthropic provider
    // (others refuse or drop them, see `extensions`).
    for (field, value) in [
        ("temperature", request.temperature),
        ("top_p", request.top_p),
        ("top_k", request.top_k),
        ("thinking", request.thinking),
        ("output_config", request.output_config),
        ("cache_control", request.cache_control),
    ] {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            chat.insert(field.into(), v);
        }
    }
    if let Some(stop) = request.stop_sequences {
        chat.insert("stop".into(), Value::Array(stop));
    }
    if let Some(user) = request.metadata.and_then(|m| m.user_id) {
        chat.insert("user".into(), Value::String(user));
    }
    let tools = tools(&request.tools)?;
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = request.tool_choice {
        let openai = match choice.kind.as_deref() {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.name.unwrap_or(Value::Null)}})
            }
            _ => json!("auto"),
        };
        chat.insert("tool_choice".into(), openai);
        if choice.disable_parallel_tool_use == Some(true) {
            chat.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    if request.stream == Some(true) {
        chat.insert("stream".into(), Value::Bool(true));
        // Anthropic streams always end with usage, and `message_start` has the prompt's:
        // ask the pipeline for both.
        chat.insert(
            "stream_options".into(),
            json!({"include_usage": true, "continuous_usage_stats": true}),
        );
    }
    Ok(chat)
}

/// Client tools as OpenAI function tools (`cache_control` on the tool kept). Anthropic's
/// server tools (web search, code execution, …) run at Anthropic and have no translation.
fn tools(tools: &[Tool]) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.iter().enumerate() {
        if t.kind.as_ref().is_some_and(|k| k != "custom") {
            return Err(untranslatable(
                &format!("tools.{i}"),
                "Anthropic's server tools cannot be sent through Sluice; define client tools \
                 (name, description, input_schema)",
            ));
        }
        let mut function = json!({
            "name": t.name,
            "parameters": t.input_schema.clone().unwrap_or_else(|| json!({"type": "object"})),
        });
        if let Some(d) = &t.description {
            function["description"] = d.clone();
        }
        let mut tool = json!({"type": "function", "function": function});
        if let Some(cc) = &t.cache_control {
            tool["cache_control"] = cc.clone();
        }
        out.push(tool);
    }
    Ok(out)
}

/// A text block as an OpenAI text part, its `cache_control` kept.
fn text_part(block: &Block) -> Value {
    let (text, cache_control) = match block {
        Block::Known(ContentBlock::Text {
            text,
            cache_control,
            ..
        }) => (Value::String(text.clone()), cache_control.clone()),
        // A text block whose text is not a string, passed on for the provider to refuse.
        other => {
            let value = other.to_value();
            (
                value.get("text").cloned().unwrap_or(json!("")),
                value.get("cache_control").cloned(),
            )
        }
    };
    let mut part = json!({"type": "text", "text": text});
    if let Some(cc) = cache_control {
        part["cache_control"] = cc;
    }
    part
}

/// Text parts as a string (joined by `separator`), the form every provider accepts, unless
/// a part carries more than its text (a cache breakpoint) or is not text.
fn text_content(parts: Vec<Value>, separator: &str) -> Value {
    let plain = parts
        .iter()
        .all(|p| p["type"] == "text" && p.as_object().is_some_and(|o| o.len() == 2));
    if !plain {
        return Value::Array(parts);
    }
    json!(
        parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(separator)
    )
}

/// A content block as an OpenAI content part: text, images (base64 and URL sources as
/// `image_url`), PDFs (base64 as a `file`), and Anthropic's other blocks as they are (see
/// [`anthropic::NATIVE_PARTS`]). `None` for a block no provider can take here.
fn content_part(block: &Block) -> Option<Value> {
    let (mut part, cache_control) = match block {
        Block::Known(ContentBlock::Text { .. }) => return Some(text_part(block)),
        Block::Known(ContentBlock::Image {
            source: Source::Base64 { media_type, data },
            cache_control,
            ..
        }) => {
            let url = format!("data:{media_type};base64,{data}");
            (
                json!({"type": "image_url", "image_url": {"url": url}}),
                cache_control,
            )
        }
        Block::Known(ContentBlock::Image {
            source: Source::Url { url },
            cache_control,
            ..
        }) => (
            json!({"type": "image_url", "image_url": {"url": url}}),
            cache_control,
        ),
        Block::Known(ContentBlock::Document {
            source: Source::Base64 { media_type, data },
            title,
            context,
            citations,
            cache_control,
            ..
        }) if media_type == "application/pdf" => {
            let mut file = json!({"file_data": format!("data:application/pdf;base64,{data}")});
            if let Some(title) = title.as_ref().filter(|t| t.is_string()) {
                file["filename"] = title.clone();
            }
            let mut part = json!({"type": "file", "file": file});
            for (field, value) in [("context", context), ("citations", citations)] {
                if let Some(v) = value {
                    part[field] = v.clone();
                }
            }
            (part, cache_control)
        }
        // An image or PDF whose source lacks a field: nothing any provider can read.
        Block::Other(value) if malformed_source(value) => return None,
        other => {
            return other
                .kind()
                .is_some_and(|kind| anthropic::NATIVE_PARTS.contains(&kind))
                .then(|| other.to_value());
        }
    };
    if let Some(cc) = cache_control {
        part["cache_control"] = cc.clone();
    }
    Some(part)
}

/// An image or PDF document with a base64 or URL source that is not of
/// [`Source`]'s shape (a field missing or not a string).
fn malformed_source(block: &Value) -> bool {
    let source = block.get("source").unwrap_or(&Value::Null);
    let kind = source.get("type").and_then(Value::as_str);
    match block.get("type").and_then(Value::as_str) {
        Some("image") => matches!(kind, Some("base64" | "url")),
        Some("document") => {
            kind == Some("base64")
                && source.get("media_type").and_then(Value::as_str) == Some("application/pdf")
        }
        _ => false,
    }
}

/// A user turn's blocks: tool results become `tool` messages (first, as OpenAI wants them
/// right after the assistant's calls), the rest one user message with text, image, file
/// and Anthropic's own parts.
fn user_blocks(blocks: &[Block], i: usize, messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let mut parts = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let at = || format!("messages.{i}.content.{j}");
        if block.kind() == Some("tool_result") {
            messages.push(tool_message(block, &at())?);
            continue;
        }
        let part = content_part(block).ok_or_else(|| {
            untranslatable(
                &at(),
                &format!(
                    "a `{}` block cannot be translated for a user turn",
                    block.kind().unwrap_or("(untyped)")
                ),
            )
        })?;
        parts.push(part);
    }
    if !parts.is_empty() {
        messages.push(json!({"role": "user", "content": text_content(parts, "\n")}));
    }
    Ok(())
}

/// A `tool_result` block as a `tool` message: its text, or parts when it holds images or
/// documents; `is_error` and `cache_control` kept (Anthropic extensions).
fn tool_message(block: &Block, at: &str) -> Result<Value, ApiError> {
    let Block::Known(ContentBlock::ToolResult {
        tool_use_id,
        content,
        is_error,
        cache_control,
        ..
    }) = block
    else {
        return Err(untranslatable(
            at,
            "a tool_result block has a field of the wrong type",
        ));
    };
    let content = match content {
        Some(Content::Text(s)) => json!(s),
        Some(Content::Blocks(inner)) => {
            let mut parts = Vec::new();
            for (k, b) in inner.iter().enumerate() {
                parts.push(content_part(b).ok_or_else(|| {
                    untranslatable(
                        &format!("{at}.content.{k}"),
                        "a tool result holds text, image, document or search_result blocks",
                    )
                })?);
            }
            text_content(parts, "\n")
        }
        None => json!(""),
    };
    let mut message = json!({
        "role": "tool",
        "tool_call_id": tool_use_id,
        "content": content,
    });
    if *is_error == Some(true) {
        message["is_error"] = Value::Bool(true);
    }
    if let Some(cc) = cache_control {
        message["cache_control"] = cc.clone();
    }
    Ok(message)
}

/// An assistant turn's blocks: text, thinking blocks (kept whole, signatures included, as
/// `thinking_blocks`), and `tool_use` blocks as tool calls.
fn assistant_message(blocks: &[Block], i: usize) -> Result<Value, ApiError> {
    let mut text = Vec::new();
    let mut thinking = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        match b {
            Block::Known(ContentBlock::ToolUse {
                id,
                name,
                input,
                cache_control,
                ..
            }) => {
                let mut call = json!({
                    "id": id,
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": input.as_ref().unwrap_or(&json!({})).to_string(),
                    },
                });
                if let Some(cc) = cache_control {
                    call["cache_control"] = cc.clone();
                }
                calls.push(call);
            }
            _ => match b.kind() {
                Some("text") => text.push(text_part(b)),
                Some("thinking" | "redacted_thinking") => thinking.push(b.to_value()),
                other => {
                    return Err(untranslatable(
                        &format!("messages.{i}.content.{j}"),
                        &format!(
                            "a `{}` block cannot be translated for an assistant turn",
                            other.unwrap_or("(untyped)")
                        ),
                    ));
                }
            },
        }
    }
    let content = match text_content(text, "") {
        Value::String(s) if s.is_empty() => Value::Null,
        content => content,
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !thinking.is_empty() {
        message["thinking_blocks"] = Value::Array(thinking);
    }
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    Ok(message)
}

// ---- OpenAI answer → Anthropic answer ------------------------------------------------------

/// Anthropic's usage for an OpenAI `usage` object, whatever provider answered: cache reads
/// and writes by TTL apart, `input_tokens` only the rest (clients add them up).
fn message_usage(usage: &Value) -> AnthropicUsage {
    AnthropicUsage::from_usage(&Usage::from_openai(usage).unwrap_or_default())
}

/// A message id from a completion id (`chatcmpl-x` → `msg_x`; `msg_…` kept).
fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) => format!("msg_{}", id.trim_start_matches("chatcmpl-")),
        None => "msg_sluice".to_owned(),
    }
}

/// A thinking block as it goes out: as it came, without the streaming `index`.
fn thinking_block(block: &Value) -> Option<Block> {
    let mut block = block.as_object()?.clone();
    block.remove("index");
    Some(Block::Other(Value::Object(block)))
}

/// A `message` of the answer so far: no content, no stop reason yet.
fn message(id: String, model: &str, usage: AnthropicUsage) -> Message {
    Message {
        id: Some(id),
        kind: Some("message".to_owned()),
        role: Some("assistant".to_owned()),
        model: Some(model.to_owned()),
        content: Some(Vec::new()),
        stop_reason: None,
        stop_sequence: None,
        usage: Some(usage),
    }
}

/// A `chat.completion` as a Messages API `message`.
pub fn to_message(completion: &Value, model: &str) -> Value {
    let choice = &completion["choices"][0];
    let openai = &choice["message"];
    let mut content: Vec<Block> = openai["thinking_blocks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(thinking_block)
        .collect();
    if let Some(text) = openai["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(ContentBlock::text(text).into());
    }
    for call in openai["tool_calls"].as_array().into_iter().flatten() {
        let arguments = call["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
        content.push(
            ContentBlock::ToolUse {
                id: call["id"].clone(),
                name: call["function"]["name"].clone(),
                input: Some(input),
                cache_control: None,
                extra: Map::new(),
            }
            .into(),
        );
    }
    let sequence = choice
        .get("stop_sequence")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let finish = choice["finish_reason"].as_str().unwrap_or("stop");
    let message = Message {
        content: Some(content),
        stop_reason: Some(anthropic::stop_reason(finish, sequence.is_some()).to_owned()),
        stop_sequence: sequence,
        ..message(
            message_id(completion["id"].as_str()),
            model,
            message_usage(&completion["usage"]),
        )
    };
    serde_json::to_value(message).unwrap_or(Value::Null)
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
    stop_sequence: Option<String>,
    usage: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Text,
    /// A tool call, by its OpenAI index.
    Tool(u64),
    /// A thinking block, by its index among the answer's thinking blocks.
    Thinking(u64),
}

/// One SSE frame: the event named by its type, its data the event as JSON.
fn frame(event: &StreamEvent) -> Bytes {
    let data = serde_json::to_value(event).unwrap_or(Value::Null);
    let name = data.get("type").and_then(Value::as_str).unwrap_or("error");
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
            stop_sequence: None,
            usage: json!({}),
        }
    }

    /// `message_start`, with the prompt's usage when the first chunk reports it (the
    /// Anthropic provider does, asked for continuous usage), zeros otherwise.
    fn start(&mut self, chunk: &Value, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let message = message(
            message_id(chunk["id"].as_str()),
            &self.model,
            message_usage(&chunk["usage"]),
        );
        out.push(frame(&StreamEvent::MessageStart { message }));
    }

    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            out.push(frame(&StreamEvent::ContentBlockStop { index }));
        }
    }

    /// Opens a block of this kind unless it is already open; returns its index.
    fn open(&mut self, kind: BlockKind, block: ContentBlock, out: &mut Vec<Bytes>) -> u64 {
        if let Some((index, open)) = self.open
            && open == kind
        {
            return index;
        }
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        out.push(frame(&StreamEvent::ContentBlockStart {
            index,
            content_block: Some(block.into()),
        }));
        index
    }

    fn delta(index: u64, delta: Delta) -> Bytes {
        frame(&StreamEvent::ContentBlockDelta { index, delta })
    }

    fn chunk(&mut self, chunk: &Value) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(chunk, &mut out);
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage.clone();
        }
        let choice = &chunk["choices"][0];
        let delta = &choice["delta"];
        for piece in delta["thinking_blocks"].as_array().into_iter().flatten() {
            let k = piece["index"].as_u64().unwrap_or(0);
            let start = if piece["type"] == "redacted_thinking" {
                ContentBlock::RedactedThinking {
                    data: piece["data"].clone(),
                    extra: Map::new(),
                }
            } else {
                ContentBlock::Thinking {
                    thinking: String::new(),
                    signature: Some(String::new()),
                    extra: Map::new(),
                }
            };
            let index = self.open(BlockKind::Thinking(k), start, &mut out);
            if let Some(thinking) = piece["thinking"].as_str().filter(|t| !t.is_empty()) {
                let thinking = thinking.to_owned();
                out.push(Self::delta(index, Delta::ThinkingDelta { thinking }));
            }
            if let Some(signature) = piece["signature"].as_str().filter(|t| !t.is_empty()) {
                let signature = signature.to_owned();
                out.push(Self::delta(index, Delta::SignatureDelta { signature }));
            }
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            let index = self.open(BlockKind::Text, ContentBlock::text(""), &mut out);
            let text = text.to_owned();
            out.push(Self::delta(index, Delta::TextDelta { text }));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let tool = call["index"].as_u64().unwrap_or(0);
            let block = ContentBlock::ToolUse {
                id: call["id"].clone(),
                name: call["function"]["name"].clone(),
                input: Some(json!({})),
                cache_control: None,
                extra: Map::new(),
            };
            let index = self.open(BlockKind::Tool(tool), block, &mut out);
            if let Some(partial) = call["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                let partial_json = partial.to_owned();
                out.push(Self::delta(index, Delta::InputJsonDelta { partial_json }));
            }
        }
        if let Some(sequence) = choice.get("stop_sequence").and_then(Value::as_str) {
            self.stop_sequence = Some(sequence.to_owned());
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.stop_reason = anthropic::stop_reason(reason, self.stop_sequence.is_some());
        }
        out
    }

    fn end(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.start(&Value::Null, &mut out);
        self.close(&mut out);
        // `MessageDeltaUsage`: cumulative counts, no TTL breakdown (`message_start` has it).
        let usage = AnthropicUsage {
            cache_creation: None,
            output_tokens_details: None,
            ..message_usage(&self.usage)
        };
        out.push(frame(&StreamEvent::MessageDelta {
            delta: MessageDeltaBody {
                stop_reason: Some(self.stop_reason.to_owned()),
                stop_sequence: self.stop_sequence.clone(),
            },
            usage: Some(usage),
        }));
        out.push(frame(&StreamEvent::MessageStop));
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
                vec![frame(&stream_broke_off())]
            }
            Some(Ok(event)) => {
                let frames = writer.chunk(&event.data);
                return Some((frames, Some((chunks, writer, span))));
            }
            None => writer.end(),
            Some(Err(e)) => {
                tracing::warn!(parent: &span, error = %e, "stream failed after its first byte");
                vec![frame(&stream_broke_off())]
            }
        };
        Some((frames, None))
    })
    .flat_map(|frames| futures_util::stream::iter(frames.into_iter().map(Ok)))
    .boxed()
}

/// Anthropic's `error` event for a stream the provider broke off.
fn stream_broke_off() -> StreamEvent {
    StreamEvent::Error {
        error: json!({"type": "api_error", "message": "The provider's stream broke off."}),
    }
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

    #[test]
    fn anthropic_features_travel_as_extensions_and_the_rest_is_refused() {
        let cc = json!({"type": "ephemeral", "ttl": "1h"});
        let request = json!({
            "model": "claude", "max_tokens": 3000, "top_k": 20, "cache_control": {"type": "ephemeral"},
            "output_config": {"effort": "medium"},
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "system": [{"type": "text", "text": "Rules.", "cache_control": cc}],
            "tools": [{"name": "look", "input_schema": {"type": "object"}, "cache_control": cc}],
            "messages": [
                {"role": "user", "content": [
                    {"type": "document", "title": "Q3", "context": "finance", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                    {"type": "text", "text": "Summarise.", "cache_control": cc}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Look first.", "signature": "EqQB"},
                    {"type": "redacted_thinking", "data": "EmwK"},
                    {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": true, "cache_control": cc, "content": [
                        {"type": "text", "text": "partial:"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}
            ]
        });
        let chat = to_chat_request(&request).unwrap();
        for field in ["top_k", "thinking", "output_config", "cache_control"] {
            assert_eq!(chat[field], request[field], "{field}");
        }
        assert_eq!(chat["tools"][0]["cache_control"], cc);
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(
            messages[0]["content"],
            json!([{"type": "text", "text": "Rules.", "cache_control": cc}])
        );
        let user = messages[1]["content"].as_array().unwrap();
        assert_eq!(
            user[0],
            json!({"type": "file", "context": "finance",
                   "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "Q3"}})
        );
        assert_eq!(
            user[1], request["messages"][0]["content"][1],
            "Anthropic's own, as it came"
        );
        assert_eq!(user[2]["cache_control"], cc);
        let assistant = &messages[2];
        assert_eq!(
            assistant["thinking_blocks"],
            json!([
                request["messages"][1]["content"][0],
                request["messages"][1]["content"][1]
            ])
        );
        assert_eq!(assistant["tool_calls"][0]["id"], "toolu_1");
        let tool = &messages[3];
        assert_eq!(tool["is_error"], true);
        assert_eq!(tool["cache_control"], cc);
        assert_eq!(
            tool["content"][1]["image_url"]["url"],
            "data:image/png;base64,AAAA"
        );

        // And back to Anthropic: what the client sent is what Anthropic gets.
        let out =
            serde_json::to_value(anthropic::to_messages_request(&chat, false).unwrap()).unwrap();
        for field in [
            "top_k",
            "thinking",
            "output_config",
            "cache_control",
            "system",
            "tools",
        ] {
            assert_eq!(out[field], request[field], "{field}");
        }
        let back = out["messages"].as_array().unwrap();
        assert_eq!(back[1]["content"], request["messages"][1]["content"]);
        assert_eq!(back[2]["content"], request["messages"][2]["content"]);
        let first = back[0]["content"].as_array().unwrap();
        assert_eq!(first[0], request["messages"][0]["content"][0]);
        assert_eq!(first[1], request["messages"][0]["content"][1]);
        assert_eq!(first[2], request["messages"][0]["content"][2]);

        let refused = |request: Value, field: &str| {
            let e = to_chat_request(&request).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST);
            assert!(e.message.starts_with(field), "{}", e.message);
        };
        let turn = |content: Value| json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": content}]});
        refused(
            turn(json!([{"type": "container_upload", "file_id": "f"}])),
            "messages.0.content.0",
        );
        refused(
            turn(
                json!([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "video"}]}]),
            ),
            "messages.0.content.0.content.0",
        );
        refused(
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "server_tool_use", "id": "s"}]}]}),
            "messages.0.content.0",
        );
        refused(
            json!({"model": "m", "max_tokens": 5, "system": [{"type": "image"}], "messages": []}),
            "system.0",
        );
        refused(
            json!({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools.0",
        );
    }

    #[test]
    fn usage_is_anthropics_shape_whatever_answered() {
        // OpenAI's shape with Sluice's cache writes: 1,350 prompt tokens of which 1,000 read
        // from the cache and 300 written (100 for 5 minutes, 200 for an hour).
        let completion = json!({"id": "chatcmpl-u", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 1350, "completion_tokens": 7, "total_tokens": 1357,
                "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_tokens": 100, "cache_write_1h_tokens": 200}}});
        let message = to_message(&completion, "claude");
        assert_eq!(
            message["usage"],
            json!({"input_tokens": 50, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 1000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                   "output_tokens": 7})
        );
        // No usage at all (nothing to report): zeros, every field present.
        let bare = to_message(
            &json!({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}]}),
            "m",
        );
        assert_eq!(bare["usage"]["input_tokens"], 0);
        assert_eq!(
            bare["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
            0
        );
    }

    async fn events_of(chunks: &[Value]) -> Vec<(String, Value)> {
        let mut sse = String::new();
        for c in chunks {
            sse.push_str(&format!("data: {c}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        let input: EventBytes =
            futures_util::stream::iter([Ok::<_, ProviderError>(Bytes::from(sse))]).boxed();
        to_message_events(input, "claude".into())
            .map(Result::unwrap)
            .collect::<Vec<Bytes>>()
            .await
            .iter()
            .map(|b| {
                let text = String::from_utf8_lossy(b).into_owned();
                let mut lines = text.lines();
                let name = lines
                    .next()
                    .unwrap()
                    .trim_start_matches("event: ")
                    .to_owned();
                let data = serde_json::from_str(lines.next().unwrap().trim_start_matches("data: "))
                    .unwrap();
                (name, data)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_stream_starts_with_the_prompts_usage_and_carries_thinking() {
        let usage = |completion: u64| {
            json!({"prompt_tokens": 1104, "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": 1000, "cache_write_1h_tokens": 100}})
        };
        let chunks = [
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": usage(1)}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"thinking_blocks": [{"index": 0, "type": "thinking"}]}}]}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"reasoning_content": "Hm.", "thinking_blocks": [{"index": 0, "type": "thinking", "thinking": "Hm."}]}}]}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"thinking_blocks": [{"index": 0, "type": "thinking", "signature": "EqQB"}]}}]}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"thinking_blocks": [{"index": 1, "type": "redacted_thinking", "data": "EmwK"}]}}]}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {"content": "Yes"}}]}),
            json!({"id": "msg_s", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_sequence": "##"}]}),
            json!({"id": "msg_s", "choices": [], "usage": usage(9)}),
        ];
        let events = events_of(&chunks).await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let start = &events[0].1["message"]["usage"];
        assert_eq!(
            *start,
            json!({"input_tokens": 4, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000,
                   "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 100},
                   "output_tokens": 1})
        );
        assert_eq!(
            events[1].1["content_block"],
            json!({"type": "thinking", "thinking": "", "signature": ""})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "Hm."})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "signature_delta", "signature": "EqQB"})
        );
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "redacted_thinking", "data": "EmwK"})
        );
        let delta = &events[10].1;
        assert_eq!(
            delta["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "##"})
        );
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 4, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 9})
        );
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

/// Property tests: the `/v1/messages` ingress in front of an Anthropic deployment gives the
/// client Anthropic's answer back, exactly.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{self, text};

    /// An Anthropic answer: thinking, text and tool calls, a stop reason, usage by component.
    fn answer() -> impl Strategy<Value = Value> {
        let tool = (
            "[a-zA-Z0-9_-]{1,24}",
            proptest::collection::btree_map("[a-z]{1,5}", any::<i32>(), 0..3),
        );
        let count = || 0..(1u64 << 40);
        (
            proptest::sample::select(vec!["end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal"]),
            proptest::option::of((text(), "[A-Za-z0-9+/]{4,16}")),
            proptest::option::of(text().prop_filter("Anthropic sends no empty text block", |t| !t.is_empty())),
            proptest::collection::vec(tool, 0..3),
            (count(), count(), count(), count(), count()),
        )
            .prop_map(|(stop, thinking, text, tools, (input, read, five, hour, output))| {
                let mut content = Vec::new();
                if let Some((thinking, signature)) = thinking {
                    content.push(json!({"type": "thinking", "thinking": thinking, "signature": signature}));
                }
                if let Some(text) = text {
                    content.push(json!({"type": "text", "text": text}));
                }
                for (i, (id, input)) in tools.into_iter().enumerate() {
                    content.push(json!({"type": "tool_use", "id": id, "name": format!("f{i}"), "input": input}));
                }
                json!({"id": "msg_rt", "type": "message", "role": "assistant", "model": "claude",
                    "content": content, "stop_reason": stop,
                    "stop_sequence": if stop == "stop_sequence" { json!("##") } else { Value::Null },
                    "usage": {"input_tokens": input, "cache_creation_input_tokens": five + hour,
                        "cache_read_input_tokens": read, "output_tokens": output,
                        "cache_creation": {"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour}}})
            })
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        /// Anthropic → OpenAI (inside Sluice) → Anthropic is the identity on what the client
        /// reads: content blocks (thinking with signatures, text, tool ids and inputs), stop
        /// reason and sequence, usage by component.
        #[test]
        fn fuzz_an_anthropic_answer_comes_back_as_it_was(message in answer()) {
            let (completion, _) = anthropic::from_message(&message, "claude", 0).unwrap();
            let back = to_message(&completion, "claude");
            for field in ["id", "content", "stop_reason", "stop_sequence", "usage"] {
                prop_assert_eq!(&back[field], &message[field], "{}", field);
            }
        }
    }
}
