//! Anthropic's stream events → OpenAI `chat.completion.chunk`s.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::response::{finish_reason, matched_stop_sequence};
use super::wire::AnthropicUsage;
use crate::providers::ProviderError;
use crate::providers::http::stream_error;
use crate::providers::sse::Event;
#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    /// A `tool_use` block: its OpenAI tool-call index, its `input` from `content_block_start`
    /// (sent if no input arrives in pieces), and whether any piece arrived.
    Tool {
        call: u64,
        start_input: Option<String>,
        streamed: bool,
    },
    /// A `thinking` or `redacted_thinking` block, by its index among them.
    Thinking(u64),
}

/// What a stream translation remembers between events.
pub(super) struct StreamState {
    id: String,
    model: String,
    created: u64,
    usage: AnthropicUsage,
    /// Send the prompt's usage on the first chunk too (see [`continuous_usage`]).
    early_usage: bool,
    /// Anthropic content-block index → what that block is, for tools and thinking.
    blocks: HashMap<u64, Block>,
    tool_calls: u64,
    thinking_blocks: u64,
}

impl StreamState {
    pub(super) fn new(model: String, early_usage: bool) -> Self {
        Self {
            id: String::new(),
            model,
            created: crate::providers::now_ms() / 1000,
            usage: AnthropicUsage::default(),
            early_usage,
            blocks: HashMap::new(),
            tool_calls: 0,
            thinking_blocks: 0,
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

    /// The arguments of a tool call no input piece arrived for: its start `input`, or `{}`
    /// (an empty string is not JSON, and clients parse it).
    fn finish_tool(&mut self, index: u64) -> Option<Value> {
        let Some(Block::Tool {
            call,
            start_input,
            streamed,
        }) = self.blocks.get_mut(&index)
        else {
            return None;
        };
        if *streamed {
            return None;
        }
        *streamed = true;
        let arguments = start_input.take().unwrap_or_else(|| "{}".to_owned());
        let call = *call;
        Some(self.delta(
            json!({"tool_calls": [{"index": call, "function": {"arguments": arguments}}]}),
            None,
        ))
    }

    /// One Anthropic event as zero or more OpenAI chunks.
    pub(super) fn translate(
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
        let index = data.get("index").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "message_start" => {
                let message = data.get("message").unwrap_or(&Value::Null);
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.id = id.to_owned();
                }
                if let Some(model) = message.get("model").and_then(Value::as_str) {
                    self.model = model.to_owned();
                }
                if let Some(usage) = message.get("usage").and_then(AnthropicUsage::read) {
                    self.usage.merge(usage);
                }
                let mut first = self.delta(json!({"role": "assistant", "content": ""}), None);
                if self.early_usage {
                    first["usage"] = self.usage.to_usage().to_openai();
                }
                vec![Ok(first)]
            }
            "content_block_start" => self.block_start(index, data.get("content_block")),
            "content_block_delta" => {
                let delta = data.get("delta").unwrap_or(&Value::Null);
                self.block_delta(index, delta).into_iter().map(Ok).collect()
            }
            "content_block_stop" => self.finish_tool(index).into_iter().map(Ok).collect(),
            "message_delta" => {
                let mut out: Vec<Result<Value, ProviderError>> = Vec::new();
                // A tool block the stream never closed still gets valid arguments.
                let mut open: Vec<u64> = self.blocks.keys().copied().collect();
                open.sort_unstable();
                for index in open {
                    out.extend(self.finish_tool(index).map(Ok));
                }
                let delta = data.get("delta").unwrap_or(&Value::Null);
                let stop = delta
                    .get("stop_reason")
                    .and_then(Value::as_str)
                    .unwrap_or("end_turn");
                if let Some(usage) = data.get("usage").and_then(AnthropicUsage::read) {
                    self.usage.merge(usage);
                }
                let mut last = self.delta(json!({}), Some(finish_reason(stop)));
                if let Some(sequence) = matched_stop_sequence(stop, delta.get("stop_sequence")) {
                    last["choices"][0]["stop_sequence"] = sequence;
                }
                let mut usage_chunk = self.chunk(json!([]));
                usage_chunk["usage"] = self.usage.to_usage().to_openai();
                out.push(Ok(last));
                out.push(Ok(usage_chunk));
                out
            }
            // ping, message_stop and event types added later.
            _ => Vec::new(),
        }
    }

    fn block_start(
        &mut self,
        index: u64,
        block: Option<&Value>,
    ) -> Vec<Result<Value, ProviderError>> {
        let block = block.unwrap_or(&Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") => {
                let call = self.tool_calls;
                self.tool_calls += 1;
                // Client tools start with `input: {}` and send it in pieces; a non-empty start
                // input is the whole input.
                let start_input = block
                    .get("input")
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string);
                self.blocks.insert(
                    index,
                    Block::Tool {
                        call,
                        start_input,
                        streamed: false,
                    },
                );
                vec![Ok(self.delta(
                    json!({"tool_calls": [{
                        "index": call, "id": block.get("id"), "type": "function",
                        "function": {"name": block.get("name"), "arguments": ""},
                    }]}),
                    None,
                ))]
            }
            Some(kind @ ("thinking" | "redacted_thinking")) => {
                let k = self.thinking_blocks;
                self.thinking_blocks += 1;
                self.blocks.insert(index, Block::Thinking(k));
                let mut piece = json!({"index": k, "type": kind});
                // A redacted block arrives whole; a thinking block's text and signature
                // arrive as deltas, but a start that carries some is kept.
                for field in ["data", "thinking", "signature"] {
                    if let Some(v) = block
                        .get(field)
                        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
                    {
                        piece[field] = v.clone();
                    }
                }
                vec![Ok(self.delta(json!({"thinking_blocks": [piece]}), None))]
            }
            _ => Vec::new(),
        }
    }

    fn block_delta(&mut self, index: u64, delta: &Value) -> Option<Value> {
        let piece = |field: &str| delta.get(field).and_then(Value::as_str).unwrap_or("");
        match (
            delta.get("type").and_then(Value::as_str),
            self.blocks.get_mut(&index),
        ) {
            (Some("text_delta"), _) => Some(self.delta(json!({"content": piece("text")}), None)),
            (Some("input_json_delta"), Some(Block::Tool { call, streamed, .. })) => {
                let partial = piece("partial_json");
                if partial.is_empty() {
                    return None;
                }
                *streamed = true;
                let call = *call;
                Some(self.delta(
                    json!({"tool_calls": [{"index": call, "function": {"arguments": partial}}]}),
                    None,
                ))
            }
            (Some("thinking_delta"), Some(Block::Thinking(k))) => {
                let k = *k;
                let text = piece("thinking");
                Some(self.delta(
                    json!({"reasoning_content": text,
                           "thinking_blocks": [{"index": k, "type": "thinking", "thinking": text}]}),
                    None,
                ))
            }
            (Some("signature_delta"), Some(Block::Thinking(k))) => {
                let k = *k;
                Some(self.delta(
                    json!({"thinking_blocks": [{"index": k, "type": "thinking", "signature": piece("signature")}]}),
                    None,
                ))
            }
            _ => None,
        }
    }
}
