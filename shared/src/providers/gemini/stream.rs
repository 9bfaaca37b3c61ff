//! `streamGenerateContent?alt=sse` events → OpenAI `chat.completion.chunk`s.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use futures_util::stream;
use serde_json::{Map, Value, json};

use super::call_id::CallIds;
use super::completion_id;
use super::response::{
    block_reason, candidate_index, candidate_text, finish_reason, parse, tool_calls, usage,
};
use super::wire::{Candidate, UsageMetadata};
use crate::providers::http::{self, stream_error};
use crate::providers::{ChunkStream, ProviderError, sse};

/// Turns streamed `GenerateContentResponse`s into OpenAI chunks, remembering what one
/// answer needs across events: its id and model, which choices have started, how many tool
/// calls each has made, the ids they got, and the latest usage.
#[derive(Debug)]
pub(super) struct ChunkTranslator {
    id: Option<String>,
    model: String,
    created: u64,
    started: HashSet<u64>,
    calls: HashMap<u64, u64>,
    ids: CallIds,
    usage: Option<UsageMetadata>,
}

impl ChunkTranslator {
    pub(super) fn new(model: &str, created_s: u64) -> Self {
        Self {
            id: None,
            model: model.to_owned(),
            created: created_s,
            started: HashSet::new(),
            calls: HashMap::new(),
            ids: CallIds::new(None),
            usage: None,
        }
    }

    /// The chunks for one event, or the error it reports.
    pub(super) fn event(&mut self, data: &Value) -> Result<Vec<Value>, ProviderError> {
        if let Some(error) = stream_error(data) {
            return Err(error);
        }
        let event = parse(data)?;
        if self.id.is_none() {
            // Every event carries the answer's `responseId`; the first one names it.
            self.id = Some(completion_id(event.response_id.as_deref()));
            self.ids = CallIds::new(event.response_id.as_deref());
            if let Some(version) = &event.model_version {
                self.model.clone_from(version);
            }
        }
        if let Some(metadata) = &event.usage_metadata {
            self.usage = Some(metadata.clone());
        }
        let candidates = event.candidates.as_deref().unwrap_or_default();
        if candidates.is_empty() && block_reason(&event).is_some() {
            let mut chunks = self.start(0).into_iter().collect::<Vec<_>>();
            chunks.push(self.chunk(0, json!({}), json!("content_filter")));
            return Ok(chunks);
        }
        let mut chunks = Vec::new();
        for (position, candidate) in candidates.iter().enumerate() {
            chunks.extend(self.candidate(candidate, candidate_index(candidate, position)));
        }
        Ok(chunks)
    }

    /// A delta with the role alone, if this choice has not started yet.
    fn start(&mut self, index: u64) -> Option<Value> {
        self.started
            .insert(index)
            .then(|| self.chunk(index, json!({"role": "assistant"}), Value::Null))
    }

    /// The chunks of one candidate in one event: its text and calls, then its finish.
    fn candidate(&mut self, candidate: &Candidate, index: u64) -> Vec<Value> {
        let parts = candidate.parts();
        let mut delta = Map::new();
        if self.started.insert(index) {
            delta.insert("role".into(), json!("assistant"));
        }
        if let Some(text) = candidate_text(parts) {
            delta.insert("content".into(), json!(text));
        }
        let calls = tool_calls(parts, &mut self.ids);
        if !calls.is_empty() {
            let made = self.calls.entry(index).or_insert(0);
            let indexed: Vec<Value> = calls
                .into_iter()
                .map(|mut call| {
                    call["index"] = json!(*made);
                    *made += 1;
                    call
                })
                .collect();
            delta.insert("tool_calls".into(), json!(indexed));
        }
        let mut chunks = Vec::new();
        if !delta.is_empty() {
            chunks.push(self.chunk(index, Value::Object(delta), Value::Null));
        }
        let reason = candidate
            .finish_reason
            .as_deref()
            .filter(|r| *r != "FINISH_REASON_UNSPECIFIED");
        if let Some(reason) = reason {
            let called = self.calls.get(&index).is_some_and(|n| *n > 0);
            let finish = finish_reason(Some(reason), called);
            chunks.push(self.chunk(index, json!({}), json!(finish)));
        }
        chunks
    }

    /// The closing chunk with the usage, if Gemini reported any.
    pub(super) fn finish(&self) -> Option<Value> {
        let metadata = self.usage.as_ref()?;
        let mut chunk = self.head();
        chunk["choices"] = json!([]);
        chunk["usage"] = usage(metadata).to_openai();
        Some(chunk)
    }

    fn head(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        })
    }

    fn chunk(&self, index: u64, delta: Value, finish: Value) -> Value {
        let mut chunk = self.head();
        chunk["choices"] =
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        chunk
    }
}

/// The chunks of a whole stream: each event translated, then the usage chunk. Ends after
/// the first error.
pub(super) fn chunk_stream(events: sse::EventStream, translator: ChunkTranslator) -> ChunkStream {
    let state = (events, translator, false);
    let batches = stream::unfold(state, |(mut events, mut translator, ended)| async move {
        if ended {
            return None;
        }
        let (batch, ended) = match events.next().await {
            Some(Ok(event)) => match translator.event(&event.data) {
                Ok(chunks) => (chunks.into_iter().map(Ok).collect(), false),
                Err(error) => (vec![Err(error)], true),
            },
            Some(Err(error)) => (vec![Err(error)], true),
            None => (translator.finish().into_iter().map(Ok).collect(), true),
        };
        Some((batch, (events, translator, ended)))
    });
    http::boxed(batches.flat_map(stream::iter))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;
    use crate::gateway::stream::Assembler;
    use crate::providers::Usage;

    /// Feeds SSE text (as `streamGenerateContent?alt=sse` sends it) through the translator.
    async fn translate_stream(sse_text: &'static str) -> Vec<Result<Value, ProviderError>> {
        let bytes = stream::iter([Ok(Bytes::from_static(sse_text.as_bytes()))]);
        let events = sse::json_events(bytes);
        chunk_stream(events, ChunkTranslator::new("requested", 0))
            .collect()
            .await
    }

    #[tokio::test]
    async fn streamed_text_becomes_chunks_and_a_usage_chunk() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"},\"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue\"}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 5,\"totalTokenCount\": 13},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n"
        ))
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 4, "{chunks:?}");
        assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"
            && c["id"] == "chatcmpl-r1"
            && c["model"] == "gemini-2.0-flash"));
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": "The"})
        );
        assert_eq!(
            chunks[1]["choices"][0]["delta"],
            json!({"content": " sky is blue"})
        );
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(
            chunks[3]["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 5, "total_tokens": 13,
                   "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}})
        );
        let mut assembler = Assembler::default();
        chunks.iter().for_each(|c| assembler.add(c));
        let done = assembler.completion();
        assert_eq!(done["choices"][0]["message"]["content"], "The sky is blue");
        assert_eq!(done["choices"][0]["finish_reason"], "stop");
        assert_eq!(assembler.usage(), Some(Usage::plain(8, 5)));
    }

    #[tokio::test]
    async fn streamed_function_calls_are_indexed_tool_call_deltas() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"role\": \"model\", \"parts\": [",
            "{\"functionCall\": {\"name\": \"get_weather\", \"args\": {\"city\": \"Oslo\"}}}]}, \"index\": 0}]}\n\n",
            "data: {\"candidates\": [{\"content\": {\"role\": \"model\", \"parts\": [",
            "{\"functionCall\": {\"name\": \"get_weather\", \"args\": {\"city\": \"Bergen\"}}}]}, \"finishReason\": \"STOP\", \"index\": 0}],",
            "\"usageMetadata\": {\"promptTokenCount\": 20, \"candidatesTokenCount\": 10, \"totalTokenCount\": 30}}\n\n"
        ))
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        let first = &chunks[0]["choices"][0]["delta"];
        assert_eq!(first["role"], "assistant");
        let id = first["tool_calls"][0]["id"].as_str().unwrap();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_eq!(
            first["tool_calls"],
            json!([{"index": 0, "id": id, "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}])
        );
        let second = &chunks[1]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(second["index"], 1);
        assert!(second["id"].as_str().unwrap().starts_with("call_"));
        assert_ne!(second["id"], id);
        let mut assembler = Assembler::default();
        chunks.iter().for_each(|c| assembler.add(c));
        let done = assembler.completion();
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        let calls = done["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Bergen\"}");
        assert_eq!(assembler.usage().unwrap().prompt_tokens, 20);
    }

    /// A streamed Gemini 3 call: its id carries the signature, and is the id the same
    /// answer gets unstreamed (both come from the `responseId`).
    #[tokio::test]
    async fn a_streamed_call_id_carries_its_thought_signature() {
        let event = json!({"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "lookup", "args": {"q": 1}}, "thoughtSignature": "c2ln"}]},
            "finishReason": "STOP", "index": 0}], "responseId": "r7"});
        let text: &'static str = format!("data: {event}\n\n").leak();
        let chunks: Vec<Value> = translate_stream(text)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let id = &chunks[0]["choices"][0]["delta"]["tool_calls"][0]["id"];
        assert_eq!(
            super::super::call_id::signature(id.as_str().unwrap()).as_deref(),
            Some("c2ln")
        );
        let (whole, _) = super::super::response::completion(&event, "m", 0).unwrap();
        assert_eq!(&whole["choices"][0]["message"]["tool_calls"][0]["id"], id);
    }

    #[tokio::test]
    async fn an_error_event_ends_the_stream_with_an_error() {
        let chunks = translate_stream(concat!(
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hi\"}], \"role\": \"model\"}}]}\n\n",
            "data: {\"error\": {\"code\": 503, \"message\": \"The model is overloaded.\", \"status\": \"UNAVAILABLE\"}}\n\n",
            "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"never\"}], \"role\": \"model\"}}]}\n\n"
        ))
        .await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(
            chunks[0].as_ref().unwrap()["choices"][0]["delta"]["content"],
            "Hi"
        );
        // Google's `error.code` keeps its meaning: a 503 is retryable as such.
        assert!(matches!(
            &chunks[1],
            Err(ProviderError::Status { status: 503, message: Some(m), .. })
                if m == "The model is overloaded."
        ));
    }

    #[tokio::test]
    async fn a_blocked_streamed_prompt_is_content_filtered() {
        let chunks = translate_stream(
            "data: {\"promptFeedback\": {\"blockReason\": \"PROHIBITED_CONTENT\"}, \"usageMetadata\": {\"promptTokenCount\": 4, \"totalTokenCount\": 4}}\n\n",
        )
        .await;
        let chunks: Vec<Value> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant"})
        );
        assert_eq!(chunks[1]["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(chunks[2]["usage"]["prompt_tokens"], 4);
    }
}
