//! Property tests of the aggregator's SQS decoding: any batch of message bodies (text, JSON,
//! usage events with extreme values) is handled without a panic; only well-formed messages
//! can come back as batch item failures (malformed ones are dropped, never retried); every
//! EMF line is JSON. `PROPTEST_CASES` sets the number of cases (default 128).

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lambda_events::event::sqs::SqsEvent;
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::store::sqlite::SqliteStore;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

/// A usage event as the gateway writes it, with any of its values pushed to the edges.
fn usage_event() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<u64>().prop_map(Value::from),
        (0u64..1000).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
            .map(Value::Number)),
        any::<String>().prop_map(Value::String),
        Just(Value::Null),
    ];
    let fields = proptest::collection::vec(
        (
            proptest::sample::select(
                &[
                    "time_ms",
                    "status",
                    "latency_ms",
                    "ttfb_ms",
                    "tokens_in",
                    "tokens_out",
                    "cost_nano_usd",
                    "cache",
                    "kind",
                    "model",
                    "tenant",
                    "fallback",
                    "error",
                ][..],
            ),
            number,
        ),
        0..4,
    );
    let count = || prop_oneof![0u64..1000, any::<u64>(), Just(u64::MAX)];
    (fields, count(), count(), count()).prop_map(|(edits, tokens_in, tokens_out, cost)| {
        let mut e = json!({"event_id": "ev", "request_id": "req", "time_ms": 1_800_000_000_000u64, "tenant": "t1",
            "key_id": "key_1", "model": "gpt", "deployment": "openai/gpt", "kind": "sync", "status": 200,
            "error": null, "latency_ms": 10.0, "ttfb_ms": 5.0, "tokens_in": 10, "tokens_out": 5,
            "cost_nano_usd": cost, "cache": "miss", "fallback": null});
        e["tokens_in"] = json!(tokens_in);
        e["tokens_out"] = json!(tokens_out);
        for (field, value) in edits {
            e[field] = value;
        }
        e
    })
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        Just("not json".to_owned()),
        Just("{}".to_owned()),
        Just(r#"{"events": 5}"#.to_owned()),
        proptest::collection::vec(usage_event(), 0..5)
            .prop_map(|events| json!({"events": events}).to_string()),
    ]
}

fn record(id: &str, body: &str) -> Value {
    json!({"messageId": id, "receiptHandle": format!("AQEB{id}"), "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "0",
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sluice-UsageQueue", "awsRegion": "us-east-1"})
}

#[test]
fn fuzz_any_usage_batch() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("a.db").to_str().unwrap()).unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let batch = 0u64;
    let batch = std::sync::atomic::AtomicU64::new(batch);
    runner
        .run(&proptest::collection::vec(body(), 1..10), |bodies| {
            let n = batch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ids: Vec<String> = (0..bodies.len()).map(|i| format!("m-{n}-{i}")).collect();
            let records: Vec<Value> = ids
                .iter()
                .zip(&bodies)
                .map(|(id, b)| record(id, b))
                .collect();
            let event: SqsEvent = serde_json::from_value(json!({"Records": records})).unwrap();
            let mut lines = Vec::new();
            let response = rt.block_on(sluice_aggregator::handle_batch(&store, event, |l| {
                lines.push(l)
            }));
            for failure in &response.batch_item_failures {
                let i = ids.iter().position(|id| *id == failure.item_identifier);
                prop_assert!(i.is_some(), "unknown id {}", failure.item_identifier);
                let body = &bodies[i.unwrap()];
                let well_formed = serde_json::from_str::<Value>(body)
                    .ok()
                    .and_then(|v| {
                        serde_json::from_value::<Vec<sluice::metrics::UsageEvent>>(
                            v.get("events")?.clone(),
                        )
                        .ok()
                    })
                    .is_some();
                prop_assert!(well_formed, "a malformed message was retried: {}", body);
            }
            for line in lines {
                prop_assert!(serde_json::from_str::<Value>(&line).is_ok(), "{}", line);
            }
            Ok(())
        })
        .unwrap();
}

/// The tokens of two events in one minute and group added past `u64::MAX`: a panic in the
/// aggregator (debug) or a wrapped count (release). Found by `fuzz_any_usage_batch` once its
/// events carried token counts from the whole `u64` range.
#[tokio::test]
async fn regression_token_sums_saturate() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("a.db").to_str().unwrap()).unwrap();
    let mut e = json!({"event_id": "ev", "request_id": "req", "time_ms": 1_800_000_000_000u64, "tenant": "t1",
        "key_id": null, "model": "gpt", "deployment": "openai/gpt", "kind": "sync", "status": 200, "error": null,
        "latency_ms": 10.0, "ttfb_ms": null, "tokens_in": u64::MAX, "tokens_out": 1, "cost_nano_usd": u64::MAX,
        "cache": "miss", "fallback": null});
    let first = e.clone();
    e["event_id"] = json!("ev2");
    let events = json!({"events": [first, e]}).to_string();
    let event: SqsEvent =
        serde_json::from_value(json!({"Records": [record("m-1", &events)]})).unwrap();
    let mut lines = Vec::new();
    sluice_aggregator::handle_batch(&store, event, |l| lines.push(l)).await;
    let emf: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(emf["TokensIn"], u64::MAX);
}
