//! End-to-end tests of the gateway over real HTTP: Sluice in-process on 127.0.0.1:0 in front of
//! a fake OpenAI-compatible upstream, with real SQLite. One binary, one module per concern.

mod admin;
mod anthropic;
mod batch_api;
mod cache;
mod coalesce;
mod dashboard;
mod errors;
mod fake_batches;
mod faults;
mod forwarding;
mod gemini;
mod hostile;
mod invocation;
mod jobs;
mod limits;
mod metrics;
mod micro_batch;
mod openapi;
mod pooling;
mod providers_anthropic;
mod providers_gemini;
mod providers_openai;
mod restart;
mod routing;
mod security;

use serde_json::Value;

/// The `data:` payloads of an SSE body, `[DONE]` excluded (asserted last).
pub fn events(text: &str) -> Vec<Value> {
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Reads a response's JSON body.
pub async fn json(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

/// Asserts an OpenAI-shaped error with this status and code; returns the error object.
pub async fn assert_error(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body = json(r).await;
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    error.clone()
}

/// The value of a response header.
pub fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

/// Exact nano-USD from the decimal `x-sluice-cost-usd`.
pub fn nanos(usd: &str) -> u64 {
    let (whole, frac) = usd.split_once('.').unwrap();
    whole.parse::<u64>().unwrap() * 1_000_000_000
        + format!("{frac:0<9}")[..9].parse::<u64>().unwrap()
}
