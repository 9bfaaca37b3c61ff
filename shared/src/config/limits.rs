//! `[limits]` and `[[tenants]]`: the gateway-wide spending cap and counter settings, and each
//! tenant's rate limits and cap.

use serde::Deserialize;

/// Gateway-wide limit settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// One spending cap for the whole gateway, in USD per `global_period`.
    pub global_budget_usd: Option<f64>,
    /// `day` or `month` (UTC).
    pub global_period: crate::keys::BudgetPeriod,
    /// Fraction of a cap at which a warning event is logged, once per period.
    pub soft_threshold: f64,
    /// How long a reservation may stay unsettled before it counts as abandoned (a crashed
    /// request) and is released; must exceed the longest request.
    pub reservation_ttl_s: u64,
    /// Output-token ceiling reserved for requests without `max_tokens`, unless the model sets
    /// its own `max_output_tokens`.
    pub default_max_output_tokens: u64,
    /// Counter shards per key on DynamoDB, so one hot key can exceed a partition's write rate.
    pub counter_shards: u32,
    /// Shards of each tenant's and the gateway's spending-cap counter, which every request of
    /// many keys writes; unset: the store's default (8 on DynamoDB, 1 on SQLite). A cap is
    /// split only when each shard then holds at least `budget_shard_min_usd`.
    pub budget_shards: Option<u32>,
    /// The smallest share of a tenant or gateway cap one shard may hold, in USD: a request's
    /// worst case must fit one shard, so small caps stay whole.
    pub budget_shard_min_usd: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            global_budget_usd: None,
            global_period: crate::keys::BudgetPeriod::Month,
            soft_threshold: 0.8,
            reservation_ttl_s: 600,
            default_max_output_tokens: 4096,
            counter_shards: 1,
            budget_shards: None,
            budget_shard_min_usd: 10.0,
        }
    }
}

/// Limits of one tenant (all its keys together).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant name keys are created with.
    pub name: String,
    /// Requests per minute across the tenant's keys.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute across the tenant's keys.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Spending cap in USD per `period`.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// `day` or `month` (UTC).
    #[serde(default)]
    pub period: Option<crate::keys::BudgetPeriod>,
}
