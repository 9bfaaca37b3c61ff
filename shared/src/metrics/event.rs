//! One usage event per request: what was asked, who asked, what it cost, how it went.

use serde::{Deserialize, Serialize};

/// How a request was served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A synchronous JSON answer.
    #[default]
    Sync,
    /// A server-sent-event stream.
    Stream,
    /// An async job, reported when it ran.
    Async,
}

/// Which side an error was on, for error rates by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 4xx other than 429: the request or the key was at fault.
    Client,
    /// 429: a Sluice limit or the provider's.
    RateLimited,
    /// 502/504: a provider failed or was too slow.
    Upstream,
    /// Any other 5xx: Sluice or its store.
    Server,
}

impl ErrorClass {
    /// The class of an HTTP status, `None` for successes.
    pub fn of(status: u16) -> Option<Self> {
        match status {
            429 => Some(Self::RateLimited),
            400..=499 => Some(Self::Client),
            502 | 504 => Some(Self::Upstream),
            500..=599 => Some(Self::Server),
            _ => None,
        }
    }
}

/// One request's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per event (`ev_…`); lets consumers tell redeliveries apart.
    pub event_id: String,
    /// The request's `x-request-id` (or the job id for async work).
    pub request_id: String,
    /// When the request started, Unix milliseconds.
    pub time_ms: u64,
    /// The caller's tenant (empty when the key was missing or invalid).
    pub tenant: String,
    /// The caller's key id.
    pub key_id: Option<String>,
    /// The public model name.
    pub model: Option<String>,
    /// The deployment that answered, `provider/upstream-model`.
    pub deployment: Option<String>,
    /// Sync, stream or async.
    pub kind: EventKind,
    /// HTTP status (for async work: 200, or the status a sync call would have had).
    pub status: u16,
    /// Error code, for failures.
    pub error: Option<String>,
    /// Whole duration, milliseconds (for streams: until the last byte).
    pub latency_ms: f64,
    /// Until the response headers (for streams, the first event), milliseconds.
    pub ttfb_ms: Option<f64>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Cost in nano-USD.
    pub cost_nano_usd: u64,
    /// `hit`, `coalesced`, `miss`, `stale` or `bypass`.
    pub cache: String,
    /// The fallback tier that answered, for degraded answers.
    pub fallback: Option<String>,
}

impl UsageEvent {
    /// The provider part of the deployment (`openai` of `openai/gpt-4o-mini`).
    pub fn provider(&self) -> Option<&str> {
        self.deployment
            .as_deref()
            .map(|d| d.split_once('/').map_or(d, |(p, _)| p))
    }

    /// A fresh event id.
    pub fn new_id() -> String {
        crate::keys::random_id("ev_", 20)
    }
}
