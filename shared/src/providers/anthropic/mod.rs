//! Anthropic's Messages API (`POST /v1/messages`), translated to and from OpenAI's chat format.
//!
//! Requests: system and developer messages become `system`; tool calls become `tool_use`
//! blocks and tool results `tool_result` blocks in a user turn; consecutive turns of one role
//! are merged; `max_tokens` is required, so the gateway's reserved ceiling (or 4096) is sent
//! when the client set none. Content parts become blocks: text, images, PDF and plain-text
//! `file`s (as `document`s), and the Anthropic blocks the `/v1/messages` ingress carries
//! through (see [`super::extensions`]); `cache_control` stays on whatever carries it.
//! What Anthropic cannot take is refused with a 400 naming the field, never dropped: audio,
//! `file_id`s, `temperature` above 1, both samplers at once.
//!
//! Answers: text blocks become `content`, `tool_use` blocks `tool_calls`, thinking blocks
//! `reasoning_content` and `thinking_blocks` (signatures kept, so they can be sent back),
//! stop reasons are mapped (a matched stop sequence is kept as the choice's
//! `stop_sequence`), and usage is read by component: Anthropic's `input_tokens` excludes
//! cache reads and writes, OpenAI's `prompt_tokens` includes them. The event stream
//! (`message_start`, `content_block_*`, `message_delta`, …) becomes `chat.completion.chunk`s.
//! Anthropic has no embeddings API.
//!
//! Layout: this file is the client (URL, headers, the call); `wire` holds the Messages API's
//! types (shared with the `/v1/messages` ingress), `request` translates OpenAI requests,
//! `response` answers and `stream` stream events.

mod request;
mod response;
mod stream;
pub mod wire;

pub use request::{to_messages_request, valid_tool_id};
pub use response::from_message;
use stream::StreamState;
pub use wire::{
    AnthropicUsage, CacheCreation, MessagesRequest, OutputTokensDetails, Turn, finish_reason,
    stop_reason,
};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::HttpClient;
use super::http::{self, PostUrl};
use super::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, headroom_from,
};

/// The API version every request pins.
pub const API_VERSION: &str = "2023-06-01";
/// The header Anthropic reads the key from.
pub(super) const API_KEY: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-api-key");
/// The header that names [`API_VERSION`].
pub(super) const VERSION_HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("anthropic-version");

/// Output ceiling sent when neither the client nor the model config set one.
const DEFAULT_MAX_TOKENS: u64 = 4096;

/// Thinking budgets for OpenAI's `reasoning_effort` (LiteLLM's defaults for the same
/// translation; Anthropic's smallest budget is 1,024 tokens, so `minimal` is `low`).
/// `none` asks for no thinking.
pub const EFFORT_BUDGETS: &[(&str, u64)] = &[
    ("minimal", 1024),
    ("low", 1024),
    ("medium", 2048),
    ("high", 4096),
    ("xhigh", 8192),
];

/// Content-block types the `/v1/messages` ingress passes through untouched as content parts
/// of their own type (no OpenAI part means the same): they are sent to Anthropic as they
/// came.
pub const NATIVE_PARTS: &[&str] = &["document", "image", "search_result"];

/// The Anthropic API at a base URL such as `https://api.anthropic.com/v1`.
#[derive(Debug, Clone)]
pub struct Anthropic {
    base_url: String,
    messages: PostUrl,
}

impl Anthropic {
    /// A provider at `base_url` (with or without a trailing slash).
    pub fn new(base_url: &str) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        Self {
            messages: PostUrl::new(format!("{base_url}/messages")),
            base_url,
        }
    }

    /// The base URL, without a trailing slash.
    pub(super) fn base_url(&self) -> &str {
        &self.base_url
    }
}

impl ProviderApi for Anthropic {
    async fn call(
        &self,
        client: &HttpClient,
        request: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, ProviderError> {
        if request.endpoint == Endpoint::Embeddings {
            return Err(rejected(
                "Anthropic has no embeddings API; route this model's embeddings elsewhere",
            ));
        }
        let body = to_messages_request(request.body, request.stream)?;
        let post = self
            .messages
            .post(client)
            .header(API_KEY, request.api_key)
            .header(VERSION_HEADER, API_VERSION)
            .json(&body);
        let model = request
            .body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if request.stream {
            let (events, headers) = http::send_for_events(post, request.timeout).await?;
            let created_s = request.now_ms / 1000;
            let mut state = StreamState::new(model, continuous_usage(request.body), created_s);
            let chunks = events
                .map(move |e| state.translate(e))
                .flat_map(futures_util::stream::iter);
            return Ok(UpstreamResponse::Stream {
                chunks: http::boxed(chunks),
                headroom: headroom_from(&headers, request.now_ms),
            });
        }
        let (bytes, headers) = http::send_for_body(post, request.timeout).await?;
        let message: Value = serde_json::from_slice(&bytes)
            .map_err(|_| ProviderError::Malformed("body is not JSON".into()))?;
        let (completion, usage) = from_message(&message, &model, request.now_ms / 1000)?;
        Ok(UpstreamResponse::Complete {
            body: Bytes::from(completion.to_string()),
            usage,
            headroom: headroom_from(&headers, request.now_ms),
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

/// Whether the client asked for usage on more than the last chunk (vLLM's
/// `stream_options.continuous_usage_stats`): then the prompt's usage, known from
/// `message_start`, is also sent on the first chunk. The `/v1/messages` ingress asks, for
/// its own `message_start`.
fn continuous_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("continuous_usage_stats"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

// What the tests below reach through `super::*`.
#[cfg(test)]
use super::{Usage, sse::Event};
#[cfg(test)]
use serde_json::json;

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// The Messages request for an OpenAI body, as JSON.
    fn request(body: &Map<String, Value>, stream: bool) -> Value {
        serde_json::to_value(to_messages_request(body, stream).unwrap()).unwrap()
    }

    /// The 400 message for an OpenAI body Anthropic cannot take.
    fn refusal(body: Value) -> String {
        match to_messages_request(&obj(body), false) {
            Err(ProviderError::Status {
                status: 400,
                message: Some(m),
                ..
            }) => m,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    /// Feeds named events through a stream translation.
    fn translated(state: &mut StreamState, events: Vec<(&str, Value)>) -> Vec<Value> {
        events
            .into_iter()
            .flat_map(|(name, data)| {
                state.translate(Ok(Event {
                    name: name.into(),
                    data,
                }))
            })
            .map(Result::unwrap)
            .collect()
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
        let out = request(&body, true);
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
        let out = request(
            &obj(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})),
            false,
        );
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
        let (completion, usage) = from_message(&message, "m", 0).unwrap();
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "I'll check.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["location"], "San Francisco, CA");
        // Anthropic's `input_tokens` leaves the 5 cache reads out; OpenAI's total has them.
        assert_eq!(
            usage,
            Some(Usage {
                cached_tokens: 5,
                ..Usage::plain(2100, 503)
            })
        );
        assert_eq!(
            completion["usage"]["prompt_tokens_details"]["cached_tokens"],
            5
        );
        assert!(
            from_message(&json!({"type": "error", "error": {"message": "x"}}), "m", 0).is_err()
        );
        assert!(from_message(&json!({"id": "x"}), "m", 0).is_err());
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
        let mut state = StreamState::new("m".into(), false, 0);
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

    #[test]
    fn temperature_above_one_and_two_samplers_are_refused_defaults_left_out() {
        let ask = |extra: Value| {
            let mut body = json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            body
        };
        // OpenAI allows 0 to 2; Anthropic 0 to 1. Clamping would change the meaning.
        assert!(refusal(ask(json!({"temperature": 1.5}))).contains("`temperature`"));
        assert!(refusal(ask(json!({"temperature": "hot"}))).contains("`temperature`"));
        // Claude 4.5 and later refuse both samplers; Sluice says so before the call.
        let both = refusal(ask(json!({"temperature": 0.3, "top_p": 0.9})));
        assert!(both.contains("`temperature` and `top_p`"), "{both}");
        // A sampler at Anthropic's default means the same left out.
        let out = request(&obj(ask(json!({"temperature": 0.3, "top_p": 1}))), false);
        assert_eq!(out["temperature"], 0.3);
        assert!(out.get("top_p").is_none());
        let out = request(&obj(ask(json!({"temperature": 1.0, "top_p": 0.5}))), false);
        assert!(out.get("temperature").is_none());
        assert_eq!(out["top_p"], 0.5);
        let out = request(&obj(ask(json!({"temperature": 0, "top_k": 5}))), false);
        assert_eq!(
            (out["temperature"].clone(), out["top_k"].clone()),
            (json!(0), json!(5))
        );
    }

    #[test]
    fn cache_control_reaches_anthropic_wherever_it_was() {
        let cc = json!({"type": "ephemeral"});
        let hour = json!({"type": "ephemeral", "ttl": "1h"});
        let body = obj(json!({"model": "m", "cache_control": cc,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "cache_control": hour}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Long rules.", "cache_control": hour}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Read this.", "cache_control": cc},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}, "cache_control": cc}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}, "cache_control": cc}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done", "cache_control": cc},
            {"role": "user", "content": "Next?", "cache_control": cc}
        ]}));
        let out = request(&body, false);
        assert_eq!(out["cache_control"], cc);
        assert_eq!(out["tools"][0]["cache_control"], hour);
        assert_eq!(out["system"][0]["cache_control"], hour);
        let turns = out["messages"].as_array().unwrap();
        assert_eq!(turns[0]["content"][0]["cache_control"], cc);
        assert_eq!(turns[0]["content"][1]["type"], "image");
        assert_eq!(turns[0]["content"][1]["cache_control"], cc);
        assert_eq!(turns[1]["content"][0]["cache_control"], cc);
        // A message-level `cache_control` marks the message's last block.
        assert_eq!(turns[2]["content"][0]["type"], "tool_result");
        assert_eq!(turns[2]["content"][0]["cache_control"], cc);
        assert_eq!(
            turns[2]["content"][1],
            json!({"type": "text", "text": "Next?", "cache_control": cc})
        );
    }

    #[test]
    fn files_become_documents_and_what_anthropic_cannot_read_is_refused() {
        let user =
            |part: Value| json!({"model": "m", "messages": [{"role": "user", "content": [part]}]});
        let pdf = user(
            json!({"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0=", "filename": "a.pdf"}}),
        );
        let out = request(&obj(pdf), false);
        assert_eq!(
            out["messages"][0]["content"][0],
            json!({"type": "document", "title": "a.pdf",
                   "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}})
        );
        let text =
            user(json!({"type": "file", "file": {"file_data": "data:text/plain;base64,aGVsbG8="}}));
        assert_eq!(
            request(&obj(text), false)["messages"][0]["content"][0]["source"],
            json!({"type": "text", "media_type": "text/plain", "data": "hello"})
        );
        let refused = [
            (
                user(json!({"type": "file", "file": {"file_id": "file-abc"}})),
                "file_id",
            ),
            (
                user(json!({"type": "file", "file": {"file_data": "data:image/heic;base64,AA"}})),
                "image/heic",
            ),
            (
                user(json!({"type": "file", "file": {"file_data": "JVBERi0="}})),
                "data URL",
            ),
            (
                user(
                    json!({"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}),
                ),
                "audio",
            ),
            (
                user(json!({"type": "video_url", "video_url": {"url": "x"}})),
                "video_url",
            ),
        ];
        for (body, why) in refused {
            let m = refusal(body);
            assert!(m.starts_with("messages[0].content[0]: "), "{m}");
            assert!(m.contains(why), "{m}");
        }
        // Anthropic's own blocks from the `/v1/messages` ingress go through untouched.
        let doc = json!({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}, "citations": {"enabled": true}});
        assert_eq!(
            request(&obj(user(doc.clone())), false)["messages"][0]["content"][0],
            doc
        );
        // Only function tools exist on Anthropic's side of this translation.
        let m = refusal(
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "custom", "custom": {"name": "g"}}]}),
        );
        assert!(m.starts_with("tools[0]"), "{m}");
    }

    #[test]
    fn tool_results_keep_images_documents_and_is_error() {
        let body = obj(json!({"model": "m", "messages": [
            {"role": "user", "content": "look"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "shot", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "c1", "is_error": true, "content": [
                {"type": "text", "text": "timed out; last frame:"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}));
        let out = request(&body, false);
        assert_eq!(out["messages"][1]["content"][0]["input"], json!({}));
        let result = &out["messages"][2]["content"][0];
        assert_eq!(result["is_error"], true);
        assert_eq!(result["content"][0]["text"], "timed out; last frame:");
        assert_eq!(result["content"][1]["source"]["media_type"], "image/png");
    }

    #[test]
    fn thinking_passes_through_and_reasoning_effort_is_a_budget() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "think"}]});
        let with = |extra: Value| {
            let mut b = base();
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            obj(b)
        };
        let thinking = json!({"type": "enabled", "budget_tokens": 2000});
        let out = request(
            &with(json!({"thinking": thinking, "max_tokens": 3000})),
            false,
        );
        assert_eq!(out["thinking"], thinking);
        assert_eq!(out["max_tokens"], 3000);
        // `reasoning_effort`: a budget, and room for the answer when no ceiling was set.
        let out = request(&with(json!({"reasoning_effort": "high"})), false);
        assert_eq!(
            out["thinking"],
            json!({"type": "enabled", "budget_tokens": 4096})
        );
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS + 4096);
        let out = request(
            &with(json!({"reasoning_effort": "low", "max_tokens": 2000})),
            false,
        );
        assert_eq!(out["thinking"]["budget_tokens"], 1024);
        assert_eq!(out["max_tokens"], 2000);
        assert!(
            request(&with(json!({"reasoning_effort": "none"})), false)
                .get("thinking")
                .is_none()
        );
        for (extra, why) in [
            (
                json!({"reasoning_effort": "medium", "max_tokens": 2048}),
                "above 2048",
            ),
            (
                json!({"reasoning_effort": "huge"}),
                "no Anthropic thinking budget",
            ),
            (
                json!({"reasoning_effort": "low", "thinking": thinking}),
                "both",
            ),
        ] {
            let mut body = base();
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            let m = refusal(body);
            assert!(m.contains("`reasoning_effort`") && m.contains(why), "{m}");
        }
    }

    #[test]
    fn thinking_blocks_go_back_first_and_unmodified() {
        let body = obj(json!({"model": "m", "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null,
             "reasoning_content": "I should look.",
             "thinking_blocks": [
                {"index": 0, "type": "thinking", "thinking": "I should look.", "signature": "sig1"},
                {"index": 1, "type": "redacted_thinking", "data": "opaque"}],
             "tool_calls": [{"id": "toolu_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "-3C"}]}));
        let out = request(&body, false);
        assert_eq!(
            out["messages"][1]["content"],
            json!([
                {"type": "thinking", "thinking": "I should look.", "signature": "sig1"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "Oslo"}}
            ])
        );
        let m = refusal(
            json!({"model": "m", "messages": [{"role": "assistant", "content": "x", "thinking_blocks": ["no"]}]}),
        );
        assert!(m.starts_with("messages[0].thinking_blocks[0]"), "{m}");
    }

    #[test]
    fn thinking_answers_keep_blocks_signatures_and_stop_sequences() {
        let message = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [
                {"type": "thinking", "thinking": "Hmm.", "signature": "EqQB"},
                {"type": "redacted_thinking", "data": "EmwK"},
                {"type": "text", "text": "Done"}],
            "stop_reason": "stop_sequence", "stop_sequence": "END",
            "usage": {"input_tokens": 3, "output_tokens": 40, "output_tokens_details": {"thinking_tokens": 30}}});
        let (completion, usage) = from_message(&message, "m", 0).unwrap();
        let choice = &completion["choices"][0];
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["stop_sequence"], "END");
        assert_eq!(choice["message"]["content"], "Done");
        assert_eq!(choice["message"]["reasoning_content"], "Hmm.");
        assert_eq!(
            choice["message"]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "Hmm.", "signature": "EqQB"},
                   {"type": "redacted_thinking", "data": "EmwK"}])
        );
        assert_eq!(usage.unwrap().reasoning_tokens, 30);
    }

    #[test]
    fn cache_reads_and_writes_are_usage_components() {
        // Anthropic's prompt caching usage: `input_tokens` is only what came after the last
        // breakpoint; reads and writes (by TTL) are on top.
        let message = json!({"content": [], "usage": {"input_tokens": 50, "output_tokens": 7,
            "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200}}});
        let (completion, usage) = from_message(&message, "m", 0).unwrap();
        let usage = usage.unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 1350,
                completion_tokens: 7,
                cached_tokens: 1000,
                cache_write_tokens: 100,
                cache_write_1h_tokens: 200,
                ..Usage::default()
            }
        );
        assert_eq!(usage.uncached_input(), 50);
        // The gateway reads the answer's OpenAI usage: it must say the same.
        assert_eq!(
            crate::providers::usage_from_openai(&completion),
            Some(usage)
        );
        // Without the TTL breakdown, writes are 5-minute ones (the default TTL).
        let older =
            json!({"input_tokens": 5, "cache_creation_input_tokens": 20, "output_tokens": 1});
        let usage = AnthropicUsage::read(&older).unwrap().to_usage();
        assert_eq!((usage.prompt_tokens, usage.cache_write_tokens), (25, 20));
        // And back, every field present, as `/v1/messages` answers.
        assert_eq!(
            serde_json::to_value(AnthropicUsage::from_usage(&usage)).unwrap(),
            json!({"input_tokens": 5, "cache_creation_input_tokens": 20, "cache_read_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 0},
                   "output_tokens": 1})
        );
    }

    /// A streamed tool call whose tool takes no input got `arguments: ""` (not JSON) where
    /// the same answer unstreamed gets `"{}"`; clients `json.loads` it.
    #[test]
    fn a_streamed_tool_call_without_input_has_empty_object_arguments() {
        let start = |id: &str| {
            json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "tool_use", "id": id, "name": "now", "input": {}}})
        };
        let stop = json!({"type": "content_block_stop", "index": 0});
        let end = json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 3}});
        let empty_piece = json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": ""}});
        for events in [
            // No input delta at all, or one empty piece, as Anthropic sends for `{}`.
            vec![
                ("content_block_start", start("toolu_a")),
                ("content_block_stop", stop.clone()),
                ("message_delta", end.clone()),
            ],
            vec![
                ("content_block_start", start("toolu_a")),
                ("content_block_delta", empty_piece.clone()),
                ("content_block_stop", stop.clone()),
                ("message_delta", end.clone()),
            ],
            // A stream that never closed the block still ends with JSON.
            vec![
                ("content_block_start", start("toolu_a")),
                ("message_delta", end.clone()),
            ],
        ] {
            let mut state = StreamState::new("m".into(), false, 0);
            let mut assembler = crate::gateway::stream::Assembler::default();
            for chunk in translated(&mut state, events) {
                assembler.add(&chunk);
            }
            let done = assembler.completion();
            let call = &done["choices"][0]["message"]["tool_calls"][0];
            assert_eq!(call["id"], "toolu_a");
            assert_eq!(call["function"]["arguments"], "{}");
        }
    }

    #[test]
    fn a_thinking_stream_assembles_into_blocks_with_signatures() {
        let mut state = StreamState::new("m".into(), true, 0);
        let chunks = translated(
            &mut state,
            vec![
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "msg_t", "usage":
                {"input_tokens": 4, "cache_read_input_tokens": 100, "output_tokens": 1,
                 "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0}}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "see."}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}}),
                ),
                (
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": 0}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "EmwK"}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "4"}}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "##"},
                "usage": {"output_tokens": 20, "cache_read_input_tokens": 100}}),
                ),
            ],
        );
        // With continuous usage asked for, the prompt's usage is on the first chunk too.
        assert_eq!(chunks[0]["usage"]["prompt_tokens"], 104);
        assert_eq!(
            chunks[0]["usage"]["prompt_tokens_details"]["cached_tokens"],
            100
        );
        let mut assembler = crate::gateway::stream::Assembler::default();
        for chunk in &chunks {
            assembler.add(chunk);
        }
        let done = assembler.completion();
        let choice = &done["choices"][0];
        assert_eq!(choice["message"]["content"], "4");
        assert_eq!(choice["message"]["reasoning_content"], "Let me see.");
        assert_eq!(
            choice["message"]["thinking_blocks"],
            json!([{"type": "thinking", "thinking": "Let me see.", "signature": "EqQB"},
                   {"type": "redacted_thinking", "data": "EmwK"}])
        );
        assert_eq!(choice["finish_reason"], "stop");
        assert_eq!(choice["stop_sequence"], "##");
        let usage = assembler.usage().unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_tokens,
                usage.completion_tokens
            ),
            (104, 100, 20)
        );
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
        let mut state = StreamState::new("m".into(), false, 0);
        let chunks: Vec<_> = block_on(event_stream(chunks).collect::<Vec<_>>())
            .into_iter()
            .flat_map(|e| state.translate(e))
            .collect();
        assemble(chunks)
    }

    const STOP_REASONS: &[&str] = &[
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "refusal",
        "pause_turn",
        "model_context_window_exceeded",
    ];

    /// Counts small enough that every sum stays exact.
    fn count() -> impl Strategy<Value = u64> {
        0..(1u64 << 40)
    }

    /// An Anthropic answer: a stop reason, text, tool calls with ids of Anthropic's pattern
    /// (`^[a-zA-Z0-9_-]+$`) and any input, usage by component (with or without the TTL
    /// breakdown); and the usage Sluice must read from it.
    fn answer() -> impl Strategy<Value = (Value, Usage)> {
        let tool = (
            "[a-zA-Z0-9_-]{1,24}",
            proptest::collection::btree_map("[a-z]{1,5}", any::<i32>(), 0..3),
        );
        (
            proptest::sample::select(STOP_REASONS),
            proptest::option::of(text()),
            proptest::collection::vec(tool, 0..3),
            (count(), count(), count(), count(), count()),
            any::<bool>(),
        )
            .prop_map(|(stop, text, tools, (input, read, five, hour, output), breakdown)| {
                let mut content = Vec::new();
                if let Some(text) = &text {
                    content.push(json!({"type": "text", "text": text}));
                }
                for (i, (id, input)) in tools.iter().enumerate() {
                    content.push(json!({"type": "tool_use", "id": id, "name": format!("f{i}"), "input": input}));
                }
                let mut usage = json!({"input_tokens": input, "output_tokens": output,
                    "cache_read_input_tokens": read, "cache_creation_input_tokens": five + hour});
                let hour = if breakdown {
                    usage["cache_creation"] = json!({"ephemeral_5m_input_tokens": five, "ephemeral_1h_input_tokens": hour});
                    hour
                } else {
                    0
                };
                let five = if breakdown { five } else { usage["cache_creation_input_tokens"].as_u64().unwrap() };
                let message = json!({"id": "msg_p", "type": "message", "role": "assistant", "model": "claude",
                    "content": content, "stop_reason": stop,
                    "stop_sequence": if stop == "stop_sequence" { json!("STOP") } else { Value::Null },
                    "usage": usage});
                let expected = Usage {
                    prompt_tokens: input + read + five + hour,
                    completion_tokens: output,
                    cached_tokens: read,
                    cache_write_tokens: five,
                    cache_write_1h_tokens: hour,
                    ..Usage::default()
                };
                (message, expected)
            })
    }

    /// The stream Anthropic sends for `message`: usage but output in `message_start`, each
    /// block started, fed (text whole, tool input in two pieces, or none for `{}`) and
    /// stopped, then the stop reason and output tokens.
    fn events_of(message: &Value) -> Vec<(Option<&'static str>, Value)> {
        let mut start_usage = message["usage"].clone();
        start_usage["output_tokens"] = json!(1);
        let mut events = vec![(
            Some("message_start"),
            json!({"type": "message_start", "message": {
            "id": message["id"], "model": message["model"], "content": [], "usage": start_usage}}),
        )];
        for (index, block) in message["content"].as_array().unwrap().iter().enumerate() {
            let (start, pieces) = if block["type"] == "tool_use" {
                let input = block["input"].to_string();
                let pieces = if input == "{}" {
                    Vec::new()
                } else {
                    let (a, b) = input.split_at(input.len() / 2);
                    vec![a.to_owned(), b.to_owned()]
                };
                (
                    json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                    pieces
                        .into_iter()
                        .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                        .collect::<Vec<_>>(),
                )
            } else {
                (
                    json!({"type": "text", "text": ""}),
                    vec![json!({"type": "text_delta", "text": block["text"]})],
                )
            };
            events.push((
                Some("content_block_start"),
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            ));
            for delta in pieces {
                events.push((
                    Some("content_block_delta"),
                    json!({"type": "content_block_delta", "index": index, "delta": delta}),
                ));
            }
            events.push((
                Some("content_block_stop"),
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
        events.push((Some("message_delta"), json!({"type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]},
            "usage": {"output_tokens": message["usage"]["output_tokens"]}})));
        events.push((Some("message_stop"), json!({"type": "message_stop"})));
        events
    }

    /// An OpenAI conversation of `rounds` assistant turns with tool calls (ids of any
    /// characters: OpenAI's and other providers' ids are not Anthropic's pattern), each
    /// followed by its tool results; the ids in order.
    fn tool_conversation() -> impl Strategy<Value = (Value, Vec<String>)> {
        proptest::collection::vec(proptest::collection::vec("[a-zA-Z0-9_.:-]{1,20}", 1..4), 0..4).prop_map(|rounds| {
            let mut messages = vec![json!({"role": "user", "content": "go"})];
            let mut ids = Vec::new();
            for round in rounds {
                let calls: Vec<Value> = round
                    .iter()
                    .map(|id| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}}))
                    .collect();
                messages.push(json!({"role": "assistant", "content": null, "tool_calls": calls}));
                for id in round {
                    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "ok"}));
                    ids.push(id);
                }
            }
            (json!({"model": "claude", "messages": messages}), ids)
        })
    }

    /// Token counts near `u64::MAX` (a broken or hostile upstream) overflowed the sum of the
    /// input-token fields and `prompt + completion`: a panic in a debug build, a wrapped
    /// (wrong) total in a release build. Found by `fuzz_a_stream_reads_the_same_however_it_is_cut`
    /// (`message_start` with `input_tokens` + `cache_read_input_tokens` past `u64::MAX`).
    #[test]
    fn regression_huge_token_counts_saturate() {
        let message = json!({"content": [], "usage": {"input_tokens": u64::MAX, "cache_read_input_tokens": 5, "output_tokens": 7}});
        let (completion, usage) = from_message(&message, "m", 0).unwrap();
        assert_eq!(usage.map(|u| u.prompt_tokens), Some(u64::MAX));
        assert_eq!(completion["usage"]["total_tokens"], u64::MAX);
        let mut state = StreamState::new("m".into(), false, 0);
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
            match from_message(&message, "m", 0) {
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
            let mut state = StreamState::new("m".into(), false, 0);
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
                Ok(out) => prop_assert!(serde_json::to_value(&out).unwrap()["messages"].is_array()),
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

        /// OpenAI → Anthropic → OpenAI keeps the stop reason, the tool ids and the usage by
        /// component exactly, and Sluice's usage maps back to the same Anthropic usage.
        #[test]
        fn fuzz_answers_keep_stop_reasons_tool_ids_and_usage((message, expected) in answer()) {
            let (completion, usage) = from_message(&message, "m", 0).unwrap();
            let choice = &completion["choices"][0];
            let stop = message["stop_reason"].as_str().unwrap();
            prop_assert_eq!(&choice["finish_reason"], finish_reason(stop));
            prop_assert_eq!(choice.get("stop_sequence").is_some(), stop == "stop_sequence");
            let blocks: Vec<&Value> = message["content"].as_array().unwrap().iter().filter(|b| b["type"] == "tool_use").collect();
            let calls = choice["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
            prop_assert_eq!(calls.len(), blocks.len());
            for (call, block) in calls.iter().zip(blocks) {
                prop_assert_eq!(&call["id"], &block["id"]);
                let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
                prop_assert_eq!(&args, &block["input"]);
            }
            prop_assert_eq!(usage, Some(expected));
            prop_assert_eq!(crate::providers::usage_from_openai(&completion), Some(expected));
            let back = AnthropicUsage::from_usage(&expected);
            prop_assert_eq!(back.to_usage(), expected);
            prop_assert_eq!(back.input_tokens, message["usage"]["input_tokens"].as_u64());
            prop_assert_eq!(back.cache_read_input_tokens, message["usage"]["cache_read_input_tokens"].as_u64());
            prop_assert_eq!(back.cache_creation_input_tokens, message["usage"]["cache_creation_input_tokens"].as_u64());
        }

        /// The same answer streamed assembles into what the unstreamed one translates to.
        #[test]
        fn fuzz_a_streamed_answer_is_the_same_answer((message, _) in answer(), at in cuts(8)) {
            let (whole, usage) = from_message(&message, "m", 0).unwrap();
            let streamed = read(split(&sse_text(&events_of(&message)), &at)).unwrap();
            let (a, b) = (&whole["choices"][0], &streamed["choices"][0]);
            prop_assert_eq!(&a["finish_reason"], &b["finish_reason"]);
            prop_assert_eq!(a.get("stop_sequence"), b.get("stop_sequence"));
            // Unstreamed, no text is `null`; streamed, the first chunk's `""`.
            let text = |c: &Value| c["message"]["content"].as_str().unwrap_or("").to_owned();
            prop_assert_eq!(text(a), text(b));
            prop_assert_eq!(&a["message"]["tool_calls"], &b["message"]["tool_calls"]);
            prop_assert_eq!(crate::providers::usage_from_openai(&streamed), usage);
            prop_assert_eq!(&whole["id"], &streamed["id"]);
        }

        /// Tool call ids reach Anthropic in order and the same on both sides of each round
        /// (`tool_use` and `tool_result`): valid ones as they were, others (which Anthropic
        /// refuses) mapped to valid ones, distinct ids to distinct ids.
        #[test]
        fn fuzz_requests_keep_tool_ids((body, ids) in tool_conversation()) {
            let out = serde_json::to_value(to_messages_request(body.as_object().unwrap(), false).unwrap()).unwrap();
            let blocks: Vec<&Value> = out["messages"].as_array().unwrap().iter()
                .flat_map(|m| m["content"].as_array().unwrap().iter()).collect();
            let uses: Vec<&str> = blocks.iter().filter(|b| b["type"] == "tool_use").map(|b| b["id"].as_str().unwrap()).collect();
            let results: Vec<&str> = blocks.iter().filter(|b| b["type"] == "tool_result").map(|b| b["tool_use_id"].as_str().unwrap()).collect();
            prop_assert_eq!(&uses, &results);
            for (sent, id) in uses.iter().zip(&ids) {
                // Valid ids exactly; others replaced by valid ones, distinct for distinct ids.
                prop_assert!(valid_tool_id(sent), "{}", sent);
                if valid_tool_id(id) {
                    prop_assert_eq!(sent, id);
                }
            }
            for (i, a) in ids.iter().enumerate() {
                for (j, b) in ids.iter().enumerate() {
                    prop_assert_eq!(a == b, uses[i] == uses[j]);
                }
            }
            // Roles alternate, starting with the user.
            let roles: Vec<&str> = out["messages"].as_array().unwrap().iter().map(|m| m["role"].as_str().unwrap()).collect();
            prop_assert!(roles.iter().enumerate().all(|(i, r)| *r == if i % 2 == 0 { "user" } else { "assistant" }), "{:?}", roles);
        }

        #[test]
        fn fuzz_any_stream_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
            let _ = read(split(&bytes, &at));
        }
    }
}
