//! Jobs that can wait (`"completion_window": "24h"` on `POST /v1/jobs`): the interface, and
//! the trip through a provider's Batch API on the local backend.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::clock::Clock as _;
use sluice::store::BatchEntryKind;
use sluice_tests::gateway::ADMIN_KEY;
use sluice_tests::{BatchFate, FakeUpstream, TestGateway, fake_config_with};

use crate::e2e::jobs::wait_job;
use crate::e2e::{assert_error, json};

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

/// Batch APIs on, one worker (it parks the jobs), passes run by the test.
fn running_config(base_url: &str) -> String {
    fake_config_with(
        base_url,
        "[jobs]\nworkers = 1\nbatch_window_ms = 0\n[jobs.batch_api]\nenabled = true\npoll_every_s = 60\n",
    )
}

/// Waits until `n` jobs are parked for a batch.
async fn parked(gw: &TestGateway, n: usize) {
    for _ in 0..400 {
        let now = gw.clock.now_ms();
        let waiting = gw
            .deps
            .store
            .due_batch_entries(BatchEntryKind::Waiting, now, now, 10_000)
            .await
            .unwrap();
        if waiting.len() >= n {
            assert_eq!(waiting.len(), n);
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{n} jobs were not parked");
}

/// One batch pass, in a new `poll_every_s` slot.
async fn pass(gw: &TestGateway) -> sluice::jobs::batch_api::PassReport {
    gw.clock.advance_ms(60_000);
    gw.services
        .batcher
        .as_ref()
        .expect("batch APIs are on")
        .run_once()
        .await
        .unwrap()
}

async fn get_job(gw: &TestGateway, key: &str, id: &str) -> Value {
    json(
        gw.http
            .get(format!("{}/v1/jobs/{id}", gw.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn exact(up: &FakeUpstream, path: &str) -> usize {
    up.requests().iter().filter(|r| r.path == path).count()
}

fn paths(up: &FakeUpstream, prefix: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| r.path.starts_with(prefix))
        .count()
}

async fn submit_waiting(gw: &TestGateway, key: &str, prompt: &str) -> String {
    let r = gw
        .post(
            "/v1/jobs",
            key,
            &json!({"endpoint": "/v1/chat/completions", "completion_window": "24h",
                "request": {"model": "gpt-test", "max_tokens": 50,
                    "messages": [{"role": "user", "content": prompt}]}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    json(r).await["id"].as_str().unwrap().to_owned()
}

/// `gpt-test` is priced 0.15 / 0.60 USD per million tokens: half of that through a batch.
fn batch_cost_nanos(job: &Value) -> u64 {
    let tin = job["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let tout = job["usage"]["completion_tokens"].as_u64().unwrap() as f64;
    ((tin * 0.15 + tout * 0.60) * 1000.0 * 0.5).round() as u64
}

async fn budget(gw: &TestGateway, key: &str) -> Value {
    gw.usage(key).await["limits"]["key"]["budget"].clone()
}

#[tokio::test]
async fn a_hundred_waiting_jobs_go_upstream_as_one_batch_each_billed_at_the_batch_price() {
    let up = FakeUpstream::start().await;
    // Results only after a delay: the first poll finds the batch running.
    up.set_batch_delay(Duration::from_millis(400));
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 10.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(submit_waiting(&gw, &key, &format!("overnight question {i}")).await);
    }
    parked(&gw, 100).await;
    assert_eq!(up.calls(), 0, "nothing goes upstream before the pass");
    let report = pass(&gw).await;
    assert_eq!(report.batches_submitted, 1, "{report:?}");
    assert_eq!(report.jobs_submitted, 100);
    assert_eq!(exact(&up, "/v1/files"), 1);
    assert_eq!(exact(&up, "/v1/batches"), 1);
    let upload = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/files")
        .unwrap();
    assert_eq!(upload.body["purpose"], "batch");
    // Reserved at the batch price while it waits.
    let held = budget(&gw, &key).await;
    assert!(held["reserved_usd"].as_f64().unwrap() > 0.0, "{held}");
    let report = pass(&gw).await;
    assert_eq!(report.batches_running, 1, "{report:?}");
    assert_eq!(get_job(&gw, &key, &ids[0]).await["status"], "running");
    tokio::time::sleep(Duration::from_millis(450)).await;
    let report = pass(&gw).await;
    assert_eq!(report.jobs_answered, 100, "{report:?}");
    assert_eq!(paths(&up, "/v1/chat/completions"), 0, "no ordinary call");
    // 100 jobs cost five upstream requests: upload, create, two polls, the output file.
    assert_eq!(up.calls(), 5);
    let mut total = 0;
    for id in &ids {
        let job = get_job(&gw, &key, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["completion_window"], "24h");
        assert_eq!(job["result"]["object"], "chat.completion");
        let cost = (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
        assert!(cost > 0);
        assert_eq!(cost, batch_cost_nanos(&job), "{job}");
        total += cost;
    }
    // The ledger is the sum of the jobs' costs, and nothing stays reserved.
    let spent = budget(&gw, &key).await;
    assert_eq!(
        (spent["spent_usd"].as_f64().unwrap() * 1e9).round() as u64,
        total,
        "{spent}"
    );
    assert_eq!(spent["reserved_usd"], 0.0, "{spent}");
    // Nothing left to do.
    assert_eq!(pass(&gw).await, Default::default());
}

#[tokio::test]
async fn a_failing_batch_falls_back_to_ordinary_calls() {
    let up = FakeUpstream::start().await;
    up.set_batch_fate(BatchFate::Fail);
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let ids = [
        submit_waiting(&gw, &key, "one").await,
        submit_waiting(&gw, &key, "two").await,
    ];
    parked(&gw, 2).await;
    assert_eq!(pass(&gw).await.batches_submitted, 1);
    let report = pass(&gw).await;
    assert_eq!(report.jobs_taken_back, 2, "{report:?}");
    for id in &ids {
        let job = wait_job(&gw, &key, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        // An ordinary call, at the list price.
        let tin = job["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
        let tout = job["usage"]["completion_tokens"].as_u64().unwrap() as f64;
        let full = ((tin * 0.15 + tout * 0.60) * 1000.0).round() as u64;
        assert_eq!(
            (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64,
            full
        );
    }
    assert_eq!(paths(&up, "/v1/chat/completions"), 2);
}

#[tokio::test]
async fn a_batch_that_would_miss_the_window_is_cancelled_and_its_jobs_run_in_time() {
    let up = FakeUpstream::start().await;
    // Never done within the test.
    up.set_batch_delay(Duration::from_secs(3600));
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let id = submit_waiting(&gw, &key, "late").await;
    let submitted_at = get_job(&gw, &key, &id).await["created_at"]
        .as_u64()
        .unwrap();
    parked(&gw, 1).await;
    assert_eq!(pass(&gw).await.batches_submitted, 1);
    assert_eq!(pass(&gw).await.batches_running, 1);
    // About 22 h 53 min after submission (before the fall-back time, 23 h): still waiting.
    gw.clock.advance_ms((22 * 3600 + 50 * 60) * 1000);
    assert_eq!(pass(&gw).await.batches_running, 1);
    // Past the fall-back time (window end − fall_back_before_s): cancelled, run now.
    gw.clock.advance_ms(10 * 60_000);
    let report = pass(&gw).await;
    assert_eq!(report.jobs_taken_back, 1, "{report:?}");
    assert_eq!(paths(&up, "/v1/batches/"), 4, "three polls and a cancel");
    assert!(up.requests().iter().any(|r| r.path.ends_with("/cancel")));
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert!(
        job["updated_at"].as_u64().unwrap() < submitted_at + 24 * 3600,
        "{job}"
    );
    assert_eq!(paths(&up, "/v1/chat/completions"), 1);
}

#[tokio::test]
async fn a_revoked_keys_waiting_job_is_not_sent() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let revoked = gw.admin_create(json!({"tenant": "t1"})).await;
    let kept = gw.create_key("t1").await;
    let gone = submit_waiting(&gw, revoked["key"].as_str().unwrap(), "never sent").await;
    let stays = submit_waiting(&gw, &kept, "sent").await;
    parked(&gw, 2).await;
    let r = gw
        .http
        .delete(format!(
            "{}/admin/keys/{}",
            gw.url,
            revoked["id"].as_str().unwrap()
        ))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report = pass(&gw).await;
    assert_eq!(report.jobs_refused, 1, "{report:?}");
    assert_eq!(report.jobs_submitted, 1);
    let report = pass(&gw).await;
    assert_eq!(report.jobs_answered, 1, "{report:?}");
    let job = get_job(&gw, &kept, &stays).await;
    assert_eq!(job["status"], "succeeded");
    // The revoked key's job: failed, 401, not billed (read through the store: its key is gone).
    let refused = gw
        .deps
        .store
        .get_job(&gone, gw.clock.now_ms())
        .await
        .unwrap()
        .unwrap();
    let result = refused.result.unwrap();
    assert_eq!(result.http_status, 401);
    assert_eq!(result.cost_nano_usd, 0);
    assert!(String::from_utf8_lossy(&result.body).contains("key_revoked"));
    // Sent: one request in the one batch (the file of the kept key's job only).
    let upload = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/files")
        .unwrap();
    let one_line = upload.body["bytes"].as_u64().unwrap();
    assert!(one_line > 0);
    assert_eq!(exact(&up, "/v1/files"), 1);
}

#[tokio::test]
async fn a_request_the_provider_refuses_fails_its_job_alone() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let good = submit_waiting(&gw, &key, "fine").await;
    // OpenAI refuses a function name with a space ("a-z, A-Z, 0-9, underscores and dashes").
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/chat/completions", "completion_window": "24h",
                "request": {"model": "gpt-test", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "call it"}],
                    "tools": [{"type": "function", "function": {"name": "bad name",
                        "parameters": {"type": "object", "properties": {}}}}]}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let bad = json(r).await["id"].as_str().unwrap().to_owned();
    parked(&gw, 2).await;
    assert_eq!(pass(&gw).await.jobs_submitted, 2);
    assert_eq!(pass(&gw).await.jobs_answered, 2);
    assert_eq!(get_job(&gw, &key, &good).await["status"], "succeeded");
    let failed = get_job(&gw, &key, &bad).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["http_status"], 400, "{failed}");
    assert_eq!(failed["cost_usd"], 0.0);
    assert_eq!(paths(&up, "/v1/chat/completions"), 0);
}

#[tokio::test]
async fn anthropic_jobs_go_through_message_batches() {
    let up = FakeUpstream::start().await;
    let config = format!(
        "{}\n[[providers]]\nname = \"claude\"\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_keys = [\"sk-ant-test\"]\n\n\
         [[models]]\nname = \"claude-test\"\ndeployments = [{{ provider = \"claude\", model = \"claude-haiku-4-5\" }}]\n\
         price = {{ input_per_mtok = 1.0, output_per_mtok = 5.0 }}\n",
        running_config(&up.base_url),
        up.base_url
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    let mut ids = Vec::new();
    for prompt in ["a", "b", "c"] {
        let r = gw
            .post(
                "/v1/jobs",
                &key,
                &json!({"endpoint": "/v1/chat/completions", "completion_window": "24h",
                    "request": {"model": "claude-test", "max_tokens": 64,
                        "messages": [{"role": "user", "content": prompt}]}}),
            )
            .await;
        assert_eq!(r.status(), 202);
        ids.push(json(r).await["id"].as_str().unwrap().to_owned());
    }
    parked(&gw, 3).await;
    assert_eq!(pass(&gw).await.jobs_submitted, 3);
    assert_eq!(exact(&up, "/v1/messages/batches"), 1);
    assert_eq!(pass(&gw).await.jobs_answered, 3);
    for id in &ids {
        let job = get_job(&gw, &key, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["result"]["object"], "chat.completion");
        let tin = job["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
        let tout = job["usage"]["completion_tokens"].as_u64().unwrap() as f64;
        let half = ((tin * 1.0 + tout * 5.0) * 1000.0 * 0.5).round() as u64;
        assert_eq!(
            (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64,
            half
        );
    }
    // The fake answers the n-th request of a batch `fake answer #n` and returns the results
    // in another order: each job has the answer to its own request (matched by custom_id).
    let sent = up
        .requests()
        .into_iter()
        .find(|r| r.path == "/v1/messages/batches")
        .unwrap();
    for id in &ids {
        let n = sent.body["requests"]
            .as_array()
            .unwrap()
            .iter()
            .position(|r| r["custom_id"] == id.as_str())
            .unwrap()
            + 1;
        let job = get_job(&gw, &key, id).await;
        assert_eq!(
            job["result"]["choices"][0]["message"]["content"],
            format!("fake answer #{n}"),
            "{job}"
        );
    }
    assert_eq!(
        paths(&up, "/v1/messages/batches/"),
        2,
        "one poll and one results read"
    );
}

#[tokio::test]
async fn batches_stay_within_the_request_limit() {
    let up = FakeUpstream::start().await;
    let config = running_config(&up.base_url).replace(
        "poll_every_s = 60\n",
        "poll_every_s = 60\nmax_requests = 3\n",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(submit_waiting(&gw, &key, &format!("q{i}")).await);
    }
    parked(&gw, 7).await;
    let report = pass(&gw).await;
    assert_eq!(report.batches_submitted, 3, "{report:?}");
    assert_eq!(report.jobs_submitted, 7);
    assert_eq!(exact(&up, "/v1/batches"), 3);
    assert_eq!(pass(&gw).await.jobs_answered, 7);
    for id in &ids {
        assert_eq!(get_job(&gw, &key, id).await["status"], "succeeded");
    }
}

#[tokio::test]
async fn a_second_copy_of_a_parking_message_is_done_with_and_the_job_stays_parked() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&running_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let id = submit_waiting(&gw, &key, "once").await;
    parked(&gw, 1).await;
    // SQS delivers at least once: the same message again, while the job is parked.
    let until = gw.clock.now_ms() + 23 * 3600 * 1000;
    let copy = json!({"job_id": id, "batch_until_ms": until}).to_string();
    let dispositions = gw.services.processor.process(&[copy]).await;
    assert_eq!(
        dispositions,
        vec![sluice::jobs::processor::Disposition::Done]
    );
    parked(&gw, 1).await;
    assert_eq!(get_job(&gw, &key, &id).await["attempts"], 1);
    assert_eq!(up.calls(), 0);
}
