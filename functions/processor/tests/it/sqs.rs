//! The processor function's handler with a real SQS event: only the messages to deliver
//! again come back in `batchItemFailures`; a duplicate of a job is not run twice; a revoked
//! key's job is closed (`key_revoked`), not run and not sent back.

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
use sluice::jobs::model::{Job, JobStatus};
use sluice::keys::{self, KeyLimits};
use sluice::providers::Endpoint;

/// A processor over a fresh SQLite file with the built-in config, a stored gateway key, and
/// one chat job of that key submitted.
async fn setup(dir: &tempfile::TempDir) -> (Deps, Services, Caller, Job) {
    let mut config = Config::builtin();
    config.jobs.workers = 0;
    let deps = Deps::sqlite(
        dir.path().join("p.db").to_str().unwrap(),
        &config,
        Arc::new(SystemClock),
    )
    .unwrap();
    let services = Services::build(&config, &deps).unwrap();
    // Workers read each job's key before running it: the key must exist.
    let key = keys::generate("t1", None, KeyLimits::default(), SystemClock.now_ms()).unwrap();
    deps.store.insert_key(&key.record).await.unwrap();
    let caller = Caller {
        key_id: key.record.id.clone(),
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
                completion_window_s: None,
            },
        )
        .await
        .unwrap();
    (deps, services, caller, job)
}

/// The fixture batch: the job's message twice, and a message that names no job.
fn fixture_event(job: &Job) -> SqsEvent {
    let fixture = std::fs::read_to_string(format!(
        "{}/tests/fixtures/sqs-jobs-batch.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("{{JOB}}", &job.id);
    serde_json::from_str(&fixture).unwrap()
}

#[tokio::test]
async fn failures_are_reported_per_message_and_duplicates_run_once() {
    let dir = tempfile::tempdir().unwrap();
    let (deps, services, _, job) = setup(&dir).await;
    let response = sluice_processor::handle_batch(&services.processor, fixture_event(&job)).await;
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

#[tokio::test]
async fn a_revoked_keys_job_is_closed_not_run_and_not_sent_back() {
    let dir = tempfile::tempdir().unwrap();
    let (deps, services, caller, job) = setup(&dir).await;
    assert!(
        deps.store
            .revoke_key(&caller.key_id, SystemClock.now_ms())
            .await
            .unwrap()
    );
    let response = sluice_processor::handle_batch(&services.processor, fixture_event(&job)).await;
    // Only the poison message comes back: the revoked key's job is done with.
    assert_eq!(
        serde_json::to_value(&response).unwrap(),
        json!({"batchItemFailures": [{"itemIdentifier": "c1b5e6a2-4b8e-4c8f-9a7e-0d3f2b1a9c88"}]})
    );
    let done = deps
        .store
        .get_job(&job.id, SystemClock.now_ms())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.status, JobStatus::Failed);
    let result = done.result.unwrap();
    assert_eq!(result.http_status, 401);
    assert_eq!((result.tokens_in, result.cost_nano_usd), (0, 0));
    let error: serde_json::Value = serde_json::from_slice(&result.body).unwrap();
    assert_eq!(error["error"]["code"], "key_revoked");
}
