//! What the AWS backends cost, counted on the wire: every DynamoDB and SQS call goes through
//! a proxy in front of moto ([`ThrottleProxy`], throttling nothing here) that tallies calls per
//! operation, the items each `Query` or `Scan` read, and the sizes of every
//! `SendMessageBatch` entry.
//!
//! - Housekeeping reads only what expired: with thousands of rate windows, live holds, keys,
//!   cache entries and jobs present, one pass reads the expired holds and stale jobs and
//!   nothing else, never with a `Scan`.
//! - The admin key list queries an index and reads only the keys, never with a `Scan`.
//! - Usage events of any size reach SQS whole: packed by bytes, no batch is refused.
//! - Calls per request by path (cache hit, miss, with and without limits, job accepted, job
//!   run, usage aggregated): the figures behind docs/aws.md's cost table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_sqs::types::{QueueAttributeName, SendMessageBatchRequestEntry};
use bytes::Bytes;
use serde_json::json;
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::housekeeping::Report;
use sluice::jobs::model::{Claim, Job, JobResult, JobStatus};
use sluice::keys::{self, KeyLimits};
use sluice::limits::rate;
use sluice::metrics::sqs::{MAX_EVENT_BYTES, SqsUsageSink};
use sluice::metrics::{EventKind, UsageEvent, UsageSink};
use sluice::providers::Endpoint;
use sluice::queue::sqs::SqsQueue;
use sluice::store::dynamodb::DynamoStore;
use sluice::store::{CacheKey, CachedResponse, CounterField, Hold, Increment, SharedStore};
use sluice_tests::{FakeUpstream, Tally, TestGateway, ThrottleProxy, aws, fake_config_with_jobs};

const T0: u64 = 1_800_000_000_000;

/// A store and a queue whose calls go through a counting proxy, and a store over the same
/// tables that does not (to fill them without counting).
struct Counted {
    proxy: ThrottleProxy,
    store: DynamoStore,
    queue: SqsQueue,
    direct: DynamoStore,
}

async fn counted() -> Counted {
    let direct = aws::dynamo_store().await;
    let proxy = ThrottleProxy::start(&std::env::var("AWS_ENDPOINT_URL").unwrap()).await;
    let sdk = aws::sdk_config_at(&proxy.url).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), direct.tables().clone());
    let queue = SqsQueue::create(
        aws_sdk_sqs::Client::new(&sdk),
        &aws::unique_prefix(),
        Duration::from_secs(30),
        5,
    )
    .await
    .unwrap();
    Counted {
        proxy,
        store,
        queue,
        direct,
    }
}

fn job(id: &str, updated_at_ms: u64) -> Job {
    Job {
        id: id.into(),
        tenant: "t1".into(),
        key_id: "key_1".into(),
        key_limits: KeyLimits::default(),
        endpoint: Endpoint::ChatCompletions,
        request: Bytes::from(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": id}]})
                .to_string(),
        ),
        cache_control: None,
        callback_url: None,
        completion_window_s: None,
        status: JobStatus::Queued,
        attempts: 0,
        lease_until_ms: 0,
        result: None,
        created_at_ms: updated_at_ms,
        updated_at_ms,
        expires_at_ms: T0 + 86_400_000,
    }
}

fn hold(id: String, counter: &str, expires_at_ms: u64) -> Hold {
    Hold {
        id,
        undo: vec![Increment {
            counter: counter.into(),
            field: CounterField::Committed,
            delta: -1,
            at_most: None,
            expires_at_ms: T0 + 86_400_000,
            guard: None,
        }],
        expires_at_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_reads_only_what_expired_among_thousands_of_items() {
    use sluice::store::{CacheStore, JobStore, KeyStore, LimitStore};
    let c = counted().await;
    let d = &c.direct;
    // Live reservations (in the holds index, not expired) and five abandoned ones.
    let budget = "budget:tenant:t1:2027-01:0";
    let charge = |delta| Increment {
        counter: budget.into(),
        field: CounterField::Committed,
        delta,
        at_most: None,
        expires_at_ms: T0 + 86_400_000,
        guard: None,
    };
    for i in 0..300 {
        let live = hold(format!("live{i}"), budget, T0 + 600_000);
        d.apply(&[charge(1)], Some(&live)).await.unwrap();
    }
    for i in 0..5 {
        let gone = hold(format!("gone{i}"), budget, T0 - 1_000);
        d.apply(&[charge(1)], Some(&gone)).await.unwrap();
    }
    // Keys and cache entries.
    for _ in 0..200 {
        let key = keys::generate("t1", None, KeyLimits::default(), T0).unwrap();
        d.insert_key(&key.record).await.unwrap();
    }
    for i in 0..1_000u32 {
        let mut digest = [0u8; 32];
        digest[..4].copy_from_slice(&i.to_be_bytes());
        let entry = CachedResponse {
            body: Bytes::from(format!("{{\"answer\":{i}}}")),
            created_at_ms: T0,
            expires_at_ms: T0 + 3_600_000,
            purge_at_ms: T0 + 7_200_000,
        };
        let key = CacheKey {
            digest,
            tenant: "t1".into(),
        };
        d.cache_put(&key, &entry).await.unwrap();
    }
    // Jobs: finished ones (out of the open-jobs index), open ones changed a moment ago (in
    // it, but not stale), and three left behind two hours ago.
    for i in 0..150 {
        let id = format!("job_done{i:020}");
        d.insert_job(&job(&id, T0 - 5_000)).await.unwrap();
        let Claim::Claimed(claimed) = d.claim_job(&id, T0 - 5_000, 50_000).await.unwrap() else {
            panic!("claim");
        };
        let result = JobResult {
            http_status: 200,
            body: Bytes::from_static(b"{}"),
            tokens_in: 1,
            tokens_out: 1,
            cost_nano_usd: 1,
        };
        assert!(
            d.finish_job(
                &id,
                claimed.attempts,
                JobStatus::Succeeded,
                &result,
                T0 - 4_000,
                None
            )
            .await
            .unwrap()
        );
    }
    for i in 0..300 {
        d.insert_job(&job(&format!("job_open{i:020}"), T0 - 1_000))
            .await
            .unwrap();
    }
    for i in 0..3 {
        d.insert_job(&job(&format!("job_left{i:020}"), T0 - 7_200_000))
            .await
            .unwrap();
    }

    // Thousands of rate windows (the bulk of a busy limits table), written as the adapter
    // writes them but 25 to a `BatchWriteItem`: moto's transactions copy whole tables, so
    // filling it through `apply` would take minutes.
    let raw = aws_sdk_dynamodb::Client::new(&aws::sdk_config().await);
    let windows: Vec<_> = (0..3_000u64)
        .map(|i| {
            let w = T0 / 60_000 - (i % 3);
            let pk = rate::counter_id(&format!("key:k{i}"), rate::Metric::Requests, w, 0);
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .item("pk", AttributeValue::S(pk))
                        .item("count", AttributeValue::N("1".into()))
                        .item(
                            "expires_at",
                            AttributeValue::N(((T0 + 180_000) / 1000).to_string()),
                        )
                        .build()
                        .unwrap(),
                )
                .build()
        })
        .collect();
    for chunk in windows.chunks(25) {
        let out = raw
            .batch_write_item()
            .request_items(&d.tables().limits, chunk.to_vec())
            .send()
            .await
            .unwrap();
        assert!(out.unprocessed_items().is_none_or(|u| u.is_empty()));
    }

    let config = Config::builtin();
    let clock = ManualClock::new(T0);
    let store: SharedStore = Arc::new(c.store.clone());
    let deps = Deps::new(
        store,
        Arc::new(c.queue.clone()),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    let services = Services::build(&config, &deps).unwrap();
    let before = c.proxy.tally();
    let report = services.housekeeper.run_once().await.unwrap();
    let pass = c.proxy.tally().since(&before);
    eprintln!(
        "one housekeeping pass among 3,000 rate windows, 300 live holds, 200 keys, 1,000 cache \
         entries and 453 jobs: {pass}; items read by queries {} (scanned {})",
        pass.items_returned, pass.items_scanned
    );
    assert_eq!(
        report,
        Report {
            holds_released: 5,
            jobs_requeued: 3,
            ..Report::default()
        }
    );
    assert_eq!(pass.of("Scan"), 0, "{pass}");
    // Eight index partitions each for holds and open jobs; what they read is what expired.
    assert_eq!(pass.of("Query"), 16, "{pass}");
    assert_eq!(pass.items_returned, 8, "{pass:?}");
    assert_eq!(pass.items_scanned, 8, "{pass:?}");
    // Then one write per hold given back, one conditional update and one message per job
    // queued again, and one look at the dead-letter queue.
    assert_eq!(pass.of("TransactWriteItems"), 5, "{pass}");
    assert_eq!(pass.of("UpdateItem"), 3, "{pass}");
    assert_eq!(pass.of("SendMessage"), 3, "{pass}");
    assert_eq!(pass.of("ReceiveMessage"), 1, "{pass}");
    assert_eq!(pass.total(), 16 + 5 + 3 + 3 + 1, "{pass}");
    // A pass with nothing to do reads nothing but the empty ends of the indexes.
    let before = c.proxy.tally();
    let idle = services.housekeeper.run_once().await.unwrap();
    let pass = c.proxy.tally().since(&before);
    eprintln!("an idle pass: {pass}; items read {}", pass.items_scanned);
    assert_eq!(idle, Report::default());
    assert_eq!((pass.of("Query"), pass.items_scanned), (16, 0), "{pass:?}");
    assert_eq!(pass.total(), 17, "{pass}");
}

/// `GET /admin/keys` on DynamoDB: one `Query` per partition of the sparse index
/// `keys-by-creation`, reading the keys and nothing else (not the `id#` item each key also
/// has, which a filtered `Scan` of the table would read and throw away), never a `Scan`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_keys_queries_the_index_and_reads_only_the_keys() {
    use sluice::store::KeyStore;
    let c = counted().await;
    let mut made = Vec::new();
    for i in 0..250u64 {
        let key = keys::generate("t1", None, KeyLimits::default(), T0 + i % 7).unwrap();
        c.direct.insert_key(&key.record).await.unwrap();
        made.push(key.record);
    }
    let revoked = made[17].id.clone();
    assert!(c.direct.revoke_key(&revoked, T0 + 99).await.unwrap());
    let before = c.proxy.tally();
    let listed = c.store.list_keys().await.unwrap();
    let list = c.proxy.tally().since(&before);
    eprintln!(
        "listing 250 keys: {list}; items read {}",
        list.items_scanned
    );
    assert_eq!(list.of("Scan"), 0, "{list}");
    assert_eq!(list.of("Query"), 8, "{list}");
    assert_eq!(list.total(), 8, "{list}");
    assert_eq!(
        (list.items_returned, list.items_scanned),
        (250, 250),
        "{list:?}"
    );
    // Every key, whole (the index projects every attribute), oldest first.
    made.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
    let mut expected = made;
    for k in &mut expected {
        if k.id == revoked {
            k.revoked_at_ms = Some(T0 + 99);
        }
    }
    assert_eq!(listed, expected);
}

fn usage_event(i: usize, error_bytes: usize, model_bytes: usize) -> UsageEvent {
    UsageEvent {
        event_id: UsageEvent::new_id(),
        request_id: format!("req_{i}"),
        time_ms: T0 + i as u64,
        tenant: "t1".into(),
        key_id: Some("key_1".into()),
        model: Some(format!("m{}", "o".repeat(model_bytes))),
        deployment: Some("openai/gpt-4o-mini".into()),
        kind: EventKind::Sync,
        status: if error_bytes > 0 { 502 } else { 200 },
        error: (error_bytes > 0).then(|| "ü".repeat(error_bytes / 2)),
        latency_ms: 12.5,
        ttfb_ms: None,
        tokens_in: 10,
        tokens_out: 5,
        cost_nano_usd: 100,
        cache: "miss".into(),
        fallback: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_events_of_any_size_reach_the_queue_whole() {
    let proxy = ThrottleProxy::start(&std::env::var("AWS_ENDPOINT_URL").unwrap()).await;
    let sqs = aws_sdk_sqs::Client::new(&aws::sdk_config_at(&proxy.url).await);
    // SQS's long-standing 256 KiB message limit, which moto enforces per queue (and 1 MiB
    // for a whole SendMessageBatch).
    let url = sqs
        .create_queue()
        .queue_name(aws::unique_prefix())
        .attributes(QueueAttributeName::MaximumMessageSize, "262144")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let entry = |id: &str, bytes: usize| {
        SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body("x".repeat(bytes))
            .build()
            .unwrap()
    };
    // moto does refuse what SQS refuses: a message over 256 KiB, a batch over 1 MiB.
    let too_long = sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("a", 300 * 1024))
        .send()
        .await;
    assert!(too_long.is_err(), "{too_long:?}");
    let too_much = sqs
        .send_message_batch()
        .queue_url(&url)
        .set_entries(Some(
            (0..5).map(|i| entry(&i.to_string(), 250 * 1024)).collect(),
        ))
        .send()
        .await;
    assert!(too_much.is_err(), "{too_much:?}");

    // Events of every size: plain ones, long error texts and model names, some far over any
    // message (their text is cut), mixed through each other.
    let sizes = [
        (0, 0),
        (200, 0),
        (15_000, 0),
        (0, 9_000),
        (300_000, 0),
        (40_000, 40_000),
        (0, 0),
        (6_000, 100),
    ];
    let events: Vec<UsageEvent> = (0..1_200)
        .map(|i| {
            let (error, model) = sizes[i % sizes.len()];
            usage_event(i, error, model)
        })
        .collect();
    let sink = SqsUsageSink::new(sqs.clone(), url.clone());
    for e in &events {
        sink.record(e.clone());
    }
    let before = proxy.tally();
    assert_eq!(sink.send_now().await, 0, "no event lost");
    let sent = proxy.tally().since(&before);
    eprintln!(
        "{} events of mixed sizes: {} SendMessageBatch calls, message sizes {:?}",
        events.len(),
        sent.of("SendMessageBatch"),
        sent.batches
    );
    assert!(sent.of("SendMessageBatch") > 1);
    assert_eq!(sent.batches.len() as u64, sent.of("SendMessageBatch"));
    for batch in &sent.batches {
        assert!(batch.len() <= 10);
        assert!(batch.iter().all(|&b| b <= 256 * 1024), "{batch:?}");
        assert!(batch.iter().sum::<usize>() <= 1024 * 1024, "{batch:?}");
    }
    // Every event arrived once, in full unless it was larger than 16 KiB.
    let mut got: HashMap<String, UsageEvent> = HashMap::new();
    for _ in 0..200 {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            for e in body["events"].as_array().unwrap() {
                let e: UsageEvent = serde_json::from_value(e.clone()).unwrap();
                assert!(got.insert(e.event_id.clone(), e).is_none(), "twice");
            }
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        if got.len() == events.len() {
            break;
        }
    }
    assert_eq!(got.len(), events.len());
    for e in &events {
        let back = &got[&e.event_id];
        if serde_json::to_string(e).unwrap().len() <= MAX_EVENT_BYTES {
            assert_eq!(back, e);
        } else {
            assert_eq!(
                (back.cost_nano_usd, back.status, back.request_id.as_str()),
                (e.cost_nano_usd, e.status, e.request_id.as_str())
            );
            assert!(back.error.as_ref().is_none_or(|t| t.len() <= 1024));
            assert!(back.model.as_ref().is_some_and(|t| t.len() <= 1024));
        }
    }
}

/// One path's measured calls, split by service.
struct PathCost {
    path: &'static str,
    /// Requests (or jobs, or usage messages) the tally covers.
    per: u64,
    tally: Tally,
}

const SQS_OPS: [&str; 5] = [
    "SendMessage",
    "SendMessageBatch",
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
];

impl PathCost {
    fn dynamodb(&self) -> u64 {
        self.tally.total() - self.sqs()
    }
    fn sqs(&self) -> u64 {
        SQS_OPS.iter().map(|op| self.tally.of(op)).sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_request_by_path_on_dynamodb_and_sqs() {
    use sluice::metrics::aggregator::Message;
    let up = FakeUpstream::start().await;
    let c = counted().await;
    let sqs = aws_sdk_sqs::Client::new(&aws::sdk_config_at(&c.proxy.url).await);
    let usage_url = sqs
        .create_queue()
        .queue_name(aws::unique_prefix())
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let text = fake_config_with_jobs(&up.base_url, 0)
        .replace("upstream_timeout_s = 1\n", "upstream_timeout_s = 10\n");
    let config = Config::parse(&text, "test", &|_| None).unwrap();
    // Two instances (Lambda execution environments) over the same tables and queues, each
    // with its own key cache and memory tier of the response cache.
    let sink = SqsUsageSink::new(sqs.clone(), usage_url.clone());
    let instance = || {
        let clock = ManualClock::new(T0);
        let mut deps = Deps::new(
            Arc::new(c.store.clone()),
            Arc::new(c.queue.clone()),
            sluice::providers::HttpClient::new().unwrap(),
            Arc::new(clock.clone()),
        );
        deps.usage = sink.clone();
        // Each request as one Lambda invocation: answered once its cache write is done and its
        // usage event sent.
        TestGateway::start_deps_as_lambda(&config, deps, clock)
    };
    let a = instance().await;
    let b = instance().await;
    let free = a.admin_create(json!({"tenant": "t1"})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let limited = a
        .admin_create(
            json!({"tenant": "t1", "rpm": 1000, "tpm": 1000000, "budget_usd": 10.0, "period": "day"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // A key's first lookup: one eventually consistent read (a key not found would be read
    // again strongly, so a new key works at once).
    let before = c.proxy.tally();
    assert_eq!(a.chat(&free, "gpt-test", "first").await.status(), 200);
    let first = c.proxy.tally().since(&before);
    assert_eq!(
        (first.of("GetItem"), first.strong_reads),
        (2, 0),
        "{first:?}"
    );
    // Warm: each instance has looked each key up and read the previous rate windows.
    for (i, gw) in [&a, &b].into_iter().enumerate() {
        for (j, key) in [&free, &limited].into_iter().enumerate() {
            let prompt = format!("warm-up {i} {j}");
            let r = gw.chat(key, "gpt-test", &prompt).await;
            assert_eq!(r.headers()["x-sluice-cache"], "miss");
        }
    }
    sink.send_now().await;

    // One request as one Lambda invocation: the request, then the usage flush that ends it.
    let mut costs = Vec::new();
    let mut measure =
        async |path: &'static str, gw: &TestGateway, key: &str, prompt: &str, cache: &str| {
            let before = c.proxy.tally();
            let r = gw.chat(key, "gpt-test", prompt).await;
            assert_eq!(r.status(), 200, "{path}");
            assert_eq!(r.headers()["x-sluice-cache"], cache, "{path}");
            costs.push(PathCost {
                path,
                per: 1,
                tally: c.proxy.tally().since(&before),
            });
        };
    measure("cache miss, key without limits", &a, &free, "q1", "miss").await;
    measure(
        "cache hit, same instance (memory tier)",
        &a,
        &free,
        "q1",
        "hit",
    )
    .await;
    measure(
        "cache hit, another instance, key without limits",
        &b,
        &free,
        "q1",
        "hit",
    )
    .await;
    measure(
        "cache miss, key with rpm, tpm and a budget",
        &a,
        &limited,
        "q2",
        "miss",
    )
    .await;
    measure(
        "cache hit, another instance, key with rpm, tpm and a budget",
        &b,
        &limited,
        "q2",
        "hit",
    )
    .await;

    // Ten jobs accepted (one measured), then processed as one batch of the jobs queue.
    let before = c.proxy.tally();
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = a
            .post(
                "/v1/jobs",
                &limited,
                &json!({"endpoint": "/v1/chat/completions", "request": {"model": "gpt-test",
                        "messages": [{"role": "user", "content": format!("job {i}")}]}}),
            )
            .await;
        assert_eq!(r.status(), 202);
        ids.push(
            r.json::<serde_json::Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        UsageSink::flush(&*sink).await;
    }
    costs.push(PathCost {
        path: "202 job accepted (key with limits)",
        per: 10,
        tally: c.proxy.tally().since(&before),
    });
    let before = c.proxy.tally();
    let mut batch = Vec::new();
    for _ in 0..20 {
        batch.extend(
            sluice::queue::JobQueue::receive(
                &c.queue,
                10 - batch.len() as u32,
                Duration::from_millis(500),
            )
            .await
            .unwrap(),
        );
        if batch.len() == 10 {
            break;
        }
    }
    assert_eq!(batch.len(), 10);
    sluice::jobs::worker::process_deliveries(&a.services.processor, &c.queue, &batch).await;
    UsageSink::flush(&*sink).await;
    costs.push(PathCost {
        path: "job run (a batch of 10, key with limits; receive and delete included)",
        per: 10,
        tally: c.proxy.tally().since(&before),
    });
    for id in &ids {
        let job = sluice::store::JobStore::get_job(&c.store, id, T0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.status, JobStatus::Succeeded, "{id}");
    }

    // The aggregator: every usage message so far (one per invocation), ten at a time.
    let mut messages = Vec::new();
    for _ in 0..20 {
        let out = sqs
            .receive_message()
            .queue_url(&usage_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            messages.push(Message {
                id: m.message_id().unwrap().to_owned(),
                body: m.body().unwrap().to_owned(),
            });
        }
    }
    // One message per invocation: the first request's, the four warm-ups', the five measured
    // requests' (a 202 sends no event of its own: the job's comes when it runs), and the job
    // batch's ten events.
    assert_eq!(messages.len(), 1 + 4 + 5 + 1);
    let events = |m: &Message| m.body.matches("\"event_id\"").count();
    let single: Vec<Message> = messages
        .iter()
        .filter(|m| events(m) == 1)
        .cloned()
        .collect();
    assert_eq!(single.len(), 10, "one event per request's message");
    let measured = single[..5].to_vec();
    let before = c.proxy.tally();
    let outcome = sluice::metrics::aggregator::handle(&c.store, &measured).await;
    assert!(outcome.retry.is_empty() && outcome.malformed == 0);
    costs.push(PathCost {
        path: "usage message aggregated (one request's event; SQS polling not included)",
        per: 5,
        tally: c.proxy.tally().since(&before),
    });

    eprintln!("| path | DynamoDB calls | of which | transaction items | SQS calls | of which |");
    eprintln!("| --- | ---: | --- | ---: | ---: | --- |");
    for p in &costs {
        let per = p.per as f64;
        let (dynamo, sqs): (Vec<_>, Vec<_>) = {
            let mut ops: Vec<_> = p.tally.calls.iter().collect();
            ops.sort();
            ops.into_iter()
                .map(|(op, n)| format!("{op} {}", *n as f64 / per))
                .partition(|s| !SQS_OPS.iter().any(|q| s.starts_with(&format!("{q} "))))
        };
        eprintln!(
            "| {} | {} | {} | {} | {} | {} |",
            p.path,
            p.dynamodb() as f64 / per,
            dynamo.join(", "),
            p.tally.transact_items as f64 / per,
            p.sqs() as f64 / per,
            sqs.join(", ")
        );
    }
    let cost = |path: &str| costs.iter().find(|p| p.path == path).unwrap();
    for p in &costs {
        assert_eq!(p.tally.of("Scan"), 0, "{}: {}", p.path, p.tally);
    }
    // The budgets of docs/aws.md's cost table. A miss's `PutItem`s are the cache entry and,
    // for a key without limits (no admit transaction to ride in), the in-flight marker of
    // coalescing (`gateway/coalesce.rs`), which a leader that stores its answer leaves to be
    // made spent by the entry rather than deleting it.
    let miss_free = cost("cache miss, key without limits");
    assert_eq!(miss_free.tally.of("PutItem"), 2, "{}", miss_free.tally);
    assert_eq!(
        (miss_free.dynamodb(), miss_free.sqs()),
        (3, 1),
        "{}",
        miss_free.tally
    );
    let hit_memory = cost("cache hit, same instance (memory tier)");
    assert_eq!(
        (hit_memory.dynamodb(), hit_memory.sqs()),
        (0, 1),
        "{}",
        hit_memory.tally
    );
    let hit_free = cost("cache hit, another instance, key without limits");
    assert_eq!(
        (hit_free.dynamodb(), hit_free.sqs()),
        (1, 1),
        "{}",
        hit_free.tally
    );
    let miss = cost("cache miss, key with rpm, tpm and a budget");
    // Its in-flight marker rides in the admit transaction (`LimitStore::apply_leading`): the
    // one `PutItem` is the cache entry.
    assert_eq!((miss.dynamodb(), miss.sqs()), (4, 1), "{}", miss.tally);
    assert_eq!(miss.tally.of("TransactWriteItems"), 2, "{}", miss.tally);
    assert_eq!(miss.tally.of("PutItem"), 1, "{}", miss.tally);
    let hit = cost("cache hit, another instance, key with rpm, tpm and a budget");
    assert_eq!((hit.dynamodb(), hit.sqs()), (2, 1), "{}", hit.tally);
    let accepted = cost("202 job accepted (key with limits)");
    assert_eq!(accepted.tally.of("PutItem"), 10, "{}", accepted.tally);
    assert_eq!(accepted.tally.of("SendMessage"), 10, "{}", accepted.tally);
    let run = cost("job run (a batch of 10, key with limits; receive and delete included)");
    // Per job: claim, cache read, admit with the in-flight marker, cache write, finish (result
    // and settlement in one transaction); and the key's two reads once for the batch.
    assert_eq!(run.dynamodb(), 10 * 5 + 2, "{}", run.tally);
    // Cache entries and authentication's key lookups are read eventually consistently; the
    // processor's check that a job's key is not revoked (two reads per batch) is strong.
    for p in &costs[..5] {
        assert_eq!(p.tally.strong_reads, 0, "{}: {:?}", p.path, p.tally);
    }
    assert_eq!(run.tally.strong_reads, 2, "{:?}", run.tally);
    let aggregated =
        cost("usage message aggregated (one request's event; SQS polling not included)");
    assert_eq!(
        aggregated.tally.of("TransactWriteItems"),
        5,
        "{}",
        aggregated.tally
    );
}
