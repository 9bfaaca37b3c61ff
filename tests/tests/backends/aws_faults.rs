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
use sluice::jobs::processor::Disposition;
use sluice::queue::JobQueue;
use sluice::queue::sqs::SqsQueue;
use sluice::store::dynamodb::DynamoStore;
use sluice_tests::{FakeUpstream, TestGateway, Throttle, ThrottleProxy, aws, fake_config_with_jobs};

/// Every DynamoDB write the pipeline makes: counters, holds and rollups are transactions;
/// cache entries, jobs, idempotency records and markers are single-item writes.
const WRITES: [&str; 4] = ["TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem"];
/// The SDK's standard retry mode makes 3 attempts.
const SDK_ATTEMPTS: usize = 3;

async fn throttled_gateway(
    base_url: &str,
) -> (TestGateway, ThrottleProxy, Arc<SqsQueue>) {
    let tables = aws::dynamo_store().await.tables().clone();
    let moto = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = ThrottleProxy::start(&moto).await;
    let sdk = aws::sdk_config_at(&proxy.url).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), tables);
    let queue = Arc::new(aws::sqs_queue(Duration::from_secs(1), 10).await);
    let text = fake_config_with_jobs(base_url, 0)
        .replace("upstream_timeout_s = 1\n", "upstream_timeout_s = 10\n");
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(store),
        Arc::clone(&queue) as Arc<dyn JobQueue>,
        sluice::gateway::http_client().unwrap(),
        Arc::new(clock.clone()),
    );
    (
        TestGateway::start_deps(&config, deps, clock).await,
        proxy,
        queue,
    )
}

/// Receives and processes job messages until none has come for three rounds, moving the
/// clock past job leases between rounds (SQS makes a message visible again after 1 s).
async fn drain(gw: &TestGateway, queue: &SqsQueue) {
    let mut idle = 0;
    for _ in 0..40 {
        let batch = queue.receive(10, Duration::from_millis(300)).await.unwrap();
        if batch.is_empty() {
            idle += 1;
            if idle == 3 {
                return;
            }
            gw.clock.advance_ms(61_000);
            tokio::time::sleep(Duration::from_millis(800)).await;
            continue;
        }
        idle = 0;
        let bodies: Vec<String> = batch.iter().map(|d| d.body.clone()).collect();
        let dispositions = gw.services.processor.process(&bodies).await;
        for (d, disposition) in batch.iter().zip(dispositions) {
            if disposition == Disposition::Done {
                queue.delete(&d.receipt).await.unwrap();
            }
        }
    }
    panic!("the queue did not drain");
}

async fn get(gw: &TestGateway, key: &str, path: &str) -> Value {
    gw.http
        .get(format!("{}{path}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttling_on_each_write_ends_in_an_answer_or_a_clean_503() {
    let up = FakeUpstream::start().await;
    let (gw, proxy, queue) = throttled_gateway(&up.base_url).await;
    let key = gw
        .admin_create(json!({"tenant": "throttled", "budget_usd": 10.0, "period": "day", "tpm": 1_000_000}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut billed, mut answered, mut unavailable, mut n) = (0u64, 0usize, 0, 0);
    let mut jobs = Vec::new();
    // Within the SDK's retries (fewer throttles than attempts), then beyond them.
    for times in [SDK_ATTEMPTS - 1, SDK_ATTEMPTS] {
        for op in WRITES {
            for error in [Throttle::ProvisionedThroughputExceeded, Throttle::Throttling] {
                n += 1;
                proxy.throttle(op, error, times);
                let before = proxy.throttled(op);
                let r = gw
                    .post(
                        "/v1/chat/completions",
                        &key,
                        &json!({"model": "gpt-test", "max_tokens": 50,
                                "messages": [{"role": "user", "content": format!("chat {n}")}]}),
                    )
                    .await;
                let status = r.status().as_u16();
                if let Some(cost) = r.headers().get("x-sluice-cost-usd") {
                    billed += (cost.to_str().unwrap().parse::<f64>().unwrap() * 1e9).round() as u64;
                }
                let text = r.text().await.unwrap();
                let answer: Value = serde_json::from_str(&text).unwrap();
                match status {
                    200 => {
                        assert_eq!(answer["object"], "chat.completion");
                        answered += 1;
                    }
                    503 => {
                        assert_eq!(answer["error"]["code"], "service_unavailable", "{text}");
                        assert!(!text.contains("Exception"), "{text}");
                        unavailable += 1;
                    }
                    other => panic!("{op}/{error:?}/{times}: {other} {text}"),
                }
                if times < SDK_ATTEMPTS {
                    assert_eq!(status, 200, "{op}/{error:?}: the SDK's retries absorb it");
                }
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
                    202 => jobs.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()),
                    503 => unavailable += 1,
                    other => panic!("{op}/{error:?}: job submit {other}"),
                }
                drain(&gw, &queue).await;
                proxy.clear();
                assert!(proxy.throttled(op) > before, "{op} was never called");
            }
        }
    }
    let mut job_costs = 0;
    for id in &jobs {
        let job = get(&gw, &key, &format!("/v1/jobs/{id}")).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job_costs += (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
    }
    assert_eq!(queue.dead_letter_count().await.unwrap(), 0);
    assert_eq!(
        up.calls(),
        answered + jobs.len(),
        "every answered request and job called the provider once"
    );
    gw.clock.advance_ms(601_000);
    gw.services
        .gateway
        .limiter()
        .release_expired()
        .await
        .unwrap();
    let usage = get(&gw, &key, "/v1/usage").await;
    let budget = &usage["limits"]["key"]["budget"];
    assert_eq!(budget["reserved_usd"], 0.0, "{usage}");
    let spent = (budget["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert_eq!(spent, billed + job_costs, "ledger = answered costs, each once");
    println!(
        "faults: dynamodb throttling cases {n} (4 write operations x 2 errors x within/beyond the SDK's retries), \
         throttled calls {}, forwarded {}, chats answered {answered}, jobs succeeded {}, clean 503 {unavailable}, 0 reserved",
        proxy.throttled_total(),
        proxy.forwarded(),
        jobs.len()
    );
}
