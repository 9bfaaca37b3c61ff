//! Bad input and upstream trouble: OpenAI-shaped errors with the right status, nothing
//! internal in them, no provider call for requests rejected up front, and the server keeps
//! serving afterwards.

use std::time::Duration;

use serde_json::json;
use sluice_tests::{Behaviour, FakeUpstream, PROVIDER_KEY, TestGateway, fake_config};

use crate::e2e::{assert_error, header};

async fn raw(gw: &TestGateway, key: Option<&str>, body: &str) -> reqwest::Response {
    let mut req = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn bad_keys_get_401() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let ok = r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}]}"#;
    assert_error(raw(&gw, None, ok).await, 401, "missing_api_key").await;
    assert_error(
        raw(&gw, Some("sk-sluice-wrong"), ok).await,
        401,
        "invalid_api_key",
    )
    .await;
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("authorization", "Basic abc")
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "missing_api_key").await;
    // Keys in the Anthropic style header are accepted too.
    let key = gw.create_key("t1").await;
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .header("x-api-key", &key)
        .body(ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn malformed_requests_get_400_naming_the_field_and_cost_nothing() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let cases: &[(&str, Option<&str>)] = &[
        ("{not json", None),
        ("", None),
        ("[1,2]", None),
        (
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            Some("model"),
        ),
        (r#"{"model":"gpt-test"}"#, Some("messages")),
        (
            r#"{"model":42,"messages":[{"role":"user","content":"hi"}]}"#,
            Some("model"),
        ),
        (r#"{"model":"gpt-test","messages":"hi"}"#, Some("messages")),
        (r#"{"model":"gpt-test","messages":[]}"#, Some("messages")),
        (
            r#"{"model":"gpt-test","messages":[{"content":"hi"}]}"#,
            Some("messages[0].role"),
        ),
        (
            r#"{"model":"gpt-test","messages":[{"role":"user","content":{"x":1}}]}"#,
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"max_tokens":"ten"}"#,
            Some("max_tokens"),
        ),
        (
            r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"stream":1}"#,
            Some("stream"),
        ),
        (
            r#"{"model":"gpt-test","messages":[{"role":"user","content":"hi"}],"temperature":[1]}"#,
            Some("temperature"),
        ),
    ];
    for (body, param) in cases {
        let error = assert_error(raw(&gw, Some(&key), body).await, 400, "invalid_request").await;
        assert_eq!(error["param"].as_str(), *param, "{body}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    let r = gw
        .post("/v1/embeddings", &key, &json!({"model": "embed-test"}))
        .await;
    let error = assert_error(r, 400, "invalid_request").await;
    assert_eq!(error["param"], "input");
    assert_eq!(
        up.calls(),
        0,
        "rejected requests must not reach the provider"
    );
}

#[tokio::test]
async fn unknown_models_get_404() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let r = gw.chat(&key, "gpt-nonexistent", "hi").await;
    let error = assert_error(r, 404, "model_not_found").await;
    assert_eq!(error["param"], "model");
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let big = "x".repeat(70_000);
    let r = gw.chat(&key, "gpt-test", &big).await;
    assert_error(r, 413, "request_too_large").await;
    // Also when the body is streamed without a Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..100).map(|_| Ok(vec![b' '; 1000])).collect();
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(r, 413, "request_too_large").await;
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_openai_errors() {
    let gw = TestGateway::start_builtin().await;
    let r = gw
        .http
        .get(format!("{}/v2/nothing", gw.url))
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "unknown_url").await;
    let r = gw
        .http
        .get(format!("{}/v1/chat/completions", gw.url))
        .send()
        .await
        .unwrap();
    assert_error(r, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn upstream_failures_map_to_clear_gateway_errors() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let cases = [
        (Behaviour::Status(500, None), 502, "upstream_failed"),
        (Behaviour::Status(503, None), 502, "upstream_failed"),
        (Behaviour::Garbage, 502, "upstream_bad_response"),
        (Behaviour::ErrorIn200, 502, "upstream_bad_response"),
        (Behaviour::Status(401, None), 502, "upstream_auth_failed"),
        (
            Behaviour::Status(400, None),
            400,
            "upstream_rejected_request",
        ),
        (
            Behaviour::Status(429, Some(7)),
            429,
            "upstream_rate_limited",
        ),
        (
            Behaviour::Slow(Duration::from_millis(1500)),
            504,
            "upstream_timeout",
        ),
    ];
    for (i, (behaviour, status, code)) in cases.into_iter().enumerate() {
        up.set(behaviour.clone());
        let r = gw.chat(&key, "gpt-test", &format!("case {i}")).await;
        let retry_after = r.headers().get("retry-after").cloned();
        let error = assert_error(r, status, code).await;
        let message = error["message"].as_str().unwrap();
        assert!(!message.contains(PROVIDER_KEY), "{behaviour:?}: {message}");
        assert!(!message.contains("127.0.0.1"), "{behaviour:?}: {message}");
        if status == 429 {
            assert_eq!(retry_after.unwrap(), "7");
        }
    }
    // Still serving.
    up.set(Behaviour::Ok);
    let r = gw.chat(&key, "gpt-test", "after the storm").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502() {
    // Bind then drop a listener so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let gw = TestGateway::start(&fake_config(&format!("http://127.0.0.1:{port}/v1"))).await;
    let key = gw.create_key("t1").await;
    let r = gw.chat(&key, "gpt-test", "anyone there?").await;
    assert_error(r, 502, "upstream_unreachable").await;
    let r = gw
        .http
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn the_server_survives_a_barrage_of_bad_input() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let nasty = [
        "\u{0}\u{1}\u{2}",
        "{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"\\ud800\"}]}",
        "{\"model\":\"gpt-test\",\"messages\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}",
        "{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"n\":0}",
        "{\"model\":\"gpt-test\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1e400}",
        "null",
        "\"string\"",
    ];
    for body in nasty {
        let r = raw(&gw, Some(&key), body).await;
        assert!(r.status().is_client_error(), "{body}: {}", r.status());
    }
    let r = gw.chat(&key, "gpt-test", "still fine").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
}
