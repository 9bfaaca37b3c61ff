//! Property tests of the processor's SQS decoding: any batch of message bodies is handled
//! without a panic; a body that is not a job message, or names a job that does not exist,
//! comes back as a batch item failure (so it ends in the dead-letter queue, not in a crash);
//! a message for a real job is done. `PROPTEST_CASES` sets the number of cases (default 64).

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::clock::SystemClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::gateway::Caller;
use sluice::jobs::Submission;
use sluice::providers::Endpoint;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// What a body is, and so what must become of it.
#[derive(Debug, Clone)]
enum Body {
    /// Not a job message at all.
    Garbage(String),
    /// A job message for a job that does not exist.
    Unknown(String),
    /// A job message for the real job.
    Real,
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        any::<String>().prop_map(Body::Garbage),
        Just(Body::Garbage(r#"{"job_id": 5}"#.to_owned())),
        Just(Body::Garbage("{}".to_owned())),
        Just(Body::Garbage(r#"{"jobId": "x"}"#.to_owned())),
        any::<String>()
            .prop_map(|id| Body::Unknown(json!({"job_id": format!("job_none_{id}")}).to_string())),
        Just(Body::Real),
    ]
}

fn record(id: &str, body: &str) -> Value {
    json!({"messageId": id, "receiptHandle": format!("AQEB{id}"), "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "0",
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:sluice-JobsQueue", "awsRegion": "us-east-1"})
}

#[test]
fn fuzz_any_job_batch() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (services, job_id) = rt.block_on(async {
        let mut config = Config::builtin();
        config.jobs.workers = 0;
        let deps = Deps::sqlite(
            dir.path().join("p.db").to_str().unwrap(),
            &config,
            Arc::new(SystemClock),
        )
        .unwrap();
        let services = Services::build(&config, &deps).unwrap();
        // A stored key: workers read each job's key before running it.
        let key = sluice::keys::generate("t1", None, Default::default(), 0).unwrap();
        deps.store.insert_key(&key.record).await.unwrap();
        let caller = Caller {
            key_id: key.record.id.clone(),
            tenant: "t1".into(),
            limits: Default::default(),
        };
        let body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "from SQS"}]});
        let submission = Submission {
            endpoint: Endpoint::ChatCompletions,
            body: Bytes::from(body.to_string()),
            cache_control: None,
            callback_url: None,
            completion_window_s: None,
        };
        let job = services
            .jobs
            .submit(&services.gateway, &caller, submission)
            .await
            .unwrap();
        (services, job.id)
    });
    let real = json!({"job_id": job_id}).to_string();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(body(), 1..10), |bodies| {
            let texts: Vec<&str> = bodies
                .iter()
                .map(|b| match b {
                    Body::Garbage(t) | Body::Unknown(t) => t.as_str(),
                    Body::Real => real.as_str(),
                })
                .collect();
            let ids: Vec<String> = (0..bodies.len()).map(|i| format!("m-{i}")).collect();
            let records: Vec<Value> = ids
                .iter()
                .zip(&texts)
                .map(|(id, t)| record(id, t))
                .collect();
            let event: SqsEvent = serde_json::from_value(json!({"Records": records})).unwrap();
            let response = rt.block_on(sluice_processor::handle_batch(&services.processor, event));
            let failed: Vec<&str> = response
                .batch_item_failures
                .iter()
                .map(|f| f.item_identifier.as_str())
                .collect();
            for (i, b) in bodies.iter().enumerate() {
                let is_job = serde_json::from_str::<sluice::jobs::JobMessage>(texts[i]).is_ok();
                let expect_failure = match b {
                    Body::Garbage(_) => !is_job || !texts[i].contains(&job_id),
                    Body::Unknown(_) => true,
                    Body::Real => false,
                };
                prop_assert_eq!(failed.contains(&ids[i].as_str()), expect_failure, "{:?}", b);
            }
            Ok(())
        })
        .unwrap();
}
