//! `[[models]]`: each public model name, its deployments, and what it does over a limit or
//! when every deployment failed (routing strategy, fallbacks, rules, last-resort message).

use serde::Deserialize;

use super::Price;

/// One public model name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send in `model`.
    pub name: String,
    /// Other names that resolve to this model (e.g. `fast`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where requests for this model can go.
    pub deployments: Vec<DeploymentConfig>,
    /// USD per million tokens; defaults to the built-in table for well-known upstream models.
    #[serde(default)]
    pub price: Option<Price>,
    /// Cache TTL for this model's answers; `0` disables caching for it.
    #[serde(default)]
    pub cache_ttl_s: Option<u64>,
    /// Output-token ceiling reserved when a request has no `max_tokens`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// What to do over a limit: `"reject"`, `"cache_only"`, `{ downgrade = "model" }` or
    /// `{ message = "text" }`.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// How a deployment is chosen: `weighted`, `least_inflight`, `lowest_latency`,
    /// `most_headroom`.
    #[serde(default)]
    pub routing: Routing,
    /// Models to try, in order, when every deployment of this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Whether an expired cached answer may be served when every provider failed.
    #[serde(default = "default_true")]
    pub stale_fallback: bool,
    /// Canned answers for when everything else failed: a regex on the last user message.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The last resort: a friendly assistant message when nothing could answer.
    #[serde(default)]
    pub fallback_message: Option<String>,
}

fn default_true() -> bool {
    true
}

/// How a model's deployment is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// At random, in proportion to `weight`.
    #[default]
    Weighted,
    /// The one with the fewest requests in flight.
    LeastInflight,
    /// The one with the lowest recent latency (EWMA).
    LowestLatency,
    /// The one with the most rate-limit room left (provider headers and its own rpm/tpm).
    MostHeadroom,
}

/// A rule-based answer: if `pattern` (a regex) matches the last user message, answer `reply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Regular expression (Rust `regex` syntax).
    pub pattern: String,
    /// The answer's text.
    pub reply: String,
}

/// What a model does when a request is over a rate limit or spending cap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// 429 with `rate_limit_exceeded` or `budget_exceeded`.
    #[default]
    Reject,
    /// Serve a cached answer (stale allowed), else reject.
    CacheOnly,
    /// Answer with this (cheaper) model instead, within its own limits.
    Downgrade(String),
    /// Answer with this text as a normal completion.
    Message(String),
}

/// One provider + upstream model + weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A provider `name`.
    pub provider: String,
    /// The model name sent upstream.
    pub model: String,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// This key's requests per minute at the provider (skipped before it would get a 429).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// This key's tokens per minute at the provider.
    #[serde(default)]
    pub tpm: Option<u32>,
}

fn default_weight() -> u32 {
    1
}
