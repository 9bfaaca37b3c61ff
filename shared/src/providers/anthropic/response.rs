//! Anthropic Messages answer → OpenAI `chat.completion` ([`from_message`]): the answer is
//! read as a [`Message`]; text blocks become `content`, `tool_use` blocks `tool_calls`,
//! thinking blocks `reasoning_content` and `thinking_blocks` (signatures kept, so they can
//! be sent back); the stop reason is mapped by [`finish_reason`] and a matched stop sequence
//! kept as the choice's `stop_sequence`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::wire::{Block, ContentBlock, Message, finish_reason};
use crate::providers::http::error_message;
use crate::providers::{ProviderError, Usage};

/// A Messages API answer as a `chat.completion`, with its usage.
pub fn from_message(
    message: &Value,
    model: &str,
    created_s: u64,
) -> Result<(Value, Option<Usage>), ProviderError> {
    if message.get("type").and_then(Value::as_str) == Some("error") {
        return Err(ProviderError::Malformed(
            error_message(message).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    let no_content = || ProviderError::Malformed("no `content` array".into());
    if !message.is_object() {
        return Err(no_content());
    }
    let message = Message::deserialize(message).map_err(|_| no_content())?;
    let blocks = message.content.ok_or_else(no_content)?;
    let mut text: Option<String> = None;
    let mut reasoning: Option<String> = None;
    let mut thinking_blocks = Vec::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        let Block::Known(known) = &block else {
            continue;
        };
        match known {
            ContentBlock::Text { text: t, .. } => text.get_or_insert_with(String::new).push_str(t),
            ContentBlock::ToolUse {
                id, name, input, ..
            } => tool_calls.push(json!({
                "id": id,
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": input.as_ref().unwrap_or(&json!({})).to_string(),
                },
            })),
            ContentBlock::Thinking { thinking, .. } => {
                reasoning.get_or_insert_with(String::new).push_str(thinking);
                thinking_blocks.push(block.to_value());
            }
            ContentBlock::RedactedThinking { .. } => thinking_blocks.push(block.to_value()),
            _ => {}
        }
    }
    let stop_reason = message.stop_reason.as_deref().unwrap_or("end_turn");
    let mut out = json!({
        "id": message.id.as_deref().unwrap_or("msg"),
        "object": "chat.completion",
        "created": created_s,
        "model": message.model.as_deref().unwrap_or(model),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(stop_reason),
        }],
    });
    let choice = &mut out["choices"][0];
    if let Some(sequence) = matched_stop_sequence(stop_reason, message.stop_sequence) {
        choice["stop_sequence"] = Value::String(sequence);
    }
    if !tool_calls.is_empty() {
        choice["message"]["tool_calls"] = Value::Array(tool_calls);
    }
    if !thinking_blocks.is_empty() {
        choice["message"]["reasoning_content"] = json!(reasoning);
        choice["message"]["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    let usage = message.usage.map(|u| u.to_usage());
    if let Some(usage) = &usage {
        out["usage"] = usage.to_openai();
    }
    Ok((out, usage))
}

/// The stop sequence that ended the answer, kept on the OpenAI choice (whose
/// `finish_reason` is `stop` either way) so `/v1/messages` can say which one matched.
pub(super) fn matched_stop_sequence(stop_reason: &str, sequence: Option<String>) -> Option<String> {
    sequence.filter(|_| stop_reason == "stop_sequence")
}
