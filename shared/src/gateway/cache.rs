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
            // 1, 1.0 and 1e0 mean the same to every provider.
            Some(f) if !n.is_u64() && !n.is_i64() && f.fract() == 0.0 && f.abs() < 9.0e15 => {
                out.extend_from_slice((f as i64).to_string().as_bytes());
            }
            _ => out.extend_from_slice(n.to_string().as_bytes()),
        },
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn write_object(map: &Map<String, Value>, skip: &[&str], out: &mut Vec<u8>) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort_unstable();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(Value::String(k.clone()).to_string().as_bytes());
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
