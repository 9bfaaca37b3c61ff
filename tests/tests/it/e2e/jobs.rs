//! Async jobs end to end on the local backend: `Prefer: respond-async`, `POST /v1/jobs`,
//! tenant-scoped lookup, failures recorded, signed callbacks, at-most-once execution under
//! duplicate delivery, and embedding micro-batching.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sluice::jobs::processor::Disposition;
use sluice_tests::{
    Behaviour, CALLBACK_SECRET, CallbackReceiver, FakeUpstream, TestGateway, fake_config,
    fake_config_with_jobs,
};

use crate::e2e::{assert_error, header, json};

/// Polls a job until it is final.
pub async fn wait_job(gw: &TestGateway, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let r = gw
            .http
            .get(format!("{}/v1/jobs/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let job = json(r).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

async fn submit(gw: &TestGateway, key: &str, endpoint: &str, request: Value) -> reqwest::Response {
    gw.post(
        "/v1/jobs",
        key,
        &json!({"endpoint": endpoint, "request": request}),
    )
    .await
}

fn chat_body(prompt: &str) -> Value {
    json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn prefer_respond_async_answers_202_and_the_job_holds_the_result() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&chat_body("later please"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "preference-applied"), "respond-async");
    let location = header(&r, "location").to_owned();
    let accepted = json(r).await;
    let id = accepted["id"].as_str().unwrap();
    assert!(id.starts_with("job_"));
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["endpoint"], "/v1/chat/completions");

    let job = wait_job(&gw, &key, id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["http_status"], 200);
    assert_eq!(job["result"]["object"], "chat.completion");
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        "fake answer #1"
    );
    assert_eq!(job["usage"]["prompt_tokens"], 10);
    assert_eq!(up.calls(), 1);
    assert_eq!(up.last().body["messages"][0]["content"], "later please");
}

#[tokio::test]
async fn post_v1_jobs_runs_embeddings_and_jobs_are_private_to_their_tenant() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let same_tenant = gw.create_key("t1").await;
    let other_tenant = gw.create_key("t2").await;
    let r = submit(
        &gw,
        &key,
        "/v1/embeddings",
        json!({"model": "embed-test", "input": "x"}),
    )
    .await;
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_str().unwrap().to_owned();
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(
        job["result"]["data"][0]["embedding"],
        json!([0.25, -0.5, 0.0])
    );

    let r = gw
        .http
        .get(format!("{}/v1/jobs/{id}", gw.url))
        .bearer_auth(&same_tenant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = gw
        .http
        .get(format!("{}/v1/jobs/{id}", gw.url))
        .bearer_auth(&other_tenant)
        .send()
        .await
        .unwrap();
    assert_error(r, 404, "job_not_found").await;
    let r = gw
        .http
        .get(format!("{}/v1/jobs/{id}", gw.url))
        .send()
        .await
        .unwrap();
    assert_error(r, 401, "missing_api_key").await;
}

#[tokio::test]
async fn bad_async_requests_are_refused_before_anything_is_queued() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let mut streaming = chat_body("x");
    streaming["stream"] = json!(true);
    let error = assert_error(
        submit(&gw, &key, "/v1/chat/completions", streaming).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(error["param"], "stream");
    let mut unknown = chat_body("x");
    unknown["model"] = json!("nope");
    assert_error(
        submit(&gw, &key, "/v1/chat/completions", unknown).await,
        404,
        "model_not_found",
    )
    .await;
    let error = assert_error(
        submit(
            &gw,
            &key,
            "/v1/chat/completions",
            json!({"model": "gpt-test"}),
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(error["param"], "messages");
    let error = assert_error(
        submit(&gw, &key, "/v1/images", chat_body("x")).await,
        400,
        "invalid_request",
    )
    .await;
    assert_eq!(error["param"], "endpoint");
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/embeddings", "request": {}, "extra": 1}),
        )
        .await;
    assert_error(r, 400, "invalid_request").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn a_failing_provider_leaves_a_failed_job_with_the_error() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Status(500, None));
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let id = json(submit(&gw, &key, "/v1/chat/completions", chat_body("boom")).await).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["http_status"], 502);
    assert_eq!(job["error"]["code"], "upstream_failed");
    assert!(job.get("result").is_none());
}

#[tokio::test]
async fn callbacks_carry_the_result_signed_with_hmac_sha256() {
    let up = FakeUpstream::start().await;
    let hook = CallbackReceiver::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/chat/completions", "request": chat_body("call me"), "callback_url": hook.url}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = json(r).await["id"].as_str().unwrap().to_owned();
    let got = hook.wait_for(1).await;
    let payload: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(payload["id"], id);
    assert_eq!(payload["status"], "succeeded");
    assert_eq!(
        payload["result"]["choices"][0]["message"]["content"],
        "fake answer #1"
    );

    // Verify the signature independently: t=<ts>,v1=hex(HMAC-SHA256(secret, "<ts>.<body>")).
    let signature = got[0].headers["x-sluice-signature"].to_str().unwrap();
    let (t, v1) = signature.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(CALLBACK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&got[0].body);
    assert_eq!(v1, hex::encode(mac.finalize().into_bytes()));

    // The Prefer route takes the callback from a header.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .header("x-sluice-callback-url", &hook.url)
        .json(&chat_body("call me too"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(hook.wait_for(2).await.len(), 2);
}

#[tokio::test]
async fn callbacks_to_private_addresses_are_refused_unless_allowed() {
    let up = FakeUpstream::start().await;
    let config = format!(
        "{}\n[jobs]\ncallback_secret = \"s\"\n",
        fake_config(&up.base_url)
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "file:///etc/passwd",
    ] {
        let r = gw
            .post(
                "/v1/jobs",
                &key,
                &json!({"endpoint": "/v1/chat/completions", "request": chat_body("x"), "callback_url": url}),
            )
            .await;
        let error = assert_error(r, 400, "invalid_callback_url").await;
        assert_eq!(error["param"], "callback_url", "{url}");
    }
}

#[tokio::test]
async fn a_message_delivered_twice_calls_the_provider_once() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(Duration::from_millis(200)));
    // No workers: this test plays the queue's part itself.
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 0)).await;
    let key = gw.create_key("t1").await;
    let id = json(submit(&gw, &key, "/v1/chat/completions", chat_body("once")).await).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered = gw.deps.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(delivered.len(), 1);
    let body = delivered[0].body.clone();

    // Two deliveries of the same message at once: one runs it, the other finds it leased.
    let processor = &gw.services.processor;
    let (a, b) = tokio::join!(
        processor.process(std::slice::from_ref(&body)),
        processor.process(std::slice::from_ref(&body))
    );
    let mut outcomes = vec![a[0], b[0]];
    outcomes.sort_by_key(|d| *d == Disposition::Retry);
    assert_eq!(outcomes, [Disposition::Done, Disposition::Retry]);
    // A later redelivery finds it finished.
    assert_eq!(
        processor.process(&[body.clone(), body]).await,
        [Disposition::Done, Disposition::Done]
    );
    assert_eq!(up.calls(), 1, "the provider must be called once");
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["attempts"], 1);
}

#[tokio::test]
async fn queued_embedding_jobs_go_upstream_as_one_request_and_are_split_back() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 0)).await;
    let key = gw.create_key("t1").await;
    let other = gw.create_key("t2").await;
    let inputs = [
        json!("alpha"),
        json!(["beta", "gamma"]),
        json!("delta"),
        json!("epsilon"),
    ];
    let mut ids = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let k = if i == 3 { &other } else { &key };
        let r = submit(
            &gw,
            k,
            "/v1/embeddings",
            json!({"model": "embed-test", "input": input}),
        )
        .await;
        assert_eq!(r.status(), 202);
        ids.push(json(r).await["id"].as_str().unwrap().to_owned());
    }
    let delivered = gw.deps.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(delivered.len(), 4);
    let bodies: Vec<String> = delivered.iter().map(|d| d.body.clone()).collect();
    let outcomes = gw.services.processor.process(&bodies).await;
    assert!(
        outcomes.iter().all(|d| *d == Disposition::Done),
        "{outcomes:?}"
    );

    // Tenants are never batched together: t1's three jobs share one call, t2's goes alone.
    assert_eq!(
        up.calls(),
        2,
        "four jobs of two tenants, one upstream call per tenant"
    );
    let mut inputs: Vec<Value> = up
        .requests()
        .iter()
        .map(|r| r.body["input"].clone())
        .collect();
    inputs.sort_by_key(|i| i.is_string());
    assert_eq!(
        inputs,
        [json!(["alpha", "beta", "gamma", "delta"]), json!("epsilon")]
    );
    // The fake returns [0.25, -0.5, i] for combined input i; each job gets its own slice,
    // re-indexed from 0. The fake reports 4 prompt tokens per input: 20 in all.
    let expected_offsets = [vec![0.0], vec![1.0, 2.0], vec![3.0], vec![0.0]];
    let mut total_tokens = 0;
    let mut total_cost = 0.0;
    for (i, id) in ids.iter().enumerate() {
        let k = if i == 3 { &other } else { &key };
        let job = wait_job(&gw, k, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let data = job["result"]["data"].as_array().unwrap();
        assert_eq!(data.len(), expected_offsets[i].len());
        for (j, d) in data.iter().enumerate() {
            assert_eq!(d["index"], j);
            assert_eq!(d["embedding"][2], expected_offsets[i][j]);
        }
        let tokens = job["usage"]["prompt_tokens"].as_u64().unwrap();
        assert_eq!(job["result"]["usage"]["prompt_tokens"], tokens);
        assert!(tokens > 0);
        total_tokens += tokens;
        total_cost += job["cost_usd"].as_f64().unwrap();
    }
    assert_eq!(
        total_tokens, 20,
        "per-job usage must add up to the upstream call's"
    );
    // text-embedding-3-small list price: $0.02 per 1M tokens.
    assert!(
        (total_cost - 20.0 * 0.02 / 1e6).abs() < 1e-12,
        "{total_cost}"
    );
}

#[tokio::test]
async fn the_worker_batches_embedding_jobs_that_arrive_within_its_window() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with_jobs(&up.base_url, 1)).await;
    let key = gw.create_key("t1").await;
    let submits = (0..5).map(|i| {
        submit(
            &gw,
            &key,
            "/v1/embeddings",
            json!({"model": "embed-test", "input": format!("doc {i}")}),
        )
    });
    let accepted = futures_util::future::join_all(submits).await;
    let mut ids = Vec::new();
    for r in accepted {
        assert_eq!(r.status(), 202);
        ids.push(json(r).await["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        assert_eq!(wait_job(&gw, &key, id).await["status"], "succeeded");
    }
    assert_eq!(
        up.calls(),
        1,
        "five jobs submitted together must share one upstream call"
    );
}

/// A queue that refuses every message but remembers what it was given.
struct BrokenQueue(std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl sluice::queue::JobQueue for BrokenQueue {
    async fn send(&self, body: &str) -> Result<(), sluice::queue::QueueError> {
        self.0.lock().unwrap().push(body.to_owned());
        Err(sluice::queue::QueueError::Backend("queue is down".into()))
    }
    async fn receive(
        &self,
        _max: u32,
        _wait: Duration,
    ) -> Result<Vec<sluice::queue::Delivery>, sluice::queue::QueueError> {
        Ok(Vec::new())
    }
    async fn delete(&self, _receipt: &str) -> Result<(), sluice::queue::QueueError> {
        Ok(())
    }
    async fn dead_letter_count(&self) -> Result<u64, sluice::queue::QueueError> {
        Ok(0)
    }
    async fn visibility_timeout(&self) -> Result<Duration, sluice::queue::QueueError> {
        Ok(Duration::from_secs(60))
    }
    async fn receive_dead_letters(
        &self,
        _max: u32,
    ) -> Result<Vec<sluice::queue::Delivery>, sluice::queue::QueueError> {
        Ok(Vec::new())
    }
    async fn delete_dead_letter(&self, _receipt: &str) -> Result<(), sluice::queue::QueueError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_job_that_cannot_be_queued_is_a_503_and_is_closed_as_failed() {
    let up = FakeUpstream::start().await;
    let config =
        sluice::config::Config::parse(&fake_config_with_jobs(&up.base_url, 0), "t", &|_| None)
            .unwrap();
    let clock = sluice::clock::ManualClock::new(1_800_000_000_000);
    let mut deps =
        sluice::deps::Deps::sqlite(":memory:", &config, std::sync::Arc::new(clock.clone()))
            .unwrap();
    let broken = std::sync::Arc::new(BrokenQueue(std::sync::Mutex::new(Vec::new())));
    deps.queue = broken.clone();
    let gw = TestGateway::start_deps(&config, deps, clock).await;
    let key = gw.create_key("t1").await;
    let r = submit(&gw, &key, "/v1/chat/completions", chat_body("lost?")).await;
    let error = assert_error(r, 503, "service_unavailable").await;
    assert!(
        !error["message"].as_str().unwrap().contains("queue is down"),
        "no internal detail"
    );
    let sent = broken.0.lock().unwrap().clone();
    let message: Value = serde_json::from_str(&sent[0]).unwrap();
    let job = wait_job(&gw, &key, message["job_id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["http_status"], 503);
    assert_eq!(up.calls(), 0);
}
