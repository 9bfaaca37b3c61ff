//! Fault injection (issue 8, item 3): every write of the pipeline fails — refused with
//! DynamoDB's throttling errors, or applied with its answer lost — and the provider fails
//! in every way a real one does. For each: the client gets a clear answer (the answer, a
//! fallback, or a clean OpenAI error), no budget stays reserved, no job is lost, and nothing
//! is billed twice. Each test prints one `faults:` line with its counts (RELIABILITY.md).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::jobs::worker::process_deliveries;
use sluice::metrics::EventKind;
use sluice_tests::{
    Behaviour, FakeUpstream, Fault, FaultyStore, Op, RecordingSink, TestGateway,
    fake_config_with_jobs,
};

use crate::e2e::{header, json, nanos};

/// A gateway over SQLite behind a [`FaultyStore`], recording every usage event. Every write
/// goes through the wrapper, including the local rollups of usage.
async fn faulty_gateway(config_toml: &str) -> (TestGateway, Arc<FaultyStore>, Arc<RecordingSink>) {
    let config = Config::parse(config_toml, "test config", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let mut deps = Deps::sqlite(":memory:", &config, Arc::new(clock.clone())).unwrap();
    let faulty = FaultyStore::wrap(Arc::clone(&deps.store));
    deps.store = faulty.clone();
    let mut deps = deps.with_local_metrics(&config.metrics);
    let recording = RecordingSink::new(Arc::clone(&deps.usage));
    deps.usage = recording.clone();
    (
        TestGateway::start_deps(&config, deps, clock).await,
        faulty,
        recording,
    )
}

/// A key with a spending cap and a token limit, so every request reserves budget and tokens.
async fn capped_key(gw: &TestGateway, tenant: &str) -> String {
    gw.admin_create(
        json!({"tenant": tenant, "budget_usd": 10.0, "period": "day", "tpm": 1_000_000}),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The key's budget as `/v1/usage` reports it: (spent, reserved) in nano-USD.
async fn ledger(gw: &TestGateway, key: &str) -> (u64, u64) {
    let u = gw.usage(key).await;
    let budget = &u["limits"]["key"]["budget"];
    let n = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as u64;
    (n(&budget["spent_usd"]), n(&budget["reserved_usd"]))
}

/// Gives back reservations that can no longer settle: the clock moves past their expiry and
/// the limiter's housekeeping (which runs on every instance once a minute) releases them.
async fn release_abandoned(gw: &TestGateway) -> usize {
    gw.clock.advance_ms(601_000);
    gw.services
        .gateway
        .limiter()
        .release_expired()
        .await
        .unwrap()
}

/// A clean OpenAI error: JSON `{"error": {message, type, code}}`, the status the code implies,
/// and no internal detail (store or injected-fault text) in the message.
async fn assert_clean_error(r: reqwest::Response, allowed: &[(u16, &str)]) -> String {
    let status = r.status().as_u16();
    let body: Value = r.json().await.expect("an error body must be JSON");
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or_default().to_owned();
    assert!(
        allowed.contains(&(status, code.as_str())),
        "unexpected {status} {body}"
    );
    let message = error["message"].as_str().unwrap();
    assert!(!message.is_empty() && error["type"].is_string(), "{body}");
    for leak in ["DynamoDB", "injected", "Exception", "sk-provider"] {
        assert!(!message.contains(leak), "{leak} leaked: {body}");
    }
    code
}

const STORE_FAULTS: [Fault; 3] = [
    Fault::Throttled,
    Fault::ThrottledRequests,
    Fault::LostAnswer,
];

#[tokio::test]
async fn each_write_of_a_request_fails_and_nothing_stays_reserved_or_is_billed_twice() {
    let up = FakeUpstream::start().await;
    let (gw, faulty, recording) = faulty_gateway(&fake_config_with_jobs(&up.base_url, 0)).await;
    let key = capped_key(&gw, "faulty").await;
    let writes = [
        Op::IdempotencyBegin,
        Op::Apply,
        Op::CachePut,
        Op::Settle,
        Op::IdempotencyFinish,
    ];
    let (mut answered, mut refused, mut billed) = (0usize, 0, 0u64);
    let mut n = 0;
    for op in writes {
        for fault in STORE_FAULTS {
            for stream in [false, true] {
                n += 1;
                // A stream that ran to its end keeps its key too (as not replayable), written
                // before its body ends.
                faulty.fail(op, fault, 0, 1);
                let before = faulty.injected_into(op);
                let r = gw
                    .http
                    .post(format!("{}/v1/chat/completions", gw.url))
                    .bearer_auth(&key)
                    .header("idempotency-key", format!("idem-{n}"))
                    .json(
                        &json!({"model": "gpt-test", "max_tokens": 50, "stream": stream,
                                  "messages": [{"role": "user", "content": format!("q{n}")}]}),
                    )
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    answered += 1;
                    if stream {
                        let text = r.text().await.unwrap();
                        assert!(text.trim_end().ends_with("data: [DONE]"), "{op:?} {text}");
                    } else {
                        billed += nanos(header(&r, "x-sluice-cost-usd"));
                        let body: Value = r.json().await.unwrap();
                        assert_eq!(body["object"], "chat.completion", "{op:?}");
                    }
                } else {
                    refused += 1;
                    // A store failure before the provider was called: retry later.
                    assert_clean_error(r, &[(503, "service_unavailable")]).await;
                }
                // Streams settle when they end, on a task of their own.
                tokio::time::sleep(Duration::from_millis(if stream { 150 } else { 0 })).await;
                assert_eq!(
                    faulty.injected_into(op),
                    before + 1,
                    "{op:?}/{fault:?} was not reached (stream {stream})"
                );
            }
        }
    }
    let released = release_abandoned(&gw).await;
    let (spent, reserved) = ledger(&gw, &key).await;
    assert_eq!(reserved, 0, "a reservation was left behind");
    // Every request the provider answered is billed once: the ledger equals the usage events
    // of the requests that reached it, and the non-streamed ones' headers.
    let events = recording.events();
    let events_cost: u64 = events.iter().map(|e| e.cost_nano_usd).sum();
    assert_eq!(spent, events_cost, "ledger vs usage events");
    let streamed_cost: u64 = events
        .iter()
        .filter(|e| e.status == 200 && e.kind == EventKind::Stream)
        .map(|e| e.cost_nano_usd)
        .sum();
    assert_eq!(spent, billed + streamed_cost, "ledger vs answers");
    assert_eq!(
        up.calls(),
        answered,
        "each answered request called the provider once"
    );
    println!(
        "faults: requests {n}, store faults injected {}, answered {answered}, clean 503 {refused}, \
         abandoned reservations released {released}, spent {spent} nano-USD = answered costs, 0 reserved",
        faulty.injected()
    );
}

#[tokio::test]
async fn settling_survives_a_store_that_keeps_failing_for_a_while() {
    let up = FakeUpstream::start().await;
    let (gw, faulty, _) = faulty_gateway(&fake_config_with_jobs(&up.base_url, 0)).await;
    let key = capped_key(&gw, "flaky").await;
    // Three failed tries in a row, then the fourth lands: the spend is recorded once.
    faulty.fail(Op::Settle, Fault::Throttled, 0, 3);
    let r = gw.chat(&key, "gpt-test", "three strikes").await;
    assert_eq!(r.status(), 200);
    let cost = nanos(header(&r, "x-sluice-cost-usd"));
    assert_eq!(ledger(&gw, &key).await, (cost, 0));
    assert_eq!(faulty.injected_into(Op::Settle), 3);

    // A store that refuses every settle: the answer still reaches the client, and the
    // reservation is given back once it expires rather than held forever.
    faulty.fail_always(Op::Settle, Fault::ThrottledRequests);
    let r = gw.chat(&key, "gpt-test", "never settles").await;
    assert_eq!(r.status(), 200);
    let (_, reserved) = ledger(&gw, &key).await;
    assert!(
        reserved > 0,
        "the reservation is held while it may still settle"
    );
    faulty.heal();
    assert_eq!(release_abandoned(&gw).await, 1);
    let (spent, reserved) = ledger(&gw, &key).await;
    assert_eq!(reserved, 0);
    // What that answer cost is not recorded (never billed twice; under-billed once, logged).
    assert_eq!(spent, cost);
}

/// Plays the queue's consumer: receives, processes, deletes what is done, and moves the
/// clock past the visibility timeout and job lease when nothing is visible, until the queue is
/// empty (or `rounds` run out). Returns how many deliveries were processed.
async fn drain(gw: &TestGateway, rounds: usize) -> usize {
    let mut delivered = 0;
    let mut idle = 0;
    for _ in 0..rounds {
        let batch = gw.deps.queue.receive(10, Duration::ZERO).await.unwrap();
        if batch.is_empty() {
            idle += 1;
            if idle == 3 {
                return delivered;
            }
            gw.clock.advance_ms(61_000);
            continue;
        }
        idle = 0;
        delivered += batch.len();
        process_deliveries(&gw.services.processor, &*gw.deps.queue, &batch).await;
    }
    panic!("the queue did not drain in {rounds} rounds");
}

#[tokio::test]
async fn each_write_of_a_job_fails_and_every_accepted_job_ends_once() {
    let up = FakeUpstream::start().await;
    // No cache: a job that ran twice would call the provider twice.
    let config =
        fake_config_with_jobs(&up.base_url, 0).replacen("cache_ttl_s = 3600", "cache_ttl_s = 0", 1);
    let (gw, faulty, _) = faulty_gateway(&config).await;
    let key = capped_key(&gw, "jobs").await;
    // (the failing write, and a second one failing with it)
    let cases: [(Op, Option<Op>); 5] = [
        (Op::InsertJob, None),
        (Op::ClaimJob, None),
        (Op::FinishJob, None),
        // The store fails while the job runs (its reservation), and so does giving it back.
        (Op::Apply, None),
        (Op::Apply, Some(Op::ReleaseJob)),
    ];
    let mut accepted = Vec::new();
    let (mut refused, mut deliveries, mut n) = (0, 0, 0);
    for (op, also) in cases {
        for fault in STORE_FAULTS {
            n += 1;
            faulty.fail(op, fault, 0, 1);
            if let Some(also) = also {
                faulty.fail(also, fault, 0, 1);
            }
            let r = gw
                .post(
                    "/v1/jobs",
                    &key,
                    &json!({"endpoint": "/v1/chat/completions",
                            "request": {"model": "gpt-test", "max_tokens": 50,
                                        "messages": [{"role": "user", "content": format!("job {n}")}]}}),
                )
                .await;
            if r.status() == 202 {
                accepted.push((op, fault, json(r).await["id"].as_str().unwrap().to_owned()));
            } else {
                refused += 1;
                assert_clean_error(r, &[(503, "service_unavailable")]).await;
            }
            deliveries += drain(&gw, 40).await;
            assert!(faulty.injected_into(op) > 0, "{op:?}/{fault:?} not reached");
            faulty.heal();
        }
    }
    let mut cost = 0;
    for (op, fault, id) in &accepted {
        let job = json(
            gw.http
                .get(format!("{}/v1/jobs/{id}", gw.url))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(job["status"], "succeeded", "{op:?}/{fault:?}: {job}");
        cost += (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
    }
    assert_eq!(
        up.calls(),
        accepted.len(),
        "each accepted job called the provider exactly once"
    );
    assert_eq!(gw.deps.queue.dead_letter_count().await.unwrap(), 0);
    release_abandoned(&gw).await;
    assert_eq!(
        ledger(&gw, &key).await,
        (cost, 0),
        "ledger = job costs, nothing reserved"
    );
    println!(
        "faults: jobs submitted {n}, accepted {} (all succeeded, each run once), clean 503 {refused}, \
         deliveries {deliveries}, store faults injected {}",
        accepted.len(),
        faulty.injected()
    );
}

#[tokio::test]
async fn usage_rollups_are_stored_once_through_failed_writes() {
    let up = FakeUpstream::start().await;
    let config = format!(
        "{}\n[metrics]\nflush_every_ms = 50\n",
        fake_config_with_jobs(&up.base_url, 0)
    );
    let (gw, faulty, _) = faulty_gateway(&config).await;
    let key = gw.create_key("rollups").await;
    faulty.fail(Op::AddRollups, Fault::Throttled, 0, 2);
    assert_eq!(gw.chat(&key, "gpt-test", "a").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    faulty.fail(Op::AddRollups, Fault::LostAnswer, 0, 1);
    assert_eq!(gw.chat(&key, "gpt-test", "b").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(faulty.injected_into(Op::AddRollups), 3);
    let rows = gw
        .deps
        .store
        .rollups(Some("rollups"), 0, u64::MAX / 2000)
        .await
        .unwrap();
    let requests: u64 = rows.iter().map(|r| r.rollup.requests).sum();
    assert_eq!(requests, 2, "each request counted once: {rows:?}");
}

/// Provider faults, each against a model with a fallback on a healthy provider and against
/// one without: non-streamed requests get the fallback's answer or a clean error; streams
/// fall back until their first byte, and after it end with an error event (never `[DONE]`
/// on a partial answer, never a cut connection). Nothing stays reserved, nothing broken is
/// cached, and the ledger equals the usage events.
#[tokio::test]
async fn provider_faults_end_in_a_fallback_or_a_clean_error() {
    let bad = FakeUpstream::start().await;
    let good = FakeUpstream::start().await;
    let config = format!(
        r#"
[server]
upstream_timeout_s = 1

[routing]
attempts_per_deployment = 2
backoff_base_ms = 5
backoff_max_ms = 20
circuit_failures = 1000000

[[providers]]
name = "bad"
kind = "openai"
base_url = "{}"
api_keys = ["sk-provider-bad"]

[[providers]]
name = "good"
kind = "openai"
base_url = "{}"
api_keys = ["sk-provider-good"]

[[models]]
name = "with-fallback"
deployments = [{{ provider = "bad", model = "x" }}]
fallbacks = ["backup"]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
cache_ttl_s = 3600
stale_fallback = false

[[models]]
name = "alone"
deployments = [{{ provider = "bad", model = "x" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
cache_ttl_s = 3600
stale_fallback = false

[[models]]
name = "backup"
deployments = [{{ provider = "good", model = "y" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
cache_ttl_s = 0
"#,
        bad.base_url, good.base_url
    );
    let (gw, _faulty, recording) = faulty_gateway(&config).await;
    let key = capped_key(&gw, "providers").await;
    let faults = [
        ("reset mid-body", Behaviour::CutOff),
        ("truncated body", Behaviour::Truncated),
        ("malformed JSON", Behaviour::Garbage),
        ("error in a 200", Behaviour::ErrorIn200),
        ("timeout", Behaviour::Slow(Duration::from_millis(1_500))),
        ("500", Behaviour::Status(500, None)),
        ("503", Behaviour::Status(503, None)),
        ("429", Behaviour::Status(429, Some(1))),
    ];
    let clean_errors = [
        (502, "upstream_bad_response"),
        (502, "upstream_unreachable"),
        (502, "upstream_failed"),
        (504, "upstream_timeout"),
        (429, "upstream_rate_limited"),
    ];
    let (mut fell_back, mut clean, mut cut_streams, mut n) = (0, 0, 0, 0);
    for (name, fault) in &faults {
        bad.set(fault.clone());
        for model in ["with-fallback", "alone"] {
            for stream in [false, true] {
                n += 1;
                let body = json!({"model": model, "stream": stream, "max_tokens": 50,
                                  "messages": [{"role": "user", "content": format!("{name} {n}")}]});
                let r = gw.post("/v1/chat/completions", &key, &body).await;
                let status = r.status().as_u16();
                if status != 200 {
                    assert_eq!(model, "alone", "{name}: the fallback must answer");
                    assert_clean_error(r, &clean_errors).await;
                    clean += 1;
                    continue;
                }
                let fallback = r
                    .headers()
                    .get("x-sluice-fallback")
                    .map(|v| v.to_str().unwrap().to_owned());
                let text = r.text().await.expect("the body must arrive whole, not cut");
                if !stream {
                    let answer: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(answer["object"], "chat.completion", "{name}");
                    assert_eq!(fallback.as_deref(), Some("fallback_model"), "{name}");
                    fell_back += 1;
                    continue;
                }
                let last = text
                    .lines()
                    .rfind(|l| l.starts_with("data: "))
                    .unwrap()
                    .to_owned();
                if fallback.as_deref() == Some("fallback_model") {
                    assert_eq!(last, "data: [DONE]", "{name}: {text}");
                    fell_back += 1;
                } else {
                    // The bad provider's first bytes were already sent: no fallback is possible
                    // any more, and the client is told the answer is incomplete.
                    assert!(
                        matches!(fault, Behaviour::CutOff | Behaviour::Truncated),
                        "{name}/{model}: {text}"
                    );
                    let event: Value =
                        serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
                    assert_eq!(event["error"]["code"], "upstream_stream_cut", "{text}");
                    assert!(!text.contains("[DONE]"), "{text}");
                    cut_streams += 1;
                }
            }
        }
    }
    // A 429 storm: 40 requests at once while the provider refuses everything.
    bad.set(Behaviour::Status(429, Some(2)));
    let bodies: Vec<Value> = (0..40)
        .map(|i| {
            let model = if i % 2 == 0 { "with-fallback" } else { "alone" };
            json!({"model": model, "max_tokens": 50,
                   "messages": [{"role": "user", "content": format!("storm {i}")}]})
        })
        .collect();
    let storm: Vec<_> = bodies
        .iter()
        .map(|b| gw.post("/v1/chat/completions", &key, b))
        .collect();
    for (i, r) in futures_util::future::join_all(storm)
        .await
        .into_iter()
        .enumerate()
    {
        n += 1;
        if i % 2 == 0 {
            assert_eq!(r.status(), 200, "the fallback answers during a 429 storm");
            fell_back += 1;
        } else {
            assert_eq!(header(&r, "retry-after"), "2");
            assert_clean_error(r, &[(429, "upstream_rate_limited")]).await;
            clean += 1;
        }
    }
    // Cut-off streams are not cached: asked again once the provider is healthy, the same
    // request reaches it and gets a whole answer.
    bad.set(Behaviour::Ok);
    let calls = bad.calls();
    let again = json!({"model": "alone", "stream": true, "max_tokens": 50,
                       "messages": [{"role": "user", "content": "reset mid-body 4"}]});
    let text = gw
        .post("/v1/chat/completions", &key, &again)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        bad.calls(),
        calls + 1,
        "a cut-off stream must not have been cached"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (spent, reserved) = ledger(&gw, &key).await;
    assert_eq!(reserved, 0, "a failed provider call left a reservation");
    let events = recording.events();
    let cost: u64 = events.iter().map(|e| e.cost_nano_usd).sum();
    assert_eq!(
        spent, cost,
        "the ledger equals the usage events, each request once"
    );
    assert_eq!(events.len(), n + 1, "one usage event per request");
    println!(
        "faults: provider faults {} kinds, requests {}, answered by a fallback {fell_back}, \
         clean errors {clean}, streams ended with an error event {cut_streams}, 0 reserved, \
         ledger = usage events",
        faults.len() + 1,
        n + 1
    );
}
