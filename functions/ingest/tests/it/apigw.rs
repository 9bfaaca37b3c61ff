//! The ingest function's Lambda adapter with real API Gateway HTTP API (payload v2) events:
//! event JSON → `lambda_http`'s adapter → the axum router → the v2 response JSON.
//! The router runs on SQLite here; on Lambda it runs on DynamoDB and SQS (see
//! `tests/tests/it/backends` for those adapters on moto).

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use serde_json::Value;
use sluice::api::{self, AppState};
use sluice::clock::SystemClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::keys::{self, KeyLimits};

struct Ingest {
    router: axum::Router,
    key: String,
    _dir: tempfile::TempDir,
}

async fn ingest() -> Ingest {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::builtin();
    config.jobs.workers = 0;
    let db = dir.path().join("ingest.db");
    let deps = Deps::sqlite(db.to_str().unwrap(), &config, Arc::new(SystemClock)).unwrap();
    let new = keys::generate("t1", None, KeyLimits::default(), 0).unwrap();
    deps.store.insert_key(&new.record).await.unwrap();
    let services = Services::build(&config, &deps).unwrap();
    let state = AppState::new(&config, &deps, &services, "admin");
    Ingest {
        router: api::router(Arc::new(state)),
        key: new.secret,
        _dir: dir,
    }
}

/// Runs one fixture through the adapter, as the Lambda runtime would.
async fn invoke(ingest: &Ingest, fixture: &str) -> Value {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("{{KEY}}", &ingest.key);
    let request: LambdaRequest = serde_json::from_str(&text).unwrap();
    assert!(
        matches!(request, LambdaRequest::ApiGatewayV2(_)),
        "fixture must be a v2 event"
    );
    let mut adapter = Adapter::from(ingest.router.clone());
    let response = adapter
        .call(LambdaEvent::new(request, Context::default()))
        .await
        .unwrap();
    serde_json::to_value(&response).unwrap()
}

fn body_json(response: &Value) -> Value {
    let body = response["body"].as_str().unwrap();
    assert_eq!(
        response["isBase64Encoded"], false,
        "JSON answers are sent as text"
    );
    serde_json::from_str(body).unwrap()
}

#[tokio::test]
async fn health() {
    let ingest = ingest().await;
    let r = invoke(&ingest, "apigw-v2-health.json").await;
    assert_eq!(r["statusCode"], 200);
    assert_eq!(body_json(&r)["status"], "ok");
    assert!(
        r["headers"]["x-request-id"]
            .as_str()
            .unwrap()
            .starts_with("req_")
    );
}

#[tokio::test]
async fn chat_completion_plain_and_base64_bodies() {
    let ingest = ingest().await;
    for fixture in ["apigw-v2-chat.json", "apigw-v2-chat-base64.json"] {
        let r = invoke(&ingest, fixture).await;
        assert_eq!(r["statusCode"], 200, "{fixture}: {r}");
        assert_eq!(r["headers"]["content-type"], "application/json");
        let body = body_json(&r);
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Mock response to: Hello from API Gateway"
        );
    }
    // The second (identical) request was answered from the cache.
    let r = invoke(&ingest, "apigw-v2-chat.json").await;
    assert_eq!(r["headers"]["x-sluice-cache"], "hit");
}

#[tokio::test]
async fn errors_are_openai_shaped() {
    let ingest = ingest().await;
    let r = invoke(&ingest, "apigw-v2-chat-no-key.json").await;
    assert_eq!(r["statusCode"], 401);
    assert_eq!(body_json(&r)["error"]["code"], "missing_api_key");
    let r = invoke(&ingest, "apigw-v2-bad-json.json").await;
    assert_eq!(r["statusCode"], 400);
    assert_eq!(body_json(&r)["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn prefer_respond_async_is_accepted_with_a_location() {
    let ingest = ingest().await;
    let r = invoke(&ingest, "apigw-v2-chat-async.json").await;
    assert_eq!(r["statusCode"], 202, "{r}");
    let job = body_json(&r);
    let id = job["id"].as_str().unwrap();
    assert_eq!(r["headers"]["location"], format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
}
