//! What the property tests share (`cargo test -p sluice fuzz`): the case count, arbitrary
//! JSON that speaks the vocabulary of the wire formats, mutations of valid documents, and
//! arbitrary cuts of a byte string into chunks.
//!
//! Plain random JSON almost never reaches past the first `get("choices")`; drawing keys and
//! strings from the field names the parsers look for, and mutating real documents, is what
//! makes the generated inputs walk the deep branches.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise (a longer run: `PROPTEST_CASES=100000`).
pub const CASES: u32 = 256;

/// The settings every property test uses: `cases` (or `PROPTEST_CASES`), and no
/// `proptest-regressions/` files; failures found become named regression tests instead.
pub fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Field names and values the request, response and event parsers look at.
const WORDS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "function",
    "tools",
    "tool_calls",
    "tool_call_id",
    "tool_choice",
    "name",
    "arguments",
    "id",
    "index",
    "error",
    "message",
    "code",
    "details",
    "retryDelay",
    "choices",
    "delta",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "data",
    "embedding",
    "input",
    "stream",
    "stream_options",
    "include_usage",
    "max_tokens",
    "temperature",
    "n",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "message_delta",
    "content_block",
    "tool_use",
    "text_delta",
    "input_json_delta",
    "partial_json",
    "stop_reason",
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "candidates",
    "parts",
    "functionCall",
    "args",
    "finishReason",
    "promptFeedback",
    "blockReason",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thoughtsTokenCount",
    "totalTokenCount",
    "cachedContentTokenCount",
    "thought",
    "modelVersion",
    "embeddings",
    "values",
    "rate_limit_error",
    "overloaded_error",
    "image_url",
    "url",
    "data:image/png;base64,AAAA",
    "",
    "[DONE]",
];

/// A string from the wire vocabulary, or any string at all.
pub fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(WORDS).prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Numbers at the edges: zero, the integer limits, huge and tiny floats.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u64..10_000).prop_map(Value::from),
        proptest::sample::select(&[0, 1, u64::MAX, u64::MAX - 1, i64::MAX as u64][..])
            .prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
    ]
}

/// Any JSON value, at most four levels deep, keys and strings mostly from the vocabulary.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((word(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every node of a value, in pre-order, as a path of steps from the root.
fn paths(value: &Value) -> Vec<Vec<Step>> {
    fn walk(value: &Value, here: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        out.push(here.clone());
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    here.push(Step::Index(i));
                    walk(item, here, out);
                    here.pop();
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    here.push(Step::Key(k.clone()));
                    walk(v, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

#[derive(Debug, Clone)]
enum Step {
    Index(usize),
    Key(String),
}

fn node_mut<'a>(value: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |v, step| match step {
        Step::Index(i) => v.get_mut(*i),
        Step::Key(k) => v.get_mut(k.as_str()),
    })
}

/// A valid document with one to three of its nodes replaced by arbitrary JSON (or removed,
/// when the replacement is `null` in an object): the shape is right, one detail is wrong.
pub fn mutated(valid: Value) -> impl Strategy<Value = Value> {
    proptest::collection::vec((any::<Index>(), json_value(), any::<bool>()), 1..4).prop_map(
        move |edits| {
            let mut doc = valid.clone();
            for (at, replacement, remove) in edits {
                let all = paths(&doc);
                let path = at.get(&all).clone();
                match (remove, path.split_last()) {
                    (true, Some((Step::Key(k), parent))) => {
                        if let Some(Value::Object(map)) = node_mut(&mut doc, parent) {
                            map.remove(k);
                        }
                    }
                    _ => {
                        if let Some(node) = node_mut(&mut doc, &path) {
                            *node = replacement;
                        }
                    }
                }
            }
            doc
        },
    )
}

/// Cut points for a byte string: up to `max` positions, as indexes to scale to its length.
pub fn cuts(max: usize) -> impl Strategy<Value = Vec<Index>> {
    proptest::collection::vec(any::<Index>(), 0..=max)
}

/// `bytes` cut at the given points (duplicates and cuts at the ends give empty chunks, which a
/// network may also deliver).
pub fn split(bytes: &[u8], cuts: &[Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut chunks = Vec::with_capacity(at.len() + 1);
    let mut from = 0;
    for to in at {
        chunks.push(Bytes::copy_from_slice(&bytes[from..to]));
        from = to;
    }
    chunks.push(Bytes::copy_from_slice(&bytes[from..]));
    chunks
}

/// Runs a future to completion on a fresh current-thread runtime (property bodies are sync).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
        .block_on(f)
}

/// Text with multi-byte characters, so byte cuts land inside them.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ]{0,12}",
        "\\PC{0,12}",
        Just("héllo wörld — 日本語 🦀".to_owned()),
    ]
}

/// `text/event-stream` bytes for events (name, data), ending with OpenAI's `[DONE]`.
pub fn sse_text(events: &[(Option<&str>, serde_json::Value)]) -> Vec<u8> {
    let mut text = String::new();
    for (name, data) in events {
        if let Some(name) = name {
            text.push_str(&format!("event: {name}\n"));
        }
        text.push_str(&format!("data: {data}\n\n"));
    }
    text.push_str("data: [DONE]\n\n");
    text.into_bytes()
}

/// The parsed events of a byte stream delivered in these chunks.
pub fn event_stream(chunks: Vec<Bytes>) -> crate::providers::sse::EventStream {
    crate::providers::sse::json_events(futures_util::stream::iter(chunks.into_iter().map(Ok)))
}

/// Chunks folded into one completion (without `created`, which is the clock's), or the
/// errors met, as text.
pub fn assemble(
    chunks: Vec<Result<Value, crate::providers::ProviderError>>,
) -> Result<Value, Vec<String>> {
    let mut assembler = crate::gateway::stream::Assembler::default();
    let mut errors = Vec::new();
    for chunk in chunks {
        match chunk {
            Ok(c) => assembler.add(&c),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut done = assembler.completion();
    if let Some(map) = done.as_object_mut() {
        map.remove("created");
    }
    Ok(done)
}
