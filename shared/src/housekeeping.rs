//! Housekeeping: one pass that finds what the request path leaves behind when a process dies
//! at the wrong moment, and puts it right.
//!
//! - **Reservations never settled** (a request or a job killed mid-call): holds past their
//!   expiry are given back ([`Limiter::release_expired`]).
//! - **Dead-lettered job messages.** Kill after kill can use up a message's receives while its
//!   job is not final (RELIABILITY.md, section 4). Such a message is sent to the queue again;
//!   once its job has been started `jobs.max_attempts` times, the job is failed with
//!   `job_abandoned` instead. A dead letter whose job is already final is deleted (its work is
//!   done). A message that names no job (poison) stays for the operator and the alarm.
//! - **Jobs left behind.** A job not final whose last change is older than
//!   `jobs.requeue_after_s` — stored but never queued because ingest died between its two
//!   writes, or whose message was lost — is queued again, or failed the same way after
//!   `jobs.max_attempts` starts.
//!
//! A duplicate message is harmless (a claim is a conditional write: the second copy finds the
//! job leased or finished), so when in doubt a job is queued again rather than failed.
//! Everything is found through an index (SQLite: partial indexes; DynamoDB: sparse GSIs), never
//! by scanning a table. On AWS one scheduled function runs it (`functions/housekeeper`,
//! reserved concurrency 1); `sluice serve` runs it every `server.housekeeping_every_s`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::clock::Clock;
use crate::config::JobsConfig;
use crate::jobs::JobMessage;
use crate::jobs::callback::CallbackSender;
use crate::jobs::model::{Claim, JobResult, JobStatus};
use crate::limits::Limiter;
use crate::queue::{Delivery, JobQueue, QueueError};
use crate::store::{SharedStore, StoreError};

/// Most items of each kind one pass looks at; a larger backlog is worked off pass by pass.
const PER_PASS: usize = 100;

/// Why a pass stopped short.
#[derive(Debug, thiserror::Error)]
pub enum HousekeepingError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Reservations past their expiry given back.
    pub holds_released: usize,
    /// Dead letters of unfinished jobs sent to the queue again.
    pub dead_letters_redriven: usize,
    /// Dead letters of jobs already final, deleted.
    pub dead_letters_cleared: usize,
    /// Dead letters left where they are: poison (no such job), or a job still leased.
    pub dead_letters_kept: usize,
    /// Jobs left behind queued again.
    pub jobs_requeued: usize,
    /// Jobs failed with `job_abandoned` after `jobs.max_attempts` starts.
    pub jobs_failed: usize,
}

impl Report {
    fn changed_anything(&self) -> bool {
        self.holds_released
            + self.dead_letters_redriven
            + self.dead_letters_cleared
            + self.jobs_requeued
            + self.jobs_failed
            > 0
    }
}

/// Runs housekeeping passes over a store and a queue.
pub struct Housekeeper {
    store: SharedStore,
    queue: Arc<dyn JobQueue>,
    limiter: Arc<Limiter>,
    callbacks: Arc<CallbackSender>,
    clock: Arc<dyn Clock>,
    requeue_after_ms: u64,
    max_attempts: u32,
    lease_ms: u64,
}

impl Housekeeper {
    /// A housekeeper with the jobs settings of `config`.
    pub fn new(
        store: SharedStore,
        queue: Arc<dyn JobQueue>,
        limiter: Arc<Limiter>,
        callbacks: Arc<CallbackSender>,
        clock: Arc<dyn Clock>,
        config: &JobsConfig,
    ) -> Self {
        Self {
            store,
            queue,
            limiter,
            callbacks,
            clock,
            requeue_after_ms: config.requeue_after_s.saturating_mul(1000),
            max_attempts: config.max_attempts,
            lease_ms: config.lease_s.saturating_mul(1000),
        }
    }

    /// One pass: abandoned reservations, dead letters, jobs left behind. Each part runs even
    /// when another failed; the first failure is returned after all of them.
    pub async fn run_once(&self) -> Result<Report, HousekeepingError> {
        let mut report = Report::default();
        let mut first_error: Option<HousekeepingError> = None;
        let mut note = |r: Result<(), HousekeepingError>| {
            if let Err(e) = r {
                tracing::warn!(target: "sluice::housekeeping", error = %e, "housekeeping step failed");
                first_error.get_or_insert(e);
            }
        };
        note(self.release_holds(&mut report).await);
        let mut queued_again = HashSet::new();
        note(self.dead_letters(&mut report, &mut queued_again).await);
        note(self.jobs_left_behind(&mut report, &queued_again).await);
        if report.changed_anything() {
            tracing::info!(
                target: "sluice::housekeeping",
                holds_released = report.holds_released,
                dead_letters_redriven = report.dead_letters_redriven,
                dead_letters_cleared = report.dead_letters_cleared,
                dead_letters_kept = report.dead_letters_kept,
                jobs_requeued = report.jobs_requeued,
                jobs_failed = report.jobs_failed,
                "housekeeping"
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Inside a Lambda invocation: whether its deadline (minus the margin) has come.
    fn out_of_time() -> bool {
        crate::invocation::time_left().is_some_and(|left| left.is_zero())
    }

    async fn release_holds(&self, report: &mut Report) -> Result<(), HousekeepingError> {
        // `release_expired` takes up to 100 at a time.
        for _ in 0..PER_PASS / 10 {
            let released = self.limiter.release_expired().await?;
            report.holds_released += released;
            if released < 100 || Self::out_of_time() {
                break;
            }
        }
        Ok(())
    }

    async fn dead_letters(
        &self,
        report: &mut Report,
        queued_again: &mut HashSet<String>,
    ) -> Result<(), HousekeepingError> {
        // A letter kept (poison, or a job a worker holds) is not deleted: once its visibility
        // timeout runs out it can be received again in the same pass. It is handled once a
        // pass, and a receive that brings back only letters already handled ends the pass.
        let mut handled = HashSet::new();
        while handled.len() < PER_PASS && !Self::out_of_time() {
            let letters = self.queue.receive_dead_letters(10).await?;
            let fresh: Vec<_> = letters
                .into_iter()
                .filter(|letter| !handled.contains(&letter.message_id))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for letter in fresh {
                handled.insert(letter.message_id.clone());
                self.dead_letter(&letter, report, queued_again).await?;
            }
        }
        Ok(())
    }

    async fn dead_letter(
        &self,
        letter: &Delivery,
        report: &mut Report,
        queued_again: &mut HashSet<String>,
    ) -> Result<(), HousekeepingError> {
        let now = self.clock.now_ms();
        let job = match serde_json::from_str::<JobMessage>(&letter.body) {
            Ok(message) => self.store.get_job(&message.job_id, now).await?,
            Err(_) => None,
        };
        let Some(job) = job else {
            // Poison: nothing to run. It stays for the operator (the DLQ alarm).
            report.dead_letters_kept += 1;
            return Ok(());
        };
        if job.status.is_final() {
            self.queue.delete_dead_letter(&letter.receipt).await?;
            report.dead_letters_cleared += 1;
            return Ok(());
        }
        if job.status == JobStatus::Running && job.lease_until_ms > now {
            // A worker holds it right now; look again next pass.
            report.dead_letters_kept += 1;
            return Ok(());
        }
        if job.attempts >= self.max_attempts {
            if self.give_up(&job.id).await? {
                report.jobs_failed += 1;
            }
        } else {
            self.send(&job.id).await?;
            report.dead_letters_redriven += 1;
            tracing::warn!(
                target: "sluice::housekeeping",
                job_id = %job.id,
                attempts = job.attempts,
                receives = letter.receive_count,
                "dead-lettered job message sent to the queue again"
            );
        }
        queued_again.insert(job.id);
        self.queue.delete_dead_letter(&letter.receipt).await?;
        Ok(())
    }

    async fn jobs_left_behind(
        &self,
        report: &mut Report,
        queued_again: &HashSet<String>,
    ) -> Result<(), HousekeepingError> {
        let now = self.clock.now_ms();
        let stale = self
            .store
            .stale_jobs(now.saturating_sub(self.requeue_after_ms), now, PER_PASS)
            .await?;
        for job in stale {
            if Self::out_of_time() {
                break;
            }
            if queued_again.contains(&job.id)
                || (job.status == JobStatus::Running && job.lease_until_ms > now)
            {
                continue;
            }
            if job.attempts >= self.max_attempts {
                if self.give_up(&job.id).await? {
                    report.jobs_failed += 1;
                }
            } else if self
                .store
                .requeue_job(&job.id, job.updated_at_ms, now)
                .await?
            {
                self.send(&job.id).await?;
                report.jobs_requeued += 1;
                tracing::warn!(
                    target: "sluice::housekeeping",
                    job_id = %job.id,
                    status = job.status.as_str(),
                    attempts = job.attempts,
                    unchanged_for_s = now.saturating_sub(job.updated_at_ms) / 1000,
                    "job left behind queued again"
                );
            }
        }
        Ok(())
    }

    async fn send(&self, job_id: &str) -> Result<(), HousekeepingError> {
        // Queued again, a job runs now: a batch it may have waited for is not waited for.
        let message = serde_json::to_string(&JobMessage {
            job_id: job_id.to_owned(),
            batch_until_ms: None,
        })
        .map_err(|e| QueueError::Backend(e.to_string()))?;
        self.queue.send(&message).await?;
        Ok(())
    }

    /// Fails a job that was started `jobs.max_attempts` times and never finished. It is
    /// claimed first, so a worker that took it up meanwhile is not overruled; `false` if one
    /// did, or it ended meanwhile.
    async fn give_up(&self, id: &str) -> Result<bool, HousekeepingError> {
        let now = self.clock.now_ms();
        let Claim::Claimed(job) = self.store.claim_job(id, now, self.lease_ms).await? else {
            return Ok(false);
        };
        let starts = job.attempts.saturating_sub(1);
        let body = serde_json::json!({"error": {
            "message": format!(
                "The job was started {starts} times and never finished (the worker running it \
                 stopped each time); Sluice gave up on it."
            ),
            "type": "server_error",
            "code": "job_abandoned",
            "param": null,
        }});
        let result = JobResult {
            http_status: 500,
            body: Bytes::from(body.to_string()),
            tokens_in: 0,
            tokens_out: 0,
            cost_nano_usd: 0,
        };
        let finished = self
            .store
            .finish_job(id, job.attempts, JobStatus::Failed, &result, now, None)
            .await?;
        if !finished {
            return Ok(false);
        }
        tracing::warn!(
            target: "sluice::housekeeping",
            job_id = %id,
            tenant = %job.tenant,
            starts,
            "job abandoned after its last start; failed with job_abandoned"
        );
        if let Some(url) = &job.callback_url {
            let mut done = job.clone();
            done.status = JobStatus::Failed;
            done.result = Some(result);
            done.updated_at_ms = now;
            let body = crate::jobs::job_json(&done).to_string();
            if let Err(e) = self.callbacks.send(url, body.as_bytes(), now / 1000).await {
                tracing::warn!(target: "sluice::jobs", job_id = %id, error = %e, "callback failed");
            }
        }
        Ok(true)
    }
}

/// Runs a pass now and then every `every`, for as long as the process lives (`sluice serve`).
pub async fn run_every(housekeeper: Arc<Housekeeper>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // Errors are logged by the pass; the next one tries again.
        let _ = housekeeper.run_once().await;
    }
}
