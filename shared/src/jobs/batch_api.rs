//! Jobs that can wait: a job submitted with a `completion_window` (`"24h"`, the only window
//! OpenAI's Batch API offers) may be packed with others into a provider's Batch API — OpenAI's
//! Files + Batches, Anthropic's Message Batches — which bill half the list price.
//!
//! The life of such a job:
//! 1. **Parked.** The worker that receives its message claims it with a lease until its
//!    fall-back time (window end − `fall_back_before_s`) and writes a `waiting` entry
//!    ([`park`]); nothing else will claim it meanwhile.
//! 2. **Packed.** A [`Batcher`] pass (every `poll_every_s`: a task of `sluice serve`, a
//!    scheduled invocation of the processor function on AWS) takes the waiting jobs, drops
//!    those whose key was revoked (failed `key_revoked`, nothing sent, nothing billed),
//!    admits each against its limits with a reservation at the batch price held until its
//!    window ends, groups them by model, deployment and endpoint into batches within
//!    `max_requests` and `max_bytes`, submits each, and records it as an `open` entry.
//! 3. **Polled and split.** Later passes poll each open batch. Once it has ended, each job
//!    gets its own line: an answer is recorded with its cost at the batch price (the
//!    reservation settled in the same write); a request the provider refused fails its job
//!    alone; a request not run (expired, cancelled, a server error) is **taken back**.
//! 4. **Taken back.** A batch that failed, could not be submitted, or is still running at its
//!    earliest job's fall-back time (then cancelled upstream) gives its jobs back: each job's
//!    reservation is released, the job is queued again as an ordinary job, and runs through
//!    the normal pipeline at the list price well before its window ends. If even that write
//!    is lost, the job's lease runs out at its fall-back time and housekeeping queues it.
//!
//! One pass at a time: each pass takes a once-only marker for its `poll_every_s` slot, so
//! several `sluice serve` processes or overlapping invocations never submit a job twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::JobMessage;
use super::model::{Job, JobResult, JobStatus};
use super::processor::{Ending, KeyState, Processor, caller_of, failed};
use crate::api::error::ApiError;
use crate::clock::Clock;
use crate::config::BatchApiConfig;
use crate::gateway::{Gateway, GatewayError, Trace};
use crate::limits::Grant;
use crate::providers::batch_api::{LineOutcome, Polled};
use crate::providers::{Endpoint, Usage};
use crate::queue::JobQueue;
use crate::store::{BatchEntry, BatchEntryKind, SharedStore, StoreError};

/// Most waiting jobs one pass packs (more wait for the next pass).
const MAX_WAITING_PER_PASS: usize = 10_000;
/// Most open batches one pass polls.
const MAX_OPEN_PER_PASS: usize = 100;
/// Bookkeeping entries outlive any 24 h window by this much, then vanish.
const ENTRY_SLACK_MS: u64 = 3600 * 1000;

/// A parked job's `waiting` entry.
#[derive(Serialize, Deserialize)]
struct Waiting {
    attempt: u32,
}

/// An `open` entry: one upstream batch and its jobs.
#[derive(Serialize, Deserialize)]
struct OpenBatch {
    upstream_id: String,
    model: String,
    deployment: String,
    upstream_model: String,
    endpoint: String,
    /// The earliest fall-back time of its jobs: still running then, it is cancelled.
    fall_back_at_ms: u64,
    jobs: Vec<Member>,
}

/// A job in an upstream batch; its `custom_id` is its job id.
#[derive(Serialize, Deserialize)]
struct Member {
    job_id: String,
    attempt: u32,
    grant: Grant,
}

/// Writes the `waiting` entry of a job just claimed for a batch.
pub async fn park(
    store: &dyn crate::store::Store,
    job: &Job,
    now_ms: u64,
) -> Result<(), StoreError> {
    let body = serde_json::to_vec(&Waiting {
        attempt: job.attempts,
    })
    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    store
        .put_batch_entry(&BatchEntry {
            kind: BatchEntryKind::Waiting,
            id: job.id.clone(),
            due_at_ms: now_ms,
            body: Bytes::from(body),
            expires_at_ms: job
                .window_ends_at_ms()
                .unwrap_or(now_ms)
                .saturating_add(ENTRY_SLACK_MS),
        })
        .await
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct PassReport {
    /// Upstream batches submitted.
    pub batches_submitted: usize,
    /// Jobs sent in them.
    pub jobs_submitted: usize,
    /// Jobs answered (succeeded or failed) from ended batches.
    pub jobs_answered: usize,
    /// Jobs taken back to run as ordinary calls.
    pub jobs_taken_back: usize,
    /// Jobs refused because their key was revoked.
    pub jobs_refused: usize,
    /// Open batches still running.
    pub batches_running: usize,
}

/// Packs waiting jobs into provider batches, polls them, and splits their results.
pub struct Batcher {
    gateway: Arc<Gateway>,
    store: SharedStore,
    queue: Arc<dyn JobQueue>,
    processor: Arc<Processor>,
    clock: Arc<dyn Clock>,
    config: BatchApiConfig,
}

impl Batcher {
    /// A batcher over the same gateway, store, queue and processor as the job workers.
    pub fn new(
        gateway: Arc<Gateway>,
        store: SharedStore,
        queue: Arc<dyn JobQueue>,
        processor: Arc<Processor>,
        clock: Arc<dyn Clock>,
        config: &BatchApiConfig,
    ) -> Self {
        Self {
            gateway,
            store,
            queue,
            processor,
            clock,
            config: config.clone(),
        }
    }

    fn poll_every_ms(&self) -> u64 {
        self.config.poll_every_s.saturating_mul(1000)
    }

    /// One pass: poll the open batches that are due, then pack the waiting jobs. Skipped
    /// (an empty report) when another pass already ran in this `poll_every_s` slot.
    pub async fn run_once(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now_ms();
        let slot = now / self.poll_every_ms().max(1);
        let marker = format!("batch-pass:{slot}");
        let expires = now.saturating_add(self.poll_every_ms().saturating_mul(2));
        if !self.store.mark_once(&marker, expires).await? {
            return Ok(PassReport::default());
        }
        let mut report = PassReport::default();
        self.poll_open(now, &mut report).await?;
        self.pack_waiting(now, &mut report).await?;
        if report != PassReport::default() {
            tracing::info!(target: "sluice::jobs", ?report, "batch pass");
        }
        Ok(report)
    }

    async fn poll_open(&self, now: u64, report: &mut PassReport) -> Result<(), StoreError> {
        let open = self
            .store
            .due_batch_entries(BatchEntryKind::Open, now, now, MAX_OPEN_PER_PASS)
            .await?;
        for entry in open {
            let Ok(batch) = serde_json::from_slice::<OpenBatch>(&entry.body) else {
                tracing::error!(target: "sluice::jobs", batch = %entry.id, "undecodable batch record; dropped");
                self.store
                    .delete_batch_entry(BatchEntryKind::Open, &entry.id)
                    .await?;
                continue;
            };
            let endpoint = Endpoint::parse(&batch.endpoint).unwrap_or(Endpoint::ChatCompletions);
            let polled = self
                .gateway
                .poll_batch(
                    &batch.model,
                    &batch.deployment,
                    &batch.upstream_model,
                    endpoint,
                    &batch.upstream_id,
                )
                .await;
            let late = now >= batch.fall_back_at_ms;
            match polled {
                Ok(Polled::Ended(outcomes)) => {
                    self.split(&batch, outcomes, report).await;
                }
                Ok(Polled::Failed(reason)) => {
                    tracing::warn!(target: "sluice::jobs", batch = %batch.upstream_id, %reason, "upstream batch failed; its jobs run as ordinary calls");
                    self.take_back_all(&batch, report).await;
                }
                Ok(Polled::Running) | Err(_) if late => {
                    tracing::warn!(target: "sluice::jobs", batch = %batch.upstream_id, "upstream batch not done by its jobs' fall-back time; cancelling it");
                    if let Err(e) = self
                        .gateway
                        .cancel_batch(&batch.model, &batch.deployment, &batch.upstream_id)
                        .await
                    {
                        tracing::warn!(target: "sluice::jobs", batch = %batch.upstream_id, error = %e, "cancel failed");
                    }
                    self.take_back_all(&batch, report).await;
                }
                Ok(Polled::Running) | Err(_) => {
                    if let Err(e) = &polled {
                        tracing::warn!(target: "sluice::jobs", batch = %batch.upstream_id, error = %e, "polling the batch failed; will poll again");
                    }
                    report.batches_running += 1;
                    let next = now
                        .saturating_add(self.poll_every_ms())
                        .min(batch.fall_back_at_ms);
                    self.store
                        .put_batch_entry(&BatchEntry {
                            due_at_ms: next,
                            ..entry
                        })
                        .await?;
                    continue;
                }
            }
            self.store
                .delete_batch_entry(BatchEntryKind::Open, &entry.id)
                .await?;
        }
        Ok(())
    }

    /// Gives each job of an ended batch its own line.
    async fn split(
        &self,
        batch: &OpenBatch,
        outcomes: Vec<(String, LineOutcome)>,
        report: &mut PassReport,
    ) {
        let mut by_id: HashMap<String, LineOutcome> = outcomes.into_iter().collect();
        for member in &batch.jobs {
            let started = (Instant::now(), self.clock.now_ms());
            let Some(job) = self.member_job(member).await else {
                // Taken over (it ran as an ordinary call): its batch reservation goes back.
                self.gateway.release_grant(member.grant.clone()).await;
                continue;
            };
            let trace = Trace {
                model: Some(batch.model.clone()),
                deployment: Some(batch.deployment.clone()),
                usage: None,
            };
            let ending = match by_id.remove(&member.job_id) {
                Some(LineOutcome::Answered { body, usage }) => {
                    let usage = usage.unwrap_or_else(|| Usage::plain(0, 0));
                    let (cost, settlement) =
                        self.gateway.batch_cost(&batch.model, &member.grant, &usage);
                    Ending {
                        status: JobStatus::Succeeded,
                        outcome: JobResult {
                            http_status: 200,
                            body,
                            tokens_in: usage.prompt_tokens,
                            tokens_out: usage.completion_tokens,
                            cost_nano_usd: cost,
                        },
                        settlement,
                        trace,
                        cache: "bypass",
                        fallback: None,
                        call_back: true,
                    }
                }
                Some(LineOutcome::Refused(error)) => {
                    let error = ApiError::from(GatewayError::Upstream {
                        deployment: batch.deployment.clone(),
                        error,
                    });
                    let (status, outcome) = failed(error);
                    Ending {
                        status,
                        outcome,
                        settlement: self.gateway.batch_release(&member.grant),
                        trace,
                        cache: "bypass",
                        fallback: None,
                        call_back: true,
                    }
                }
                Some(LineOutcome::NotRun(reason)) => {
                    tracing::info!(target: "sluice::jobs", job_id = %member.job_id, %reason, "batch request not run; the job runs as an ordinary call");
                    self.take_back(member, report).await;
                    continue;
                }
                None => {
                    tracing::warn!(target: "sluice::jobs", job_id = %member.job_id, "the batch's results do not name the job; it runs as an ordinary call");
                    self.take_back(member, report).await;
                    continue;
                }
            };
            report.jobs_answered += 1;
            let _ = self.processor.conclude(job, ending, started).await;
        }
    }

    /// The job of a batch member, if it is still this member's (running, same attempt).
    async fn member_job(&self, member: &Member) -> Option<Job> {
        let now = self.clock.now_ms();
        match self.store.get_job(&member.job_id, now).await {
            Ok(Some(job)) if job.status == JobStatus::Running && job.attempts == member.attempt => {
                Some(job)
            }
            _ => None,
        }
    }

    async fn take_back_all(&self, batch: &OpenBatch, report: &mut PassReport) {
        for member in &batch.jobs {
            self.take_back(member, report).await;
        }
    }

    /// Releases a member's reservation and queues its job again as an ordinary job.
    async fn take_back(&self, member: &Member, report: &mut PassReport) {
        self.gateway.release_grant(member.grant.clone()).await;
        if self.requeue(&member.job_id, member.attempt).await {
            report.jobs_taken_back += 1;
        }
    }

    /// `running` → `queued` and a message to run it now; `false` if the job is no longer
    /// this attempt's. A lost message is made good by housekeeping (the job sits queued).
    async fn requeue(&self, job_id: &str, attempt: u32) -> bool {
        let now = self.clock.now_ms();
        match self.store.release_job(job_id, attempt, now).await {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", %job_id, error = %e, "could not take the job back; its lease will run out before its window");
                return false;
            }
        }
        let message = JobMessage {
            job_id: job_id.to_owned(),
            batch_until_ms: None,
        };
        if let Ok(body) = serde_json::to_string(&message)
            && let Err(e) = self.queue.send(&body).await
        {
            tracing::warn!(target: "sluice::jobs", %job_id, error = %e, "could not queue the job; housekeeping will");
        }
        true
    }

    async fn pack_waiting(&self, now: u64, report: &mut PassReport) -> Result<(), StoreError> {
        let waiting = self
            .store
            .due_batch_entries(BatchEntryKind::Waiting, now, now, MAX_WAITING_PER_PASS)
            .await?;
        let mut jobs: Vec<(usize, Job)> = Vec::new();
        for (i, entry) in waiting.iter().enumerate() {
            let attempt = serde_json::from_slice::<Waiting>(&entry.body).map(|w| w.attempt);
            match (attempt, self.store.get_job(&entry.id, now).await?) {
                (Ok(attempt), Some(job))
                    if job.status == JobStatus::Running && job.attempts == attempt =>
                {
                    jobs.push((i, job));
                }
                // Finished, taken over, or gone: nothing to send.
                _ => {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &entry.id)
                        .await?;
                }
            }
        }
        let keys = self.processor.key_states(&jobs).await;
        // (model, deployment, endpoint) → members with their prepared bodies.
        type GroupKey = (String, String, String, Endpoint);
        let mut groups: HashMap<GroupKey, Vec<(Job, Grant, serde_json::Value)>> = HashMap::new();
        for (_, job) in jobs {
            let started = (Instant::now(), now);
            match keys.get(&job.key_id).copied().unwrap_or(KeyState::Unknown) {
                KeyState::Active => {}
                KeyState::Revoked => {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                        .await?;
                    let _ = self.processor.refuse_revoked(job, started).await;
                    report.jobs_refused += 1;
                    continue;
                }
                // Try again next pass.
                KeyState::Unknown => continue,
            }
            let window_end = job.window_ends_at_ms().unwrap_or(now);
            let fall_back_at =
                window_end.saturating_sub(self.config.fall_back_before_s.saturating_mul(1000));
            let caller = caller_of(&job);
            let prepared = if now >= fall_back_at {
                Ok(None)
            } else {
                self.gateway
                    .prepare_for_batch(&caller, job.endpoint, &job.request)
            };
            let prepared = match prepared {
                Ok(Some(p)) => p,
                // Too late for a batch, or no batch API for its deployments: run it now.
                Ok(None) => {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                        .await?;
                    if self.requeue(&job.id, job.attempts).await {
                        report.jobs_taken_back += 1;
                    }
                    continue;
                }
                // The request would fail as an ordinary call too: it fails now.
                Err(e) => {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                        .await?;
                    let (status, outcome) = failed(ApiError::from(e));
                    let ending = Ending {
                        status,
                        outcome,
                        settlement: None,
                        trace: Trace::default(),
                        cache: "bypass",
                        fallback: None,
                        call_back: true,
                    };
                    let _ = self.processor.conclude(job, ending, started).await;
                    report.jobs_answered += 1;
                    continue;
                }
            };
            let grant = match self
                .gateway
                .admit_for_batch(&caller, prepared.ask, window_end)
                .await?
            {
                Ok(grant) => grant,
                // Over a limit: the ordinary path decides (`on_limit`, a 429 result).
                Err(_) => {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                        .await?;
                    if self.requeue(&job.id, job.attempts).await {
                        report.jobs_taken_back += 1;
                    }
                    continue;
                }
            };
            groups
                .entry((
                    prepared.model,
                    prepared.deployment,
                    prepared.upstream_model,
                    job.endpoint,
                ))
                .or_default()
                .push((job, grant, prepared.body));
        }
        for ((model, deployment, upstream_model, endpoint), members) in groups {
            for chunk in self.chunks(members) {
                self.submit(
                    &model,
                    &deployment,
                    &upstream_model,
                    endpoint,
                    chunk,
                    report,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Splits a group into batches within `max_requests` and `max_bytes`.
    fn chunks(
        &self,
        members: Vec<(Job, Grant, serde_json::Value)>,
    ) -> Vec<Vec<(Job, Grant, serde_json::Value)>> {
        let mut out = Vec::new();
        let mut chunk = Vec::new();
        let mut bytes = 0usize;
        for m in members {
            // The line's size in the input file, with its envelope.
            let size = m.2.to_string().len() + m.0.id.len() + 80;
            if !chunk.is_empty()
                && (chunk.len() >= self.config.max_requests
                    || bytes.saturating_add(size) > self.config.max_bytes)
            {
                out.push(std::mem::take(&mut chunk));
                bytes = 0;
            }
            bytes = bytes.saturating_add(size);
            chunk.push(m);
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
        out
    }

    async fn submit(
        &self,
        model: &str,
        deployment: &str,
        upstream_model: &str,
        endpoint: Endpoint,
        chunk: Vec<(Job, Grant, serde_json::Value)>,
        report: &mut PassReport,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        let requests: Vec<(String, serde_json::Value)> = chunk
            .iter()
            .map(|(job, _, body)| (job.id.clone(), body.clone()))
            .collect();
        let fall_back_at_ms = chunk
            .iter()
            .map(|(job, _, _)| {
                job.window_ends_at_ms()
                    .unwrap_or(now)
                    .saturating_sub(self.config.fall_back_before_s.saturating_mul(1000))
            })
            .min()
            .unwrap_or(now);
        let latest_end = chunk
            .iter()
            .map(|(job, _, _)| job.window_ends_at_ms().unwrap_or(now))
            .max()
            .unwrap_or(now);
        let batch = OpenBatch {
            upstream_id: String::new(),
            model: model.to_owned(),
            deployment: deployment.to_owned(),
            upstream_model: upstream_model.to_owned(),
            endpoint: endpoint.as_str().to_owned(),
            fall_back_at_ms,
            jobs: chunk
                .iter()
                .map(|(job, grant, _)| Member {
                    job_id: job.id.clone(),
                    attempt: job.attempts,
                    grant: grant.clone(),
                })
                .collect(),
        };
        let submitted = self
            .gateway
            .submit_batch(model, deployment, endpoint, &requests)
            .await;
        let upstream_id = match submitted {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", %deployment, error = %e, jobs = chunk.len(), "batch submission failed; its jobs run as ordinary calls");
                for (job, _, _) in &chunk {
                    self.store
                        .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                        .await?;
                }
                self.take_back_all(&batch, report).await;
                return Ok(());
            }
        };
        let batch = OpenBatch {
            upstream_id: upstream_id.clone(),
            ..batch
        };
        let record = serde_json::to_vec(&batch).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let written = self
            .store
            .put_batch_entry(&BatchEntry {
                kind: BatchEntryKind::Open,
                id: upstream_id.clone(),
                due_at_ms: now
                    .saturating_add(self.poll_every_ms())
                    .min(fall_back_at_ms),
                body: Bytes::from(record),
                expires_at_ms: latest_end.saturating_add(ENTRY_SLACK_MS),
            })
            .await;
        if let Err(e) = written {
            // Unrecorded, the batch could never be read back: cancel it and run its jobs.
            tracing::warn!(target: "sluice::jobs", batch = %upstream_id, error = %e, "could not record the batch; cancelling it");
            let _ = self
                .gateway
                .cancel_batch(model, deployment, &upstream_id)
                .await;
            self.take_back_all(&batch, report).await;
        } else {
            report.batches_submitted += 1;
            report.jobs_submitted += chunk.len();
            tracing::info!(target: "sluice::jobs", batch = %upstream_id, %deployment, jobs = chunk.len(), "provider batch submitted");
        }
        for (job, _, _) in &chunk {
            self.store
                .delete_batch_entry(BatchEntryKind::Waiting, &job.id)
                .await?;
        }
        Ok(())
    }
}

/// Runs a pass every `every`, forever (`sluice serve`).
pub async fn run_every(batcher: Arc<Batcher>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = batcher.run_once().await {
            tracing::warn!(target: "sluice::jobs", error = %e, "batch pass failed; will try again");
        }
    }
}

/// The one completion window accepted: 24 hours, in seconds. OpenAI's Batch API reference
/// (platform.openai.com/docs/api-reference/batch/create): "`completion_window`: The time
/// frame within which the batch should be processed. Currently only `24h` is supported."
pub const WINDOW_24H_S: u64 = 24 * 3600;

/// Most requests in one OpenAI batch input file (platform.openai.com/docs/guides/batch:
/// "up to 50,000 requests"); Anthropic allows 100,000 per Message Batch.
pub const MAX_REQUESTS: usize = 50_000;

/// Most bytes of one OpenAI batch input file ("up to 200 MB"); Anthropic allows 256 MB.
pub const MAX_BYTES: usize = 200_000_000;

/// Parses a `completion_window`: `Ok(seconds)` for a supported window, `Err(message)` (an
/// OpenAI-style `invalid_value` message) otherwise.
pub fn parse_window(window: &str) -> Result<u64, String> {
    match window {
        "24h" => Ok(WINDOW_24H_S),
        other => Err(format!(
            "Invalid value for 'completion_window': '{}'. Supported values are: '24h'.",
            other.chars().take(32).collect::<String>()
        )),
    }
}

/// The window as clients write it.
pub fn format_window(seconds: u64) -> String {
    if seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_24h_is_a_window() {
        assert_eq!(parse_window("24h"), Ok(86_400));
        for bad in ["1h", "24H", "", "86400", "48h", " 24h"] {
            assert!(parse_window(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(format_window(86_400), "24h");
    }
}
