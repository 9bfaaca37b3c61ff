//! Gemini `GenerateContentResponse` → OpenAI `chat.completion`, and what the stream shares
//! with it: finish reasons, tool calls, usage.

use serde_json::{Value, json};

use super::{completion_id, unix_now};
use crate::providers::http::error_message;
use crate::providers::{ProviderError, Usage};

/// OpenAI's `finish_reason` for a Gemini `finishReason`; any function call means `tool_calls`.
pub(super) fn finish_reason(reason: Option<&str>, called: bool) -> &'static str {
    if called {
        return "tool_calls";
    }
    match reason {
        Some("MAX_TOKENS") => "length",
        Some(
            "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY",
        ) => "content_filter",
        _ => "stop",
    }
}

/// Hands out `call_0`, `call_1`, … for function calls Gemini gave no id.
#[derive(Debug, Default)]
pub(super) struct CallIds(u64);

impl CallIds {
    pub(super) fn id_for(&mut self, call: &Value) -> String {
        if let Some(id) = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
        {
            return id.to_owned();
        }
        let id = format!("call_{}", self.0);
        self.0 += 1;
        id
    }
}

/// A candidate's parts.
pub(super) fn parts(candidate: &Value) -> &[Value] {
    candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
}

/// The candidate's text parts joined (thought summaries left out); `None` if it has none.
pub(super) fn candidate_text(parts: &[Value]) -> Option<String> {
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// OpenAI tool calls (without stream indexes) from the `functionCall` parts.
pub(super) fn tool_calls(parts: &[Value], ids: &mut CallIds) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|p| p.get("functionCall"))
        .map(|call| {
            let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
            json!({
                "id": ids.id_for(call),
                "type": "function",
                "function": {
                    "name": call.get("name").and_then(Value::as_str).unwrap_or(""),
                    "arguments": args.to_string(),
                },
            })
        })
        .collect()
}

/// The candidate's `index`, or its position.
pub(super) fn candidate_index(candidate: &Value, position: usize) -> u64 {
    candidate
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64)
}

/// Why the prompt was refused, if it was (then there are no candidates).
pub(super) fn block_reason(answer: &Value) -> Option<&str> {
    answer
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
}

/// Usage from `usageMetadata`: thinking tokens are billed as output, so they count as
/// completion tokens.
pub(super) fn usage(metadata: &Value) -> Usage {
    let count = |field: &str| metadata.get(field).and_then(Value::as_u64).unwrap_or(0);
    Usage::plain(
        count("promptTokenCount"),
        count("candidatesTokenCount").saturating_add(count("thoughtsTokenCount")),
    )
}

/// OpenAI's `usage` object for `usageMetadata`.
pub(super) fn usage_json(metadata: &Value) -> Value {
    let u = usage(metadata);
    let total = metadata
        .get("totalTokenCount")
        .and_then(Value::as_u64)
        .unwrap_or(u.total());
    let mut out = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": total,
    });
    if let Some(cached) = metadata
        .get("cachedContentTokenCount")
        .and_then(Value::as_u64)
    {
        out["prompt_tokens_details"] = json!({ "cached_tokens": cached });
    }
    if let Some(thoughts) = metadata.get("thoughtsTokenCount").and_then(Value::as_u64) {
        out["completion_tokens_details"] = json!({ "reasoning_tokens": thoughts });
    }
    out
}

/// Refuses a 200 answer that carries an `error` object instead of a result.
pub(super) fn no_error_object(answer: &Value) -> Result<(), ProviderError> {
    if answer.get("error").is_some_and(|e| !e.is_null()) {
        return Err(ProviderError::Malformed(
            error_message(answer).unwrap_or_else(|| "error object in a 200 answer".into()),
        ));
    }
    Ok(())
}

/// Refuses 200 answers that are not a `GenerateContentResponse`.
fn check_answer(answer: &Value) -> Result<(), ProviderError> {
    no_error_object(answer)?;
    if answer.get("candidates").is_none() && answer.get("promptFeedback").is_none() {
        return Err(ProviderError::Malformed(
            "neither `candidates` nor `promptFeedback` in the answer".into(),
        ));
    }
    Ok(())
}

/// One OpenAI choice for one candidate.
fn choice(candidate: &Value, position: usize, ids: &mut CallIds) -> Value {
    let parts = parts(candidate);
    let calls = tool_calls(parts, ids);
    let reason = candidate.get("finishReason").and_then(Value::as_str);
    let mut message = json!({
        "role": "assistant",
        "content": candidate_text(parts),
        "refusal": null,
    });
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    json!({
        "index": candidate_index(candidate, position),
        "message": message,
        "logprobs": null,
        "finish_reason": finish_reason(reason, !calls.is_empty()),
    })
}

/// A `GenerateContentResponse` as a `chat.completion`, with its usage.
pub(super) fn completion(
    answer: &Value,
    model: &str,
) -> Result<(Value, Option<Usage>), ProviderError> {
    check_answer(answer)?;
    let candidates = answer
        .get("candidates")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let mut ids = CallIds::default();
    let mut choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| choice(c, i, &mut ids))
        .collect();
    if choices.is_empty() {
        if block_reason(answer).is_none() {
            return Err(ProviderError::Malformed(
                "an answer without candidates".into(),
            ));
        }
        choices.push(json!({
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null},
            "logprobs": null,
            "finish_reason": "content_filter",
        }));
    }
    let metadata = answer.get("usageMetadata");
    let mut out = json!({
        "id": completion_id(answer),
        "object": "chat.completion",
        "created": unix_now(),
        "model": answer.get("modelVersion").and_then(Value::as_str).unwrap_or(model),
        "choices": choices,
    });
    if let Some(m) = metadata {
        out["usage"] = usage_json(m);
    }
    Ok((out, metadata.map(usage)))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The `generateContent` response example of Google's API reference.
    fn text_answer() -> Value {
        json!({
            "candidates": [{
                "content": {"parts": [{"text": "In a realm of "}, {"text": "silicon dreams..."}], "role": "model"},
                "finishReason": "STOP",
                "index": 0,
                "safetyRatings": [
                    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
                    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}
                ]
            }],
            "usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 398, "totalTokenCount": 406,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]},
            "modelVersion": "gemini-2.0-flash",
            "responseId": "mZQIaLa1Bq6Y1MkPy5vHsQk"
        })
    }

    #[test]
    fn a_text_answer_becomes_a_chat_completion() {
        let (c, usage) = completion(&text_answer(), "requested").unwrap();
        assert_eq!(c["id"], "chatcmpl-mZQIaLa1Bq6Y1MkPy5vHsQk");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "gemini-2.0-flash");
        assert!(c["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "logprobs": null, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "In a realm of silicon dreams...", "refusal": null}}])
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 398, "total_tokens": 406})
        );
        assert_eq!(usage, Some(Usage::plain(8, 398)));
    }

    #[test]
    fn thinking_tokens_count_as_completion_and_thoughts_are_not_content() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"text": "Let me think", "thought": true}, {"text": "42"}]}, "finishReason": "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1, "thoughtsTokenCount": 30, "totalTokenCount": 36}
        });
        let (c, usage) = completion(&answer, "gemini-2.5-flash").unwrap();
        assert_eq!(c["model"], "gemini-2.5-flash");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert_eq!(c["choices"][0]["message"]["content"], "42");
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert_eq!(c["usage"]["completion_tokens"], 31);
        assert_eq!(
            c["usage"]["completion_tokens_details"]["reasoning_tokens"],
            30
        );
        assert_eq!(usage.unwrap().completion_tokens, 31);
    }

    /// The function-calling example of Google's guide, plus a call that carries an id.
    #[test]
    fn function_calls_become_tool_calls() {
        let answer = json!({
            "candidates": [{
                "content": {"role": "model", "parts": [
                    {"functionCall": {"name": "find_theaters", "args": {"location": "Mountain View, CA", "movie": "Barbie"}}},
                    {"functionCall": {"id": "fc-7", "name": "get_showtimes", "args": {"theater": "AMC"}}}
                ]},
                "finishReason": "STOP",
                "index": 0
            }],
            "usageMetadata": {"promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 70},
            "modelVersion": "gemini-2.0-flash"
        });
        let (c, _) = completion(&answer, "m").unwrap();
        let choice = &c["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "call_0");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "find_theaters");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(
            args,
            json!({"location": "Mountain View, CA", "movie": "Barbie"})
        );
        assert_eq!(calls[1]["id"], "fc-7");
        assert_eq!(calls[1]["function"]["arguments"], "{\"theater\":\"AMC\"}");
    }

    #[test]
    fn safety_blocks_are_content_filtered() {
        let blocked_prompt = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}
        });
        let (c, usage) = completion(&blocked_prompt, "m").unwrap();
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null},
                    "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(usage.unwrap().prompt_tokens, 12);
        let blocked_answer = json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "MEDIUM", "blocked": true}]}]});
        let (c, usage) = completion(&blocked_answer, "m").unwrap();
        assert_eq!(c["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(c["choices"][0]["message"]["content"], Value::Null);
        assert!(usage.is_none());
        for (reason, expected) in [
            ("RECITATION", "content_filter"),
            ("PROHIBITED_CONTENT", "content_filter"),
            ("SPII", "content_filter"),
            ("BLOCKLIST", "content_filter"),
            ("IMAGE_SAFETY", "content_filter"),
            ("OTHER", "stop"),
            ("MALFORMED_FUNCTION_CALL", "stop"),
        ] {
            assert_eq!(finish_reason(Some(reason), false), expected, "{reason}");
        }
    }

    #[test]
    fn error_and_shapeless_answers_are_malformed() {
        let error = json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}});
        match completion(&error, "m") {
            Err(ProviderError::Malformed(m)) => assert_eq!(m, "An internal error has occurred."),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            completion(&json!({"usageMetadata": {}}), "m"),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            completion(&json!({"candidates": []}), "m"),
            Err(ProviderError::Malformed(_))
        ));
    }
}
