//! Jobs that can wait (`"completion_window": "24h"` on `POST /v1/jobs`): the interface, and
//! the trip through a provider's Batch API on the local backend.

use serde_json::{Value, json};
use sluice_tests::{FakeUpstream, TestGateway, fake_config_with};

use crate::{assert_error, json};

/// [`fake_config_with`] with provider Batch APIs on and no job workers (jobs stay queued).
fn batch_config(base_url: &str, enabled: bool) -> String {
    fake_config_with(
        base_url,
        &format!("[jobs]\nworkers = 0\n[jobs.batch_api]\nenabled = {enabled}\n"),
    )
}

fn waiting_job(window: &str) -> Value {
    json!({"endpoint": "/v1/chat/completions", "completion_window": window,
        "request": {"model": "gpt-test", "messages": [{"role": "user", "content": "later"}]}})
}

#[tokio::test]
async fn a_window_other_than_24h_is_refused_as_openai_does() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&batch_config(&up.base_url, true)).await;
    let key = gw.create_key("t1").await;
    for window in ["1h", "48h", "24H", ""] {
        let r = gw.post("/v1/jobs", &key, &waiting_job(window)).await;
        let error = assert_error(r, 400, "invalid_value").await;
        assert_eq!(error["param"], "completion_window");
        assert_eq!(error["type"], "invalid_request_error");
    }
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/embeddings", "completion_window": 24,
                "request": {"model": "embed-test", "input": "x"}}),
        )
        .await;
    assert_error(r, 400, "invalid_request").await;
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_window_is_refused_while_batch_apis_are_off() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&batch_config(&up.base_url, false)).await;
    let key = gw.create_key("t1").await;
    let r = gw.post("/v1/jobs", &key, &waiting_job("24h")).await;
    let error = assert_error(r, 400, "invalid_request").await;
    assert_eq!(error["param"], "completion_window");
    assert!(
        error["message"].as_str().unwrap().contains("batch_api"),
        "{error}"
    );
}

#[tokio::test]
async fn a_24h_window_is_accepted_and_reported() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&batch_config(&up.base_url, true)).await;
    let key = gw.create_key("t1").await;
    let r = gw.post("/v1/jobs", &key, &waiting_job("24h")).await;
    assert_eq!(r.status(), 202);
    let job = json(r).await;
    assert_eq!(job["completion_window"], "24h");
    let got = json(
        gw.http
            .get(format!(
                "{}/v1/jobs/{}",
                gw.url,
                job["id"].as_str().unwrap()
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got["completion_window"], "24h");
    assert_eq!(got["status"], "queued");
    // Without a window the field is absent, as before.
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/embeddings", "request": {"model": "embed-test", "input": "x"}}),
        )
        .await;
    assert!(json(r).await.get("completion_window").is_none());
}
