//! The processor function's handler with a real SQS event: only the messages to deliver
//! again come back in `batchItemFailures`; a duplicate of a job is not run twice.

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
use serde_json::json;
use sluice::clock::{Clock, SystemClock};
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::gateway::Caller;
use sluice::jobs::Submission;
use sluice::jobs::model::JobStatus;
use sluice::providers::Endpoint;

#[tokio::test]
async fn failures_are_reported_per_message_and_duplicates_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::builtin();
    config.jobs.workers = 0;
    let deps = Deps::sqlite(
        dir.path().join("p.db").to_str().unwrap(),
        &config,
        Arc::new(SystemClock),
    )
    .unwrap();
    let services = Services::build(&config, &deps).unwrap();
    let caller = Caller {
        key_id: "key_1".into(),
        tenant: "t1".into(),
        limits: Default::default(),
    };
    let body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "from SQS"}]});
    let job = services
        .jobs
        .submit(
            &services.gateway,
            &caller,
            Submission {
                endpoint: Endpoint::ChatCompletions,
                body: Bytes::from(body.to_string()),
                cache_control: None,
                callback_url: None,
            },
        )
        .await
        .unwrap();

    let fixture = std::fs::read_to_string(format!(
        "{}/tests/fixtures/sqs-jobs-batch.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("{{JOB}}", &job.id);
    let event: SqsEvent = serde_json::from_str(&fixture).unwrap();
    let response = sluice_processor::handle_batch(&services.processor, event).await;
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"batchItemFailures": [{"itemIdentifier": "c1b5e6a2-4b8e-4c8f-9a7e-0d3f2b1a9c88"}]})
    );
    let done = deps
        .store
        .get_job(&job.id, SystemClock.now_ms())
        .await
        .unwrap();
    let done = done.unwrap_or_else(|| panic!("job {} missing", job.id));
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(
        done.attempts, 1,
        "the duplicate message must not run the job again"
    );
}
