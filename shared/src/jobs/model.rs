//! What a job is: a validated request accepted now and answered later, and its lifecycle.
//!
//! `queued → running → succeeded | failed`. Every move is a conditional write in the store, so
//! two workers handed the same message cannot both run it: the second finds it leased or
//! finished. A worker that dies mid-run leaves a lease that expires, after which a redelivery
//! may claim the job again.

use bytes::Bytes;

use crate::keys::KeyLimits;
use crate::providers::Endpoint;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker holds the lease.
    Running,
    /// Answered; `result` holds the response.
    Succeeded,
    /// Gave up; `result` holds the error.
    Failed,
}

impl JobStatus {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "queued" => Some(Self::Queued),
            "running" => Some(Self::Running),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Succeeded or failed: nothing will change it again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// How a finished job was answered.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResult {
    /// The HTTP status the synchronous call would have had.
    pub http_status: u16,
    /// The response body (an OpenAI answer, or an OpenAI error object).
    pub body: Bytes,
    /// Prompt tokens billed.
    pub tokens_in: u64,
    /// Completion tokens billed.
    pub tokens_out: u64,
    /// Cost in nano-USD.
    pub cost_nano_usd: u64,
}

impl Job {
    /// When its completion window ends, if it has one.
    pub fn window_ends_at_ms(&self) -> Option<u64> {
        self.completion_window_s
            .map(|w| self.created_at_ms.saturating_add(w.saturating_mul(1000)))
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Public id, `job_…`.
    pub id: String,
    /// Tenant of the key that submitted it; only that tenant can read it.
    pub tenant: String,
    /// Id of the key that submitted it.
    pub key_id: String,
    /// That key's limits when it submitted the job; they apply when the job runs.
    pub key_limits: KeyLimits,
    /// Which API the request is for.
    pub endpoint: Endpoint,
    /// The request body as submitted (validated at acceptance).
    pub request: Bytes,
    /// The submitter's `Cache-Control`, applied when the job runs.
    pub cache_control: Option<String>,
    /// Where to POST the result, if anywhere.
    pub callback_url: Option<String>,
    /// The submitter's completion window in seconds (`"completion_window": "24h"`): the job
    /// may wait for a provider Batch API at the batch price, and must end within it.
    pub completion_window_s: Option<u64>,
    /// Lifecycle state.
    pub status: JobStatus,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// While `running`, the claim is valid until then.
    pub lease_until_ms: u64,
    /// Set once final.
    pub result: Option<JobResult>,
    /// Accepted at.
    pub created_at_ms: u64,
    /// Last state change.
    pub updated_at_ms: u64,
    /// Kept until then, then deleted lazily.
    pub expires_at_ms: u64,
}

/// What claiming a job found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This worker now holds the job (status `running`, `attempts` incremented).
    Claimed(Job),
    /// Already succeeded or failed: nothing to do.
    Finished(Job),
    /// Another worker holds a lease until this time.
    Leased {
        /// When the other worker's lease runs out.
        until_ms: u64,
    },
    /// No such job.
    Missing,
}

/// A job not yet final whose last state change is long past: housekeeping's view of a job
/// that may have been left behind (stored but never queued, or its message dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleJob {
    /// Public id.
    pub id: String,
    /// `queued` or `running`.
    pub status: JobStatus,
    /// How many times a worker has claimed it.
    pub attempts: u32,
    /// While `running`, the claim is valid until then.
    pub lease_until_ms: u64,
    /// Its last state change.
    pub updated_at_ms: u64,
}
