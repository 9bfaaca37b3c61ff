//! Anthropic Messages answer → OpenAI `chat.completion`.

use serde_json::{Value, json};

use super::wire::AnthropicUsage;
use crate::providers::http::error_message;
use crate::providers::{ProviderError, Usage};

/// Anthropic's `stop_reason` as OpenAI's `finish_reason`.
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
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
    let mut reasoning: Option<String> = None;
    let mut thinking_blocks = Vec::new();
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
            Some("thinking") => {
                reasoning
                    .get_or_insert_with(String::new)
                    .push_str(block.get("thinking").and_then(Value::as_str).unwrap_or(""));
                thinking_blocks.push(block.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(block.clone()),
            _ => {}
        }
    }
    let stop_reason = message
        .get("stop_reason")
        .and_then(Value::as_str)
        .unwrap_or("end_turn");
    let mut out = json!({
        "id": message.get("id").cloned().unwrap_or_else(|| json!("msg")),
        "object": "chat.completion",
        "created": crate::providers::now_ms() / 1000,
        "model": message.get("model").and_then(Value::as_str).unwrap_or(model),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish_reason(stop_reason),
        }],
    });
    let choice = &mut out["choices"][0];
    if let Some(sequence) = matched_stop_sequence(stop_reason, message.get("stop_sequence")) {
        choice["stop_sequence"] = sequence;
    }
    if !tool_calls.is_empty() {
        choice["message"]["tool_calls"] = Value::Array(tool_calls);
    }
    if !thinking_blocks.is_empty() {
        choice["message"]["reasoning_content"] = json!(reasoning);
        choice["message"]["thinking_blocks"] = Value::Array(thinking_blocks);
    }
    let usage = message
        .get("usage")
        .and_then(AnthropicUsage::read)
        .map(|u| u.to_usage());
    if let Some(usage) = &usage {
        out["usage"] = usage.to_openai();
    }
    Ok((out, usage))
}

/// The stop sequence that ended the answer, kept on the OpenAI choice (whose
/// `finish_reason` is `stop` either way) so `/v1/messages` can say which one matched.
pub(super) fn matched_stop_sequence(stop_reason: &str, sequence: Option<&Value>) -> Option<Value> {
    (stop_reason == "stop_sequence")
        .then(|| sequence.filter(|s| s.is_string()).cloned())
        .flatten()
}
