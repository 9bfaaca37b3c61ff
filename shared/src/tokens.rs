//! Token counts: estimates for when a provider reports no usage, and upper bounds for
//! reserving limits up front.
//!
//! A tokenizer per model family would be exact but heavy. Estimates use OpenAI's rule of
//! thumb (about four characters of English per token, plus a few tokens of framing per
//! message). Reservations need the opposite, a number the provider can never exceed: a
//! byte-level BPE tokenizer (every provider Sluice speaks to uses one) never makes more
//! tokens than the text has bytes, so the bytes of the request bound its prompt. What is not
//! text is bounded separately: each image by [`IMAGE_TOKENS_MAX`]; audio and files have no
//! bound a gateway can compute, so [`unbounded_input`] names them for refusal where a limit
//! depends on the count.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::gateway::request::ParsedRequest;
use crate::providers::Endpoint;

/// Tokens of framing OpenAI adds per chat message.
const PER_MESSAGE: u64 = 4;

/// Tokens of framing OpenAI adds per chat request (the assistant's reply is primed).
const PER_REQUEST: u64 = 3;

/// The most tokens one image input can cost, at any provider and detail level: OpenAI's
/// gpt-4o-mini bills a high-detail image as 2,833 + 5,667 per 512-px tile, and an image
/// scaled to 2048 × 768 has 8 tiles (48,169 tokens); other OpenAI models, Anthropic (about
/// 1,600 at its 1.15-megapixel limit) and Gemini (258 per 768-px tile, 1,120 at the highest
/// `media_resolution`) bill less for the images they accept.
pub const IMAGE_TOKENS_MAX: u64 = 50_000;

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

/// Estimated prompt tokens of a chat request's `messages` (and `tools`, which are sent too).
pub fn estimate_chat_prompt(messages: &[Value], tools: Option<&Value>) -> u64 {
    let framing = PER_MESSAGE * messages.len() as u64 + PER_REQUEST;
    framing + messages.iter().map(estimate_value).sum::<u64>() + tools.map_or(0, estimate_value)
}

/// Counts bytes written to it: the length of a serialization without building it.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len() as u64);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes of `value` as compact JSON. Never smaller than the text inside it (strings, keys,
/// numbers), which is what a provider renders into the prompt.
pub fn json_len(value: &impl Serialize) -> u64 {
    let mut count = ByteCount(0);
    // Writing to a counter cannot fail, and a `Value` always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// The content parts of every message, with the index of their message.
fn content_parts(body: &Map<String, Value>) -> impl Iterator<Item = (usize, usize, &Value)> {
    body.get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .flat_map(|(i, m)| {
            m.get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(j, part)| (i, j, part))
        })
}

fn part_type(part: &Value) -> Option<&str> {
    part.get("type").and_then(Value::as_str)
}

/// An upper bound on the prompt tokens of a request: every byte of the body as compact JSON
/// (model name and parameters included, which only makes it larger) except image data,
/// [`IMAGE_TOKENS_MAX`] per image, and OpenAI's per-message framing. For embeddings, the
/// bytes of every text input and one token per token id.
pub fn prompt_upper_bound(request: &ParsedRequest) -> u64 {
    match request.endpoint {
        Endpoint::ChatCompletions => {
            let body = &request.body;
            let messages = body
                .get("messages")
                .and_then(Value::as_array)
                .map_or(0, Vec::len) as u64;
            let mut images = 0u64;
            let mut image_bytes = 0u64;
            for (_, _, part) in content_parts(body) {
                // OpenAI's `image_url`, or Anthropic's own `image` block carried through
                // from `/v1/messages` (see `providers::extensions`).
                let data = match part_type(part) {
                    Some("image_url") => &part["image_url"],
                    Some("image") => &part["source"],
                    _ => continue,
                };
                images += 1;
                image_bytes = image_bytes.saturating_add(json_len(data));
            }
            json_len(body)
                .saturating_sub(image_bytes)
                .saturating_add(images.saturating_mul(IMAGE_TOKENS_MAX))
                .saturating_add(PER_MESSAGE.saturating_mul(messages))
                .saturating_add(PER_REQUEST)
        }
        Endpoint::Embeddings => match request.body.get("input") {
            Some(Value::String(s)) => s.len() as u64,
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => s.len() as u64,
                    Value::Array(ids) => ids.len() as u64,
                    // A flat token-id array: each id is one token.
                    _ => 1,
                })
                .fold(0, u64::saturating_add),
            _ => 0,
        },
    }
}

/// An upper bound on the output tokens of a chat request: every choice (`n`) may use its
/// whole output allowance — the larger of `max_tokens` and `max_completion_tokens`, else
/// `ceiling` — and, with Predicted Outputs, every predicted token may be billed as a
/// rejected completion token on top (OpenAI counts those in `completion_tokens`).
/// Embeddings have no output tokens.
pub fn output_upper_bound(request: &ParsedRequest, ceiling: u64) -> u64 {
    if request.endpoint == Endpoint::Embeddings {
        return 0;
    }
    let body = &request.body;
    let per_choice = ["max_tokens", "max_completion_tokens"]
        .iter()
        .filter_map(|f| body.get(*f).and_then(Value::as_u64))
        .max()
        .unwrap_or(ceiling);
    let prediction = body.get("prediction").map_or(0, json_len);
    let choices = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    per_choice
        .saturating_add(prediction)
        .saturating_mul(choices)
}

/// The first input whose token count no gateway can bound before the provider answers, as
/// the field path to name in a refusal: audio (`input_audio` parts, and audio output asked
/// for with `modalities` or `audio`, billed per second at audio prices) and files (`file`
/// parts, and Anthropic `document` blocks from `/v1/messages`: a PDF's pages become text and
/// images, unbounded by its compressed bytes, and a document may be a URL).
pub fn unbounded_input(request: &ParsedRequest) -> Option<String> {
    if request.endpoint != Endpoint::ChatCompletions {
        return None;
    }
    let body = &request.body;
    for (i, j, part) in content_parts(body) {
        if matches!(part_type(part), Some("input_audio" | "file" | "document")) {
            return Some(format!("messages[{i}].content[{j}]"));
        }
    }
    let audio_out = body
        .get("modalities")
        .and_then(Value::as_array)
        .is_some_and(|m| m.iter().any(|v| v.as_str() == Some("audio")));
    if audio_out {
        return Some("modalities".into());
    }
    if body.get("audio").is_some_and(|a| !a.is_null()) {
        return Some("audio".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parsed(endpoint: Endpoint, body: Value) -> ParsedRequest {
        crate::gateway::request::parse(endpoint, body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn about_four_characters_per_token() {
        assert_eq!(estimate_text(""), 0);
        assert_eq!(estimate_text("abcd"), 1);
        assert_eq!(estimate_text("abcde"), 2);
        let msgs = [json!({"role": "user", "content": "hello there"})];
        assert_eq!(estimate_chat_prompt(&msgs, None), 4 + 3 + 1 + 3);
    }

    #[test]
    fn json_len_is_the_compact_serialization() {
        let v = json!({"a": [1, "é\n", null], "b": {"c": 1.5}});
        assert_eq!(json_len(&v), v.to_string().len() as u64);
    }

    #[test]
    fn every_prompt_field_counts_and_images_count_their_bound() {
        let small = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let base = prompt_upper_bound(&parsed(Endpoint::ChatCompletions, small.clone()));
        for field in ["tools", "response_format", "prediction", "functions"] {
            let mut big = small.clone();
            big[field] = json!([{"schema": "x".repeat(10_000)}]);
            if field == "response_format" || field == "prediction" {
                big[field] = json!({"type": "x", "content": "x".repeat(10_000)});
            }
            let bound = prompt_upper_bound(&parsed(Endpoint::ChatCompletions, big));
            assert!(bound >= base + 10_000, "{field}: {bound}");
        }
        let image = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(100_000))}},
            {"type": "text", "text": "what is this?"}]}]});
        let bound = prompt_upper_bound(&parsed(Endpoint::ChatCompletions, image));
        assert!(
            (IMAGE_TOKENS_MAX..IMAGE_TOKENS_MAX + 200).contains(&bound),
            "{bound}"
        );
        // Anthropic's own `image` block (from `/v1/messages`), by URL: a few bytes that are
        // an image all the same; and inside a tool result.
        let image = json!({"model": "m", "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "image_url", "image_url": {"url": "https://x/z.png"}}]}]});
        let bound = prompt_upper_bound(&parsed(Endpoint::ChatCompletions, image));
        assert!(
            (2 * IMAGE_TOKENS_MAX..2 * IMAGE_TOKENS_MAX + 300).contains(&bound),
            "{bound}"
        );
    }

    #[test]
    fn output_counts_every_choice_and_the_larger_maximum() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "n": 3, "max_tokens": 10, "max_completion_tokens": 100});
        assert_eq!(
            output_upper_bound(&parsed(Endpoint::ChatCompletions, body), 7),
            300
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2});
        assert_eq!(
            output_upper_bound(&parsed(Endpoint::ChatCompletions, body), 7),
            14
        );
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "n": 128, "max_tokens": u64::MAX});
        assert_eq!(
            output_upper_bound(&parsed(Endpoint::ChatCompletions, body), 7),
            u64::MAX
        );
    }

    #[test]
    fn embedding_token_ids_count_one_each() {
        let body = json!({"model": "e", "input": [[1, 2, 3], [4]]});
        assert_eq!(prompt_upper_bound(&parsed(Endpoint::Embeddings, body)), 4);
        let body = json!({"model": "e", "input": [1, 2, 3]});
        assert_eq!(prompt_upper_bound(&parsed(Endpoint::Embeddings, body)), 3);
        let body = json!({"model": "e", "input": ["héllo", "a"]});
        assert_eq!(prompt_upper_bound(&parsed(Endpoint::Embeddings, body)), 7);
    }

    #[test]
    fn audio_and_files_are_named() {
        let audio = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "AA", "format": "wav"}}]}]});
        assert_eq!(
            unbounded_input(&parsed(Endpoint::ChatCompletions, audio)).as_deref(),
            Some("messages[0].content[1]")
        );
        let out = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
            "modalities": ["text", "audio"]});
        assert_eq!(
            unbounded_input(&parsed(Endpoint::ChatCompletions, out)).as_deref(),
            Some("modalities")
        );
        let document = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}}]}]});
        assert_eq!(
            unbounded_input(&parsed(Endpoint::ChatCompletions, document)).as_deref(),
            Some("messages[0].content[0]")
        );
        let plain = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            unbounded_input(&parsed(Endpoint::ChatCompletions, plain)),
            None
        );
    }
}
