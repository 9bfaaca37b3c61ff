//! Gemini `GenerateContentResponse` → OpenAI `chat.completion`, and what the stream shares
//! with it: finish reasons, tool calls (their ids carrying thought signatures, see
//! [`call_id`]) and usage.
//!
//! Usage (`UsageMetadata`) becomes OpenAI's `usage` with every component the gateway bills:
//! `promptTokenCount` (cached content included) and `toolUsePromptTokenCount` (built-in
//! tools' results fed back; outside `promptTokenCount`) are the prompt;
//! `candidatesTokenCount` and `thoughtsTokenCount` the completion, because `totalTokenCount`
//! is their sum with the prompt (so candidates leave thoughts out) and Gemini bills thinking
//! as output; `cachedContentTokenCount` is `cached_tokens`; `thoughtsTokenCount` is
//! `reasoning_tokens`; the prompt's `AUDIO` modality, less audio read from the cache, is
//! `audio_tokens`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::call_id::CallIds;
use super::completion_id;
use super::wire::{Candidate, GenerateContentResponse, ModalityTokenCount, Part, UsageMetadata};
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

/// The candidate's text parts joined (thought summaries left out); `None` if it has none.
pub(super) fn candidate_text(parts: &[Part]) -> Option<String> {
    let texts: Vec<&str> = parts
        .iter()
        .filter(|p| p.thought != Some(true))
        .filter_map(|p| p.text.as_deref())
        .collect();
    (!texts.is_empty()).then(|| texts.concat())
}

/// OpenAI tool calls (without stream indexes) from the `functionCall` parts, each id
/// carrying its part's thought signature.
pub(super) fn tool_calls(parts: &[Part], ids: &mut CallIds) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|p| Some((p.function_call.as_ref()?, p.thought_signature.as_deref())))
        .map(|(call, signature)| {
            let args = call.args.clone().unwrap_or_else(|| json!({}));
            json!({
                "id": ids.next(call.id.as_deref(), signature),
                "type": "function",
                "function": {"name": call.name, "arguments": args.to_string()},
            })
        })
        .collect()
}

/// The candidate's `index`, or its position.
pub(super) fn candidate_index(candidate: &Candidate, position: usize) -> u64 {
    candidate.index.unwrap_or(position as u64)
}

/// Why the prompt was refused, if it was (then there are no candidates).
pub(super) fn block_reason(answer: &GenerateContentResponse) -> Option<&str> {
    answer.prompt_feedback.as_ref()?.block_reason.as_deref()
}

/// Tokens of one modality in a breakdown.
fn modality(details: Option<&Vec<ModalityTokenCount>>, which: &str) -> u64 {
    details
        .into_iter()
        .flatten()
        .filter(|d| d.modality.as_deref() == Some(which))
        .filter_map(|d| d.token_count)
        .fold(0, u64::saturating_add)
}

/// Usage by component from `usageMetadata` (see the module note). Saturating: the counts
/// are the provider's word.
pub(super) fn usage(metadata: &UsageMetadata) -> Usage {
    let count = |v: Option<u64>| v.unwrap_or(0);
    let thoughts = count(metadata.thoughts_token_count);
    let audio = modality(metadata.prompt_tokens_details.as_ref(), "AUDIO")
        .saturating_sub(modality(metadata.cache_tokens_details.as_ref(), "AUDIO"));
    Usage {
        prompt_tokens: count(metadata.prompt_token_count)
            .saturating_add(count(metadata.tool_use_prompt_token_count)),
        completion_tokens: count(metadata.candidates_token_count).saturating_add(thoughts),
        cached_tokens: count(metadata.cached_content_token_count),
        audio_input_tokens: audio,
        reasoning_tokens: thoughts,
        ..Usage::default()
    }
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

/// A `GenerateContentResponse` from JSON: an error object, or fields of the wrong type, are
/// a malformed answer.
pub(super) fn parse(answer: &Value) -> Result<GenerateContentResponse, ProviderError> {
    no_error_object(answer)?;
    GenerateContentResponse::deserialize(answer)
        .map_err(|e| ProviderError::Malformed(format!("not a GenerateContentResponse: {e}")))
}

/// One OpenAI choice for one candidate.
fn choice(candidate: &Candidate, position: usize, ids: &mut CallIds) -> Value {
    let parts = candidate.parts();
    let calls = tool_calls(parts, ids);
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
        "finish_reason": finish_reason(candidate.finish_reason.as_deref(), !calls.is_empty()),
    })
}

/// A `GenerateContentResponse` as a `chat.completion` created at `created_s`, with its usage.
pub(super) fn completion(
    answer: &Value,
    model: &str,
    created_s: u64,
) -> Result<(Value, Option<Usage>), ProviderError> {
    let answer = parse(answer)?;
    if answer.candidates.is_none() && answer.prompt_feedback.is_none() {
        return Err(ProviderError::Malformed(
            "neither `candidates` nor `promptFeedback` in the answer".into(),
        ));
    }
    let candidates = answer.candidates.as_deref().unwrap_or_default();
    let mut ids = CallIds::new(answer.response_id.as_deref());
    let mut choices: Vec<Value> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| choice(c, i, &mut ids))
        .collect();
    if choices.is_empty() {
        if block_reason(&answer).is_none() {
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
    let usage = answer.usage_metadata.as_ref().map(usage);
    let mut out = json!({
        "id": completion_id(answer.response_id.as_deref()),
        "object": "chat.completion",
        "created": created_s,
        "model": answer.model_version.as_deref().unwrap_or(model),
        "choices": choices,
    });
    if let Some(u) = &usage {
        out["usage"] = u.to_openai();
    }
    Ok((out, usage))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::call_id;
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
        let (c, usage) = completion(&text_answer(), "requested", 1_800_000_000).unwrap();
        assert_eq!(c["id"], "chatcmpl-mZQIaLa1Bq6Y1MkPy5vHsQk");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "gemini-2.0-flash");
        assert_eq!(c["created"], 1_800_000_000, "the gateway's clock");
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "logprobs": null, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "In a realm of silicon dreams...", "refusal": null}}])
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 398, "total_tokens": 406,
                   "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}})
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
        let (c, usage) = completion(&answer, "gemini-2.5-flash", 0).unwrap();
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
        let (c, _) = completion(&answer, "m", 0).unwrap();
        let choice = &c["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], Value::Null);
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        // No id from Gemini: one made from the answer, never `call_0` again in the next one.
        let id = calls[0]["id"].as_str().unwrap();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        let (again, _) = completion(&answer, "m", 0).unwrap();
        assert_ne!(again["choices"][0]["message"]["tool_calls"][0]["id"], id);
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

    /// Gemini 3's answer to a function-calling request (the thought-signatures guide): the
    /// signature rides in the call's id, and ids are the same for every read of the answer.
    #[test]
    fn a_call_id_carries_its_thought_signature() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [
                {"functionCall": {"name": "check_flight", "args": {"flight": "AA100"}},
                 "thoughtSignature": "<Signature A>"},
                {"functionCall": {"name": "check_weather", "args": {"city": "Paris"}}}]},
                "finishReason": "STOP", "index": 0}],
            "responseId": "r-42"
        });
        let (c, _) = completion(&answer, "gemini-3-pro-preview", 0).unwrap();
        let calls = c["choices"][0]["message"]["tool_calls"].as_array().unwrap();
        let first = calls[0]["id"].as_str().unwrap();
        assert_eq!(call_id::signature(first).as_deref(), Some("<Signature A>"));
        // Parallel calls: only the first part has a signature (and so only its id).
        assert_eq!(call_id::signature(calls[1]["id"].as_str().unwrap()), None);
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        let (again, _) = completion(&answer, "gemini-3-pro-preview", 0).unwrap();
        assert_eq!(again["choices"][0]["message"]["tool_calls"], json!(calls));
    }

    /// Every `usageMetadata` count lands in the component it is billed as.
    #[test]
    fn usage_by_component() {
        let answer = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 1000, "cachedContentTokenCount": 600,
                "toolUsePromptTokenCount": 50, "candidatesTokenCount": 20, "thoughtsTokenCount": 30,
                "totalTokenCount": 1100,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 900}, {"modality": "AUDIO", "tokenCount": 100}],
                "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 560}, {"modality": "AUDIO", "tokenCount": 40}]}
        });
        let (c, usage) = completion(&answer, "gemini-2.5-pro", 0).unwrap();
        let usage = usage.unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 1050,
                completion_tokens: 50,
                cached_tokens: 600,
                audio_input_tokens: 60,
                reasoning_tokens: 30,
                ..Usage::default()
            }
        );
        // What the gateway reads back from the answer is the same.
        assert_eq!(Usage::from_openai(&c["usage"]), Some(usage));
        assert_eq!(c["usage"]["total_tokens"], 1100);
    }

    #[test]
    fn safety_blocks_are_content_filtered() {
        let blocked_prompt = json!({
            "promptFeedback": {"blockReason": "SAFETY", "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12}
        });
        let (c, usage) = completion(&blocked_prompt, "m", 0).unwrap();
        assert_eq!(
            c["choices"],
            json!([{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null},
                    "logprobs": null, "finish_reason": "content_filter"}])
        );
        assert_eq!(usage.unwrap().prompt_tokens, 12);
        let blocked_answer = json!({"candidates": [{"finishReason": "SAFETY", "index": 0,
            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "MEDIUM", "blocked": true}]}]});
        let (c, usage) = completion(&blocked_answer, "m", 0).unwrap();
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
        match completion(&error, "m", 0) {
            Err(ProviderError::Malformed(m)) => assert_eq!(m, "An internal error has occurred."),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            completion(&json!({"usageMetadata": {}}), "m", 0),
            Err(ProviderError::Malformed(_))
        ));
        assert!(matches!(
            completion(&json!({"candidates": []}), "m", 0),
            Err(ProviderError::Malformed(_))
        ));
    }
}
