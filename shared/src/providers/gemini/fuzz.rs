//! Property tests: any answer, event, embedding list or request is translated or refused
//! without panicking, and a stream reads the same however the network cuts it.

use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::embeddings::{base64_vector, embedding_inputs, embedding_vectors};
use super::request::generate_request;
use super::response::{completion, usage};
use super::stream::{ChunkTranslator, chunk_stream};
use super::upstream_model;
use super::wire::UsageMetadata;
use crate::fuzzing::{
    self, assemble, block_on, cuts, event_stream, json_value, mutated, split, sse_text, text,
};
use crate::providers::ProviderError;

fn valid_answer() -> Value {
    json!({"candidates": [{"index": 0, "finishReason": "STOP", "content": {"role": "model", "parts": [
            {"text": "Hi"}, {"text": "hmm", "thought": true}, {"functionCall": {"id": "c", "name": "f", "args": {"a": 1}}}]}}],
        "promptFeedback": {"blockReason": "SAFETY"}, "modelVersion": "gemini-2.0", "responseId": "r1",
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "thoughtsTokenCount": 5, "totalTokenCount": 12, "cachedContentTokenCount": 1}})
}

fn valid_request() -> Value {
    json!({"model": "models/gemini-2.0-flash", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
            {"type": "input_audio", "input_audio": {"data": "UklG", "format": "wav"}}]},
        {"role": "assistant", "content": "ok", "tool_calls": [{"id": "c1__thought__c2ln", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1__thought__c2ln", "content": "{\"r\":2}"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}],
        "tool_choice": "required", "stop": "x", "max_tokens": 10, "temperature": 0.5, "n": 2, "seed": 1,
        "reasoning_effort": "low", "user": "u",
        "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}})
}

fn valid_embedding_request() -> Value {
    json!({"model": "gemini-embedding-001", "input": ["a", "b"], "dimensions": 8, "encoding_format": "base64"})
}

/// The documents the properties mutate are valid, so mutations start from deep paths.
#[test]
fn the_documents_mutated_are_valid() {
    let chat = valid_request().as_object().cloned().unwrap_or_default();
    assert!(generate_request(&chat).is_ok());
    let embeddings = valid_embedding_request()
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(embedding_inputs(&embeddings).unwrap().len(), 2);
}

/// A Gemini stream: whole `GenerateContentResponse`s with text, a function call, the
/// finish and usage. Returns the SSE bytes and the text.
fn valid_stream() -> impl Strategy<Value = (Vec<u8>, String)> {
    (proptest::collection::vec(text(), 1..6), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(
        |(pieces, call, prompt, output)| {
            let mut events: Vec<(Option<&str>, Value)> = pieces
                .iter()
                .map(|p| (None, json!({"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                    "modelVersion": "gemini-2.0", "responseId": "r1"})))
                .collect();
            if call {
                events.push((None, json!({"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]}}]})));
            }
            events.push((None, json!({"candidates": [{"content": {"parts": []}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": output, "thoughtsTokenCount": output}})));
            (sse_text(&events), pieces.concat())
        },
    )
}

fn read(chunks: Vec<Bytes>) -> Result<Value, Vec<String>> {
    let chunks = block_on(
        chunk_stream(event_stream(chunks), ChunkTranslator::new("m", 0)).collect::<Vec<_>>(),
    );
    assemble(chunks)
}

/// `candidatesTokenCount + thoughtsTokenCount` (and the total) overflowed on counts near
/// `u64::MAX`: a panic in a debug build. Found by
/// `fuzz_a_stream_reads_the_same_however_it_is_cut`.
#[test]
fn regression_huge_token_counts_saturate() {
    let metadata: UsageMetadata = serde_json::from_value(
        json!({"promptTokenCount": 1, "candidatesTokenCount": u64::MAX, "thoughtsTokenCount": 2,
               "toolUsePromptTokenCount": u64::MAX}),
    )
    .unwrap();
    assert_eq!(usage(&metadata).completion_tokens, u64::MAX);
    assert_eq!(usage(&metadata).prompt_tokens, u64::MAX);
    assert_eq!(usage(&metadata).to_openai()["total_tokens"], u64::MAX);
}

/// A Gemini answer of text and function calls (each maybe signed), a finish reason and
/// usage; with or without a `responseId`.
fn gemini_answer() -> impl Strategy<Value = Value> {
    let call = (
        "[a-z][a-z_]{0,7}",
        any::<i64>(),
        proptest::option::of("[A-Za-z0-9+/]{4,40}={0,2}"),
    )
        .prop_map(|(name, n, signature)| {
            let mut part = json!({"functionCall": {"name": name, "args": {"n": n}}});
            if let Some(s) = signature {
                part["thoughtSignature"] = json!(s);
            }
            part
        });
    (
        proptest::option::of("[A-Za-z][a-z .]{0,20}"),
        proptest::collection::vec(call, 0..4),
        prop_oneof![Just("STOP"), Just("MAX_TOKENS"), Just("SAFETY"), Just("OTHER")],
        proptest::option::of("[a-zA-Z0-9]{1,12}"),
        (0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40),
    )
        .prop_map(|(text, calls, finish, id, (prompt, cached, candidates, thoughts))| {
            let mut parts: Vec<Value> = text.iter().map(|t| json!({ "text": t })).collect();
            parts.extend(calls);
            let mut answer = json!({
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt + cached, "cachedContentTokenCount": cached,
                    "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts}
            });
            if let Some(id) = id {
                answer["responseId"] = json!(id);
            }
            answer
        })
}

proptest! {
    #![proptest_config(fuzzing::config(fuzzing::CASES))]

    #[test]
    fn fuzz_any_answer(answer in prop_oneof![json_value(), mutated(valid_answer())]) {
        match completion(&answer, "m", 0) {
            Ok((out, usage)) => {
                prop_assert!(out["choices"].as_array().is_some_and(|c| !c.is_empty()));
                prop_assert_eq!(usage.is_some(), out.get("usage").is_some());
            }
            Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
        }
    }

    #[test]
    fn fuzz_any_events(events in proptest::collection::vec(prop_oneof![json_value(), mutated(valid_answer())], 0..8)) {
        let mut translator = ChunkTranslator::new("m", 0);
        for data in &events {
            if let Ok(chunks) = translator.event(data) {
                for chunk in chunks {
                    prop_assert!(chunk["choices"].is_array());
                }
            }
        }
        let _ = translator.finish();
    }

    #[test]
    fn fuzz_any_embedding_answer(
        body in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            mutated(json!({"embeddings": [{"values": [0.1, -2, 3e10]}, {"values": []}]})).prop_map(|v| v.to_string().into_bytes()),
        ],
        expected in 0usize..4,
    ) {
        match embedding_vectors(&body, expected) {
            Ok(vectors) => {
                prop_assert_eq!(vectors.len(), expected);
                for v in &vectors {
                    let _ = base64_vector(v);
                }
            }
            Err(e) => prop_assert!(matches!(e, ProviderError::Malformed(_))),
        }
    }

    #[test]
    fn fuzz_any_request(
        body in prop_oneof![json_value(), mutated(valid_request()), mutated(valid_embedding_request())],
    ) {
        let map = body.as_object().cloned().unwrap_or_default();
        match generate_request(&map) {
            Ok(out) => prop_assert!(serde_json::to_value(out).unwrap()["contents"].is_array()),
            Err(e) => prop_assert!(matches!(e, ProviderError::Status { status: 400, .. }), "{:?}", e),
        }
        if let Ok(inputs) = embedding_inputs(&map) {
            prop_assert!(!inputs.is_empty());
        }
        let _ = upstream_model(&map);
    }

    #[test]
    fn fuzz_a_stream_reads_the_same_however_it_is_cut((bytes, text) in valid_stream(), at in cuts(16)) {
        let whole = read(vec![Bytes::from(bytes.clone())]);
        let done = whole.clone().unwrap();
        prop_assert_eq!(done["choices"][0]["message"]["content"].as_str(), Some(text.as_str()));
        // Ids Gemini does not give are random; compare the rest.
        let without_id = |v: Result<Value, Vec<String>>| v.map(|mut v| { v["id"] = Value::Null; v });
        prop_assert_eq!(without_id(read(split(&bytes, &at))), without_id(whole));
    }

    #[test]
    fn fuzz_any_stream_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512), at in cuts(6)) {
        let _ = read(split(&bytes, &at));
    }

    /// OpenAI → Gemini → OpenAI: an answer's assistant message, sent back as clients send it
    /// (`id`, `type`, `function`), gives Gemini the parts it answered with, signatures where
    /// they were; the streamed answer has the same calls, finish and usage.
    #[test]
    fn fuzz_an_answer_round_trips(answer in gemini_answer()) {
        let parts = answer["candidates"][0]["content"]["parts"].clone();
        let (completion, usage) = completion(&answer, "gemini-3-pro-preview", 0).unwrap();
        let usage = usage.unwrap();
        let metadata = &answer["usageMetadata"];
        prop_assert_eq!(Some(usage.prompt_tokens), metadata["promptTokenCount"].as_u64());
        prop_assert_eq!(Some(usage.cached_tokens), metadata["cachedContentTokenCount"].as_u64());
        prop_assert_eq!(Some(usage.reasoning_tokens), metadata["thoughtsTokenCount"].as_u64());
        let message = &completion["choices"][0]["message"];
        let calls: Vec<Value> = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| json!({"id": c["id"], "type": "function", "function": c["function"]}))
            .collect();
        let mut messages = vec![
            json!({"role": "user", "content": "q"}),
            json!({"role": "assistant", "content": message["content"], "tool_calls": calls}),
        ];
        for c in &calls {
            messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": "ok"}));
        }
        let body = json!({"model": "gemini-3-pro-preview", "messages": messages});
        let request = serde_json::to_value(generate_request(body.as_object().unwrap()).unwrap()).unwrap();
        if parts.as_array().is_some_and(Vec::is_empty) {
            // Nothing said: no turn (Gemini refuses empty ones).
            prop_assert_eq!(request["contents"].as_array().map(Vec::len), Some(1));
        } else {
            prop_assert_eq!(&request["contents"][1]["parts"], &parts);
        }

        let whole = read(vec![Bytes::from(sse_text(&[(None, answer.clone())]))]).unwrap();
        let streamed = &whole["choices"][0];
        prop_assert_eq!(&streamed["finish_reason"], &completion["choices"][0]["finish_reason"]);
        prop_assert_eq!(&whole["usage"], &completion["usage"]);
        let strip_ids = |calls: &Value| -> Value {
            calls.as_array().into_iter().flatten()
                .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                .collect()
        };
        prop_assert_eq!(strip_ids(&streamed["message"]["tool_calls"]), strip_ids(&message["tool_calls"]));
        if answer.get("responseId").is_some() {
            prop_assert_eq!(&streamed["message"]["tool_calls"], &message["tool_calls"]);
        }
    }
}
