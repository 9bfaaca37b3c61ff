//! Exact-match response cache: canonical request keys, per-request `Cache-Control`, and the
//! `x-sluice-cache` status.
//!
//! The key is SHA-256 over a version tag, the tenant, the endpoint, the resolved model name and
//! the request in canonical JSON (object keys sorted at every depth, no whitespace, integral
//! floats written as integers). So key order, whitespace and `1` vs `1.0` never split the
//! cache, while every field that can change the answer (`tools`, `response_format`, `seed`,
//! `temperature`, unknown future fields, …) is part of the key. Transport-only fields
//! (`stream`, `stream_options`) are left out; `model` is replaced by the resolved name so an
//! alias and its model share entries. The tenant inside the digest is what keeps one tenant
//! from ever reading another's answers.

use std::io::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::providers::Endpoint;
use crate::store::CacheKey;

/// Version of the key derivation; bump to orphan every old entry when it changes.
const KEY_VERSION: &str = "sluice-cache-v1";

/// Top-level fields that change how an answer is delivered but not the answer itself.
const TRANSPORT_FIELDS: &[&str] = &["model", "stream", "stream_options"];

/// What the cache did for a request, as reported in `x-sluice-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheStatus {
    /// Answered from the cache; no provider call.
    Hit,
    /// Looked up, not found (or too old); the provider answered.
    Miss,
    /// An expired entry served because every provider failed.
    Stale,
    /// Answered by an identical request's provider call that was already in flight (see
    /// [`super::coalesce`]); no provider call of its own.
    Coalesced,
    /// The cache was not consulted (disabled, streaming, `no-cache`, or an error before lookup).
    #[default]
    Bypass,
}

impl CacheStatus {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Stale => "stale",
            Self::Coalesced => "coalesced",
            Self::Bypass => "bypass",
        }
    }
}

/// The request's `Cache-Control` directives that Sluice honours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-cache`: do not answer from the cache (a fresh answer is still stored).
    pub no_cache: bool,
    /// `no-store`: do not store this answer.
    pub no_store: bool,
    /// `max-age=N`: accept only entries at most N seconds old, and store this answer for N s.
    pub max_age_s: Option<u64>,
}

impl CacheControl {
    /// Parses a `Cache-Control` header value; unknown directives are ignored, as HTTP requires.
    pub fn parse(header: Option<&str>) -> Self {
        let mut cc = Self::default();
        for directive in header.unwrap_or("").split(',') {
            let directive = directive.trim();
            let (name, value) = match directive.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (directive, None),
            };
            match name.to_ascii_lowercase().as_str() {
                "no-cache" => cc.no_cache = true,
                "no-store" => cc.no_store = true,
                "max-age" => cc.max_age_s = value.and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        cc
    }
}

/// Derives the cache key for a request.
pub fn cache_key(
    tenant: &str,
    endpoint: Endpoint,
    model: &str,
    body: &Map<String, Value>,
) -> CacheKey {
    let mut canonical = Vec::with_capacity(256);
    write_object(body, TRANSPORT_FIELDS, &mut canonical);
    let mut h = Sha256::new();
    for part in [KEY_VERSION, tenant, endpoint.path(), model] {
        // Length-prefixed so that no choice of strings can collide with another.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.update(&canonical);
    CacheKey {
        digest: h.finalize().into(),
        tenant: tenant.to_owned(),
    }
}

/// 2^64: integral floats below it may have an integer spelling that serde reads as an integer.
const TWO_POW_64: f64 = 18_446_744_073_709_551_616.0;

/// Canonical JSON of a value: sorted keys, no whitespace, normalised numbers.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => write_object(map, &[], out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Number(n) => match n.as_f64() {
            // 1, 1.0 and 1e0 mean the same to every provider, and so do 1e16 and
            // 10000000000000000: every integral float below 2^64 (the integers serde reads as
            // integers) is written as the exact integer it is.
            Some(f) if !n.is_u64() && !n.is_i64() && f.fract() == 0.0 && f.abs() < TWO_POW_64 => {
                let whole = crate::num::f64_to_i128(f);
                let written = write!(out, "{whole}");
                debug_assert!(written.is_ok(), "writing to a Vec cannot fail");
            }
            _ => write_json(n, out),
        },
        other => write_json(other, out),
    }
}

/// Appends `value`'s compact JSON: the bytes `to_string` would give, without the `String`.
fn write_json(value: &(impl serde::Serialize + ?Sized), out: &mut Vec<u8>) {
    // A Vec takes every write, and strings, numbers, booleans and null always serialise.
    let written = serde_json::to_writer(out, value);
    debug_assert!(written.is_ok(), "writing JSON to a Vec cannot fail");
}

fn write_object(map: &Map<String, Value>, skip: &[&str], out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(k.as_str(), out);
        out.push(b':');
        write_value(&map[k], out);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(tenant: &str, body: Value) -> [u8; 32] {
        let Value::Object(map) = body else {
            panic!("object expected")
        };
        cache_key(tenant, Endpoint::ChatCompletions, "m", &map).digest
    }

    #[test]
    fn same_meaning_same_key() {
        let a: Value = serde_json::from_str(
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"temperature":1.0,"stream":true}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "temperature" : 1 , "messages" : [ { "content":"hi", "role":"user" } ], "model":"y" }"#,
        )
        .unwrap();
        assert_eq!(key("t", a), key("t", b));
    }

    #[test]
    fn different_meaning_different_key() {
        let base = json!({"messages":[{"role":"user","content":"hi"}]});
        let variants = [
            json!({"messages":[{"role":"user","content":"hi!"}]}),
            json!({"messages":[{"role":"user","content":"hi"}],"seed":1}),
            json!({"messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}),
            json!({"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_object"}}),
            json!({"messages":[{"role":"user","content":"hi"}],"temperature":0.5}),
        ];
        let k0 = key("t", base.clone());
        for v in variants {
            assert_ne!(k0, key("t", v.clone()), "{v}");
        }
        assert_ne!(k0, key("other-tenant", base));
    }

    #[test]
    fn cache_control_directives() {
        let cc = CacheControl::parse(Some("No-Cache, max-age=\"60\", private"));
        assert!(cc.no_cache && !cc.no_store);
        assert_eq!(cc.max_age_s, Some(60));
        assert_eq!(CacheControl::parse(None), CacheControl::default());
        assert!(CacheControl::parse(Some("no-store")).no_store);
    }

    #[test]
    fn canonical_form_is_sorted_and_compact() {
        let v: Value =
            serde_json::from_str(r#"{"b": [1.0, 2.5, "x"], "a": {"d": null, "c": true}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":true,"d":null},"b":[1,2.5,"x"]}"#
        );
    }
}

/// Property tests of the request parser and the cache key: the same request however it is
/// spelled gets one key; any change of meaning gets another; no body makes the parser panic.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::fuzzing::{self, json_value, mutated, text, word};
    use crate::gateway::request::{self, InvalidRequest};

    const ROLES: &[&str] = &[
        "system",
        "developer",
        "user",
        "assistant",
        "tool",
        "function",
    ];

    fn message() -> impl Strategy<Value = Value> {
        let content = prop_oneof![
            text().prop_map(Value::String),
            Just(Value::Null),
            proptest::collection::vec(text(), 1..3).prop_map(|parts| {
                Value::Array(
                    parts
                        .into_iter()
                        .map(|t| json!({"type": "text", "text": t}))
                        .collect(),
                )
            }),
        ];
        (
            proptest::sample::select(ROLES),
            content,
            proptest::option::of("[a-z]{1,6}"),
        )
            .prop_map(|(role, content, name)| {
                let mut m = json!({"role": role, "content": content});
                if let Some(name) = name {
                    m["name"] = json!(name);
                }
                m
            })
    }

    /// A number a client might send for a sampling parameter: integral or not, small or huge.
    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            (0u64..3).prop_map(Value::from),
            (0.0f64..2.0).prop_map(|f| json!(f)),
            (-1i64 << 53..1i64 << 53).prop_map(|i| json!(i as f64)),
            // Integral floats beyond 2^53, where not every integer is a float.
            (1u64..1024, 40i32..56).prop_map(|(m, e)| json!(m as f64 * 2f64.powi(e))),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
        ]
    }

    /// The canonical form as first written: each scalar and key through `to_string`.
    fn spelled_by_to_string(value: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
                    out.push(b':');
                    out.extend(spelled_by_to_string(&map[k]));
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(spelled_by_to_string(item));
                }
                out.push(b']');
            }
            Value::Number(n) => match n.as_f64() {
                Some(f)
                    if !n.is_u64() && !n.is_i64() && f.fract() == 0.0 && f.abs() < TWO_POW_64 =>
                {
                    out.extend_from_slice(crate::num::f64_to_i128(f).to_string().as_bytes());
                }
                _ => out.extend_from_slice(n.to_string().as_bytes()),
            },
            other => out.extend_from_slice(other.to_string().as_bytes()),
        }
        out
    }

    /// A valid chat completion request, with some optional fields and unknown extras.
    fn chat_request() -> impl Strategy<Value = Value> {
        (
            "[a-z0-9.-]{1,10}",
            proptest::collection::vec(message(), 1..4),
            proptest::option::of(number()),
            proptest::option::of(1u64..100_000),
            proptest::option::of(proptest::collection::vec("[a-z_]{1,8}", 1..3)),
            proptest::collection::vec(("x_[a-z]{1,6}", json_value()), 0..3),
        )
            .prop_map(|(model, messages, temperature, max_tokens, tools, extras)| {
                let mut body = json!({"model": model, "messages": messages});
                if let Some(t) = temperature {
                    body["temperature"] = t;
                }
                if let Some(m) = max_tokens {
                    body["max_tokens"] = json!(m);
                }
                if let Some(names) = tools {
                    body["tools"] = Value::Array(
                        names
                            .into_iter()
                            .map(|n| json!({"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}))
                            .collect(),
                    );
                }
                for (k, v) in extras {
                    body[k] = v;
                }
                body
            })
    }

    /// Choices for [`respell`], consumed in turn (wrapping), so proptest can shrink them.
    struct Tape<'a> {
        choices: &'a [u8],
        at: usize,
    }

    impl Tape<'_> {
        fn next(&mut self, n: u8) -> u8 {
            let c = self
                .choices
                .get(self.at % self.choices.len().max(1))
                .copied()
                .unwrap_or(0);
            self.at += 1;
            c % n
        }

        fn space(&mut self, out: &mut String) {
            out.push_str([" ", "", "\n", "\t", "\r\n  ", ""][usize::from(self.next(6))]);
        }
    }

    /// JSON text of `value` spelled another way: object keys in another order, whitespace,
    /// `\u` escapes, `1` as `1.0` or `1e0`, floats in exponent form, and now and then a
    /// duplicate key whose earlier value the parser overwrites.
    fn respell(value: &Value, tape: &mut Tape<'_>, out: &mut String) {
        respell_in(value, false, tape, out);
    }

    /// `integer_field`: the value of a field the parser takes only as a JSON integer
    /// (`max_tokens: 1.0` is refused, as OpenAI refuses it), so its numbers keep their form.
    fn respell_in(value: &Value, integer_field: bool, tape: &mut Tape<'_>, out: &mut String) {
        tape.space(out);
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                for i in (1..keys.len()).rev() {
                    let j = usize::from(tape.next(u8::MAX)) % (i + 1);
                    keys.swap(i, j);
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    if tape.next(8) == 0 {
                        // An earlier duplicate: the last value of a key is the one kept.
                        respell_string(k, tape, out);
                        out.push_str(":\"overwritten\",");
                    }
                    respell_string(k, tape, out);
                    tape.space(out);
                    out.push(':');
                    let integer = ["max_tokens", "max_completion_tokens", "n", "dimensions"]
                        .contains(&k.as_str());
                    respell_in(&map[k.as_str()], integer, tape, out);
                }
                tape.space(out);
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    respell_in(item, integer_field, tape, out);
                }
                tape.space(out);
                out.push(']');
            }
            Value::String(s) => respell_string(s, tape, out),
            Value::Number(n) if integer_field => out.push_str(&n.to_string()),
            Value::Number(n) => out.push_str(&respell_number(n, tape)),
            other => out.push_str(&other.to_string()),
        }
        tape.space(out);
    }

    fn respell_string(s: &str, tape: &mut Tape<'_>, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            if tape.next(3) == 0 {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            } else {
                let quoted = Value::String(c.to_string()).to_string();
                out.push_str(&quoted[1..quoted.len() - 1]);
            }
        }
        out.push('"');
    }

    /// Another spelling of the same number (serde may read it as another type: `1.0` is a
    /// float, `1` an integer).
    fn respell_number(n: &serde_json::Number, tape: &mut Tape<'_>) -> String {
        if let Some(i) = n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)) {
            // Float spellings only where a float holds the integer exactly.
            if (i as f64) as i128 == i {
                return match tape.next(4) {
                    0 => format!("{i}.0"),
                    1 => format!("{i}e0"),
                    2 if i != 0 => format!("{i}0E-1"),
                    _ => i.to_string(),
                };
            }
            return i.to_string();
        }
        let f = n.as_f64().unwrap_or(0.0);
        match tape.next(4) {
            0 => format!("{f:e}"),
            1 => format!("{f:E}"),
            // An integral float below 2^64, written as the integer it is.
            2 if f.fract() == 0.0 && f.abs() < 2f64.powi(64) => {
                format!("{}", crate::num::f64_to_i128(f))
            }
            _ => n.to_string(),
        }
    }

    fn spelled(value: &Value, choices: &[u8]) -> String {
        let mut out = String::new();
        respell(value, &mut Tape { choices, at: 0 }, &mut out);
        out
    }

    fn key_of(tenant: &str, endpoint: Endpoint, model: &str, body: &Value) -> [u8; 32] {
        let map = body.as_object().cloned().unwrap_or_default();
        cache_key(tenant, endpoint, model, &map).digest
    }

    /// The test's own reading of "same meaning": equal after dropping the transport fields,
    /// numbers compared by value (an integral float equals the integer), everything else exact.
    fn same_meaning(a: &Value, b: &Value) -> bool {
        fn int(n: &serde_json::Number) -> Option<i128> {
            n.as_i64()
                .map(i128::from)
                .or(n.as_u64().map(i128::from))
                .or_else(|| {
                    let f = n.as_f64()?;
                    (f.fract() == 0.0 && f.abs() < 2f64.powi(64))
                        .then_some(crate::num::f64_to_i128(f))
                })
        }
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => match (int(x), int(y)) {
                (Some(i), Some(j)) => i == j,
                (None, None) => x.as_f64() == y.as_f64(),
                _ => false,
            },
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_meaning(a, b))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .all(|(k, v)| y.get(k).is_some_and(|w| same_meaning(v, w)))
            }
            _ => a == b,
        }
    }

    fn without_transport(body: &Value) -> Value {
        let mut b = body.clone();
        if let Some(map) = b.as_object_mut() {
            for f in TRANSPORT_FIELDS {
                map.remove(*f);
            }
        }
        b
    }

    /// One change that alters what a provider would answer.
    #[derive(Debug, Clone)]
    enum Change {
        Tenant,
        Model,
        Endpoint,
        Content(usize),
        Role(usize, u8),
        AddMessage,
        DropMessage,
        Temperature(f64),
        Tools,
        Extra(String),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            Just(Change::Tenant),
            Just(Change::Model),
            Just(Change::Endpoint),
            any::<usize>().prop_map(Change::Content),
            (any::<usize>(), 1u8..6).prop_map(|(i, r)| Change::Role(i, r)),
            Just(Change::AddMessage),
            Just(Change::DropMessage),
            (0.0f64..2.0).prop_map(Change::Temperature),
            Just(Change::Tools),
            word().prop_map(Change::Extra),
        ]
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        /// Any bytes: a clean error or a request, never a panic.
        #[test]
        fn fuzz_parser_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
                if let Err(e) = request::parse(endpoint, &bytes) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }

        /// Any JSON, and valid requests with a detail broken: either accepted with the model
        /// and stream flag read right, or refused naming the field.
        #[test]
        fn fuzz_parser_takes_any_json(
            body in prop_oneof![json_value(), mutated(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "tools": []})), mutated(json!({"model": "e", "input": ["a", "b"], "dimensions": 8}))],
        ) {
            let bytes = body.to_string().into_bytes();
            for endpoint in [Endpoint::ChatCompletions, Endpoint::Embeddings] {
                match request::parse(endpoint, &bytes) {
                    Ok(parsed) => {
                        prop_assert_eq!(Some(parsed.model.as_str()), body["model"].as_str());
                        prop_assert_eq!(parsed.stream, body["stream"].as_bool().unwrap_or(false));
                        let reread: Value = serde_json::from_slice(&bytes).unwrap();
                        prop_assert_eq!(Value::Object(parsed.body), reread);
                    }
                    Err(InvalidRequest::NotJson(_)) => prop_assert!(false, "valid JSON refused as not JSON"),
                    Err(InvalidRequest::NotObject) => prop_assert!(!body.is_object()),
                    Err(e) => prop_assert!(e.param().is_some_and(|p| !p.is_empty()), "{e}"),
                }
            }
        }

        /// The canonical bytes are the ones `Value::to_string` spells for every string, key,
        /// number and literal (the form before they were written without a `String` each):
        /// stored cache entries and idempotency records keep their keys across the change.
        #[test]
        fn fuzz_canonical_bytes_are_to_string_spellings(
            body in prop_oneof![chat_request(), json_value(), number()],
        ) {
            prop_assert_eq!(canonical_json(&body), spelled_by_to_string(&body));
        }

        /// One request, spelled two ways and sent once streamed: one key.
        #[test]
        fn fuzz_same_meaning_same_key(
            body in chat_request(),
            tape_a in proptest::collection::vec(any::<u8>(), 1..64),
            tape_b in proptest::collection::vec(any::<u8>(), 1..64),
            stream in any::<bool>(),
            alias in "[a-z]{1,8}",
        ) {
            let a = request::parse(Endpoint::ChatCompletions, spelled(&body, &tape_a).as_bytes());
            let mut streamed = body.clone();
            streamed["stream"] = json!(stream);
            streamed["stream_options"] = json!({"include_usage": true});
            streamed["model"] = json!(alias);
            let b = request::parse(Endpoint::ChatCompletions, spelled(&streamed, &tape_b).as_bytes());
            let (a, b) = (a.unwrap(), b.unwrap());
            prop_assert_eq!(
                cache_key("t", Endpoint::ChatCompletions, "resolved", &a.body).digest,
                cache_key("t", Endpoint::ChatCompletions, "resolved", &b.body).digest
            );
        }

        /// Two requests, the second the first with one to three details changed (or not):
        /// the keys are equal exactly when tenant, endpoint, model and meaning are.
        #[test]
        fn fuzz_key_equal_exactly_when_meaning_equal(
            (a, b) in chat_request().prop_flat_map(|a| (Just(a.clone()), prop_oneof![Just(a.clone()), mutated(a)])),
            tenants in ("[ab]{0,2}", "[ab]{0,2}"),
            models in ("[ab]{0,2}", "[ab]{0,2}"),
            endpoints in (any::<bool>(), any::<bool>()),
        ) {
            let endpoint = |chat| if chat { Endpoint::ChatCompletions } else { Endpoint::Embeddings };
            let ka = key_of(&tenants.0, endpoint(endpoints.0), &models.0, &a);
            let kb = key_of(&tenants.1, endpoint(endpoints.1), &models.1, &b);
            let same = tenants.0 == tenants.1
                && models.0 == models.1
                && endpoints.0 == endpoints.1
                && same_meaning(&without_transport(&a), &without_transport(&b));
            prop_assert_eq!(ka == kb, same, "a={} b={}", a, b);
        }

        /// The changes a client can make that alter the answer each give a new key.
        #[test]
        fn fuzz_different_meaning_different_key(body in chat_request(), change in change()) {
            let k0 = key_of("t", Endpoint::ChatCompletions, "m", &body);
            let mut b = body.clone();
            let (mut tenant, mut endpoint, mut model) = ("t", Endpoint::ChatCompletions, "m");
            let messages = b["messages"].as_array().map_or(0, Vec::len);
            match change {
                Change::Tenant => tenant = "t2",
                Change::Model => model = "m2",
                Change::Endpoint => endpoint = Endpoint::Embeddings,
                Change::Content(i) => {
                    let m = &mut b["messages"][i % messages];
                    let old = m["content"].clone();
                    m["content"] = match old {
                        Value::String(s) => json!(format!("{s}!")),
                        Value::Null => json!(""),
                        _ => Value::Null,
                    };
                }
                Change::Role(i, r) => {
                    let m = &mut b["messages"][i % messages];
                    let now = ROLES.iter().position(|x| m["role"] == *x).unwrap_or(0);
                    m["role"] = json!(ROLES[(now + usize::from(r)) % ROLES.len()]);
                }
                Change::AddMessage => {
                    if let Some(list) = b["messages"].as_array_mut() {
                        list.push(json!({"role": "user", "content": "and?"}));
                    }
                }
                Change::DropMessage => {
                    if let Some(list) = b["messages"].as_array_mut() {
                        list.pop();
                    }
                }
                Change::Temperature(t) => {
                    let old = b["temperature"].as_f64();
                    b["temperature"] = json!(if old == Some(t) { t + 0.5 } else { t });
                }
                Change::Tools => {
                    let mut tools = b["tools"].as_array().cloned().unwrap_or_default();
                    tools.push(json!({"type": "function", "function": {"name": "extra"}}));
                    b["tools"] = Value::Array(tools);
                }
                Change::Extra(k) => {
                    if TRANSPORT_FIELDS.contains(&k.as_str()) {
                        return Ok(());
                    }
                    let old = b.get(&k).cloned();
                    b[k.as_str()] = json!(format!("{old:?}!"));
                }
            }
            prop_assert_ne!(k0, key_of(tenant, endpoint, model, &b), "{}", b);
        }
    }

    /// Integral floats past 2^53 (up to 2^64) are whole numbers too: `1e16` and
    /// `10000000000000000` are one number, so one key. Found by `fuzz_same_meaning_same_key`
    /// (`"temperature": 9007199254740992.0` against `9007199254740992`): the canonical form
    /// wrote integral floats as integers only below 9e15, so the two spellings split the cache.
    #[test]
    fn regression_large_integral_float_is_its_integer() {
        let a: Value = serde_json::from_str(r#"{"seed":1e16}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"seed":10000000000000000}"#).unwrap();
        assert_eq!(key("t", a), key("t", b));
        let c: Value = serde_json::from_str(r#"{"seed":1.8e19}"#).unwrap();
        let d: Value = serde_json::from_str(r#"{"seed":18000000000000000000}"#).unwrap();
        assert_eq!(key("t", c), key("t", d));
        let e: Value = serde_json::from_str(r#"{"seed":1e16}"#).unwrap();
        let f: Value = serde_json::from_str(r#"{"seed":10000000000000001}"#).unwrap();
        assert_ne!(key("t", e), key("t", f));
    }

    /// A number reaches the provider as the client wrote it, and its spellings share a key.
    /// Found by `fuzz_same_meaning_same_key` (`9.502595213751747e17` against
    /// `950259521375174656`) and `fuzz_parser_takes_any_json` (`7.261549589043233e-296`
    /// came back as `…234e-296`): serde_json's default float parser may be one bit off, so
    /// the workspace now enables its `float_roundtrip` feature.
    #[test]
    fn regression_floats_are_read_exactly() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"seed":7.261549589043233e-296}"#;
        let parsed = request::parse(Endpoint::ChatCompletions, body).unwrap();
        assert_eq!(parsed.body["seed"].to_string(), "7.261549589043233e-296");
        let a: Value = serde_json::from_str(r#"{"temperature":9.502595213751747e17}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"temperature":950259521375174656}"#).unwrap();
        assert_eq!(key("t", a), key("t", b));
    }

    fn key(tenant: &str, body: Value) -> [u8; 32] {
        key_of(tenant, Endpoint::ChatCompletions, "m", &body)
    }
}
