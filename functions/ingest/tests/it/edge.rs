//! The protected edge (issue 16, item 3), through the Lambda adapter with API Gateway v2
//! events as the ingest functions get them:
//! - the public functions (`SLUICE_ROUTES=public`) answer `/admin/*` with an OpenAI-shaped
//!   404 whatever the credentials, and the admin function (`SLUICE_ROUTES=admin`) serves only
//!   `/admin/*` (and `/v1/metrics`, `/health`);
//! - a buffered answer larger than Lambda's 6 MB response payload limit is a 413 that names
//!   the limit and what to do, not a payload Lambda would refuse (API Gateway's opaque 502),
//!   and the size the function checks bounds what the runtime would really post.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::{Value, json};
use sluice::api::{self, AppState, Surface};
use sluice::clock::SystemClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::invocation::{self, BUFFERED_RESPONSE_LIMIT, Delivery};
use sluice::keys::{self, KeyLimits};

const ADMIN: &str = "admin-key-for-tests";

struct Function {
    app: axum::Router,
    deps: Deps,
    key: String,
    _dir: tempfile::TempDir,
}

/// The ingest function as `main` builds it for `surface`, buffered (API Gateway).
async fn function(surface: Surface) -> Function {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::builtin();
    config.jobs.workers = 0;
    // Room for the largest embeddings request below.
    config.server.max_body_bytes = 4 * 1024 * 1024;
    let db = dir.path().join("edge.db");
    let deps = Deps::sqlite(db.to_str().unwrap(), &config, Arc::new(SystemClock)).unwrap();
    let new = keys::generate("t1", None, KeyLimits::default(), 0).unwrap();
    deps.store.insert_key(&new.record).await.unwrap();
    let services = Services::build(&config, &deps).unwrap();
    let state = AppState::new(&config, &deps, &services, ADMIN);
    let router = api::router_for(Arc::new(state), surface);
    let app = invocation::settle_before_answering(
        router,
        Arc::clone(&deps.usage),
        Delivery::Buffered,
        |_| None,
    );
    Function {
        app,
        deps,
        key: new.secret,
        _dir: dir,
    }
}

/// An API Gateway HTTP API (payload 2.0) event, from the recorded chat fixture.
fn event(method: &str, path: &str, bearer: &str, body: Option<&Value>) -> LambdaRequest {
    let authorization = format!("Bearer {bearer}");
    event_with(method, path, &[("authorization", &authorization)], body)
}

/// The same with these headers instead of a bearer token.
fn event_with(
    method: &str,
    path: &str,
    with: &[(&str, &str)],
    body: Option<&Value>,
) -> LambdaRequest {
    let fixture = format!(
        "{}/tests/fixtures/apigw-v2-chat.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut e: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    e["rawPath"] = json!(path);
    e["requestContext"]["http"]["method"] = json!(method);
    e["requestContext"]["http"]["path"] = json!(path);
    let headers = e["headers"].as_object_mut().unwrap();
    headers.remove("content-length");
    headers.remove("authorization");
    for (name, value) in with {
        headers.insert((*name).into(), json!(value));
    }
    match body {
        Some(b) => e["body"] = json!(b.to_string()),
        None => {
            e.as_object_mut().unwrap().remove("body");
        }
    }
    let request: LambdaRequest = serde_json::from_value(e).unwrap();
    assert!(matches!(request, LambdaRequest::ApiGatewayV2(_)));
    request
}

/// One invocation as the Lambda runtime makes it: the response JSON it would post, and that
/// JSON's size in bytes.
async fn invoke(f: &Function, request: LambdaRequest) -> (Value, usize) {
    let mut adapter = Adapter::from(f.app.clone());
    let response = adapter
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    let posted = serde_json::to_vec(&response).unwrap();
    (serde_json::from_slice(&posted).unwrap(), posted.len())
}

fn body(r: &Value) -> Value {
    serde_json::from_str(r["body"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn public_functions_refuse_the_admin_api_even_with_the_admin_key() {
    let f = function(Surface::Public).await;
    let create = json!({"tenant": "intruder"});
    for (method, path, payload) in [
        ("POST", "/admin/keys", Some(&create)),
        ("GET", "/admin/keys", None),
        ("DELETE", "/admin/keys/key_123", None),
        ("GET", "/admin/usage", None),
        ("GET", "/admin", None),
        ("GET", "/admin/", None),
    ] {
        let (r, _) = invoke(&f, event(method, path, ADMIN, payload)).await;
        assert_eq!(r["statusCode"], 404, "{method} {path}: {r}");
        let e = &body(&r)["error"];
        assert_eq!(e["code"], "admin_not_served", "{method} {path}: {r}");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(
            e["message"].as_str().unwrap().contains("AdminUrl"),
            "the message says where the admin API is: {e}"
        );
        assert!(r["headers"]["x-request-id"].is_string());
    }
    // No key was minted: only the one the test made is in the store.
    let keys = f.deps.store.list_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].tenant, "t1");
    // The rest of the API is served as before; other unknown paths are the usual 404.
    let (r, _) = invoke(&f, event("GET", "/v1/models", &f.key, None)).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let (r, _) = invoke(&f, event("GET", "/v1/nothing-here", &f.key, None)).await;
    assert_eq!(r["statusCode"], 404);
    assert_eq!(body(&r)["error"]["code"], "unknown_url");
}

#[tokio::test]
async fn the_admin_function_serves_only_the_admin_api() {
    let f = function(Surface::Admin).await;
    let (r, _) = invoke(
        &f,
        event("POST", "/admin/keys", ADMIN, Some(&json!({"tenant": "t2"}))),
    )
    .await;
    assert_eq!(r["statusCode"], 201, "{r}");
    assert!(body(&r)["key"].as_str().unwrap().starts_with("sk-sluice-"));
    let (r, _) = invoke(&f, event("GET", "/admin/keys", ADMIN, None)).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    // Behind the IAM-authenticated function URL, `Authorization` carries the caller's SigV4
    // signature (Lambda passes it on), so the admin key comes as `x-api-key`.
    let sigv4 = "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20261206/us-east-1/lambda/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=0123abcd";
    let signed = [("authorization", sigv4), ("x-api-key", ADMIN)];
    let (r, _) = invoke(&f, event_with("GET", "/admin/keys", &signed, None)).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let unsigned_key = [("authorization", sigv4), ("x-api-key", "wrong")];
    let (r, _) = invoke(&f, event_with("GET", "/admin/keys", &unsigned_key, None)).await;
    assert_eq!(r["statusCode"], 403, "{r}");
    let (r, _) = invoke(&f, event_with("GET", "/admin/keys", &signed[..1], None)).await;
    assert_eq!(r["statusCode"], 401, "{r}");
    // The admin key is still needed behind IAM.
    let (r, _) = invoke(&f, event("GET", "/admin/keys", "wrong", None)).await;
    assert_eq!(r["statusCode"], 403, "{r}");
    // The admin key's all-tenant metrics are here too (the public functions hold no admin key).
    let (r, _) = invoke(&f, event("GET", "/v1/metrics", ADMIN, None)).await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let (r, _) = invoke(&f, event("GET", "/health", "", None)).await;
    assert_eq!(r["statusCode"], 200);
    let chat = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    for (method, path, payload) in [
        ("POST", "/v1/chat/completions", Some(&chat)),
        ("GET", "/v1/models", None),
        ("GET", "/dashboard", None),
    ] {
        let (r, _) = invoke(&f, event(method, path, &f.key, payload)).await;
        assert_eq!(r["statusCode"], 404, "{path}: {r}");
        assert_eq!(body(&r)["error"]["code"], "unknown_url");
    }
}

fn embeddings(inputs: usize) -> Value {
    let input: Vec<String> = (0..inputs).map(|i| format!("input number {i}")).collect();
    json!({"model": "text-embedding-3-small", "input": input, "dimensions": 1536})
}

#[tokio::test]
async fn an_answer_over_the_buffered_lambda_limit_is_a_413_that_says_what_to_do() {
    let f = function(Surface::Public).await;
    // Measure one input's share of the posted payload, then ask for answers just under and
    // well over the limit.
    let (r, small) = invoke(
        &f,
        event("POST", "/v1/embeddings", &f.key, Some(&embeddings(10))),
    )
    .await;
    assert_eq!(r["statusCode"], 200, "{r}");
    let (_, twenty) = invoke(
        &f,
        event("POST", "/v1/embeddings", &f.key, Some(&embeddings(20))),
    )
    .await;
    let per_input = (twenty - small) / 10;
    assert!(
        per_input > 10_000,
        "1536 dimensions as JSON: {per_input} bytes"
    );

    let under = (BUFFERED_RESPONSE_LIMIT - 64 * 1024) / per_input;
    let (r, size) = invoke(
        &f,
        event("POST", "/v1/embeddings", &f.key, Some(&embeddings(under))),
    )
    .await;
    assert_eq!(r["statusCode"], 200, "{under} inputs: {size} bytes");
    assert!(size <= BUFFERED_RESPONSE_LIMIT);
    assert!(
        size > BUFFERED_RESPONSE_LIMIT - 128 * 1024,
        "close to the limit: {size}"
    );
    assert_eq!(body(&r)["data"].as_array().unwrap().len(), under);

    let over = under + 20;
    let (r, size) = invoke(
        &f,
        event("POST", "/v1/embeddings", &f.key, Some(&embeddings(over))),
    )
    .await;
    assert_eq!(r["statusCode"], 413, "{over} inputs");
    eprintln!("embeddings of 1536 dimensions: {per_input} B per input; {under} inputs fit");
    assert!(size < 2048, "the refusal itself is small: {size}");
    let e = &body(&r)["error"];
    assert_eq!(e["code"], "response_too_large");
    assert_eq!(e["type"], "invalid_request_error");
    let message = e["message"].as_str().unwrap();
    eprintln!("{over} inputs: {message}");
    let limit = BUFFERED_RESPONSE_LIMIT.to_string();
    for needed in [limit.as_str(), "6 MB", "StreamUrl", "fewer"] {
        assert!(message.contains(needed), "{needed:?} in {message}");
    }
    assert!(
        r["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
}

#[tokio::test]
async fn the_checked_size_bounds_the_payload_the_runtime_posts() {
    let f = function(Surface::Public).await;
    let chat = json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "quotes \" and \\ and\nnew lines\t\u{1}"}]});
    let stream = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "stream me"}]});
    let cases = [
        event("POST", "/v1/chat/completions", &f.key, Some(&chat)),
        event("POST", "/v1/chat/completions", &f.key, Some(&stream)),
        event("POST", "/v1/embeddings", &f.key, Some(&embeddings(50))),
        event("GET", "/v1/models", &f.key, None),
        event("GET", "/dashboard", &f.key, None),
        event("GET", "/v1/nope", &f.key, None),
    ];
    for request in cases {
        let (r, posted) = invoke(&f, request).await;
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in r["headers"].as_object().unwrap() {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.as_str().unwrap().parse().unwrap(),
            );
        }
        assert_eq!(r["isBase64Encoded"], false);
        let text = r["body"].as_str().unwrap_or_default();
        let checked = invocation::buffered_payload_bytes(&headers, text.as_bytes());
        eprintln!("checked {checked} B, posted {posted} B");
        assert!(
            checked >= posted && checked - posted <= 2048,
            "checked {checked} vs posted {posted} for {}",
            r["headers"]["content-type"]
        );
    }
}
