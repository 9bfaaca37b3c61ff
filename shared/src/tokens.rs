//! Token estimates for when a provider reports no usage and for reserving limits up front.
//!
//! A tokenizer per model family would be exact but heavy; OpenAI's own rule of thumb (about
//! four characters of English per token, plus a few tokens of framing per message) is close
//! enough to reserve against, because reservations are settled to the provider's real usage.

use serde_json::Value;

/// Tokens of framing OpenAI adds per chat message.
const PER_MESSAGE: u64 = 4;

/// Estimated tokens of a piece of text.
pub fn estimate_text(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// Estimated prompt tokens of a JSON value: counts the text of every string inside it.
pub fn estimate_value(value: &Value) -> u64 {
    match value {
        Value::String(s) => estimate_text(s),
        Value::Array(items) => items.iter().map(estimate_value).sum(),
        Value::Object(map) => map.values().map(estimate_value).sum(),
        Value::Number(_) => 1,
        Value::Bool(_) | Value::Null => 0,
    }
}

/// An upper bound on the prompt tokens of a request, for reservations that must not be
/// exceeded: byte-level BPE tokenizers never make more tokens than bytes, plus OpenAI's
/// per-message framing.
pub fn prompt_upper_bound(request: &crate::gateway::request::ParsedRequest) -> u64 {
    use crate::providers::Endpoint;
    let bytes = |v: Option<&Value>| v.map_or(0, |v| v.to_string().len() as u64);
    match request.endpoint {
        Endpoint::ChatCompletions => {
            let messages = request.body.get("messages");
            let count = messages.and_then(Value::as_array).map_or(0, Vec::len) as u64;
            bytes(messages) + bytes(request.body.get("tools")) + PER_MESSAGE * count + 3
        }
        Endpoint::Embeddings => bytes(request.body.get("input")),
    }
}

/// Estimated prompt tokens of a chat request's `messages` (and `tools`, which are sent too).
pub fn estimate_chat_prompt(messages: &[Value], tools: Option<&Value>) -> u64 {
    let framing = PER_MESSAGE * messages.len() as u64 + 3;
    framing + messages.iter().map(estimate_value).sum::<u64>() + tools.map_or(0, estimate_value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn about_four_characters_per_token() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        let msgs = [json!({"role": "user", "content": "hello there"})];
        assert_eq!(estimate_chat_prompt(&msgs, None), 4 + 3 + 1 + 3);
    }
}
