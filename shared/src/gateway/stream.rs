//! Streamed answers: provider chunks (OpenAI `chat.completion.chunk` objects) go out to the
//! client as server-sent events, and on the way they are metered and assembled.
//!
//! - Metering: the usage chunk (providers are always asked for one) settles the request's
//!   reservation to the real tokens and cost; clients that did not ask for
//!   `stream_options.include_usage` never see it.
//! - Assembling: the chunks are folded back into one `chat.completion`, which is cached, so a
//!   later identical request — streamed or not — is a cache hit; a hit on a streamed request
//!   is replayed as events ([`replay`]). Anthropic's extensions (`reasoning_content`,
//!   `thinking_blocks` with their signatures, a choice's `stop_sequence`; see
//!   `providers::extensions`) are folded and replayed too.
//! - A client that disconnects drops this stream, which drops the provider's response and
//!   closes its connection (cancelling the upstream call); what was used so far is settled.
//! - When the provider's stream ends, the [`Finish`] (settlement, cache write, the usage
//!   event's totals) runs after the handler returned: in `sluice serve` as a spawned task, so
//!   the client's last event waits for nothing; inside a Lambda invocation
//!   ([`crate::invocation`]) it is awaited before the final event is written, because Lambda
//!   freezes the environment once the response ends. There a stream still running at the
//!   invocation's deadline (minus the margin) is cut off with an error event and settled.
//!   The stream keeps the request's span, so the `stream finished` line carries the request id.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, Stream, StreamExt};
use serde_json::{Map, Value, json};
use tracing::Instrument;

use super::CacheTarget;
use crate::clock::Clock;
use crate::config::Price;
use crate::limits::{Grant, Limiter};
use crate::providers::{ChunkStream, ProviderError, Usage, usage_from_openai};
use crate::tokens;

/// Server-sent-event bytes for the client.
pub type EventBytes = BoxStream<'static, Result<Bytes, ProviderError>>;

/// What happens when a stream ends: settle the reservation, cache the answer.
pub struct Finish {
    /// Settles the reservation.
    pub limiter: Arc<Limiter>,
    /// The reservation.
    pub grant: Grant,
    /// The answering model's price.
    pub price: Price,
    /// Prompt tokens estimated, for providers that report no usage.
    pub prompt_estimate: u64,
    /// Where to cache the assembled answer, if anywhere.
    pub cache: Option<CacheTarget>,
    /// Time, for cache entries.
    pub clock: Arc<dyn Clock>,
    /// The request's usage event, completed with the stream's totals.
    pub usage: Option<Arc<crate::metrics::UsageTicket>>,
}

impl Finish {
    async fn run(self, assembled: Assembler, complete: bool) {
        let mut usage = assembled
            .usage()
            .unwrap_or_else(|| Usage::plain(self.prompt_estimate, assembled.completion_estimate()));
        if !complete {
            // A stream cut off after an early usage report (the prompt's, sent on the first
            // chunk when continuous usage is asked for) has not counted what followed.
            usage.completion_tokens = usage.completion_tokens.max(assembled.completion_estimate());
        }
        let cost = self.price.cost_nano_usd(&usage);
        if let Err(e) = self.limiter.settle(self.grant, usage.total(), cost).await {
            tracing::error!(target: "sluice::limits", error = %e, "could not settle a streamed request");
        }
        if let Some(ticket) = &self.usage {
            ticket.stream_totals(usage.prompt_tokens, usage.completion_tokens, cost);
        }
        tracing::info!(
            target: "sluice::access",
            stream = if complete { "completed" } else { "cut off" },
            tokens_in = usage.prompt_tokens,
            tokens_out = usage.completion_tokens,
            cost_usd = cost as f64 / 1e9,
            "stream finished"
        );
        if let (true, Some(target)) = (complete, self.cache) {
            let body = Bytes::from(assembled.completion().to_string());
            target.put(&target.entry(body, self.clock.now_ms())).await;
        }
    }
}

/// Folds chunks back into one `chat.completion`.
#[derive(Debug, Default)]
pub struct Assembler {
    head: Map<String, Value>,
    choices: BTreeMap<u64, Choice>,
    usage: Option<Value>,
}

#[derive(Debug, Default)]
struct Choice {
    role: Option<String>,
    content: Option<String>,
    /// Thinking text, as reasoning models stream it (`reasoning_content`).
    reasoning: Option<String>,
    /// Anthropic's thinking blocks by their index, text and signature appended in pieces
    /// (see `providers::extensions`).
    thinking_blocks: BTreeMap<u64, Map<String, Value>>,
    tool_calls: BTreeMap<u64, Map<String, Value>>,
    finish_reason: Value,
    /// The stop sequence that ended an Anthropic answer.
    stop_sequence: Option<Value>,
}

impl Assembler {
    /// Adds one chunk.
    pub fn add(&mut self, chunk: &Value) {
        for field in ["id", "created", "model", "system_fingerprint"] {
            if let Some(v) = chunk.get(field).filter(|v| !v.is_null()) {
                self.head.entry(field).or_insert_with(|| v.clone());
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
            let choice = self.choices.entry(index).or_default();
            let delta = c.get("delta").unwrap_or(&Value::Null);
            if let Some(role) = delta.get("role").and_then(Value::as_str) {
                choice.role = Some(role.to_owned());
            }
            if let Some(text) = delta.get("content").and_then(Value::as_str) {
                choice
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(text);
            }
            if let Some(text) = delta.get("reasoning_content").and_then(Value::as_str) {
                choice
                    .reasoning
                    .get_or_insert_with(String::new)
                    .push_str(text);
            }
            for piece in delta
                .get("thinking_blocks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = piece.get("index").and_then(Value::as_u64).unwrap_or(0);
                let block = choice.thinking_blocks.entry(i).or_default();
                for (field, v) in piece.as_object().into_iter().flatten() {
                    match (field.as_str(), v, block.get_mut(field)) {
                        ("index", _, _) => {}
                        (
                            "thinking" | "signature" | "data",
                            Value::String(more),
                            Some(Value::String(so_far)),
                        ) => {
                            so_far.push_str(more);
                        }
                        _ => {
                            block.insert(field.clone(), v.clone());
                        }
                    }
                }
            }
            for call in delta
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = call.get("index").and_then(Value::as_u64).unwrap_or(0);
                let acc = choice.tool_calls.entry(i).or_default();
                for field in ["id", "type"] {
                    if let Some(v) = call.get(field).filter(|v| !v.is_null()) {
                        acc.insert(field.into(), v.clone());
                    }
                }
                if let Some(f) = call.get("function") {
                    let func = acc
                        .entry("function")
                        .or_insert_with(|| json!({"name": "", "arguments": ""}));
                    for part in ["name", "arguments"] {
                        if let Some(piece) = f.get(part).and_then(Value::as_str) {
                            let so_far = func[part].as_str().unwrap_or("").to_owned();
                            func[part] = Value::String(so_far + piece);
                        }
                    }
                }
            }
            if let Some(reason) = c.get("finish_reason").filter(|r| !r.is_null()) {
                choice.finish_reason = reason.clone();
            }
            if let Some(sequence) = c.get("stop_sequence").filter(|s| !s.is_null()) {
                choice.stop_sequence = Some(sequence.clone());
            }
        }
    }

    /// Whether the answer is whole: at least one choice, and every choice has its
    /// `finish_reason` (every provider's last content chunk carries one).
    pub fn finished(&self) -> bool {
        !self.choices.is_empty() && self.choices.values().all(|c| !c.finish_reason.is_null())
    }

    /// The usage the provider reported, if it did.
    pub fn usage(&self) -> Option<Usage> {
        usage_from_openai(&json!({ "usage": self.usage.clone()? }))
    }

    /// Output tokens estimated from the text received (when no usage was reported).
    pub fn completion_estimate(&self) -> u64 {
        self.choices
            .values()
            .map(|c| {
                tokens::estimate_text(c.content.as_deref().unwrap_or(""))
                    + tokens::estimate_text(c.reasoning.as_deref().unwrap_or(""))
                    + c.tool_calls
                        .values()
                        .map(|t| tokens::estimate_value(&Value::Object(t.clone())))
                        .sum::<u64>()
            })
            .sum()
    }

    /// The assembled `chat.completion`.
    pub fn completion(&self) -> Value {
        let choices: Vec<Value> = self
            .choices
            .iter()
            .map(|(index, c)| {
                let mut message = json!({
                    "role": c.role.clone().unwrap_or_else(|| "assistant".into()),
                    "content": c.content,
                    "refusal": null,
                });
                if !c.tool_calls.is_empty() {
                    message["tool_calls"] = Value::Array(
                        c.tool_calls.values().cloned().map(Value::Object).collect(),
                    );
                }
                if let Some(reasoning) = &c.reasoning {
                    message["reasoning_content"] = json!(reasoning);
                }
                if !c.thinking_blocks.is_empty() {
                    message["thinking_blocks"] = Value::Array(
                        c.thinking_blocks.values().cloned().map(Value::Object).collect(),
                    );
                }
                let mut choice = json!({"index": index, "message": message, "logprobs": null, "finish_reason": c.finish_reason});
                if let Some(sequence) = &c.stop_sequence {
                    choice["stop_sequence"] = sequence.clone();
                }
                choice
            })
            .collect();
        let mut out = self.head.clone();
        out.insert("object".into(), json!("chat.completion"));
        out.insert("choices".into(), Value::Array(choices));
        if let Some(u) = &self.usage {
            out.insert("usage".into(), u.clone());
        }
        Value::Object(out)
    }
}

fn event(chunk: &Value) -> Bytes {
    Bytes::from(format!("data: {chunk}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Streams provider chunks to the client as events, metering and assembling them.
pub fn metered(chunks: ChunkStream, include_usage: bool, finish: Finish) -> EventBytes {
    // Called while the request is served: inside its invocation, if it runs in one.
    let invocation = crate::invocation::Invocation::current();
    let cut_at = invocation
        .as_ref()
        .and_then(|i| i.deadline())
        .map(|at| Box::pin(tokio::time::sleep_until(at.into())));
    Metered {
        inner: chunks,
        include_usage,
        assembler: Assembler::default(),
        finish: Some(finish),
        state: State::Streaming,
        // Called while the request is served: this is its span.
        span: tracing::Span::current(),
        inline: invocation.is_some(),
        cut_at,
        finishing: None,
    }
    .boxed()
}

enum State {
    Streaming,
    DoneSent,
    Ended,
}

/// Why a stream ends without `[DONE]`.
#[derive(Clone, Copy)]
enum Cut {
    /// The provider's stream failed or ended before the answer was whole.
    Upstream,
    /// The Lambda invocation's deadline (minus the margin) came first.
    Deadline,
}

struct Metered {
    inner: ChunkStream,
    include_usage: bool,
    assembler: Assembler,
    finish: Option<Finish>,
    state: State,
    /// The request's span, for the lines logged when the stream ends.
    span: tracing::Span,
    /// Inside a Lambda invocation: the [`Finish`] is awaited before the final event.
    inline: bool,
    /// Inside a Lambda invocation: when to stop waiting for the provider.
    cut_at: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The [`Finish`] being awaited, and the final event to send once it is done.
    finishing: Option<(BoxFuture<'static, ()>, Bytes)>,
}

impl Metered {
    /// Takes the stream's [`Finish`]: returned to be awaited inside an invocation, else
    /// handed to [`crate::invocation::after_response`].
    fn end(&mut self, complete: bool) -> Option<BoxFuture<'static, ()>> {
        let finish = self.finish.take()?;
        let assembled = std::mem::take(&mut self.assembler);
        let work = finish
            .run(assembled, complete)
            .instrument(self.span.clone());
        if self.inline {
            Some(Box::pin(work))
        } else {
            crate::invocation::after_response(work);
            None
        }
    }

    /// Ends the stream with `last` as its final event, once the [`Finish`] is done when it
    /// must be awaited; the next poll returns it.
    fn end_with(&mut self, complete: bool, last: Bytes, then: State) {
        self.state = then;
        let work = self.end(complete).unwrap_or_else(|| Box::pin(async {}));
        self.finishing = Some((work, last));
    }

    /// Ends a stream that was cut: what was used so far is settled, nothing is cached, and
    /// the client gets an error event instead of `[DONE]` (OpenAI's SDKs raise it as an
    /// `APIError`), then a cleanly closed body.
    fn cut_off(&mut self, why: Cut) {
        let (message, kind, code) = match why {
            Cut::Upstream => (
                "The provider's stream broke off before the answer was complete.",
                "upstream_error",
                "upstream_stream_cut",
            ),
            Cut::Deadline => (
                "The answer was cut off at the gateway's time limit for one request.",
                "server_error",
                "stream_deadline",
            ),
        };
        let last = event(&json!({"error": {
            "message": message,
            "type": kind,
            "code": code,
            "param": null,
        }}));
        self.end_with(false, last, State::Ended);
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        // The client went away (or the stream broke) before the end: settle what was used.
        // Dropped inside an invocation, the settlement is still owed by it.
        self.inline = false;
        let _ = self.end(false);
        // Dropped while its settlement was being awaited: let that finish all the same.
        if let Some((work, _)) = self.finishing.take() {
            crate::invocation::after_response(work);
        }
    }
}

impl Stream for Metered {
    type Item = Result<Bytes, ProviderError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some((work, _)) = self.finishing.as_mut() {
                if work.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if let Some((_, last)) = self.finishing.take() {
                    return Poll::Ready(Some(Ok(last)));
                }
            }
            match self.state {
                State::Ended => return Poll::Ready(None),
                State::DoneSent => {
                    self.state = State::Ended;
                    return Poll::Ready(None);
                }
                State::Streaming => {}
            }
            if let Some(cut_at) = self.cut_at.as_mut()
                && cut_at.as_mut().poll(cx).is_ready()
            {
                tracing::warn!("stream cut off at the invocation's deadline");
                self.cut_off(Cut::Deadline);
                continue;
            }
            match self.inner.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(mut chunk))) => {
                    self.assembler.add(&chunk);
                    let usage_only = chunk
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(Vec::is_empty);
                    if !self.include_usage {
                        if usage_only {
                            continue;
                        }
                        if let Some(obj) = chunk.as_object_mut() {
                            obj.remove("usage");
                        }
                    }
                    return Poll::Ready(Some(Ok(event(&chunk))));
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "provider stream failed mid-way");
                    self.cut_off(Cut::Upstream);
                }
                // A provider's stream that ends before every choice has its `finish_reason`
                // was cut off (a proxy or the provider closed it early): not an answer.
                Poll::Ready(None) if !self.assembler.finished() => {
                    tracing::warn!("provider stream ended before the answer was complete");
                    self.cut_off(Cut::Upstream);
                }
                Poll::Ready(None) => {
                    self.end_with(true, Bytes::from_static(DONE), State::DoneSent);
                }
            }
        }
    }
}

/// A stored `chat.completion` replayed as a stream of chunks (a cache hit on a streamed
/// request, or a canned answer).
pub fn replay(completion: &Value, include_usage: bool) -> EventBytes {
    let head = |choices: Value| {
        json!({
            "id": completion.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": completion.get("created").cloned().unwrap_or(json!(0)),
            "model": completion.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        })
    };
    let mut events = Vec::new();
    for c in completion
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let index = c.get("index").cloned().unwrap_or(json!(0));
        let message = c.get("message").cloned().unwrap_or(Value::Null);
        let mut delta = json!({"role": message.get("role").cloned().unwrap_or(json!("assistant"))});
        if let Some(content) = message.get("content").filter(|v| !v.is_null()) {
            delta["content"] = content.clone();
        }
        if let Some(reasoning) = message.get("reasoning_content").filter(|v| !v.is_null()) {
            delta["reasoning_content"] = reasoning.clone();
        }
        if let Some(blocks) = message.get("thinking_blocks").and_then(Value::as_array) {
            // Indexed as streamed, so the replay assembles into the same blocks.
            let indexed: Vec<Value> = blocks
                .iter()
                .filter_map(Value::as_object)
                .enumerate()
                .map(|(i, block)| {
                    let mut block = block.clone();
                    block.insert("index".into(), json!(i));
                    Value::Object(block)
                })
                .collect();
            delta["thinking_blocks"] = Value::Array(indexed);
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            // The stored answer came from a provider: a call that is not an object is dropped
            // (indexing into it would panic), not replayed.
            let indexed: Vec<Value> = calls
                .iter()
                .filter_map(Value::as_object)
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    call.insert("index".into(), json!(i));
                    Value::Object(call)
                })
                .collect();
            delta["tool_calls"] = Value::Array(indexed);
        }
        events.push(event(&head(
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
        )));
        let finish = c.get("finish_reason").cloned().unwrap_or(json!("stop"));
        let mut last =
            json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": finish});
        if let Some(sequence) = c.get("stop_sequence").filter(|s| !s.is_null()) {
            last["stop_sequence"] = sequence.clone();
        }
        events.push(event(&head(json!([last]))));
    }
    if include_usage && let Some(usage) = completion.get("usage") {
        let mut last = head(json!([]));
        last["usage"] = usage.clone();
        events.push(event(&last));
    }
    events.push(Bytes::from_static(DONE));
    futures_util::stream::iter(events.into_iter().map(Ok)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fold_into_a_completion_with_tool_calls_and_usage() {
        let mut a = Assembler::default();
        let chunks = [
            json!({"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{\"a\""}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}}]}),
            json!({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}),
        ];
        for c in &chunks {
            a.add(c);
        }
        let done = a.completion();
        assert_eq!(done["object"], "chat.completion");
        assert_eq!(done["choices"][0]["message"]["content"], "Hello");
        assert_eq!(
            done["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(done["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(a.usage(), Some(Usage::plain(7, 3)));
    }

    #[tokio::test]
    async fn a_replay_reassembles_to_the_same_completion() {
        let completion = json!({"id": "c9", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there", "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}});
        let bytes: Vec<Bytes> = replay(&completion, true)
            .map(|b| b.unwrap())
            .collect()
            .await;
        let text: String = bytes
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(text.ends_with("data: [DONE]\n\n"));
        let mut a = Assembler::default();
        for line in text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
        {
            a.add(&serde_json::from_str(line).unwrap());
        }
        assert_eq!(a.completion()["choices"], completion["choices"]);
        assert_eq!(a.usage(), Some(Usage::plain(2, 2)));
    }

    /// Claude's thinking (with the signatures it must be sent back with) and the stop
    /// sequence that ended it survive the cache: a replayed hit assembles into them again.
    #[tokio::test]
    async fn thinking_blocks_and_the_stop_sequence_survive_a_replay() {
        let completion = json!({"id": "msg_1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "stop", "stop_sequence": "##",
                "message": {"role": "assistant", "content": "4", "refusal": null, "reasoning_content": "2+2",
                    "thinking_blocks": [{"type": "thinking", "thinking": "2+2", "signature": "EqQB"},
                                        {"type": "redacted_thinking", "data": "EmwK"}]}}]});
        let text: String = replay(&completion, false)
            .map(|b| String::from_utf8_lossy(&b.unwrap()).into_owned())
            .collect()
            .await;
        let mut a = Assembler::default();
        for line in text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|l| *l != "[DONE]")
        {
            a.add(&serde_json::from_str(line).unwrap());
        }
        assert_eq!(a.completion()["choices"], completion["choices"]);
    }
}

/// Property tests: any chunks fold without panicking, and a replayed completion folds back
/// into the same completion.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing::{self, block_on, json_value, mutated, text};

    fn valid_chunk() -> Value {
        json!({"id": "c1", "created": 5, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel",
            "tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": "{"}}]},
            "finish_reason": null}], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    }

    /// A completion as the cache holds one: choices with text and tool calls, and usage.
    fn completion() -> impl Strategy<Value = Value> {
        let call = ("[a-z_]{1,6}", text()).prop_map(|(name, args)| {
            json!({"id": format!("call_{name}"), "type": "function", "function": {"name": name, "arguments": args}})
        });
        let choice = (
            proptest::option::of(text()),
            proptest::collection::vec(call, 0..3),
            proptest::sample::select(&["stop", "length", "tool_calls", "content_filter"][..]),
        );
        (proptest::collection::vec(choice, 1..3), 0u64..1 << 40, 0u64..1 << 40).prop_map(
            |(choices, prompt, completion)| {
                let choices: Vec<Value> = choices
                    .into_iter()
                    .enumerate()
                    .map(|(i, (content, calls, finish))| {
                        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
                        if !calls.is_empty() {
                            message["tool_calls"] = Value::Array(calls);
                        }
                        json!({"index": i, "message": message, "logprobs": null, "finish_reason": finish})
                    })
                    .collect();
                json!({"id": "c9", "object": "chat.completion", "created": 1, "model": "m", "choices": choices,
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
            },
        )
    }

    fn replayed(completion: &Value) -> Vec<Bytes> {
        block_on(replay(completion, true).map(|b| b.unwrap()).collect())
    }

    /// A cached answer whose `tool_calls` holds a non-object (an OpenAI-compatible server's
    /// answer is cached as it came) made the replay of a streamed cache hit panic at
    /// `call["index"] = …`. Found by `fuzz_any_completion_replays`.
    #[test]
    fn regression_replay_of_a_non_object_tool_call() {
        let completion = json!({"id": "c", "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "x", "tool_calls": [false, {"id": "a"}]}}],
            "usage": {"prompt_tokens": 1}});
        let events = replayed(&completion);
        let first = std::str::from_utf8(&events[0]).unwrap();
        let chunk: Value =
            serde_json::from_str(first.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(
            chunk["choices"][0]["delta"]["tool_calls"],
            json!([{"id": "a", "index": 0}])
        );
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_chunks_fold(chunks in proptest::collection::vec(prop_oneof![json_value(), mutated(valid_chunk())], 0..8)) {
            let mut a = Assembler::default();
            for c in &chunks {
                a.add(c);
            }
            let done = a.completion();
            prop_assert_eq!(&done["object"], "chat.completion");
            prop_assert!(done["choices"].is_array());
            let _ = (a.usage(), a.completion_estimate());
        }

        #[test]
        fn fuzz_any_completion_replays(completion in prop_oneof![json_value(), mutated(json!({"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x", "tool_calls": [{"id": "a"}]}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}}))]) {
            let events = replayed(&completion);
            prop_assert_eq!(events.last().map(|b| &b[..]), Some(DONE));
        }

        #[test]
        fn fuzz_a_replay_folds_back_into_the_completion(completion in completion()) {
            let mut a = Assembler::default();
            for event in replayed(&completion) {
                let text = std::str::from_utf8(&event).unwrap();
                let data = text.strip_prefix("data: ").unwrap().trim_end();
                if data != "[DONE]" {
                    a.add(&serde_json::from_str(data).unwrap());
                }
            }
            prop_assert_eq!(a.completion(), completion.clone());
            prop_assert_eq!(a.usage(), usage_from_openai(&completion));
        }
    }
}
