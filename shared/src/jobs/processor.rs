//! Runs delivered job messages: claim, check the key, run through the gateway, record, call
//! back.
//!
//! One call handles a whole delivery batch (up to 10 SQS messages on Lambda, or what a local
//! worker gathered in its batching window), so embedding jobs in it can share one upstream
//! call. Every message ends as [`Disposition::Done`] (delete it) or [`Disposition::Retry`]
//! (leave it for redelivery; on Lambda, a batch item failure).
//!
//! **Revoked keys.** After the claim, the key of every claimed job is read from the store
//! (once per distinct key per batch, strongly consistent, no cache), so a key revoked before
//! its job is claimed stops it: the job ends `failed` with `key_revoked` (401), nothing is
//! sent upstream, nothing is billed and no callback is made. A job claimed before the revoke
//! returned runs to its end and is billed like any other: the provider call is already paid
//! for, and the spend must count against the caps.
//!
//! **Jobs that can wait.** A message with `batch_until_ms` (a job with a `completion_window`)
//! is claimed with a lease until then and parked for a provider batch
//! ([`super::batch_api`]) instead of run: nothing else claims it meanwhile, and if the batch
//! path never answers it, the lease runs out before the window does and housekeeping queues
//! it again as an ordinary job.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::join_all;

use super::JobMessage;
use super::callback::CallbackSender;
use super::model::{Claim, Job, JobResult, JobStatus};
use crate::api::auth::AuthError;
use crate::api::error::ApiError;
use crate::clock::Clock;
use crate::gateway::batch::BatchItem;
use crate::gateway::cache::CacheControl;
use crate::gateway::{Caller, Gateway, GatewayError, Reply, ReplyBody, RequestOptions, Trace};
use crate::metrics::{EventKind, UsageEvent, UsageSink};
use crate::providers::Endpoint;
use crate::store::{Settlement, SharedStore};

/// What to do with a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Handled (or nothing left to do): delete it.
    Done,
    /// Not handled now: deliver it again later (after enough failures, to the DLQ).
    Retry,
}

/// Runs job messages.
pub struct Processor {
    gateway: Arc<Gateway>,
    store: SharedStore,
    callbacks: Arc<CallbackSender>,
    clock: Arc<dyn Clock>,
    lease_ms: u64,
    usage: Arc<dyn UsageSink>,
    batch_api: bool,
}

enum Step {
    Finished(Disposition),
    /// Claimed; `true` when it is to be parked for a provider batch.
    Run(Box<Job>, bool),
}

/// A job's key as the store has it when the job is about to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyState {
    /// Present and not revoked: the job may run.
    Active,
    /// Revoked, or gone: the job must not run.
    Revoked,
    /// The store could not say: try the job again later.
    Unknown,
}

/// How a job ended, to be recorded.
pub(super) struct Ending {
    pub(super) status: JobStatus,
    pub(super) outcome: JobResult,
    pub(super) settlement: Option<Settlement>,
    pub(super) trace: Trace,
    pub(super) cache: &'static str,
    pub(super) fallback: Option<crate::gateway::Fallback>,
    /// Whether the result goes to the job's callback URL.
    pub(super) call_back: bool,
}

impl Processor {
    /// A processor over the gateway and store; jobs are leased for `lease_ms` while running.
    pub fn new(
        gateway: Arc<Gateway>,
        store: SharedStore,
        callbacks: Arc<CallbackSender>,
        clock: Arc<dyn Clock>,
        lease_ms: u64,
        usage: Arc<dyn UsageSink>,
    ) -> Self {
        Self {
            gateway,
            store,
            callbacks,
            clock,
            lease_ms,
            usage,
            batch_api: false,
        }
    }

    /// Parks jobs whose message asks for it (`batch_until_ms`) for provider batches
    /// (`[jobs.batch_api] enabled`); without this they run at once like any job.
    pub fn with_batch_api(mut self, enabled: bool) -> Self {
        self.batch_api = enabled;
        self
    }

    /// Handles a batch of message bodies; the result has one disposition per body, in order.
    pub async fn process(&self, bodies: &[String]) -> Vec<Disposition> {
        let started = (Instant::now(), self.clock.now_ms());
        // Inside a Lambda invocation the gateway holds this to the invocation's deadline
        // (`invocation::deadline_within`); there the lease outlasts the function's timeout
        // (checked at start-up), so no redelivered copy can claim a job still running.
        let job_timeout = self.gateway.request_timeout();
        // Duplicates of a message within one batch (SQS delivers at least once) share the
        // first copy's fate instead of racing it for the claim.
        let mut first_copy: Vec<Option<usize>> = vec![None; bodies.len()];
        for (i, body) in bodies.iter().enumerate() {
            first_copy[i] = bodies[..i].iter().position(|b| b == body);
        }
        let first_copy_ref = &first_copy;
        let steps = join_all(bodies.iter().enumerate().map(|(i, b)| async move {
            match first_copy_ref[i] {
                Some(_) => None,
                None => Some(self.claim(b).await),
            }
        }))
        .await;
        let mut dispositions = vec![Disposition::Retry; bodies.len()];
        let mut claimed: Vec<(usize, Job)> = Vec::new();
        let mut parking: Vec<usize> = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            match step {
                Some(Step::Finished(d)) => dispositions[i] = d,
                Some(Step::Run(job, park)) => {
                    if park {
                        parking.push(i);
                    }
                    claimed.push((i, *job));
                }
                None => {}
            }
        }
        let keys = self.key_states(&claimed).await;
        let mut embeddings: Vec<(usize, Job)> = Vec::new();
        let mut others: Vec<(usize, Job)> = Vec::new();
        let mut refused: Vec<(usize, Job)> = Vec::new();
        let mut parked: Vec<(usize, Job)> = Vec::new();
        for (i, job) in claimed {
            match keys.get(&job.key_id).copied().unwrap_or(KeyState::Unknown) {
                KeyState::Active if parking.contains(&i) => parked.push((i, job)),
                KeyState::Active if job.endpoint == Endpoint::Embeddings => {
                    embeddings.push((i, job))
                }
                KeyState::Active => others.push((i, job)),
                KeyState::Revoked => refused.push((i, job)),
                KeyState::Unknown => {
                    // Give it back at once so the redelivery need not wait for the lease.
                    let now = self.clock.now_ms();
                    let _ = self.store.release_job(&job.id, job.attempts, now).await;
                }
            }
        }
        let refusals = join_all(
            refused
                .into_iter()
                .map(|(i, job)| async move { (i, self.refuse_revoked(job, started).await) }),
        );
        // Embedding batches and the other jobs run at the same time.
        let embedded = async {
            if embeddings.is_empty() {
                return Vec::new();
            }
            let items = embeddings
                .iter()
                .map(|(_, job)| BatchItem {
                    caller: caller_of(job),
                    body: job.request.clone(),
                    cache_control: CacheControl::parse(job.cache_control.as_deref()),
                })
                .collect();
            let outcomes = self
                .gateway
                .handle_embeddings_batch(items, job_timeout)
                .await;
            embeddings
                .into_iter()
                .zip(outcomes)
                .map(|((i, job), (result, trace))| (i, job, result, trace))
                .collect::<Vec<_>>()
        };
        let chats = join_all(others.into_iter().map(|(i, job)| async move {
            let mut trace = Trace::default();
            let result = self
                .gateway
                .handle(
                    &caller_of(&job),
                    job.endpoint,
                    &job.request,
                    RequestOptions {
                        cache: CacheControl::parse(job.cache_control.as_deref()),
                        // The spend is written with the result (see `record`).
                        defer_settlement: true,
                        timeout: Some(job_timeout),
                    },
                    &mut trace,
                )
                .await;
            (i, job, result, trace)
        }));
        let parks = join_all(
            parked
                .into_iter()
                .map(|(i, job)| async move { (i, self.park(job).await) }),
        );
        let (mut ran, chats, refusals, parks) = tokio::join!(embedded, chats, refusals, parks);
        for (i, d) in parks {
            dispositions[i] = d;
        }
        ran.extend(chats);
        let finished = join_all(ran.into_iter().map(|(i, job, result, trace)| async move {
            (i, self.finish(job, result, trace, started).await)
        }))
        .await;
        for (i, d) in finished.into_iter().chain(refusals) {
            dispositions[i] = d;
        }
        for (i, first) in first_copy.into_iter().enumerate() {
            if let Some(first) = first {
                dispositions[i] = dispositions[first];
            }
        }
        dispositions
    }

    async fn claim(&self, body: &str) -> Step {
        let Ok(message) = serde_json::from_str::<JobMessage>(body) else {
            tracing::warn!(target: "sluice::jobs", "undecodable job message; leaving it for the dead-letter queue");
            return Step::Finished(Disposition::Retry);
        };
        let now = self.clock.now_ms();
        // A job parked for a provider batch is held until its fall-back time.
        let park = message
            .batch_until_ms
            .filter(|until| self.batch_api && *until > now.saturating_add(self.lease_ms));
        let lease_ms = park.map_or(self.lease_ms, |until| until - now);
        match self.store.claim_job(&message.job_id, now, lease_ms).await {
            Ok(Claim::Claimed(job)) => Step::Run(Box::new(job), park.is_some()),
            Ok(Claim::Finished(_)) => Step::Finished(Disposition::Done),
            // A second copy of a parking message finds the job parked (leased for hours):
            // the holder answers it, and if it dies the lease ends before the window does and
            // housekeeping queues the job again. Retrying would only walk this copy to the
            // dead-letter queue.
            Ok(Claim::Leased { .. }) if message.batch_until_ms.is_some() => {
                Step::Finished(Disposition::Done)
            }
            Ok(Claim::Leased { .. }) => Step::Finished(Disposition::Retry),
            Ok(Claim::Missing) => {
                tracing::warn!(target: "sluice::jobs", job_id = %message.job_id, "message for a job that does not exist");
                Step::Finished(Disposition::Retry)
            }
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", job_id = %message.job_id, error = %e, "claim failed");
                Step::Finished(Disposition::Retry)
            }
        }
    }

    /// The state of each distinct key of the claimed jobs: one strongly consistent read per
    /// key, so a batch of ten jobs of one key costs one read, and a revocation that has
    /// returned is always seen (no cache between batches).
    pub(super) async fn key_states(&self, claimed: &[(usize, Job)]) -> HashMap<String, KeyState> {
        let mut ids: Vec<&str> = claimed.iter().map(|(_, j)| j.key_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        join_all(ids.into_iter().map(|id| async move {
            let state = match self.store.key_by_id(id).await {
                Ok(Some(key)) if key.revoked_at_ms.is_none() => KeyState::Active,
                Ok(_) => KeyState::Revoked,
                Err(e) => {
                    tracing::warn!(target: "sluice::jobs", key_id = %id, error = %e, "key lookup failed; jobs will retry");
                    KeyState::Unknown
                }
            };
            (id.to_owned(), state)
        }))
        .await
        .into_iter()
        .collect()
    }

    /// Parks a claimed job for the next provider batch (see [`super::batch_api`]); if it
    /// cannot be written down, the job is given back and its message comes again.
    async fn park(&self, job: Job) -> Disposition {
        let now = self.clock.now_ms();
        match super::batch_api::park(&*self.store, &job, now).await {
            Ok(()) => {
                tracing::info!(target: "sluice::jobs", job_id = %job.id, "job waits for a provider batch");
                Disposition::Done
            }
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", job_id = %job.id, error = %e, "could not park the job for a batch; will retry");
                let _ = self.store.release_job(&job.id, job.attempts, now).await;
                Disposition::Retry
            }
        }
    }

    /// Ends a job whose key was revoked before it ran: failed, not called, not billed, and
    /// not called back (the key's holder may be the reason it was revoked).
    pub(super) async fn refuse_revoked(&self, job: Job, started: (Instant, u64)) -> Disposition {
        let (status, outcome) = failed(ApiError::from(AuthError::Revoked));
        let ending = Ending {
            status,
            outcome,
            settlement: None,
            trace: Trace::default(),
            cache: "bypass",
            fallback: None,
            call_back: false,
        };
        self.conclude(job, ending, started).await
    }

    async fn finish(
        &self,
        job: Job,
        result: Result<Reply, GatewayError>,
        trace: Trace,
        started: (Instant, u64),
    ) -> Disposition {
        let now = self.clock.now_ms();
        let (cache, fallback) = match &result {
            Ok(reply) => (reply.cache.as_str(), reply.fallback),
            Err(_) => ("bypass", None),
        };
        let mut settlement = None;
        let (status, outcome) = match result {
            Ok(Reply {
                body: ReplyBody::Json(body),
                usage,
                cost_nano_usd,
                settlement: settle,
                ..
            }) => {
                settlement = settle;
                (
                    JobStatus::Succeeded,
                    JobResult {
                        http_status: 200,
                        body,
                        tokens_in: usage.prompt_tokens,
                        tokens_out: usage.completion_tokens,
                        cost_nano_usd,
                    },
                )
            }
            Ok(Reply {
                body: ReplyBody::EventStream(_),
                ..
            }) => failed(ApiError::unreadable_body()),
            // The store is down: give the job back and let the message come again.
            Err(GatewayError::Store(e)) => {
                tracing::warn!(target: "sluice::jobs", job_id = %job.id, error = %e, "store failed while running; will retry");
                let _ = self.store.release_job(&job.id, job.attempts, now).await;
                return Disposition::Retry;
            }
            Err(e) => {
                let error = ApiError::from(e);
                (JobStatus::Failed, failed(error).1)
            }
        };
        let ending = Ending {
            status,
            outcome,
            settlement,
            trace,
            cache,
            fallback,
            call_back: true,
        };
        self.conclude(job, ending, started).await
    }

    /// Records a job's end, reports its usage and logs it, then calls back if asked.
    pub(super) async fn conclude(
        &self,
        job: Job,
        ending: Ending,
        started: (Instant, u64),
    ) -> Disposition {
        let now = self.clock.now_ms();
        let Ending {
            status,
            outcome,
            settlement,
            trace,
            cache,
            fallback,
            call_back,
        } = ending;
        match self
            .record(&job, status, &outcome, settlement.as_ref(), now)
            .await
        {
            Ok(true) => {}
            // Another worker took the job over after our lease ran out; its result stands.
            Ok(false) => return Disposition::Done,
            Err(e) => {
                tracing::warn!(target: "sluice::jobs", job_id = %job.id, error = %e, "could not record result; will retry");
                return Disposition::Retry;
            }
        }
        let error_code = (status == JobStatus::Failed)
            .then(|| serde_json::from_slice::<serde_json::Value>(&outcome.body).ok())
            .flatten()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
        self.usage.record(UsageEvent {
            event_id: UsageEvent::new_id(),
            request_id: job.id.clone(),
            time_ms: started.1,
            tenant: job.tenant.clone(),
            key_id: Some(job.key_id.clone()),
            model: trace.model.clone(),
            deployment: trace.deployment.clone(),
            kind: EventKind::Async,
            status: outcome.http_status,
            error: error_code,
            latency_ms: started.0.elapsed().as_secs_f64() * 1000.0,
            ttfb_ms: None,
            tokens_in: outcome.tokens_in,
            tokens_out: outcome.tokens_out,
            cost_nano_usd: outcome.cost_nano_usd,
            cache: cache.to_owned(),
            fallback: fallback.map(|f| f.as_str().to_owned()),
        });
        tracing::info!(
            target: "sluice::jobs",
            job_id = %job.id,
            tenant = %job.tenant,
            key_id = %job.key_id,
            status = status.as_str(),
            http_status = outcome.http_status,
            attempt = job.attempts,
            model = trace.model.as_deref(),
            deployment = trace.deployment.as_deref(),
            tokens_in = outcome.tokens_in,
            tokens_out = outcome.tokens_out,
            cost_usd = outcome.cost_nano_usd as f64 / 1e9,
            "job finished"
        );
        if let Some(url) = job.callback_url.as_ref().filter(|_| call_back) {
            let mut done = job.clone();
            done.status = status;
            done.result = Some(outcome);
            done.updated_at_ms = now;
            let body = super::job_json(&done).to_string();
            match self.callbacks.send(url, body.as_bytes(), now / 1000).await {
                Ok(()) => {
                    tracing::info!(target: "sluice::jobs", job_id = %job.id, "callback delivered")
                }
                Err(e) => {
                    tracing::warn!(target: "sluice::jobs", job_id = %job.id, error = %e, "callback failed")
                }
            }
        }
        Disposition::Done
    }

    /// Records a job's final state and, in the same write, its spend (so a job killed or
    /// failing between the two can neither be billed without a result nor be billed again
    /// when it runs once more). A failed write is retried: given up, the job runs again
    /// after its lease and its reservation is given back when it expires. `Ok(false)` if
    /// another worker holds or finished the job.
    async fn record(
        &self,
        job: &Job,
        status: JobStatus,
        outcome: &JobResult,
        settlement: Option<&Settlement>,
        now: u64,
    ) -> Result<bool, crate::store::StoreError> {
        crate::store::retrying("recording a job's result", |failures| async move {
            let recorded = self
                .store
                .finish_job(&job.id, job.attempts, status, outcome, now, settlement)
                .await?;
            if recorded || failures == 0 {
                return Ok(recorded);
            }
            // After a failed try, "not ours" may mean that try landed with its answer lost:
            // the job then shows this attempt's final state.
            let stored = self.store.get_job(&job.id, now).await?;
            Ok(stored.is_some_and(|j| {
                j.attempts == job.attempts
                    && j.status == status
                    && j.result.as_ref() == Some(outcome)
            }))
        })
        .await
    }
}

pub(super) fn caller_of(job: &Job) -> Caller {
    Caller {
        key_id: job.key_id.clone(),
        tenant: job.tenant.clone(),
        limits: job.key_limits.clone(),
    }
}

pub(super) fn failed(error: ApiError) -> (JobStatus, JobResult) {
    let body = serde_json::json!({
        "error": {
            "message": error.message,
            "type": error.kind,
            "code": error.code,
            "param": error.param,
        }
    });
    (
        JobStatus::Failed,
        JobResult {
            http_status: error.status.as_u16(),
            body: Bytes::from(body.to_string()),
            tokens_in: 0,
            tokens_out: 0,
            cost_nano_usd: 0,
        },
    )
}
