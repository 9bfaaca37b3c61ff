//! Rate limits: requests and tokens per minute, per key and per tenant, as sliding-window
//! counters (see [`super::window`]) keyed `rate:<scope>:<rpm|tpm>:<window>:<shard>`.

use super::window;
use crate::store::{CounterField, Guard, Increment};

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

impl Metric {
    fn tag(self) -> &'static str {
        match self {
            Self::Requests => "rpm",
            Self::Tokens => "tpm",
        }
    }

    /// For error messages.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Requests => "requests per minute",
            Self::Tokens => "tokens per minute",
        }
    }
}

/// One rate limit to check for a request.
#[derive(Debug, Clone)]
pub struct RateCheck {
    /// Whose limit: a key's or a tenant's.
    pub level: super::Level,
    /// `key:<id>` or `tenant:<name>`.
    pub scope: String,
    /// Requests or tokens.
    pub metric: Metric,
    /// The limit (this shard's share of it).
    pub limit: u64,
    /// The whole limit, every shard's share together.
    pub whole: u64,
    /// How much this request adds.
    pub amount: u64,
}

/// The counter of a scope's metric in a window and shard.
pub fn counter_id(scope: &str, metric: Metric, window: u64, shard: u32) -> String {
    format!("rate:{scope}:{}:{window}:{shard}", metric.tag())
}

/// The conditional increment admitting `check` in window `w`, and when that window ends.
pub fn increment(
    check: &RateCheck,
    w: u64,
    shard: u32,
    previous: i64,
    elapsed: f64,
) -> (Increment, u64) {
    let ends = (w + 1) * window::WINDOW_MS;
    (
        Increment {
            counter: counter_id(&check.scope, check.metric, w, shard),
            field: CounterField::Count,
            delta: super::signed(check.amount),
            at_most: Some(window::ceiling(check.limit, previous, elapsed)),
            // Kept one window past its end, while it is the previous window.
            expires_at_ms: ends + 2 * window::WINDOW_MS,
            // The ceiling assumed the previous window holds `previous`; a write that lands
            // there late (another process, right at the boundary) must not be missed.
            guard: Some(Guard {
                counter: counter_id(&check.scope, check.metric, w.saturating_sub(1), shard),
                field: CounterField::Count,
                at_most: previous,
            }),
        },
        ends,
    )
}
