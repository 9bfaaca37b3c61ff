//! Hostile clients and jobs (issue 13, items 5–7) on DynamoDB + SQS (moto): the scenarios of
//! `sluice_tests::hostile_jobs`, as the SQLite suite runs them, through the real SDK wire
//! protocol. Each test prints a `hostile:` line with its figures (RELIABILITY.md).

use std::sync::Arc;
use std::time::Duration;

use sluice::clock::ManualClock;
use sluice::deps::Deps;
use sluice_tests::hostile_jobs::{self, Hostile};
use sluice_tests::{FakeUpstream, aws};

async fn dynamodb_sqs(up: &FakeUpstream) -> Hostile {
    let config = hostile_jobs::config(&up.base_url);
    let clock = ManualClock::new(1_800_000_000_000);
    let deps = Deps::new(
        Arc::new(aws::dynamo_store().await),
        Arc::new(aws::sqs_queue(Duration::from_secs(30), 3).await),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(clock.clone()),
    );
    Hostile::start(&config, deps, clock).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_keys_queued_jobs_fail_uncalled_and_unbilled() {
    let up = FakeUpstream::start().await;
    let h = dynamodb_sqs(&up).await;
    let started = std::time::Instant::now();
    let f = hostile_jobs::revoked_keys_queued_jobs(&h, &up, 200).await;
    println!(
        "hostile: dynamodb+sqs revocation: {} jobs queued then key revoked, {} other-tenant \
         jobs in the same {} batches; {} key reads; {} callbacks (all other-tenant); {} upstream calls (all other-tenant); \
         revoked tenant billed {} nano-USD; {:.1} s",
        f.revoked_jobs,
        f.control_jobs,
        f.batches,
        f.key_reads,
        f.callbacks,
        f.upstream_calls,
        f.revoked_spend,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_mid_run_finishes_that_job_and_no_other() {
    let up = FakeUpstream::start().await;
    let h = dynamodb_sqs(&up).await;
    let cost = hostile_jobs::revoked_while_running(&h, &up).await;
    println!(
        "hostile: dynamodb+sqs revoked mid-run: running job billed {cost} nano-USD, 1 upstream call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_bad_input_never_fails_or_reaches_another_tenants_jobs() {
    let up = FakeUpstream::start().await;
    let h = dynamodb_sqs(&up).await;
    let f = hostile_jobs::batches_never_mix_tenants(&h, &up).await;
    println!(
        "hostile: dynamodb+sqs batch isolation: {} jobs of 3 tenants in one batch, {} upstream \
         calls, {} failed (the attacker's bad inputs)",
        f.jobs, f.upstream_calls, f.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_one_job_however_often_it_is_sent() {
    let up = FakeUpstream::start().await;
    let h = dynamodb_sqs(&up).await;
    let (sent, queued) = hostile_jobs::one_job_per_idempotency_key(&h).await;
    println!("hostile: dynamodb+sqs job idempotency: {sent} requests, {queued} jobs queued");
    assert_eq!(up.calls(), 0);
}
