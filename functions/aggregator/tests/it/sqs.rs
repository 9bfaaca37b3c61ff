//! The aggregator's handler with real SQS event JSON: each message is counted once even when
//! delivered again, malformed messages are dropped rather than retried forever, and every new
//! rollup row becomes one EMF line.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_lambda_events::event::sqs::SqsEvent;
use serde_json::{Value, json};
use sluice::metrics::{EventKind, UsageEvent};
use sluice::store::MetricsStore;
use sluice::store::sqlite::SqliteStore;

fn event(i: u64, model: &str, status: u16) -> UsageEvent {
    UsageEvent {
        event_id: format!("ev_{i}"),
        request_id: format!("req_{i}"),
        time_ms: 1_800_000_000_000 + i * 1000,
        tenant: "t1".into(),
        key_id: Some("key_1".into()),
        model: Some(model.into()),
        deployment: Some(format!("openai/{model}")),
        kind: EventKind::Sync,
        status,
        error: None,
        latency_ms: 10.0 + i as f64,
        ttfb_ms: Some(5.0),
        tokens_in: 10,
        tokens_out: 5,
        cost_nano_usd: 4_500,
        cache: "miss".into(),
        fallback: None,
    }
}

fn record(id: &str, body: &str) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("AQEB{id}"),
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1800000000000",
                       "SenderId": "AROAEXAMPLE:sluice-ingest", "ApproximateFirstReceiveTimestamp": "1800000000100"},
        "messageAttributes": {},
        "md5OfBody": "0",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sluice-UsageQueue-AbCdEf",
        "awsRegion": "us-east-1"
    })
}

#[tokio::test]
async fn messages_count_once_malformed_ones_are_dropped_and_rows_become_emf() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("a.db").to_str().unwrap()).unwrap();
    let first: Vec<UsageEvent> = (0..5).map(|i| event(i, "gpt", 200)).collect();
    let second: Vec<UsageEvent> = (5..8).map(|i| event(i, "claude", 502)).collect();
    let batch: SqsEvent = serde_json::from_value(json!({"Records": [
        record("m-1", &json!({"events": first}).to_string()),
        record("m-2", &json!({"events": second}).to_string()),
        record("m-3", "not json"),
    ]}))
    .unwrap();

    let mut lines = Vec::new();
    let response = sluice_aggregator::handle_batch(&store, batch.clone(), |l| lines.push(l)).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "malformed is not retried"
    );
    assert_eq!(lines.len(), 2, "one EMF line per rollup row");
    let emf: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"],
        "Sluice"
    );
    assert_eq!(
        (emf[0]["Model"].as_str(), emf[0]["Requests"].as_u64()),
        (Some("gpt"), Some(5))
    );
    assert_eq!(
        (emf[1]["Model"].as_str(), emf[1]["ServerErrors"].as_u64()),
        (Some("claude"), Some(3))
    );

    // The same messages again (SQS delivers at least once): nothing more is counted.
    let mut again = Vec::new();
    sluice_aggregator::handle_batch(&store, batch, |l| again.push(l)).await;
    assert!(again.is_empty());
    let rows = store
        .rollups(None, 1_800_000_000 - 60, 1_800_000_000 + 60)
        .await
        .unwrap();
    let requests: u64 = rows.iter().map(|r| r.rollup.requests).sum();
    let upstream: u64 = rows.iter().map(|r| r.rollup.errors_upstream).sum();
    assert_eq!((requests, upstream), (8, 3));
}
