//! `[jobs]` and `[jobs.batch_api]`: the async job queue, its workers, callbacks and the
//! provider Batch APIs.

use serde::Deserialize;

use super::{ConfigError, Secret, invalid};

/// Async job settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Worker tasks `sluice serve` runs over the queue (0 = accept jobs but do not run them).
    pub workers: usize,
    /// A received message stays invisible this long (local queue and `--queue sqs` polling;
    /// on Lambda the queue's own setting applies).
    pub visibility_timeout_s: u64,
    /// Deliveries before a message moves to the dead-letter queue (local queue).
    pub max_receive_count: u32,
    /// A worker's claim on a job; must be shorter than the visibility timeout so that a
    /// redelivery after a crash can claim the job again.
    pub lease_s: u64,
    /// How long a worker waits after the first message to gather more for batching.
    pub batch_window_ms: u64,
    /// How long finished jobs can be read.
    pub retention_s: u64,
    /// HMAC key for `X-Sluice-Signature`; callbacks are refused without one.
    pub callback_secret: Option<Secret>,
    /// Let callbacks reach loopback/private/link-local addresses (tests, private networks).
    pub allow_private_callbacks: bool,
    /// Timeout of one callback attempt.
    pub callback_timeout_s: f64,
    /// Housekeeping queues a job again when it is not final and has not changed for this
    /// long (stored but never queued, or its message lost); a duplicate message is harmless.
    pub requeue_after_s: u64,
    /// Housekeeping fails a job with `job_abandoned` once it has been started this many times
    /// without finishing (each start cut short: the worker died), instead of queueing it again.
    pub max_attempts: u32,
    /// Provider Batch APIs for jobs submitted with a `completion_window`.
    pub batch_api: BatchApiConfig,
}

/// Provider Batch APIs (OpenAI Files + Batches, Anthropic Message Batches) for jobs that can
/// wait: `[jobs.batch_api]`. Off by default; while off, `completion_window` is refused (400).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchApiConfig {
    /// Whether jobs may carry a `completion_window` and go to a provider's Batch API.
    pub enabled: bool,
    /// How often waiting jobs are packed and open batches polled (`sluice serve`'s loop; on
    /// AWS the processor's schedule in `template.yaml`).
    pub poll_every_s: u64,
    /// A job still unanswered this long before its window ends is taken out of its batch and
    /// run as an ordinary call (the upstream batch is cancelled when none of its jobs wait).
    pub fall_back_before_s: u64,
    /// Most requests in one upstream batch (OpenAI allows 50,000, Anthropic 100,000).
    pub max_requests: usize,
    /// Most bytes of one upstream batch (OpenAI allows 200 MB per file, Anthropic 256 MB).
    pub max_bytes: usize,
}

impl Default for BatchApiConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            poll_every_s: 60,
            fall_back_before_s: 3600,
            max_requests: 1000,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            visibility_timeout_s: 60,
            max_receive_count: 5,
            lease_s: 50,
            batch_window_ms: 50,
            retention_s: 7 * 86_400,
            callback_secret: None,
            allow_private_callbacks: false,
            callback_timeout_s: 10.0,
            requeue_after_s: 600,
            max_attempts: 10,
            batch_api: BatchApiConfig::default(),
        }
    }
}

impl JobsConfig {
    /// Checks the lease against the visibility timeout (a redelivery must find the claim
    /// expired), the requeue delay, attempts, the callback timeout and `[jobs.batch_api]`.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.lease_s == 0 || self.lease_s >= self.visibility_timeout_s {
            return Err(invalid(
                origin,
                "jobs.lease_s",
                "must be at least 1 and shorter than jobs.visibility_timeout_s",
            ));
        }
        if self.requeue_after_s < self.visibility_timeout_s {
            return Err(invalid(
                origin,
                "jobs.requeue_after_s",
                "must be at least jobs.visibility_timeout_s: until then a job's message may \
                 still be on its way, and queueing it again only adds a duplicate",
            ));
        }
        self.batch_api.validate(origin)?;
        if self.max_attempts == 0 {
            return Err(invalid(origin, "jobs.max_attempts", "must be at least 1"));
        }
        if !(self.callback_timeout_s.is_finite() && self.callback_timeout_s > 0.0) {
            return Err(invalid(
                origin,
                "jobs.callback_timeout_s",
                "must be a positive number of seconds",
            ));
        }
        Ok(())
    }
}

impl BatchApiConfig {
    /// Checks the periods and that a batch stays within the providers' own limits.
    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.poll_every_s == 0 || self.fall_back_before_s == 0 {
            return Err(invalid(
                origin,
                "jobs.batch_api",
                "poll_every_s and fall_back_before_s must be at least 1",
            ));
        }
        if self.fall_back_before_s >= crate::jobs::batch_api::WINDOW_24H_S {
            return Err(invalid(
                origin,
                "jobs.batch_api.fall_back_before_s",
                "must be shorter than the 24h completion window",
            ));
        }
        if !(1..=crate::jobs::batch_api::MAX_REQUESTS).contains(&self.max_requests)
            || !(1..=crate::jobs::batch_api::MAX_BYTES).contains(&self.max_bytes)
        {
            return Err(invalid(
                origin,
                "jobs.batch_api",
                "max_requests must be 1..=50000 and max_bytes 1..=200000000 (OpenAI's limits, \
                 the lower of the two providers')",
            ));
        }
        Ok(())
    }
}
