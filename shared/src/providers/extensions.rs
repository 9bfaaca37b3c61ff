//! Anthropic's extensions to the OpenAI chat format, and what becomes of them at providers
//! that are not Anthropic.
//!
//! Every provider takes an OpenAI chat body, and the `/v1/messages` ingress translates
//! Anthropic's request into one. Some of what Anthropic's clients send has no OpenAI field;
//! it travels as extension fields, the ones LiteLLM's OpenAI-compatible API accepts for Claude
//! (so OpenAI-format clients can use them too), and the Anthropic provider maps them back:
//!
//! | extension | at Anthropic | at OpenAI-compatible servers | at Gemini |
//! | --- | --- | --- | --- |
//! | `cache_control` on content parts, on a message (its last block), on tools and tool calls, top level | kept | removed | removed |
//! | `thinking_blocks`, `reasoning_content` on assistant messages | sent back first | removed | removed |
//! | `is_error` on tool messages | `tool_result.is_error` | `Error: ` before the content | `Error: ` before the content |
//! | `thinking`, `top_k`, `output_config` (top level) | sent | passed on | 400 naming the field |
//! | parts of Anthropic's own types (`document`, `image`, `search_result`) | sent | passed on | 400 (Gemini's translation) |
//! | images and documents in tool messages | in the `tool_result` | passed on | 400 naming the part |
//! | `stream_options.continuous_usage_stats` (asked by `/v1/messages` for `message_start`) | the prompt's usage on the first chunk | removed | removed |
//!
//! Removed are the hints that do not change the answer: a cache breakpoint (OpenAI and
//! Gemini cache prefixes on their own), and Claude's signed reasoning of earlier turns
//! (Anthropic itself leaves earlier turns' thinking out of the context; other models cannot
//! read it). What changes the answer is never dropped: an OpenAI-compatible server gets it
//! and decides (vLLM samples with `top_k`; OpenAI refuses an unknown parameter with a 400
//! naming it), and Gemini, whose translation does not map it, refuses it.

use serde_json::{Map, Value, json};

use super::ProviderError;

/// The provider a body is lowered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// OpenAI and OpenAI-compatible servers: the body is forwarded as it is.
    OpenAi,
    /// Gemini: the body is translated, and what the translation does not map is lost.
    Gemini,
}

/// Top-level fields that are Anthropic's sampling, thinking and output controls.
const ANSWER_CHANGING: &[&str] = &["thinking", "top_k", "output_config"];

/// The body without Anthropic's extensions, for `target`; `None` when it has none (the
/// common case: nothing is copied). A 400 naming the field when `target` cannot take one.
pub fn lower(
    body: &Map<String, Value>,
    target: Target,
) -> Result<Option<Map<String, Value>>, ProviderError> {
    if target == Target::Gemini {
        refuse_for_gemini(body)?;
    }
    if !has_extensions(body) {
        return Ok(None);
    }
    let mut body = body.clone();
    body.remove("cache_control");
    if let Some(Value::Object(options)) = body.get_mut("stream_options") {
        options.remove("continuous_usage_stats");
    }
    if let Some(Value::Array(tools)) = body.get_mut("tools") {
        for tool in tools.iter_mut().filter_map(Value::as_object_mut) {
            tool.remove("cache_control");
        }
    }
    if let Some(Value::Array(messages)) = body.get_mut("messages") {
        for message in messages.iter_mut().filter_map(Value::as_object_mut) {
            lower_message(message);
        }
    }
    Ok(Some(body))
}

/// What Gemini's translation would drop: Anthropic's sampling and thinking controls, and
/// anything but text in a tool result (a `functionResponse` is JSON).
fn refuse_for_gemini(body: &Map<String, Value>) -> Result<(), ProviderError> {
    let refuse = |message: String| ProviderError::Status {
        status: 400,
        message: Some(message),
        retry_after: None,
    };
    // `top_k` Gemini takes as `topK` (the Gemini translator maps it); the others it has no
    // equivalent for.
    if let Some(field) = ANSWER_CHANGING
        .iter()
        .filter(|f| **f != "top_k")
        .find(|f| body.get(**f).is_some_and(|v| !v.is_null()))
    {
        return Err(ProviderError::Unsupported {
            param: (*field).to_owned(),
            message: format!(
                "`{field}` is an Anthropic parameter that Gemini cannot take through Sluice"
            ),
        });
    }
    for (i, message) in messages(body).enumerate() {
        if message.get("role").and_then(Value::as_str) != Some("tool") {
            continue;
        }
        if let Some(j) = message
            .get("content")
            .and_then(Value::as_array)
            .and_then(|parts| {
                parts
                    .iter()
                    .position(|p| p.get("type").and_then(Value::as_str) != Some("text"))
            })
        {
            return Err(refuse(format!(
                "messages[{i}].content[{j}]: a tool result sent to Gemini can only hold text"
            )));
        }
    }
    Ok(())
}

fn messages(body: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether any extension that [`lower`] removes or rewrites is present.
fn has_extensions(body: &Map<String, Value>) -> bool {
    let has_cc = |v: &Value| v.get("cache_control").is_some();
    body.contains_key("cache_control")
        || body
            .get("stream_options")
            .is_some_and(|o| o.get("continuous_usage_stats").is_some())
        || list(body.get("tools")).any(has_cc)
        || messages(body).any(|m| {
            has_cc(m)
                || m.get("thinking_blocks").is_some()
                || m.get("reasoning_content").is_some()
                || m.get("is_error").is_some()
                || list(m.get("content")).any(has_cc)
                || list(m.get("tool_calls")).any(has_cc)
        })
}

/// The items of an array value (none for anything else).
fn list(v: Option<&Value>) -> impl Iterator<Item = &Value> {
    v.and_then(Value::as_array).into_iter().flatten()
}

/// One message without extensions; a failed tool run says so in its content.
fn lower_message(message: &mut Map<String, Value>) {
    for field in ["cache_control", "thinking_blocks", "reasoning_content"] {
        message.remove(field);
    }
    for key in ["content", "tool_calls"] {
        if let Some(Value::Array(items)) = message.get_mut(key) {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                item.remove("cache_control");
            }
        }
    }
    if message.remove("is_error") != Some(Value::Bool(true)) {
        return;
    }
    // OpenAI's tool messages have no error flag: the model reads it from the content.
    let content = message.entry("content").or_insert(Value::Null);
    match content {
        Value::String(s) => *s = format!("Error: {s}"),
        Value::Array(parts) => parts.insert(0, json!({"type": "text", "text": "Error:"})),
        other => *other = json!("Error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_plain_body_is_not_copied() {
        let body = obj(json!({"model": "m", "temperature": 0.5,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}));
        assert_eq!(lower(&body, Target::OpenAi).unwrap(), None);
        assert_eq!(lower(&body, Target::Gemini).unwrap(), None);
    }

    #[test]
    fn hints_are_removed_and_errors_spelled_out() {
        let cc = json!({"type": "ephemeral"});
        let body = obj(
            json!({"model": "m", "cache_control": cc, "top_k": 5, "stream": true,
            "stream_options": {"include_usage": true, "continuous_usage_stats": true},
            "tools": [{"type": "function", "function": {"name": "f"}, "cache_control": cc}],
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": cc}]},
                {"role": "user", "content": "hi", "cache_control": cc},
                {"role": "assistant", "content": null, "reasoning_content": "hmm",
                 "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": "s"}],
                 "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}, "cache_control": cc}]},
                {"role": "tool", "tool_call_id": "c", "content": "boom", "is_error": true}]}),
        );
        let out = Value::Object(lower(&body, Target::OpenAi).unwrap().unwrap());
        assert!(!out.to_string().contains("cache_control"), "{out}");
        assert!(!out.to_string().contains("thinking"), "{out}");
        assert_eq!(out["top_k"], 5, "an OpenAI-compatible server decides");
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["messages"][3]["content"], "Error: boom");
        assert!(out["messages"][3].get("is_error").is_none());
        assert_eq!(
            out["messages"][0]["content"][0],
            json!({"type": "text", "text": "rules"})
        );
    }

    #[test]
    fn gemini_refuses_what_its_translation_would_drop() {
        let refused = |body: Value| match lower(&obj(body), Target::Gemini) {
            Err(ProviderError::Status {
                status: 400,
                message: Some(m),
                ..
            })
            | Err(ProviderError::Unsupported { message: m, .. }) => m,
            other => panic!("expected a 400, got {other:?}"),
        };
        let user = json!([{"role": "user", "content": "x"}]);
        // `top_k` Gemini takes (as `topK`): passed on to its translator.
        assert!(
            lower(
                &obj(json!({"model": "m", "messages": user, "top_k": 3})),
                Target::Gemini
            )
            .is_ok()
        );
        assert!(
            refused(json!({"model": "m", "messages": user, "output_config": {"effort": "low"}}))
                .contains("`output_config`")
        );
        assert!(
            refused(json!({"model": "m", "messages": user, "thinking": {"type": "enabled", "budget_tokens": 2000}}))
                .contains("`thinking`")
        );
        let image = json!({"model": "m", "messages": [
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": [
                {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]});
        assert!(refused(image).starts_with("messages[1].content[1]"));
    }
}
