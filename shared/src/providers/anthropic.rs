//! Anthropic's Messages API (`POST /v1/messages`), translated to and from OpenAI's chat format.
//!
//! Requests: system and developer messages become `system`; tool calls become `tool_use`
//! blocks and tool results `tool_result` blocks in a user turn; consecutive turns of one role
//! are merged (Anthropic requires alternation); `max_tokens` is required, so the gateway's
//! reserved ceiling (or 4096) is sent when the client set none. Answers: text blocks become
//! `content`, `tool_use` blocks become `tool_calls`, stop reasons and usage are mapped, and
//! the event stream (`message_start`, `content_block_*`, `message_delta`, …) becomes
//! `chat.completion.chunk`s. Anthropic has no embeddings API.

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::http::{self, error_message, stream_error};
use super::sse::Event;
use super::{Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, Usage};

/// The API version every request pins.
pub const API_VERSION: &str = "2023-06-01";

/// Output ceiling sent when neither the client nor the model config set one.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Anthropic API at a base URL such as `https://api.anthropic.com/v1`.
#[derive(Debug, Clone)]
pub struct Anthropic {
    base_url: String,
}

impl Anthropic {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
        }
    }
}

impl ProviderApi for Anthropic {
    async fn call(
        &self,
        client: &reqwest::Client,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        if request.endpoint == Endpoint::Embeddings {
            return Err(rejected(
                "Anthropic has no embeddings API; route this model's embeddings elsewhere",
            ));
        }
        let body = to_messages_request(request.body, request.stream)?;
        let post = client
            .post(format!("{}/messages", self.base_url))
            .header("x-api-key", request.api_key)
            .header("anthropic-version", API_VERSION)
            .json(&body);
        let model = request
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if request.stream {
            let (events, headroom) = http::send_for_events(post, request.timeout).await?;
            let mut state = StreamState::new(model);
            let chunks = events
                .map(move |e| state.translate(e))
                .flat_map(futures_util::stream::iter);
            return Ok(UpstreamResponse::Stream {
                chunks: http::boxed(chunks),
                headroom,
            });
        }
        let (bytes, headroom) = http::send_for_body(post, request.timeout).await?;
        let message: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
        let (completion, usage) = from_message(&message, &model)?;
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(completion.to_string()),
            usage,
            headroom,
        })
    }
}

/// A request the provider would refuse, refused before sending (HTTP 400, not retried).
fn rejected(message: &str) -> ProviderError {
    ProviderError::Status {
        status: 400,
        message: Some(message.to_owned()),
        retry_after: None,
    }
}

// ---- OpenAI request → Anthropic request ----------------------------------------------------

/// Builds the Messages API body from an OpenAI chat request.
pub fn to_messages_request(
    body: &Map<String, Value>,
    stream: bool,
) -> Result<Value, ProviderError> {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(rejected("Anthropic returns one choice; `n` must be 1"));
    }
    let mut system = Vec::new();
    let mut turns: Vec<(String, Vec<Value>)> = Vec::new();
    for message in body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(message.get("content")));
                continue;
            }
            "user" => ("user", content_blocks(message.get("content"))),
            "assistant" => ("assistant", assistant_blocks(message)?),
            "tool" => ("user", vec![tool_result_block(message)]),
            other => return Err(rejected(&format!("unsupported message role `{other}`"))),
        };
        match turns.last_mut() {
            // Anthropic wants user and assistant turns to alternate: merge neighbours.
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => turns.push((role.to_owned(), blocks)),
        }
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    let max_tokens = body
        .get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    let mut out = Map::new();
    out.insert(
        "model".into(),
        body.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert("max_tokens".into(), json!(max_tokens));
    out.insert("messages".into(), Value::Array(messages));
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "top_p")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(items)) if !items.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(items.clone()));
        }
        _ => {}
    }
    if let Some(user) = body.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools: Vec<Value> = body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let f = t.get("function")?;
            let mut tool = json!({
                "name": f.get("name")?,
                "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object"})),
            });
            if let Some(d) = f.get("description") {
                tool["description"] = d.clone();
            }
            Some(tool)
        })
        .collect();
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = tool_choice(body) {
        out.insert("tool_choice".into(), choice);
    }
    if stream {
        out.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(out))
}

/// OpenAI's `tool_choice` and `parallel_tool_calls` as Anthropic's `tool_choice`.
fn tool_choice(body: &Map<String, Value>) -> Option<Value> {
    let mut choice = match body.get("tool_choice") {
        Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
        Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
        Some(Value::Object(o)) => {
            let name = o.get("function")?.get("name")?;
            json!({"type": "tool", "name": name})
        }
        _ if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) => {
            json!({"type": "auto"})
        }
        _ => return None,
    };
    if body.get("parallel_tool_calls") == Some(&Value::Bool(false)) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Some(choice)
}

/// Text blocks of a message's content (string or array of text parts).
fn text_blocks(content: Option<&Value>) -> Vec<Value> {
    match content {
        Some(Value::String(s)) if !s.is_empty() => vec![json!({"type": "text", "text": s})],
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .map(|t| json!({"type": "text", "text": t}))
            .collect(),
        _ => Vec::new(),
    }
}

/// A user message's content as blocks: text, and images (data URLs inline, others by URL).
fn content_blocks(content: Option<&Value>) -> Vec<Value> {
    let Some(Value::Array(parts)) = content else {
        return text_blocks(content);
    };
    parts
        .iter()
        .filter_map(|part| match part.get("type").and_then(Value::as_str) {
            Some("text") => Some(json!({"type": "text", "text": part.get("text")?})),
            Some("image_url") => {
                let url = part.get("image_url")?.get("url")?.as_str()?;
                Some(json!({"type": "image", "source": image_source(url)}))
            }
            _ => None,
        })
        .collect()
}

/// `data:image/png;base64,…` → a base64 source; anything else → a URL source.
fn image_source(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "base64", "media_type": media_type, "data": data});
    }
    json!({"type": "url", "url": url})
}

/// An assistant message as blocks: its text, then one `tool_use` per tool call.
fn assistant_blocks(message: &Value) -> Result<Vec<Value>, ProviderError> {
    let mut blocks = text_blocks(message.get("content"));
    for call in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let function = call.get("function").unwrap_or(&Value::Null);
        let arguments = function
            .get("arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}");
        let input: Value = if arguments.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(arguments)
                .map_err(|_| rejected("a tool call's `arguments` is not JSON"))?
        };
        blocks.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": function.get("name").cloned().unwrap_or(Value::Null),
            "input": input,
        }));
    }
    Ok(blocks)
}

/// A `tool` message as a `tool_result` block.
fn tool_result_block(message: &Value) -> Value {
    let content = match message.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        other => Value::Array(text_blocks(other)),
    };
    json!({
        "type": "tool_result",
        "tool_use_id": message.get("tool_call_id").cloned().unwrap_or(Value::Null),
        "content": content,
    })
}

// ---- Anthropic answer → OpenAI answer ------------------------------------------------------

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

/// Input tokens including those written to or read from Anthropic's prompt cache.
fn input_tokens(usage: &Value) -> u64 {
    [
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
    ]
    .iter()
    .filter_map(|f| usage.get(*f).and_then(Value::as_u64))
    // Saturating: a broken upstream may send `u64::MAX`.
    .fold(0, u64::saturating_add)
}

fn openai_usage(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt.saturating_add(completion),
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// A Messages API answer as a `chat.completion`, with its usage.
pub fn from_message(message: &Value, model: &str) -> Result<(Value, Option<Usage>), ProviderError> {
    if message.get("type").and_then(Value::as_str) == Some("error") {
        return Err(ProviderError::Malformed(
            error_message(message).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    let blocks = message
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Malformed("no `content` array".into()))?;
    let mut text: Option<String> = None;
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text
                .get_or_insert_with(String::new)
                .push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            _ => {}
        }
    }
    let mut out = json!({
        "id": message.get("id").cloned().unwrap_or_else(|| json!("msg")),
        "object": "chat.completion",
        "created": super::now_ms() / 1000,
        "model": message.get("model").and_then(Value::as_str).unwrap_or(model),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(
                message.get("stop_reason").and_then(Value::as_str).unwrap_or("end_turn"),
            ),
        }],
    });
    if !tool_calls.is_empty() {
        out["choices"][0]["message"]["tool_calls"] = Value::Array(tool_calls);
    }
    let usage = message.get("usage").map(|u| {
        Usage::plain(
            input_tokens(u),
            u.get("output_tokens").and_then(Value::as_u64).unwrap_or(0),
        )
    });
    if let (Some(usage), Some(raw)) = (usage, message.get("usage")) {
        let cached = raw
            .get("cache_read_input_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        out["usage"] = openai_usage(usage.prompt_tokens, usage.completion_tokens, cached);
    }
    Ok((out, usage))
}

/// What a stream translation remembers between events.
struct StreamState {
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    cached_tokens: u64,
    /// Anthropic content-block index → OpenAI tool-call index, for `tool_use` blocks.
    tool_index: std::collections::HashMap<u64, u64>,
}

impl StreamState {
    fn new(model: String) -> Self {
        Self {
            id: String::new(),
            model,
            created: super::now_ms() / 1000,
            input_tokens: 0,
            cached_tokens: 0,
            tool_index: Default::default(),
        }
    }

    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "choices": choices,
        })
    }

    fn delta(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        self.chunk(
            json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]),
        )
    }

    /// One Anthropic event as zero or more OpenAI chunks.
    fn translate(
        &mut self,
        event: Result<Event, ProviderError>,
    ) -> Vec<Result<Value, ProviderError>> {
        let event = match event {
            Ok(e) => e,
            Err(e) => return vec![Err(e)],
        };
        let data = &event.data;
        if let Some(error) = stream_error(data) {
            return vec![Err(error)];
        }
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or(&event.name);
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                if let Some(usage) = message.get("usage") {
                    self.input_tokens = input_tokens(usage);
                    self.cached_tokens = usage
                        .get("cache_read_input_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                }
                vec![Ok(
                    self.delta(json!({"role": "assistant", "content": ""}), None)
                )]
            }
            "content_block_start" => {
                let block = data.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    return Vec::new();
                }
                let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                let call = self.tool_index.len() as u64;
                self.tool_index.insert(index, call);
                vec![Ok(self.delta(
                    json!({"tool_calls": [{
                        "index": call, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""},
                    }]}),
                    None,
                ))]
            }
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or(json!(""));
                        vec![Ok(self.delta(json!({"content": text}), None))]
                    }
                    Some("input_json_delta") => {
                        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
                        let Some(call) = self.tool_index.get(&index) else {
                            return Vec::new();
                        };
                        let partial = delta.get("partial_json").cloned().unwrap_or(json!(""));
                        vec![Ok(self.delta(
                            json!({"tool_calls": [{"index": call, "function": {"arguments": partial}}]}),
                            None,
                        ))]
                    }
                    _ => Vec::new(),
                }
            }
            "message_delta" => {
                let stop = data
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                let output = data
                    .get("usage")
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let mut usage_chunk = self.chunk(json!([]));
                usage_chunk["usage"] = openai_usage(self.input_tokens, output, self.cached_tokens);
                vec![
                    Ok(self.delta(json!({}), Some(finish_reason(stop)))),
                    Ok(usage_chunk),
                ]
            }
            // ping, content_block_stop, message_stop and event types added later.
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn request_translation_covers_system_tools_and_results() {
        let body = obj(json!({
            "model": "claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": "24C"},
                {"role": "user", "content": "Which is warmer?"}
            ],
            "tools": [{"type": "function", "function": {"name": "weather", "description": "Looks it up",
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.2,
            "max_tokens": 300,
            "user": "u-1"
        }));
        let out = to_messages_request(&body, true).unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be terse."}])
        );
        assert_eq!(out["max_tokens"], 300);
        assert_eq!(out["stream"], true);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"]["user_id"], "u-1");
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            out["tools"][0]["input_schema"]["properties"]["city"]["type"],
            "string"
        );
        let messages = out["messages"].as_array().unwrap();
        // user, assistant (two tool_use), user (two tool_result + the question merged).
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(messages[1]["content"][1]["input"], json!({"city": "Rome"}));
        let last = messages[2]["content"].as_array().unwrap();
        assert_eq!(last[0]["type"], "tool_result");
        assert_eq!(last[1]["tool_use_id"], "call_2");
        assert_eq!(last[2], json!({"type": "text", "text": "Which is warmer?"}));
    }

    #[test]
    fn max_tokens_defaults_and_bad_arguments_are_refused() {
        let out = to_messages_request(
            &obj(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
            false,
        )
        .unwrap();
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
        assert!(out.get("stream").is_none());
        let bad = obj(
            json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}),
        );
        assert!(matches!(
            to_messages_request(&bad, false),
            Err(ProviderError::Status { status: 400, .. })
        ));
    }

    #[test]
    fn a_tool_use_answer_becomes_tool_calls() {
        // From the Messages API reference.
        let message = json!({
            "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5-20250929",
            "content": [
                {"type": "text", "text": "I'll check."},
                {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather",
                 "input": {"location": "San Francisco, CA"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 2095, "output_tokens": 503, "cache_read_input_tokens": 5}
        });
        let (completion, usage) = from_message(&message, "m").unwrap();
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "I'll check.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["location"], "San Francisco, CA");
        assert_eq!(usage, Some(Usage::plain(2100, 503)));
        assert_eq!(
            completion["usage"]["prompt_tokens_details"]["cached_tokens"],
            5
        );
        assert!(from_message(&json!({"type": "error", "error": {"message": "x"}}), "m").is_err());
        assert!(from_message(&json!({"id": "x"}), "m").is_err());
    }

    #[test]
    fn stream_events_become_chunks() {
        let events = [
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-x", "stop_reason": null, "usage": {"input_tokens": 25, "output_tokens": 1}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
            ),
            (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "1}"}}),
            ),
            (
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 15}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ];
        let mut state = StreamState::new("m".into());
        let mut assembler = crate::gateway::stream::Assembler::default();
        for (name, data) in events {
            for chunk in state.translate(Ok(Event {
                name: name.into(),
                data,
            })) {
                let chunk = chunk.unwrap();
                assert_eq!(chunk["object"], "chat.completion.chunk");
                assembler.add(&chunk);
            }
        }
        let done = assembler.completion();
        assert_eq!(done["id"], "msg_1");
        assert_eq!(done["choices"][0]["message"]["content"], "Hello");
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        let call = &done["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["arguments"], "{\"a\":1}");
        assert_eq!(assembler.usage(), Some(Usage::plain(25, 15)));
        let overloaded = json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}});
        let out = state.translate(Ok(Event {
            name: "error".into(),
            data: overloaded,
        }));
        assert!(matches!(out.as_slice(), [Err(e)] if e.is_retryable()));
    }
}

/// Property tests: any answer, event or request is translated or refused without panicking,
/// and a stream reads the same however the network cuts it.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{
        self, assemble, block_on, cuts, event_stream, json_value, mutated, split, sse_text, text,
    };

    fn valid_message() -> Value {
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "Hi"}, {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}],
            "stop_reason": "tool_use", "usage": {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 2}})
    }

    fn valid_event() -> impl Strategy<Value = Value> {
        proptest::sample::select(vec![
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 25, "cache_creation_input_tokens": 3}}}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t", "name": "f"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\""}}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ])
        .prop_flat_map(mutated)
    }

    fn valid_request() -> Value {
        json!({"model": "claude", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "f"}}, "stop": ["x"], "max_tokens": 10, "user": "u"})
    }

    /// An Anthropic stream: start, text deltas, a tool_use block fed in JSON pieces, the
    /// stop with usage. Returns the SSE bytes, the text and the arguments.
    fn valid_stream() -> impl Strategy<Value = (Vec<u8>, String, String)> {
        (
            proptest::collection::vec(text(), 0..6),
            proptest::collection::vec(text(), 0..4),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(pieces, args, input, cached, output)| {
                let mut events: Vec<(Option<&str>, Value)> = vec![(
                    Some("message_start"),
                    json!({"type": "message_start", "message": {"id": "msg_1", "model": "claude", "content": [],
                        "usage": {"input_tokens": input, "cache_read_input_tokens": cached, "output_tokens": 1}}}),
                )];
                events.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
                events.push((Some("ping"), json!({"type": "ping"})));
                for p in &pieces {
                    events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}})));
                }
                events.push((Some("content_block_stop"), json!({"type": "content_block_stop", "index": 0})));
                if !args.is_empty() {
                    events.push((Some("content_block_start"), json!({"type": "content_block_start", "index": 1,
                        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}})));
                    for a in &args {
                        events.push((Some("content_block_delta"), json!({"type": "content_block_delta", "index": 1,
                            "delta": {"type": "input_json_delta", "partial_json": a}})));
                    }
                }
                events.push((Some("message_delta"), json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output}})));
                events.push((Some("message_stop"), json!({"type": "message_stop"})));
                (sse_text(&events), pieces.concat(), args.concat())
            })
    }

    fn read(chunks: Vec<Bytes>) -> Result<Value, Vec<String>> {
        let mut state = StreamState::new("m".into());
        let chunks: Vec<_> = block_on(event_stream(chunks).collect::<Vec<_>>())
            .into_iter()
            .flat_map(|e| state.translate(e))
            .collect();
        assemble(chunks)
    }

    /// Token counts near `u64::MAX` (a broken or hostile upstream) overflowed the sum of the
    /// input-token fields and `prompt + completion`: a panic in a debug build, a wrapped
    /// (wrong) total in a release build. Found by `fuzz_a_stream_reads_the_same_however_it_is_cut`
    /// (`message_start` with `input_tokens` + `cache_read_input_tokens` past `u64::MAX`).
    #[test]
    fn regression_huge_token_counts_saturate() {
        let message = json!({"content": [], "usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 5, "output_tokens": 7}});
        let (completion, usage) = from_message(&message, "m").unwrap();
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(u64::MAX));
        assert_eq!(completion["usage"]["total_tokens"], u64::MAX);
        let mut state = StreamState::new("m".into());
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": u64::MAX - 1, "cache_read_input_tokens": 2}}});
        let _ = state.translate(Ok(Event {
            name: String::new(),
            data: start,
        }));
        let stop = json!({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}});
        let chunks = state.translate(Ok(Event {
            name: String::new(),
            data: stop,
        }));
        let usage = chunks.last().unwrap().as_ref().unwrap()["usage"].clone();
        assert_eq!(usage["total_tokens"], u64::MAX);
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_message(message in prop_oneof![json_value(), mutated(valid_message())]) {
            match from_message(&message, "m") {
                Ok((completion, usage)) => {
                    prop_assert_eq!(&completion["object"], "chat.completion");
                    prop_assert!(completion["choices"][0]["message"].is_object());
                    prop_assert_eq!(usage.is_some(), completion.get("usage").is_some());
                }
                Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
            }
        }

        #[test]
        fn fuzz_any_events(events in proptest::collection::vec((fuzzing::word(), prop_oneof![json_value(), valid_event()]), 0..10)) {
            let mut state = StreamState::new("m".into());
            for (name, data) in events {
                for chunk in state.translate(Ok(Event { name, data })).into_iter().flatten() {
                    prop_assert_eq!(&chunk["object"], "chat.completion.chunk");
                }
            }
        }

        #[test]
        fn fuzz_any_request(body in prop_oneof![json_value(), mutated(valid_request())], stream in any::<bool>()) {
            let map = body.as_object().cloned().unwrap_or_default();
            match to_messages_request(&map, stream) {
                Ok(out) => prop_assert!(out["messages"].is_array()),
                Err(e) => prop_assert!(matches!(e, ProviderError::Status { status: 400, .. }), "{:?}", e),
            }
        }

        #[test]
        fn fuzz_a_stream_reads_the_same_however_it_is_cut((bytes, text, args) in valid_stream(), at in cuts(16)) {
            let whole = read(vec![Bytes::from(bytes.clone())]);
            let done = whole.clone().unwrap();
            let message = &done["choices"][0]["message"];
            prop_assert_eq!(message["content"].as_str(), Some(text.as_str()));
            if !args.is_empty() {
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
