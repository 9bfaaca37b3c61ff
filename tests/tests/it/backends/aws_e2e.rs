//! The gateway and the processor over DynamoDB and SQS on moto: the same behaviour as the
//! local backend, through the real SDK wire protocol.

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{Value, json};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::jobs::processor::Disposition;
use sluice::queue::JobQueue;
use sluice::queue::sqs::SqsQueue;
use sluice_tests::{FakeUpstream, TestGateway, aws, fake_config_with_jobs};

async fn aws_gateway(base_url: &str, workers: usize, queue: SqsQueue) -> TestGateway {
    let config =
        Config::parse(&fake_config_with_jobs(base_url, workers), "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(aws::dynamo_store().await),
        Arc::new(queue),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    TestGateway::start_deps(&config, deps, clock).await
}

async fn wait_job(gw: &TestGateway, key: &str, id: &str) -> Value {
    for _ in 0..200 {
        let job = gw.get_json(&format!("/v1/jobs/{id}"), key).await;
        if job["status"] == "succeeded" || job["status"] == "failed" {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_cache_and_async_jobs_work_over_dynamodb_and_sqs() {
    let up = FakeUpstream::start().await;
    let queue = aws::sqs_queue(Duration::from_secs(30), 3).await;
    let gw = aws_gateway(&up.base_url, 1, queue).await;
    let key = gw.create_key("t1").await;
    let other = gw.create_key("t2").await;

    let r = gw.chat(&key, "gpt-test", "over dynamodb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-cache"], "miss");
    let r = gw.chat(&key, "gpt-test", "over dynamodb").await;
    assert_eq!(r.headers()["x-sluice-cache"], "hit");
    let r = gw.chat(&other, "gpt-test", "over dynamodb").await;
    assert_eq!(
        r.headers()["x-sluice-cache"],
        "miss",
        "tenants never share entries"
    );
    assert_eq!(up.calls(), 2);

    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "queued on SQS"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = wait_job(&gw, &key, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["result"]["object"], "chat.completion");
    let r = gw
        .http
        .get(format!("{}/v1/jobs/{id}", gw.url))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "another tenant must not see the job");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_message_delivered_twice_calls_the_provider_once() {
    let up = FakeUpstream::start().await;
    up.set(sluice_tests::Behaviour::Slow(Duration::from_millis(300)));
    let queue = aws::sqs_queue(Duration::from_secs(30), 3).await;
    let gw = aws_gateway(&up.base_url, 0, queue).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/chat/completions",
                    "request": {"model": "gpt-test", "messages": [{"role": "user", "content": "once"}]}}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut delivered = Vec::new();
    for _ in 0..5 {
        delivered.extend(
            gw.deps
                .queue
                .receive(10, Duration::from_secs(1))
                .await
                .unwrap(),
        );
        if !delivered.is_empty() {
            break;
        }
    }
    assert_eq!(delivered.len(), 1);
    let body = delivered[0].body.clone();
    let p = &gw.services.processor;
    let (a, b) = tokio::join!(
        p.process(std::slice::from_ref(&body)),
        p.process(std::slice::from_ref(&body))
    );
    let mut outcomes = vec![a[0], b[0]];
    outcomes.sort_by_key(|d| *d == Disposition::Retry);
    assert_eq!(outcomes, [Disposition::Done, Disposition::Retry]);
    assert_eq!(
        p.process(std::slice::from_ref(&body)).await,
        [Disposition::Done]
    );
    assert_eq!(up.calls(), 1);
    assert_eq!(wait_job(&gw, &key, &id).await["attempts"], 1);
}

/// Turns received SQS messages into the event the processor Lambda gets.
fn sqs_event(deliveries: &[sluice::queue::Delivery]) -> SqsEvent {
    let records: Vec<Value> = deliveries
        .iter()
        .map(|d| {
            json!({
                "messageId": d.message_id, "receiptHandle": d.receipt, "body": d.body,
                "attributes": {"ApproximateReceiveCount": d.receive_count.to_string()},
                "messageAttributes": {}, "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_keeps_failing_lands_in_the_dead_letter_queue() {
    let up = FakeUpstream::start().await;
    // maxReceiveCount 2, visibility 1 s: like the template's redrive policy, only shorter.
    let queue = aws::sqs_queue(Duration::from_secs(1), 2).await;
    let sqs: Arc<dyn JobQueue> = Arc::new(queue.clone());
    let gw = aws_gateway(&up.base_url, 0, queue).await;
    let key = gw.create_key("t1").await;
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/embeddings", "request": {"model": "embed-test", "input": "fine"}}),
        )
        .await;
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqs.send("this is not a job message").await.unwrap();

    // Play the Lambda event source: receive a batch, invoke the handler, delete what it did
    // not report as failed. The poison message is reported every time.
    let mut poison_failures = 0;
    for _ in 0..20 {
        let got = sqs.receive(10, Duration::from_secs(1)).await.unwrap();
        if got.is_empty() {
            if sqs.dead_letter_count().await.unwrap() == 1 {
                break;
            }
            continue;
        }
        let response =
            sluice_processor::handle_batch(&gw.services.processor, sqs_event(&got)).await;
        let failed: Vec<&str> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        for d in &got {
            if failed.contains(&d.message_id.as_str()) {
                assert_eq!(
                    d.body, "this is not a job message",
                    "only the poison message fails"
                );
                poison_failures += 1;
            } else {
                sqs.delete(&d.receipt).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(
        poison_failures, 2,
        "reported once per delivery, up to maxReceiveCount"
    );
    assert_eq!(sqs.dead_letter_count().await.unwrap(), 1);
    assert_eq!(wait_job(&gw, &key, &id).await["status"], "succeeded");
}

async fn limited_gateway(
    base_url: &str,
    extra: &str,
) -> (TestGateway, sluice::store::dynamodb::DynamoStore) {
    gateway_on_dynamodb(base_url, extra, false).await
}

/// A gateway over DynamoDB on moto; `lambda`: each request runs as the ingest function runs
/// it, answered once the work it owes is done (what one request costs is then counted when
/// its answer arrives).
async fn gateway_on_dynamodb(
    base_url: &str,
    extra: &str,
    lambda: bool,
) -> (TestGateway, sluice::store::dynamodb::DynamoStore) {
    // Hundreds of concurrent requests against moto, which serves DynamoDB calls one at a
    // time: give the fake provider's calls more than the usual 1 s, so a busy machine shows
    // up as slowness rather than as upstream timeouts in a test about limits.
    let text = format!(
        "{}\n{extra}\n",
        sluice_tests::fake_config(base_url)
            .replace("upstream_timeout_s = 1\n", "upstream_timeout_s = 10\n")
    );
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let store = aws::dynamo_store().await;
    let deps = Deps::new(
        Arc::new(store.clone()),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    let gw = if lambda {
        TestGateway::start_deps_as_lambda(&config, deps, clock).await
    } else {
        TestGateway::start_deps(&config, deps, clock).await
    };
    (gw, store)
}

fn prompt(i: usize) -> Value {
    json!({"model": "gpt-test", "max_tokens": 5, "messages": [{"role": "user", "content": format!("q{i}")}]})
}

async fn burst(gw: &TestGateway, key: &str, n: usize) -> Vec<(u16, u64)> {
    let bodies: Vec<Value> = (0..n).map(prompt).collect();
    futures_util::future::join_all(bodies.iter().map(|b| async move {
        let r = gw.post("/v1/chat/completions", key, b).await;
        let status = r.status().as_u16();
        let cost = r
            .headers()
            .get("x-sluice-cost-usd")
            .map(|v| (v.to_str().unwrap().parse::<f64>().unwrap() * 1e9).round() as u64)
            .unwrap_or(0);
        if status != 200 && status != 429 {
            // Shown with the failing assertion: which error, and why.
            eprintln!(
                "unexpected {status}: {}",
                r.text().await.unwrap_or_default()
            );
        }
        (status, cost)
    }))
    .await
}

async fn spent_nanos(gw: &TestGateway, key: &str, level: &str) -> (u64, f64) {
    let u: Value = gw.usage(key).await;
    let b = &u["limits"][level]["budget"];
    (
        (b["spent_usd"].as_f64().unwrap() * 1e9).round() as u64,
        b["reserved_usd"].as_f64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_is_exact_under_concurrency_on_dynamodb() {
    let up = FakeUpstream::start().await;
    let (gw, _) = limited_gateway(&up.base_url, "").await;
    let key = gw.admin_create(json!({"tenant": "t1", "rpm": 10})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = burst(&gw, &key, 50).await;
    assert_eq!(results.iter().filter(|r| r.0 == 200).count(), 10);
    assert_eq!(results.iter().filter(|r| r.0 == 429).count(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_never_overspent_on_dynamodb_round_after_round() {
    let up = FakeUpstream::start().await;
    let (gw, _) = limited_gateway(&up.base_url, "").await;
    let rounds: usize = std::env::var("SLUICE_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    for round in 0..rounds {
        let key = gw
            .admin_create(
                json!({"tenant": format!("r{round}"), "budget_usd": 0.00009, "period": "day"}),
            )
            .await["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let results = burst(&gw, &key, 200).await;
        let answered: u64 = results.iter().filter(|r| r.0 == 200).map(|r| r.1).sum();
        let odd: Vec<u16> = results
            .iter()
            .map(|r| r.0)
            .filter(|s| *s != 200 && *s != 429)
            .collect();
        assert!(
            odd.is_empty(),
            "round {round}: statuses other than 200/429: {odd:?}"
        );
        let (spent, reserved) = spent_nanos(&gw, &key, "key").await;
        assert!(spent <= 90_000, "round {round}: spent {spent} over the cap");
        assert_eq!(spent, answered, "round {round}: ledger != reported costs");
        assert_eq!(reserved, 0.0, "round {round}: reservations left behind");
        assert!(answered > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_counters_still_never_pass_a_limit() {
    let up = FakeUpstream::start().await;
    // Four shards per counter: a hot key spreads its writes over four items.
    let (gw, store) = limited_gateway(&up.base_url, "[limits]\ncounter_shards = 4\n").await;
    let key = gw.admin_create(json!({"tenant": "hot", "rpm": 10})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = burst(&gw, &key, 50).await;
    assert_eq!(
        results.iter().filter(|r| r.0 == 200).count(),
        10,
        "shares 3+3+2+2 add up to the limit"
    );
    let capped = gw
        .admin_create(json!({"tenant": "hot2", "budget_usd": 0.00009, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = burst(&gw, &capped, 200).await;
    let answered: u64 = results.iter().filter(|r| r.0 == 200).map(|r| r.1).sum();
    let (spent, reserved) = spent_nanos(&gw, &capped, "key").await;
    assert!(spent <= 90_000, "{spent}");
    assert_eq!(spent, answered);
    assert_eq!(reserved, 0.0);
    // The writes really went to several items.
    let key_id = spent_key_id(&gw, &capped).await;
    let period =
        sluice::limits::period::current(sluice::keys::BudgetPeriod::Day, 1_800_000_000_000).0;
    let counters: Vec<(String, sluice::store::CounterField)> = (0..4)
        .map(|s| {
            (
                sluice::limits::budget::counter_id(&format!("key:{key_id}"), &period, s),
                sluice::store::CounterField::Spent,
            )
        })
        .collect();
    let used = sluice::store::LimitStore::read_counters(&store, &counters)
        .await
        .unwrap();
    assert!(used.iter().filter(|v| **v > 0).count() >= 2, "{used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_and_gateway_caps_are_sharded_by_default_and_hold_across_instances() {
    // The gateway's warnings and errors go to the test's output (shown when it fails): a 503
    // here says only "store error" to the client.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let up = FakeUpstream::start().await;
    // No `budget_shards`: DynamoDB's default of 8. The minimum share is lowered so that these
    // tiny caps are split (each shard holds 1/8 of the cap).
    let limits = "[limits]\nglobal_budget_usd = 0.0004\nglobal_period = \"day\"\n\
                  budget_shard_min_usd = 0.000001\n\n\
                  [[tenants]]\nname = \"big\"\nbudget_usd = 0.0002\nperiod = \"day\"\n";
    let (a, store) = limited_gateway(&up.base_url, limits).await;
    // A second instance over the same tables: its own limiter, caches and connections.
    let text = format!(
        "{}\n{limits}\n",
        sluice_tests::fake_config(&up.base_url)
            .replace("upstream_timeout_s = 1\n", "upstream_timeout_s = 10\n")
    );
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(store.clone()),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    let b = TestGateway::start_deps(&config, deps, clock).await;
    let mut keys = Vec::new();
    for tenant in ["big", "big", "other", "other"] {
        let created = a.admin_create(json!({"tenant": tenant})).await;
        keys.push(created["key"].as_str().unwrap().to_owned());
    }
    // 4 keys × 2 instances × 40 requests, all at once.
    let runs = futures_util::future::join_all(
        keys.iter()
            .flat_map(|k| [(&a, k.clone()), (&b, k.clone())])
            .map(|(gw, k)| async move { (k.clone(), burst(gw, &k, 40).await) }),
    )
    .await;
    let mut answered_big = 0;
    let mut answered_all = 0;
    let mut refused = 0;
    for (k, results) in &runs {
        for &(status, cost) in results {
            assert!(status == 200 || status == 429, "{status}");
            refused += usize::from(status == 429);
            answered_all += cost;
            if keys[..2].contains(k) {
                answered_big += cost;
            }
        }
    }
    let (tenant_spent, tenant_reserved) = spent_nanos(&a, &keys[0], "tenant").await;
    // The gateway-wide figures, from the store (all shards).
    let period =
        sluice::limits::period::current(sluice::keys::BudgetPeriod::Day, 1_800_000_000_000).0;
    let read = |scope: &'static str, field| {
        let store = store.clone();
        let period = period.clone();
        async move {
            let counters: Vec<(String, sluice::store::CounterField)> = (0..8)
                .map(|s| (sluice::limits::budget::counter_id(scope, &period, s), field))
                .collect();
            sluice::store::LimitStore::read_counters(&store, &counters)
                .await
                .unwrap()
        }
    };
    let gateway_spent: i64 = read("global", sluice::store::CounterField::Spent)
        .await
        .iter()
        .sum();
    let gateway_committed: i64 = read("global", sluice::store::CounterField::Committed)
        .await
        .iter()
        .sum();
    let gateway_spent = gateway_spent as u64;
    eprintln!(
        "sharded caps: tenant spent {tenant_spent} of 200000, gateway {gateway_spent} of \
         400000 nano-USD; {refused} of 320 refused"
    );
    assert!(tenant_spent <= 200_000, "tenant cap passed: {tenant_spent}");
    assert!(
        gateway_spent <= 400_000,
        "gateway cap passed: {gateway_spent}"
    );
    assert_eq!(
        tenant_spent, answered_big,
        "tenant ledger != reported costs"
    );
    assert_eq!(
        gateway_spent, answered_all,
        "gateway ledger != reported costs"
    );
    assert_eq!(tenant_reserved, 0.0);
    assert_eq!(
        gateway_committed as u64, gateway_spent,
        "reservations left behind"
    );
    assert!(refused > 0, "the caps were reached");
    // The writes went to several items of each cap.
    for scope in ["tenant:big", "global"] {
        let used = read(scope, sluice::store::CounterField::Spent).await;
        eprintln!("{scope} spent per shard: {used:?}");
        assert!(
            used.iter().filter(|v| **v > 0).count() >= 4,
            "{scope}: {used:?}"
        );
    }
}

async fn spent_key_id(gw: &TestGateway, key: &str) -> String {
    let u: Value = gw.usage(key).await;
    u["key_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_calls_per_request_by_path() {
    let up = FakeUpstream::start().await;
    // As on Lambda: the cache entry, written after the reply, is counted with its request.
    let (gw, store) = gateway_on_dynamodb(&up.base_url, "", true).await;
    let key = gw
        .admin_create(
            json!({"tenant": "t1", "rpm": 100, "tpm": 100000, "budget_usd": 1.0, "period": "day"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Warm up: the key lookup and the previous rate window are read once, then cached.
    assert_eq!(gw.chat(&key, "gpt-test", "warm-up").await.status(), 200);
    let calls = |f: u64| store.calls() - f;

    let before = store.calls();
    let started = std::time::Instant::now();
    assert_eq!(
        gw.chat(&key, "gpt-test", "a new question").await.status(),
        200
    );
    let miss = calls(before);
    // The lead renews its in-flight marker every `RENEW_EVERY` while it calls: one write per
    // 3 s of a miss, by the clock, not by the path. Quiet, a miss here takes well under a
    // second and makes none; with the whole suite on one moto it once took longer.
    let renewals = u64::try_from(
        started.elapsed().as_millis() / sluice::gateway::coalesce::RENEW_EVERY.as_millis(),
    )
    .unwrap();
    let before = store.calls();
    let r = gw.chat(&key, "gpt-test", "a new question").await;
    assert_eq!(r.headers()["x-sluice-cache"], "hit");
    let hit = calls(before);
    // A cap one request fits but two do not (the provider bills the whole `max_tokens`):
    // the second is refused by the cap's conditional write, for now (429), not as
    // impossible (a 400 that needs no store call).
    let poor = gw
        .admin_create(json!({"tenant": "t2", "budget_usd": 0.001, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    up.bill_max(true);
    let costly = |text: &str| {
        json!({"model": "gpt-test", "max_tokens": 1000,
               "messages": [{"role": "user", "content": text}]})
    };
    let r = gw
        .post("/v1/chat/completions", &poor, &costly("spend"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        gw.post("/v1/chat/completions", &poor, &costly("warm"))
            .await
            .status(),
        429
    );
    let before = store.calls();
    assert_eq!(
        gw.post("/v1/chat/completions", &poor, &costly("refused again"))
            .await
            .status(),
        429
    );
    let rejected = calls(before);
    eprintln!(
        "DynamoDB calls per request: miss {miss} ({renewals} marker renewals due), hit {hit}, \
         rejected {rejected}"
    );
    // A miss: cache read, admit (with the in-flight marker of coalescing identical misses in
    // the same transaction, `gateway/coalesce.rs`), settle, then the cache write.
    assert!(
        miss <= 4 + renewals,
        "miss made {miss} calls ({renewals} renewals due)"
    );
    assert!(hit <= 2, "hit made {hit} calls");
    // A rejection: cache read and the refused transaction, which leaves no marker behind.
    assert!(
        rejected <= 2,
        "a rejection made {rejected} calls (no extra read allowed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_travel_through_sqs_to_rollups_in_dynamodb_once() {
    let up = FakeUpstream::start().await;
    let config =
        Config::parse(&sluice_tests::fake_config(&up.base_url), "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let store = aws::dynamo_store().await;
    let sdk = aws::sdk_config().await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    // The usage queue, as the template makes it: its own queue with a DLQ.
    let usage_queue = aws::sqs_queue(Duration::from_secs(30), 5).await;
    let sink = sluice::metrics::sqs::SqsUsageSink::new(sqs.clone(), usage_queue.url().to_owned());
    let mut deps = Deps::new(
        Arc::new(store.clone()),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    deps.usage = sink.clone();
    let gw = TestGateway::start_deps(&config, deps, clock).await;
    let key = gw.create_key("t1").await;
    for i in 0..12 {
        assert_eq!(
            gw.chat(&key, "gpt-test", &format!("u{}", i % 8))
                .await
                .status(),
            200
        );
    }
    assert_eq!(gw.chat(&key, "nope", "x").await.status(), 404);

    // Nothing was sent per request: the events wait for the flush, then leave together.
    let waiting = sqs
        .get_queue_attributes()
        .queue_url(usage_queue.url())
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    let count = |a: &aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesOutput| {
        a.attributes()
            .and_then(|m| {
                m.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
    };
    assert_eq!(count(&waiting), 0);
    assert_eq!(sink.send_now().await, 0);
    let received = sqs
        .receive_message()
        .queue_url(usage_queue.url())
        .max_number_of_messages(10)
        .send()
        .await
        .unwrap();
    let messages = received.messages();
    assert_eq!(messages.len(), 1, "13 events in one message");
    let records: Vec<Value> = messages
        .iter()
        .map(|m| json!({"messageId": m.message_id(), "receiptHandle": m.receipt_handle(), "body": m.body()}))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();

    // The aggregator function's handler, twice (an at-least-once redelivery).
    let mut lines = Vec::new();
    let response = sluice_aggregator::handle_batch(&store, event.clone(), |l| lines.push(l)).await;
    assert!(response.batch_item_failures.is_empty());
    // Rows: gpt-test answered by `fake`, gpt-test from the cache (no provider), the 404.
    assert_eq!(lines.len(), 3);
    let response = sluice_aggregator::handle_batch(&store, event, |l| lines.push(l)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(lines.len(), 3, "the redelivery added nothing");

    let metrics: Value = gw
        .http
        .get(format!("{}/v1/metrics", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metrics["totals"]["requests"], 13, "{metrics}");
    assert_eq!(metrics["totals"]["cache_hits"], 4);
    assert_eq!(metrics["totals"]["errors_by_class"]["client"], 1);
}

/// Jobs with a `completion_window` on DynamoDB and SQS: parked through SQS, packed into one
/// provider batch, answered at the batch price; then a failing batch's jobs go back through
/// SQS and run as ordinary calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_jobs_go_through_a_provider_batch_over_dynamodb_and_sqs() {
    use sluice::clock::Clock as _;
    use sluice::store::BatchEntryKind;
    let up = FakeUpstream::start().await;
    let toml = format!(
        "{}\n[jobs.batch_api]\nenabled = true\npoll_every_s = 60\n",
        fake_config_with_jobs(&up.base_url, 1)
    );
    let config = Config::parse(&toml, "test", &|_| None).unwrap();
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(aws::dynamo_store().await),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    let gw = TestGateway::start_deps(&config, deps, clock).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 10.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let submit = |prompt: String| {
        let (gw, key) = (&gw, &key);
        async move {
            let r = gw
                .post(
                    "/v1/jobs",
                    key,
                    &json!({"endpoint": "/v1/chat/completions", "completion_window": "24h",
                        "request": {"model": "gpt-test", "max_tokens": 20,
                            "messages": [{"role": "user", "content": prompt}]}}),
                )
                .await;
            assert_eq!(r.status(), 202);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let parked = |n: usize| {
        let gw = &gw;
        async move {
            for _ in 0..200 {
                let now = gw.clock.now_ms();
                let waiting = gw
                    .deps
                    .store
                    .due_batch_entries(BatchEntryKind::Waiting, now, now, 100)
                    .await
                    .unwrap();
                if waiting.len() == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{n} jobs were not parked");
        }
    };
    let pass = || {
        let gw = &gw;
        async move {
            gw.clock.advance_ms(60_000);
            gw.services
                .batcher
                .as_ref()
                .unwrap()
                .run_once()
                .await
                .unwrap()
        }
    };
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(submit(format!("overnight {i}")).await);
    }
    parked(10).await;
    let report = pass().await;
    assert_eq!(
        (report.batches_submitted, report.jobs_submitted),
        (1, 10),
        "{report:?}"
    );
    assert_eq!(pass().await.jobs_answered, 10);
    let mut total = 0u64;
    for id in &ids {
        let job = wait_job(&gw, &key, id).await;
        assert_eq!(job["status"], "succeeded", "{job}");
        let tin = job["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
        let tout = job["usage"]["completion_tokens"].as_u64().unwrap() as f64;
        let half = ((tin * 0.15 + tout * 0.60) * 1000.0 * 0.5).round() as u64;
        let cost = (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
        assert_eq!(cost, half, "{job}");
        total += cost;
    }
    let (spent, reserved) = spent_nanos(&gw, &key, "key").await;
    assert_eq!(spent, total);
    assert_eq!(reserved, 0.0);
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        0
    );
    // A failing batch: its jobs come back through SQS as ordinary jobs.
    up.set_batch_fate(sluice_tests::BatchFate::Fail);
    let again = [submit("a".into()).await, submit("b".into()).await];
    parked(2).await;
    assert_eq!(pass().await.jobs_submitted, 2);
    assert_eq!(pass().await.jobs_taken_back, 2);
    for id in &again {
        assert_eq!(wait_job(&gw, &key, id).await["status"], "succeeded");
    }
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        2
    );
}
