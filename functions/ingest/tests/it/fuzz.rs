//! Property tests of the ingest function's event decoding: any API Gateway v2 event body,
//! path, method and headers, through `lambda_http`'s adapter and the router, gets an answer
//! that is not a 500 and, when it is an error, is OpenAI-shaped; the caller's key never
//! comes back. `PROPTEST_CASES` sets the number of cases (default 128).

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use base64::Engine as _;
use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::api::{self, AppState};
use sluice::clock::SystemClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::keys::{self, KeyLimits};

/// The routes, with the method each takes.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("GET", "/v1/models"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/metrics"),
    ("GET", "/health"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/usage"),
];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

/// Arbitrary JSON with the request vocabulary.
fn json_value() -> impl Strategy<Value = Value> {
    let word = prop_oneof![
        proptest::sample::select(
            &[
                "model",
                "messages",
                "role",
                "content",
                "user",
                "input",
                "stream",
                "gpt-4o-mini",
                "text-embedding-3-small",
                "max_tokens",
                "tools",
                "n",
                "temperature"
            ][..]
        )
        .prop_map(str::to_owned),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        word.clone().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((word.clone(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A body: raw bytes, any JSON, or a valid chat request with one field replaced.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let valid = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5});
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (
            proptest::sample::select(
                &[
                    "model",
                    "messages",
                    "max_tokens",
                    "stream",
                    "temperature",
                    "tools",
                    "input"
                ][..]
            ),
            json_value()
        )
            .prop_map(move |(field, v)| {
                let mut b = valid.clone();
                b[field] = v;
                b.to_string().into_bytes()
            }),
    ]
}

#[derive(Debug, Clone)]
struct Request {
    method: &'static str,
    path: String,
    auth: Option<String>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    base64: bool,
}

fn request() -> impl Strategy<Value = Request> {
    (
        prop_oneof![
            8 => proptest::sample::select(ROUTES).prop_map(|(m, p)| (m, p.to_owned())),
            1 => (proptest::sample::select(&["POST", "GET", "PUT", "DELETE"][..]), "/[a-z0-9/_%.-]{0,24}"),
        ],
        prop_oneof![
            6 => Just(Some("KEY".to_owned())),
            1 => Just(None),
            1 => "[ -~]{0,40}".prop_map(Some),
        ],
        proptest::collection::vec(
            (
                proptest::sample::select(&["content-type", "prefer", "cache-control", "idempotency-key", "x-sluice-callback-url", "accept"][..]).prop_map(str::to_owned),
                prop_oneof![Just("application/json".to_owned()), Just("respond-async".to_owned()), Just("no-cache, max-age=5".to_owned()), "[ -~]{0,30}"],
            ),
            0..4,
        ),
        body(),
        any::<bool>(),
    )
        .prop_map(|((method, path), auth, headers, body, base64)| Request { method, path, auth, headers, body, base64 })
}

/// The v2 event API Gateway would send for the request (as in the fixtures). API Gateway
/// base64-encodes bodies itself, so an encoded body is always valid base64.
fn event(r: &Request, key: &str) -> Value {
    let mut headers = serde_json::Map::new();
    headers.insert(
        "host".into(),
        json!("abc123.execute-api.us-east-1.amazonaws.com"),
    );
    for (k, v) in &r.headers {
        headers.insert(k.clone(), json!(v));
    }
    if let Some(auth) = &r.auth {
        let auth = if auth == "KEY" {
            format!("Bearer {key}")
        } else {
            auth.clone()
        };
        headers.insert("authorization".into(), json!(auth));
    }
    let body = if r.base64 {
        base64::engine::general_purpose::STANDARD.encode(&r.body)
    } else {
        String::from_utf8_lossy(&r.body).into_owned()
    };
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": r.path, "rawQueryString": "",
        "headers": headers,
        "requestContext": {"accountId": "123456789012", "apiId": "abc123", "domainName": "abc123.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "abc123", "http": {"method": r.method, "path": r.path, "protocol": "HTTP/1.1", "sourceIp": "203.0.113.7", "userAgent": "fuzz"},
            "requestId": "fuzz", "routeKey": "$default", "stage": "$default", "time": "27/Nov/2026:23:59:59 +0000", "timeEpoch": 1795823999000u64},
        "isBase64Encoded": r.base64,
        "body": body,
    })
}

#[test]
fn fuzz_any_api_gateway_request_gets_a_clean_answer() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (router, key) = rt.block_on(async {
        let mut config = Config::builtin();
        config.jobs.workers = 0;
        let db = dir.path().join("ingest.db");
        let deps = Deps::sqlite(db.to_str().unwrap(), &config, Arc::new(SystemClock)).unwrap();
        let new = keys::generate("t1", None, KeyLimits::default(), 0).unwrap();
        deps.store.insert_key(&new.record).await.unwrap();
        let services = Services::build(&config, &deps).unwrap();
        let state = AppState::new(&config, &deps, &services, "admin");
        (api::router(Arc::new(state)), new.secret)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u64, u32>::new());
    runner
        .run(&request(), |r| {
            let event = event(&r, &key);
            let request = serde_json::from_value::<LambdaRequest>(event);
            prop_assert!(request.is_ok(), "{:?}", request.err());
            let request = request.unwrap();
            let mut adapter = Adapter::from(router.clone());
            let response = rt
                .block_on(adapter.call(LambdaEvent::new(request, Context::default())))
                .unwrap();
            let response = serde_json::to_value(&response).unwrap();
            let status = response["statusCode"].as_u64().unwrap();
            *statuses.lock().unwrap().entry(status).or_default() += 1;
            let body = response["body"].as_str().unwrap_or("");
            prop_assert!(status != 500, "{} {}: {}", r.method, r.path, response);
            prop_assert!(!body.contains(&key), "the key came back: {}", response);
            if status >= 400 {
                let error: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                prop_assert!(
                    error["error"]["message"].is_string() && error["error"]["type"].is_string(),
                    "{} {} → {}: not an OpenAI error: {}",
                    r.method,
                    r.path,
                    status,
                    body
                );
            }
            Ok(())
        })
        .unwrap();
    let statuses = statuses.into_inner().unwrap();
    eprintln!("statuses: {statuses:?}");
    // The cases reached the handlers: some were served, not all refused at the door.
    assert!(statuses.keys().any(|s| *s < 300), "{statuses:?}");
    assert!(statuses.keys().any(|s| *s == 400), "{statuses:?}");
}

/// Any JSON as an event: the decoder refuses it or takes it, never panics.
#[test]
fn fuzz_any_json_as_an_event() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases() * 2,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let base = event(
        &Request {
            method: "POST",
            path: "/v1/chat/completions".into(),
            auth: None,
            headers: Vec::new(),
            body: b"{}".to_vec(),
            base64: false,
        },
        "k",
    );
    const FIELDS: &[&str] = &[
        "version",
        "rawPath",
        "headers",
        "requestContext",
        "body",
        "cookies",
        "queryStringParameters",
        "rawQueryString",
    ];
    runner
        .run(
            &(proptest::sample::select(FIELDS), json_value()),
            |(field, v)| {
                let mut e = base.clone();
                e[field] = v;
                let _ = serde_json::from_value::<LambdaRequest>(e);
                Ok(())
            },
        )
        .unwrap();
}
