//! The most a provider may bill for a request, for a fake that bills exactly that.
//!
//! A hostile reading of each provider's rules, to test that Sluice's reservations can never
//! be exceeded: every prompt byte of text is a token (byte-level BPE makes no more tokens
//! than bytes), each image costs the most any provider bills for one, every message has
//! OpenAI's documented framing, and every choice uses its whole output allowance (with
//! Predicted Outputs, every predicted token may be billed again as a rejected one).
//!
//! What counts as prompt text: every string, number and boolean in the fields a provider
//! renders into the prompt; object keys only inside JSON Schemas, tool arguments and tool
//! results, which are rendered as JSON (a content block's `type` or `tool_use_id` key is
//! envelope, replaced by the provider's own framing tokens, counted per message).

use serde_json::Value;

/// The most tokens a provider bills for one image: OpenAI's gpt-4o-mini, high detail, an
/// image scaled to 2048 × 768 (8 tiles of 512 px): 2,833 + 8 × 5,667.
pub const IMAGE_TOKENS: u64 = 2_833 + 8 * 5_667;

/// Framing OpenAI documents per message and per request ("every reply is primed").
const PER_MESSAGE: u64 = 4;
const PER_REQUEST: u64 = 3;

/// Output ceilings the providers apply when a request sets none (OpenAI's gpt-4o family:
/// 16,384; Gemini 2.5: 65,536).
const OPENAI_DEFAULT_OUTPUT: u64 = 16_384;
const GEMINI_DEFAULT_OUTPUT: u64 = 65_536;

/// Keys under which JSON is rendered as JSON (keys included).
const JSON_RENDERED: &[&str] = &[
    "parameters",
    "parametersJsonSchema",
    "input_schema",
    "json_schema",
    "schema",
    "responseSchema",
    "responseJsonSchema",
    "input",
    "args",
    "response",
];

fn is_image(v: &Value) -> bool {
    matches!(v["type"].as_str(), Some("image_url" | "image"))
        || v.get("inlineData").is_some()
        || v.get("fileData").is_some()
}

/// Bytes of prompt text in `v` (see the module note).
fn text(v: &Value, keys: bool) -> u64 {
    match v {
        Value::String(s) => s.len() as u64,
        Value::Number(n) => n.to_string().len() as u64,
        Value::Bool(b) => b.to_string().len() as u64,
        Value::Null => 0,
        Value::Array(items) => items.iter().map(|i| text(i, keys)).sum(),
        Value::Object(_) if is_image(v) => IMAGE_TOKENS,
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let key = if keys { k.len() as u64 } else { 0 };
                key + text(v, keys || JSON_RENDERED.contains(&k.as_str()))
            })
            .sum(),
    }
}

fn messages(v: &Value) -> u64 {
    v.as_array().map_or(0, |m| m.len() as u64)
}

/// Prompt and completion tokens for an OpenAI chat request.
pub fn openai_chat(body: &Value) -> (u64, u64) {
    // Parameters, not prompt: what the gateway sets itself (model, stream options, the
    // output ceiling) and what only shapes sampling.
    const NOT_PROMPT: &[&str] = &[
        "model",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "prediction",
    ];
    let prompt = body.as_object().map_or(0, |b| {
        b.iter()
            .filter(|(k, _)| !NOT_PROMPT.contains(&k.as_str()))
            .map(|(_, v)| text(v, false))
            .sum()
    }) + PER_MESSAGE * messages(&body["messages"])
        + PER_REQUEST;
    let per_choice = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|f| body[*f].as_u64())
        .max()
        .unwrap_or(OPENAI_DEFAULT_OUTPUT);
    let prediction = text(&body["prediction"], false);
    let n = body["n"].as_u64().unwrap_or(1);
    (
        prompt,
        n.saturating_mul(per_choice.saturating_add(prediction)),
    )
}

/// Prompt tokens for an OpenAI embeddings request: text bytes, one per token id.
pub fn openai_embeddings(body: &Value) -> u64 {
    match &body["input"] {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.len() as u64,
                Value::Array(ids) => ids.len() as u64,
                _ => 1,
            })
            .sum(),
        _ => 0,
    }
}

/// Input and output tokens for an Anthropic Messages request.
pub fn anthropic(body: &Value) -> (u64, u64) {
    let prompt = ["system", "messages", "tools", "tool_choice"]
        .iter()
        .map(|f| text(&body[*f], false))
        .sum::<u64>()
        + PER_MESSAGE * (messages(&body["messages"]) + 1)
        + PER_REQUEST;
    (prompt, body["max_tokens"].as_u64().unwrap_or(0))
}

/// Prompt and candidate tokens for a Gemini `generateContent` request.
pub fn gemini(body: &Value) -> (u64, u64) {
    let config = &body["generationConfig"];
    let prompt = ["contents", "systemInstruction", "tools", "toolConfig"]
        .iter()
        .map(|f| text(&body[*f], false))
        .sum::<u64>()
        + text(&config["responseSchema"], true)
        + text(&config["responseJsonSchema"], true)
        + PER_MESSAGE * (messages(&body["contents"]) + 1)
        + PER_REQUEST;
    let candidates = config["candidateCount"].as_u64().unwrap_or(1);
    let output = config["maxOutputTokens"]
        .as_u64()
        .unwrap_or(GEMINI_DEFAULT_OUTPUT);
    (prompt, candidates.saturating_mul(output))
}

/// Sets the usage of one answer (or stream event) of `format` to `(prompt, completion)`.
pub fn set_usage(format: Format, event: &mut Value, (prompt, completion): (u64, u64)) {
    match format {
        Format::OpenAi => {
            if event.get("usage").is_some_and(Value::is_object) {
                event["usage"] = serde_json::json!({"prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt.saturating_add(completion)});
            }
        }
        Format::Anthropic => {
            let usage = if event["type"] == "message_start" {
                &mut event["message"]["usage"]
            } else {
                &mut event["usage"]
            };
            if usage.is_object() {
                if usage.get("input_tokens").is_some() {
                    usage["input_tokens"] = prompt.into();
                    // Every prompt token is in `input_tokens`: none is also a cache read or
                    // write (Anthropic counts those apart, on top).
                    for field in ["cache_creation_input_tokens", "cache_read_input_tokens"] {
                        if usage.get(field).is_some() {
                            usage[field] = 0.into();
                        }
                    }
                    if let Some(parts) = usage
                        .get_mut("cache_creation")
                        .and_then(Value::as_object_mut)
                    {
                        parts.values_mut().for_each(|v| *v = 0.into());
                    }
                }
                usage["output_tokens"] = completion.into();
            }
        }
        Format::Gemini => {
            if event.get("usageMetadata").is_some() {
                event["usageMetadata"] = serde_json::json!({"promptTokenCount": prompt,
                    "candidatesTokenCount": completion,
                    "totalTokenCount": prompt.saturating_add(completion)});
            }
        }
    }
}

/// Which wire format an answer is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenAI's chat completions or embeddings.
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// Gemini's `generateContent`.
    Gemini,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_text_schema_keys_images_and_every_choice() {
        let body = json!({"model": "m", "n": 2, "max_tokens": 10, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
            "tools": [{"type": "function", "function": {"name": "f",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]});
        let (prompt, completion) = openai_chat(&body);
        // Values: user, text, hello, function, f; schema keys and values: type object
        // properties q type string.
        let text = 4 + 4 + 5 + 8 + 1 + (4 + 6 + 10 + 1 + 4 + 6);
        assert_eq!(prompt, text + IMAGE_TOKENS + 4 + 3);
        assert_eq!(completion, 20);
    }
}
