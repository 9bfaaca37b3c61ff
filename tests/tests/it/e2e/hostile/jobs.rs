//! Hostile clients and jobs (issue 13, items 5–7) on SQLite in-process: a revoked key's queued
//! jobs, tenants in one embeddings micro-batch, and `Idempotency-Key` — generated keys of
//! every kind over the wire, jobs, streams and `/v1/messages`. The scenarios shared with the
//! DynamoDB + SQS run are in `sluice_tests::hostile_jobs`; each test prints a `hostile:` line
//! with its figures (RELIABILITY.md, "Hostile clients").

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::deps::Deps;
use sluice_tests::hostile_jobs::{self, Hostile};
use sluice_tests::{Behaviour, FakeUpstream, Fault, Op, TestGateway, fake_config};

use crate::e2e::{assert_error, header};

async fn sqlite(up: &FakeUpstream) -> Hostile {
    let config = hostile_jobs::config(&up.base_url);
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::sqlite(":memory:", &config, Arc::new(clock.clone())).unwrap();
    Hostile::start(&config, deps, clock).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_queued_jobs_fail_uncalled_and_unbilled() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let f = hostile_jobs::revoked_keys_queued_jobs(&h, &up, 300).await;
    println!(
        "hostile: sqlite revocation: {} jobs queued then key revoked, {} other-tenant jobs in \
         the same {} batches; {} key reads; {} callbacks (all other-tenant); {} upstream calls (all other-tenant); revoked \
         tenant billed {} nano-USD",
        f.revoked_jobs,
        f.control_jobs,
        f.batches,
        f.key_reads,
        f.callbacks,
        f.upstream_calls,
        f.revoked_spend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_mid_run_finishes_that_job_and_no_other() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let cost = hostile_jobs::revoked_while_running(&h, &up).await;
    println!(
        "hostile: sqlite revoked mid-run: running job finished and billed {cost} nano-USD; the \
         queued one and one accepted through a stale key cache failed key_revoked; 1 upstream call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_bad_input_never_fails_or_reaches_another_tenants_jobs() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let f = hostile_jobs::batches_never_mix_tenants(&h, &up).await;
    println!(
        "hostile: sqlite batch isolation: {} embedding jobs of 3 tenants in one batch, {} \
         upstream calls, {} failed (the attacker's bad inputs), 0 errors quoting another job",
        f.jobs, f.upstream_calls, f.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_one_job_however_often_it_is_sent() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let (sent, queued) = hostile_jobs::one_job_per_idempotency_key(&h).await;
    println!("hostile: sqlite job idempotency: {sent} requests, {queued} jobs queued");
    assert_eq!(up.calls(), 0);
}

/// Keys of every kind: valid ones (printable ASCII, 1 to 255, no space at either end) and
/// blank, too long, non-ASCII and tab-holding ones.
fn any_key() -> impl Strategy<Value = (Vec<u8>, bool)> {
    prop_oneof![
        4 => "[!-~]([ -~]{0,253}[!-~])?".prop_map(|k| (k.into_bytes(), true)),
        1 => "[!-~]{256,300}".prop_map(|k| (k.into_bytes(), false)),
        2 => ("[!-~]{0,20}", 0x80u8..=0xff, "[ -~]{0,20}")
            .prop_map(|(a, b, c)| ([a.as_bytes(), &[b], c.as_bytes()].concat(), false)),
        1 => ("[!-~]{1,20}", "[!-~]{1,20}")
            .prop_map(|(a, c)| (format!("{a}\t{c}").into_bytes(), false)),
        1 => "[ \t]{0,5}".prop_map(|k| (k.into_bytes(), false)),
    ]
}

/// Over the wire, every key is either used (a repeat is a replay) or refused with a 400 — it
/// is never ignored, which is what let a second job or a second charge through before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_idempotency_key_is_used_or_refused_never_ignored() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let runtime = tokio::runtime::Handle::current();
    // Each case in a tenant of its own (keys are per tenant): a key the runner tries twice
    // (while shrinking) meets no record of an earlier case.
    let cases = std::cell::Cell::new(0);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let (used, refused) = (std::cell::Cell::new(0), std::cell::Cell::new(0));
    let result = tokio::task::block_in_place(|| {
        runner.run(&any_key(), |(bytes, valid)| {
            cases.set(cases.get() + 1);
            let key = runtime.block_on(gw.create_key(&format!("case-{}", cases.get())));
            let send = || {
                let value = reqwest::header::HeaderValue::from_bytes(&bytes).unwrap();
                gw.http
                    .post(format!("{}/v1/embeddings", gw.url))
                    .bearer_auth(&key)
                    .header("idempotency-key", value)
                    .json(&json!({"model": "embed-test", "input": "the same request"}))
                    .send()
            };
            runtime.block_on(async {
                let first = send().await.unwrap();
                if valid {
                    prop_assert_eq!(first.status(), 200, "{:?}", bytes);
                    prop_assert!(first.headers().get("idempotent-replayed").is_none());
                    let again = send().await.unwrap();
                    prop_assert_eq!(again.status(), 200);
                    prop_assert_eq!(&again.headers()["idempotent-replayed"], "true");
                    used.set(used.get() + 1);
                } else {
                    prop_assert_eq!(first.status(), 400, "{:?}", bytes);
                    let body: Value = first.json().await.unwrap();
                    prop_assert_eq!(&body["error"]["code"], "invalid_idempotency_key");
                    prop_assert_eq!(&body["error"]["param"], "Idempotency-Key");
                    refused.set(refused.get() + 1);
                }
                Ok::<(), TestCaseError>(())
            })
        })
    });
    result.unwrap();
    let (used, refused) = (used.get(), refused.get());
    assert!(used > 0 && refused > 0, "{used} used, {refused} refused");
    // A valid key's request ran once and its repeat was a replay; a refused one never ran.
    assert_eq!(up.calls(), used);
    println!(
        "hostile: idempotency keys over the wire: {used} used and replayed, {refused} refused (400)"
    );
}

fn stream_body(prompt: &str) -> Value {
    json!({"model": "gpt-test", "stream": true,
           "messages": [{"role": "user", "content": prompt}]})
}

async fn send_stream(gw: &TestGateway, key: &str, idem: &str, prompt: &str) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .header("idempotency-key", idem)
        .header("cache-control", "no-cache")
        .json(&stream_body(prompt))
        .send()
        .await
        .unwrap()
}

/// A stream holds its key until its last event: a duplicate meanwhile is 409. One that ran to
/// its end is not run (or billed) again: 422 `idempotency_stream_not_replayable`. One that
/// broke off, or whose client left, frees its key for a retry.
#[tokio::test]
async fn a_stream_holds_its_key_while_it_runs_and_is_never_run_twice() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Drip(Duration::from_millis(150)));
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;

    let mut first = send_stream(&gw, &key, "stream-1", "drip").await;
    assert_eq!(first.status(), 200);
    let chunk = first.chunk().await.unwrap().unwrap();
    assert!(chunk.starts_with(b"data: "), "the stream has begun");
    let during = send_stream(&gw, &key, "stream-1", "drip").await;
    assert_error(during, 409, "idempotency_key_in_use").await;
    let mut rest = String::from_utf8(chunk.to_vec()).unwrap();
    while let Some(c) = first.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&c).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
    let after = send_stream(&gw, &key, "stream-1", "drip").await;
    assert_eq!(header(&after, "idempotent-replayed"), "true");
    let error = assert_error(after, 422, "idempotency_stream_not_replayable").await;
    assert!(error["message"].as_str().unwrap().contains("new key"));
    assert_eq!(up.calls(), 1, "a finished stream must not run again");

    // A client that leaves mid-stream frees the key: its retry runs.
    let mut left = send_stream(&gw, &key, "stream-2", "leaving").await;
    assert_eq!(left.status(), 200);
    left.chunk().await.unwrap();
    drop(left);
    let mut retried = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = send_stream(&gw, &key, "stream-2", "leaving").await;
        if r.status() != 409 {
            retried = Some(r);
            break;
        }
    }
    let retried = retried.expect("the key of a stream whose client left stayed held");
    assert_eq!(retried.status(), 200);
    assert!(retried.text().await.unwrap().ends_with("data: [DONE]\n\n"));

    // A stream the provider breaks off frees the key too (like a 502): the retry runs.
    up.set(Behaviour::CutOff);
    let cut = send_stream(&gw, &key, "stream-3", "cut").await;
    let text = cut.text().await.unwrap();
    assert!(text.contains("upstream_stream_cut"), "{text}");
    up.set(Behaviour::Ok);
    let retried = send_stream(&gw, &key, "stream-3", "cut").await;
    assert_eq!(retried.status(), 200);
    assert!(retried.headers().get("idempotent-replayed").is_none());
    assert!(retried.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    println!(
        "hostile: idempotent streams: duplicate during a stream 409, after it 422, after a \
         client left or a provider cut the retry ran; {} upstream calls",
        up.calls()
    );
}

/// `/v1/messages` (Anthropic's ingress) honours the key as the OpenAI routes do, with its
/// replays and refusals in Anthropic's shape.
#[tokio::test]
async fn the_messages_route_honours_the_key_too() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let send = |idem: &'static str, body: Value| {
        let request = gw
            .http
            .post(format!("{}/v1/messages", gw.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .header("idempotency-key", idem)
            .header("cache-control", "no-cache")
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let body = |text: &str, stream: bool| {
        json!({"model": "gpt-test", "max_tokens": 20, "stream": stream,
               "messages": [{"role": "user", "content": text}]})
    };
    let first = send("m-1", body("hello", false)).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["type"], "message");
    let again = send("m-1", body("hello", false)).await;
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);
    let other = send("m-1", body("another", false)).await;
    assert_eq!(other.status(), 422);
    let other: Value = other.json().await.unwrap();
    assert_eq!(other["type"], "error", "Anthropic's shape: {other}");
    assert_eq!(other["error"]["type"], "invalid_request_error");
    let blank = send("", body("hello", false)).await;
    assert_eq!(blank.status(), 400);
    assert_eq!(blank.json::<Value>().await.unwrap()["type"], "error");

    let streamed = send("m-2", body("stream me", true)).await;
    assert!(streamed.text().await.unwrap().contains("message_stop"));
    let again = send("m-2", body("stream me", true)).await;
    assert_eq!(again.status(), 422);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["type"], "error", "{again}");
    assert!(
        again["error"]["message"]
            .as_str()
            .unwrap()
            .contains("streams are not replayed")
    );
    assert_eq!(up.calls(), 2);
}

/// A key used for an answer now cannot also make a job, and the other way round.
#[tokio::test]
async fn a_key_is_an_answer_or_a_job_not_both() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let (key, _) = h.key("control").await;
    let request = json!({"model": "embed-test", "input": "now or later"});
    let send = |prefer: bool| {
        let mut r =
            h.gw.http
                .post(format!("{}/v1/embeddings", h.gw.url))
                .bearer_auth(&key)
                .header("idempotency-key", "either")
                .json(&request);
        if prefer {
            r = r.header("prefer", "respond-async");
        }
        r.send()
    };
    assert_eq!(send(false).await.unwrap().status(), 200);
    assert_error(send(true).await.unwrap(), 422, "idempotency_key_reused").await;
    assert!(h.take(1).await.is_empty(), "no job was queued");
}

/// A key that cannot be read (the store throttled) neither runs nor fails the job: it is given
/// back and runs on its next delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_cannot_be_read_leaves_the_job_for_redelivery() {
    let up = FakeUpstream::start().await;
    let h = sqlite(&up).await;
    let (key, _) = h.key("control").await;
    let ids = h
        .submit_all(&[(
            key.clone(),
            "/v1/chat/completions",
            json!({"model": "gpt-test", "messages": [{"role": "user", "content": "later"}]}),
        )])
        .await;
    h.store.fail(Op::KeyById, Fault::Throttled, 0, 1);
    let first = h.take(1).await;
    h.process(&first).await;
    let job = h.job(&key, &ids[0]).await;
    assert_eq!(job["status"], "queued", "{job}");
    assert_eq!(up.calls(), 0);
    // The message comes back after its visibility timeout.
    h.gw.clock.advance_ms(3_600_000);
    assert_eq!(h.drain().await, 1);
    let job = h.job(&key, &ids[0]).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "{job}");
    assert_eq!(up.calls(), 1);
}
