//! Anthropic's stream events → OpenAI `chat.completion.chunk`s ([`StreamState`]): each
//! event is read as a [`StreamEvent`]; `message_start` gives the id, model and the prompt's
//! usage, `content_block_*` events become content, tool-call and thinking deltas, and
//! `message_delta` the finish reason and a last chunk with the usage.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::response::matched_stop_sequence;
use super::wire::{AnthropicUsage, Block, ContentBlock, Delta, StreamEvent, finish_reason};
use crate::providers::ProviderError;
use crate::providers::http::stream_error;
use crate::providers::sse::Event;

/// What the stream translation knows of one content block.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpenBlock {
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
    blocks: HashMap<u64, OpenBlock>,
    tool_calls: u64,
    thinking_blocks: u64,
}

impl StreamState {
    pub(super) fn new(model: String, early_usage: bool, created_s: u64) -> Self {
        Self {
            id: String::new(),
            model,
            created: created_s,
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
        let Some(OpenBlock::Tool {
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
        if let Some(error) = stream_error(&event.data) {
            return vec![Err(error)];
        }
        match read_event(event) {
            Some(StreamEvent::MessageStart { message }) => {
                if let Some(id) = message.id {
                    self.id = id;
                }
                if let Some(model) = message.model {
                    self.model = model;
                }
                if let Some(usage) = message.usage {
                    self.usage.merge(usage);
                }
                let mut first = self.delta(json!({"role": "assistant", "content": ""}), None);
                if self.early_usage {
                    first["usage"] = self.usage.to_usage().to_openai();
                }
                vec![Ok(first)]
            }
            Some(StreamEvent::ContentBlockStart {
                index,
                content_block,
            }) => self.block_start(index, content_block.as_ref()),
            Some(StreamEvent::ContentBlockDelta { index, delta }) => self
                .block_delta(index, &delta)
                .into_iter()
                .map(Ok)
                .collect(),
            Some(StreamEvent::ContentBlockStop { index }) => {
                self.finish_tool(index).into_iter().map(Ok).collect()
            }
            Some(StreamEvent::MessageDelta { delta, usage }) => {
                let mut out: Vec<Result<Value, ProviderError>> = Vec::new();
                // A tool block the stream never closed still gets valid arguments.
                let mut open: Vec<u64> = self.blocks.keys().copied().collect();
                open.sort_unstable();
                for index in open {
                    out.extend(self.finish_tool(index).map(Ok));
                }
                let stop = delta.stop_reason.as_deref().unwrap_or("end_turn");
                if let Some(usage) = usage {
                    self.usage.merge(usage);
                }
                let mut last = self.delta(json!({}), Some(finish_reason(stop)));
                if let Some(sequence) = matched_stop_sequence(stop, delta.stop_sequence) {
                    last["choices"][0]["stop_sequence"] = Value::String(sequence);
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
        block: Option<&Block>,
    ) -> Vec<Result<Value, ProviderError>> {
        match block {
            Some(Block::Known(ContentBlock::ToolUse {
                id, name, input, ..
            })) => {
                let call = self.tool_calls;
                self.tool_calls += 1;
                // Client tools start with `input: {}` and send it in pieces; a non-empty start
                // input is the whole input.
                let start_input = input
                    .as_ref()
                    .filter(|i| i.as_object().is_some_and(|o| !o.is_empty()))
                    .map(Value::to_string);
                self.blocks.insert(
                    index,
                    OpenBlock::Tool {
                        call,
                        start_input,
                        streamed: false,
                    },
                );
                vec![Ok(self.delta(
                    json!({"tool_calls": [{
                        "index": call, "id": id, "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }]}),
                    None,
                ))]
            }
            Some(block) if matches!(block.kind(), Some("thinking" | "redacted_thinking")) => {
                let k = self.thinking_blocks;
                self.thinking_blocks += 1;
                self.blocks.insert(index, OpenBlock::Thinking(k));
                let mut piece = json!({"index": k, "type": block.kind()});
                // A redacted block arrives whole; a thinking block's text and signature
                // arrive as deltas, but a start that carries some is kept.
                let (data, thinking, signature) = match block {
                    Block::Known(ContentBlock::RedactedThinking { data, .. }) => {
                        (data.as_str(), None, None)
                    }
                    Block::Known(ContentBlock::Thinking {
                        thinking,
                        signature,
                        ..
                    }) => (None, Some(thinking.as_str()), signature.as_deref()),
                    _ => (None, None, None),
                };
                for (field, value) in [
                    ("data", data),
                    ("thinking", thinking),
                    ("signature", signature),
                ] {
                    if let Some(v) = value.filter(|v| !v.is_empty()) {
                        piece[field] = Value::String(v.to_owned());
                    }
                }
                vec![Ok(self.delta(json!({"thinking_blocks": [piece]}), None))]
            }
            _ => Vec::new(),
        }
    }

    fn block_delta(&mut self, index: u64, delta: &Delta) -> Option<Value> {
        match (delta, self.blocks.get_mut(&index)) {
            (Delta::TextDelta { text }, _) => Some(self.delta(json!({"content": text}), None)),
            (
                Delta::InputJsonDelta { partial_json },
                Some(OpenBlock::Tool { call, streamed, .. }),
            ) => {
                if partial_json.is_empty() {
                    return None;
                }
                *streamed = true;
                let call = *call;
                Some(self.delta(
                    json!({"tool_calls": [{"index": call, "function": {"arguments": partial_json}}]}),
                    None,
                ))
            }
            (Delta::ThinkingDelta { thinking }, Some(OpenBlock::Thinking(k))) => {
                let k = *k;
                Some(self.delta(
                    json!({"reasoning_content": thinking,
                           "thinking_blocks": [{"index": k, "type": "thinking", "thinking": thinking}]}),
                    None,
                ))
            }
            (Delta::SignatureDelta { signature }, Some(OpenBlock::Thinking(k))) => {
                let k = *k;
                Some(self.delta(
                    json!({"thinking_blocks": [{"index": k, "type": "thinking", "signature": signature}]}),
                    None,
                ))
            }
            _ => None,
        }
    }
}

/// An event's data as a [`StreamEvent`], its type from the SSE event name when the data has
/// none. `None` for data that is no event Sluice reads.
fn read_event(event: Event) -> Option<StreamEvent> {
    let Event { name, data } = event;
    if data.get("type").is_some_and(Value::is_string) {
        return StreamEvent::deserialize(&data).ok();
    }
    let mut object = match data {
        Value::Object(object) => object,
        _ => serde_json::Map::new(),
    };
    object.insert("type".into(), Value::String(name));
    StreamEvent::deserialize(Value::Object(object)).ok()
}
