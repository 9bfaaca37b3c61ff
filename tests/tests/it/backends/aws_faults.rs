//! DynamoDB throttling on each write of the pipeline (issue 8, item 3), on the wire: the
//! gateway's DynamoDB client talks to moto through [`ThrottleProxy`], which answers chosen
//! operations with `ProvisionedThroughputExceededException` or `ThrottlingException`. The
//! SDK's own retries run for real; what is left after them reaches Sluice as a store error.
//! For each: the client gets its answer or a clean 503, every accepted job ends once, no
//! reservation is left, and the ledger equals the answered costs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::jobs::worker::process_deliveries;
use sluice::queue::JobQueue;
use sluice::queue::sqs::SqsQueue;
use sluice::store::dynamodb::{DynamoStore, Tables};
use sluice::store::{CounterField, Increment, KeyStore, LimitStore};
use sluice_tests::{
    Behaviour, FakeUpstream, TestGateway, Throttle, ThrottleProxy, aws, fake_config_with_jobs,
};

/// Every DynamoDB write the pipeline makes: counters, holds and rollups are transactions;
/// cache entries, jobs, idempotency records and markers are single-item writes.
const WRITES: [&str; 4] = ["TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem"];
/// What a streamed answer of the fake (10 prompt + 5 completion tokens) costs at gpt-test's
/// $0.15 / $0.60 per million.
const STREAM_COST: u64 = 10 * 150 + 5 * 600;
/// The SDK's standard retry mode makes 3 attempts.
const SDK_ATTEMPTS: usize = 3;

async fn throttled_gateway(base_url: &str) -> (TestGateway, ThrottleProxy, Arc<SqsQueue>) {
    let tables = aws::dynamo_store().await.tables().clone();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = ThrottleProxy::start(&moto).await;
    let sdk = aws::sdk_config_at(&proxy.url).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), tables);
    let queue = Arc::new(aws::sqs_queue(Duration::from_secs(1), 10).await);
    // No cache: a request or job run twice would call the provider twice.
    let text = fake_config_with_jobs(base_url, 0)
        .replace("upstream_timeout_s = 1\n", "upstream_timeout_s = 10\n")
        .replacen("cache_ttl_s = 3600", "cache_ttl_s = 0", 1);
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(store),
        Arc::clone(&queue) as Arc<dyn JobQueue>,
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    (
        TestGateway::start_deps(&config, deps, clock).await,
        proxy,
        queue,
    )
}

/// Receives and processes job messages until job `id` is final, moving the clock past job
/// leases between empty rounds (SQS makes a message left for redelivery visible after 1 s).
async fn drain(gw: &TestGateway, key: &str, queue: &SqsQueue, id: &str) {
    for _ in 0..40 {
        let job = gw.get_json(&format!("/v1/jobs/{id}"), key).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return;
        }
        let batch = queue.receive(10, Duration::from_millis(300)).await.unwrap();
        if batch.is_empty() {
            gw.clock.advance_ms(61_000);
            tokio::time::sleep(Duration::from_millis(800)).await;
            continue;
        }
        process_deliveries(&gw.services.processor, queue, &batch).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttling_on_each_write_ends_in_an_answer_or_a_clean_503() {
    let up = FakeUpstream::start().await;
    let (gw, proxy, queue) = throttled_gateway(&up.base_url).await;
    let key = gw
        .admin_create(
            json!({"tenant": "throttled", "budget_usd": 10.0, "period": "day", "tpm": 1_000_000}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut billed, mut answered, mut unavailable, mut n) = (0u64, 0usize, 0, 0);
    let mut provider_failures = 0;
    let mut jobs = Vec::new();
    // Within the SDK's retries (one throttle: it retries), then beyond them (every attempt).
    for times in [1, SDK_ATTEMPTS] {
        for op in WRITES {
            for error in [
                Throttle::ProvisionedThroughputExceeded,
                Throttle::Throttling,
            ] {
                n += 1;
                let before = proxy.throttled(op);
                // A plain and a streamed request, each with an idempotency key, and below one
                // the provider fails (its key is released: the `DeleteItem`): between them
                // they make every kind of write.
                for stream in [false, true] {
                    proxy.throttle(op, error, times);
                    let r = gw
                        .http
                        .post(format!("{}/v1/chat/completions", gw.url))
                        .bearer_auth(&key)
                        .header("idempotency-key", format!("idem-{n}-{stream}"))
                        .json(&json!({"model": "gpt-test", "max_tokens": 50, "stream": stream,
                                      "stream_options": {"include_usage": stream},
                                      "messages": [{"role": "user", "content": format!("chat {n} {stream}")}]}))
                        .send()
                        .await
                        .unwrap();
                    let status = r.status().as_u16();
                    if let Some(cost) = r.headers().get("x-sluice-cost-usd") {
                        billed +=
                            (cost.to_str().unwrap().parse::<f64>().unwrap() * 1e9).round() as u64;
                    }
                    let text = r.text().await.unwrap();
                    match status {
                        200 if stream => {
                            assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                            // The fake's usage (10 + 5 tokens) at gpt-test's price.
                            let usage = text
                                .lines()
                                .filter_map(|l| l.strip_prefix("data: "))
                                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                                .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned());
                            assert_eq!(
                                usage.map(|u| (
                                    u["prompt_tokens"].clone(),
                                    u["completion_tokens"].clone()
                                )),
                                Some((json!(10), json!(5))),
                                "{text}"
                            );
                            billed += STREAM_COST;
                            answered += 1;
                        }
                        200 => {
                            let answer: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(answer["object"], "chat.completion");
                            answered += 1;
                        }
                        503 => {
                            let answer: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(answer["error"]["code"], "service_unavailable", "{text}");
                            assert!(!text.contains("Exception"), "{text}");
                            unavailable += 1;
                        }
                        other => panic!("{op}/{error:?}/{times}: {other} {text}"),
                    }
                    if times < SDK_ATTEMPTS {
                        assert_eq!(status, 200, "{op}/{error:?}: the SDK's retries absorb it");
                    }
                    // A stream settles when it ends, on a task of its own.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // An idempotent request the provider fails: its key is not kept but released.
                proxy.throttle(op, error, times);
                up.fail_next(1, Behaviour::Status(500, None));
                let calls_before = up.calls();
                let r = gw
                    .http
                    .post(format!("{}/v1/chat/completions", gw.url))
                    .bearer_auth(&key)
                    .header("idempotency-key", format!("idem-{n}-failing"))
                    .json(&json!({"model": "gpt-test", "max_tokens": 50,
                                  "messages": [{"role": "user", "content": format!("failing {n}")}]}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    502 => {
                        assert_eq!(up.calls(), calls_before + 1);
                        provider_failures += 1;
                    }
                    503 => unavailable += 1,
                    other => panic!("{op}/{error:?}: failing request {other}"),
                }
                if times < SDK_ATTEMPTS {
                    assert_eq!(
                        r.status(),
                        502,
                        "{op}/{error:?}: the SDK's retries absorb it"
                    );
                }
                up.fail_next(0, Behaviour::Ok);
                // And a job through the same throttling.
                proxy.throttle(op, error, times);
                let r = gw
                    .post(
                        "/v1/jobs",
                        &key,
                        &json!({"endpoint": "/v1/chat/completions",
                                "request": {"model": "gpt-test", "max_tokens": 50,
                                            "messages": [{"role": "user", "content": format!("job {n}")}]}}),
                    )
                    .await;
                match r.status().as_u16() {
                    202 => {
                        let id = r.json::<Value>().await.unwrap()["id"]
                            .as_str()
                            .unwrap()
                            .to_owned();
                        drain(&gw, &key, &queue, &id).await;
                        jobs.push(id);
                    }
                    503 => unavailable += 1,
                    other => panic!("{op}/{error:?}: job submit {other}"),
                }
                proxy.clear();
                assert!(proxy.throttled(op) > before, "{op} was never called");
            }
        }
    }
    let mut job_costs = 0;
    for id in &jobs {
        let job = gw.get_json(&format!("/v1/jobs/{id}"), &key).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job_costs += (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
    }
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
    assert_eq!(
        up.calls(),
        answered + jobs.len() + provider_failures,
        "every answered request, job and provider failure called the provider once"
    );
    gw.clock.advance_ms(601_000);
    gw.services
        .gateway
        .limiter()
        .release_expired()
        .await
        .unwrap();
    let usage = gw.usage(&key).await;
    let budget = &usage["limits"]["key"]["budget"];
    assert_eq!(budget["reserved_usd"], 0.0, "{usage}");
    let spent = (budget["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert_eq!(
        spent,
        billed + job_costs,
        "ledger = answered costs, each once"
    );
    println!(
        "faults: dynamodb throttling cases {n} (4 write operations x 2 errors x within/beyond the SDK's retries), \
         throttled calls {}, forwarded {}, chats answered {answered}, provider failures {provider_failures}, jobs succeeded {}, clean 503 {unavailable}, 0 reserved",
        proxy.throttled_total(),
        proxy.forwarded(),
        jobs.len()
    );
}

/// What is left of DynamoDB throttling after the SDK's own retries reaches the caller as a
/// throttled store error, told apart from other failures, for a single-item read and a
/// transaction alike (issue 17: `StoreError` keeps its source and says what failed).
#[tokio::test]
async fn throttling_left_after_the_sdk_retries_is_a_throttled_store_error() {
    let tables = aws::dynamo_store().await.tables().clone();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = ThrottleProxy::start(&moto).await;
    let client = aws_sdk_dynamodb::Client::new(&aws::sdk_config_at(&proxy.url).await);
    let store = DynamoStore::new(client.clone(), tables);
    let increment = Increment {
        counter: "rate:key:key_throttled:rpm:1".into(),
        field: CounterField::Count,
        delta: 1,
        at_most: Some(10),
        expires_at_ms: 4_000_000_000_000,
        guard: None,
    };
    for error in [
        Throttle::ProvisionedThroughputExceeded,
        Throttle::Throttling,
    ] {
        proxy.throttle("GetItem", error, SDK_ATTEMPTS);
        let e = store.key_by_id("key_throttled").await.unwrap_err();
        assert!(e.is_throttled(), "{error:?}: {e:?}");
        assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        proxy.throttle("TransactWriteItems", error, SDK_ATTEMPTS);
        let e = store
            .apply(std::slice::from_ref(&increment), None)
            .await
            .unwrap_err();
        assert!(e.is_throttled(), "{error:?}: {e:?}");
    }
    assert_eq!(proxy.throttled("GetItem"), 2 * SDK_ATTEMPTS);
    assert_eq!(proxy.throttled("TransactWriteItems"), 2 * SDK_ATTEMPTS);
    // Once through, the same calls succeed.
    assert_eq!(store.key_by_id("key_throttled").await.unwrap(), None);
    store
        .apply(std::slice::from_ref(&increment), None)
        .await
        .unwrap();
    // A failure of another kind (no such table) is a backend failure, neither throttled nor a
    // failed condition.
    let missing = DynamoStore::new(client, Tables::with_prefix("sluice-no-such-table"));
    let e = missing.key_by_id("key_throttled").await.unwrap_err();
    assert!(
        e.is_backend_failure() && !e.is_throttled() && !e.is_condition_failed(),
        "{e:?}"
    );
}
