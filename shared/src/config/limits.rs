//! `[limits]` and `[[tenants]]`: the gateway-wide spending cap and counter settings, and each
//! tenant's rate limits and cap.

use std::collections::HashSet;

use serde::Deserialize;

use super::{ConfigError, invalid};

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

impl LimitsConfig {
    /// Checks the gateway cap, the warning threshold, the shard counts and the reservation
    /// settings.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if let Some(b) = self.global_budget_usd
            && !(b.is_finite() && b > 0.0)
        {
            return Err(invalid(
                origin,
                "limits.global_budget_usd",
                "must be a positive number",
            ));
        }
        if !(self.soft_threshold > 0.0 && self.soft_threshold <= 1.0) {
            return Err(invalid(
                origin,
                "limits.soft_threshold",
                "must be in (0, 1]",
            ));
        }
        if self.counter_shards == 0 || self.counter_shards > 64 {
            return Err(invalid(
                origin,
                "limits.counter_shards",
                "must be between 1 and 64",
            ));
        }
        if self.budget_shards.is_some_and(|n| n == 0 || n > 64) {
            return Err(invalid(
                origin,
                "limits.budget_shards",
                "must be between 1 and 64",
            ));
        }
        if !(self.budget_shard_min_usd.is_finite() && self.budget_shard_min_usd > 0.0) {
            return Err(invalid(
                origin,
                "limits.budget_shard_min_usd",
                "must be a positive number",
            ));
        }
        if self.reservation_ttl_s == 0 || self.default_max_output_tokens == 0 {
            return Err(invalid(
                origin,
                "limits",
                "reservation_ttl_s and default_max_output_tokens must be at least 1",
            ));
        }
        Ok(())
    }
}

impl TenantConfig {
    /// Checks that names are unique, then each tenant.
    pub(super) fn validate_all(tenants: &[Self], origin: &str) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, t) in tenants.iter().enumerate() {
            if !names.insert(t.name.as_str()) {
                return Err(invalid(
                    origin,
                    format!("tenants[{i}].name"),
                    format!("duplicate tenant `{}`", t.name),
                ));
            }
            t.validate(i, origin)?;
        }
        Ok(())
    }

    /// Checks tenant `i`'s cap (with its period) and rate limits.
    fn validate(&self, i: usize, origin: &str) -> Result<(), ConfigError> {
        let at = |f: &str| format!("tenants[{i}].{f}");
        if self.budget_usd.is_some() != self.period.is_some() {
            return Err(invalid(
                origin,
                at("budget_usd"),
                "budget_usd and period must be given together",
            ));
        }
        if let Some(b) = self.budget_usd
            && !(b.is_finite() && b > 0.0)
        {
            return Err(invalid(
                origin,
                at("budget_usd"),
                "must be a positive number",
            ));
        }
        if self.rpm == Some(0) || self.tpm == Some(0) {
            return Err(invalid(origin, at("rpm"), "rate limits must be at least 1"));
        }
        Ok(())
    }
}
