//! Async jobs: accept a request now (`202` + job id), run it later from the queue, keep the
//! result for the submitter, optionally POST it to a callback.
//!
//! - [`model`]: the job record and its lifecycle.
//! - [`Jobs`]: submission and lookup (the HTTP side).
//! - [`processor`]: runs delivered messages (the worker side: the processor Lambda, or the
//!   worker tasks of `sluice serve`), batching embedding jobs into one upstream call.
//! - [`worker`]: the polling loop `sluice serve` runs over its queue.
//! - [`batch_api`]: jobs with a `completion_window`, sent through providers' Batch APIs.
//! - [`callback`]: signed result callbacks with SSRF protection.

pub mod batch_api;
pub mod callback;
pub mod model;
pub mod processor;
pub mod worker;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::Clock;
use crate::config::JobsConfig;
use crate::gateway::{Caller, Gateway, GatewayError};
use crate::keys::random_id;
use crate::providers::Endpoint;
use crate::queue::{JobQueue, QueueError};
use crate::store::{SharedStore, StoreError};
use callback::{CallbackError, CallbackSender};
use model::{Job, JobStatus};

/// The body of a queue message: which job to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The job's id.
    pub job_id: String,
    /// Set for a job with a `completion_window` when provider Batch APIs are on: the worker
    /// parks it for a batch, leased until then (its fall-back time). Absent: run it now
    /// (a job without a window, or one taken back from its batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_until_ms: Option<u64>,
}

/// Why a job could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The request itself is invalid (the same checks as a synchronous call).
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The callback URL is refused.
    #[error(transparent)]
    Callback(#[from] CallbackError),
    /// The job could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The job was stored but could not be queued.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// What a client submits.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Which API.
    pub endpoint: Endpoint,
    /// The request body.
    pub body: Bytes,
    /// `Cache-Control` to apply when it runs.
    pub cache_control: Option<String>,
    /// Where to POST the result.
    pub callback_url: Option<String>,
    /// `completion_window` in seconds: the job may wait for a provider Batch API.
    pub completion_window_s: Option<u64>,
}

/// Submission and lookup of jobs.
#[derive(Clone)]
pub struct Jobs {
    store: SharedStore,
    queue: Arc<dyn JobQueue>,
    callbacks: Arc<CallbackSender>,
    clock: Arc<dyn Clock>,
    retention_ms: u64,
    batch_api: bool,
    fall_back_before_ms: u64,
}

impl Jobs {
    /// The jobs service over a store and a queue.
    pub fn new(
        store: SharedStore,
        queue: Arc<dyn JobQueue>,
        callbacks: Arc<CallbackSender>,
        clock: Arc<dyn Clock>,
        config: &JobsConfig,
    ) -> Self {
        Self {
            store,
            queue,
            callbacks,
            clock,
            retention_ms: config.retention_s.saturating_mul(1000),
            batch_api: config.batch_api.enabled,
            fall_back_before_ms: config.batch_api.fall_back_before_s.saturating_mul(1000),
        }
    }

    /// Whether jobs may carry a `completion_window` (`[jobs.batch_api] enabled`).
    pub fn batch_api_enabled(&self) -> bool {
        self.batch_api
    }

    /// Validates, stores and queues a job; the request is checked exactly as a synchronous
    /// call would be, so a bad request is refused now rather than failing later.
    pub async fn submit(
        &self,
        gateway: &Gateway,
        caller: &Caller,
        submission: Submission,
    ) -> Result<Job, SubmitError> {
        gateway.check_async(caller, submission.endpoint, &submission.body)?;
        if let Some(url) = &submission.callback_url {
            self.callbacks.check_url(url).await?;
        }
        let now = self.clock.now_ms();
        let job = Job {
            id: random_id("job_", 24),
            tenant: caller.tenant.clone(),
            key_id: caller.key_id.clone(),
            key_limits: caller.limits.clone(),
            endpoint: submission.endpoint,
            request: submission.body,
            cache_control: submission.cache_control,
            callback_url: submission.callback_url,
            completion_window_s: submission.completion_window_s,
            status: JobStatus::Queued,
            attempts: 0,
            lease_until_ms: 0,
            result: None,
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: now.saturating_add(self.retention_ms),
        };
        if let Err(e) = self.store.insert_job(&job).await {
            // A backend failure may have landed with its answer lost: close the job, so that
            // one the client never heard of does not sit `queued` until its retention ends.
            if e.is_backend_failure() {
                self.abandon(&job).await;
            }
            return Err(e.into());
        }
        let message = serde_json::to_string(&JobMessage {
            job_id: job.id.clone(),
            batch_until_ms: job
                .window_ends_at_ms()
                .filter(|_| self.batch_api)
                .map(|end| end.saturating_sub(self.fall_back_before_ms)),
        })
        .map_err(|e| QueueError::Backend(e.to_string()))?;
        if let Err(e) = self.queue.send(&message).await {
            // Not queued means never run: close the record so it does not sit `queued` forever.
            self.abandon(&job).await;
            return Err(e.into());
        }
        Ok(job)
    }

    /// Marks a job that could not be queued as failed (best effort; the client got a 503).
    async fn abandon(&self, job: &Job) {
        let now = self.clock.now_ms();
        if let Ok(model::Claim::Claimed(claimed)) = self.store.claim_job(&job.id, now, 1).await {
            let body = br#"{"error":{"message":"The job could not be queued.","type":"server_error","code":"service_unavailable","param":null}}"#;
            let result = model::JobResult {
                http_status: 503,
                body: Bytes::from_static(body),
                tokens_in: 0,
                tokens_out: 0,
                cost_nano_usd: 0,
            };
            let _ = self
                .store
                .finish_job(
                    &job.id,
                    claimed.attempts,
                    JobStatus::Failed,
                    &result,
                    now,
                    None,
                )
                .await;
        }
    }

    /// The job, if it exists and belongs to the caller's tenant (another tenant's job is
    /// reported as missing, not forbidden, so ids cannot be probed).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Option<Job>, StoreError> {
        let job = self.store.get_job(id, self.clock.now_ms()).await?;
        Ok(job.filter(|j| j.tenant == caller.tenant))
    }
}

/// The public view of a job: the answer of `POST /v1/jobs` and `GET /v1/jobs/{id}`, and the
/// body of a callback.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Job)]
pub struct JobView {
    /// Public id, `job_…`.
    pub id: String,
    /// Always `job`.
    pub object: &'static str,
    /// `/v1/chat/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// Where the job is in its life.
    pub status: JobState,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// Accepted at, Unix seconds.
    pub created_at: u64,
    /// Last state change, Unix seconds.
    pub updated_at: u64,
    /// Where the result is POSTed, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The completion window it was submitted with (`24h`): it may be answered through a
    /// provider's Batch API at the batch price, and is answered within it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_window: Option<String>,
    /// Once final: the HTTP status the synchronous call would have had.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Once final: the tokens billed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<JobUsage>,
    /// Once final: the cost in USD.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Once succeeded: the answer, as the synchronous call would have returned it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Once failed: the OpenAI error object (`message`, `type`, `code`, `param`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

/// A job's state as reported: `queued → running → succeeded | failed`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker holds it.
    Running,
    /// Answered; `result` holds the answer.
    Succeeded,
    /// Gave up; `error` holds the reason.
    Failed,
}

impl From<JobStatus> for JobState {
    fn from(s: JobStatus) -> Self {
        match s {
            JobStatus::Queued => Self::Queued,
            JobStatus::Running => Self::Running,
            JobStatus::Succeeded => Self::Succeeded,
            JobStatus::Failed => Self::Failed,
        }
    }
}

/// Tokens billed for a finished job.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

impl JobView {
    /// The view of `job`.
    pub fn of(job: &Job) -> Self {
        let mut view = Self {
            id: job.id.clone(),
            object: "job",
            endpoint: format!("/v1/{}", job.endpoint.path()),
            status: job.status.into(),
            attempts: job.attempts,
            created_at: job.created_at_ms / 1000,
            updated_at: job.updated_at_ms / 1000,
            callback_url: job.callback_url.clone(),
            completion_window: job.completion_window_s.map(batch_api::format_window),
            http_status: None,
            usage: None,
            cost_usd: None,
            result: None,
            error: None,
        };
        if let Some(result) = &job.result {
            let body: Value = serde_json::from_slice(&result.body).unwrap_or(Value::Null);
            view.http_status = Some(result.http_status);
            view.usage = Some(JobUsage {
                prompt_tokens: result.tokens_in,
                completion_tokens: result.tokens_out,
            });
            view.cost_usd = Some(result.cost_nano_usd as f64 / 1e9);
            if job.status == JobStatus::Succeeded {
                view.result = Some(body);
            } else {
                view.error = Some(body.get("error").cloned().unwrap_or(body));
            }
        }
        view
    }
}

/// The public JSON view of a job.
pub fn job_json(job: &Job) -> Value {
    serde_json::to_value(JobView::of(job)).unwrap_or(Value::Null)
}
