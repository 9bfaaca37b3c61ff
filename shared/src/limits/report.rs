//! The usage report of `/v1/usage` and `/admin/usage`: every limit that applies to a caller,
//! with what is used and left of it now, read from the same counters admission writes.

use serde_json::{Value, json};

use super::{Level, Limiter, Subject, budget, period, rate, signed, window};
use crate::store::{CounterField, StoreError};

/// Whether a usage report shows the gateway-wide level (`limits.global_budget_usd`). It is
/// the operator's figure: the admin sees it, a gateway key sees only its key and tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayLevel {
    /// In the report (`/admin/usage`).
    Shown,
    /// Left out (`/v1/usage`).
    Hidden,
}

impl Limiter {
    /// Current standing of every limit that applies to the subject, for `/v1/usage` (without
    /// the gateway level) and `/admin/usage` (with it).
    pub async fn usage(
        &self,
        subject: &Subject<'_>,
        gateway: GatewayLevel,
    ) -> Result<Value, StoreError> {
        let now = self.clock.now_ms();
        let (w, elapsed) = window::position(now);
        let shards = self.config.counter_shards.max(1);
        let tenant = self.tenants.get(subject.tenant);
        let mut levels = serde_json::Map::new();
        let key_scope = format!("key:{}", subject.key_id);
        let tenant_scope = format!("tenant:{}", subject.tenant);
        let global = self
            .config
            .global_budget_usd
            .filter(|_| gateway == GatewayLevel::Shown)
            .map(|usd| (usd, self.config.global_period));
        for (level, scope, rpm, tpm, cap) in [
            (
                Level::Key,
                Some(&key_scope),
                subject.key_limits.rpm,
                subject.key_limits.tpm,
                subject
                    .key_limits
                    .budget_usd
                    .zip(subject.key_limits.budget_period),
            ),
            (
                Level::Tenant,
                Some(&tenant_scope),
                tenant.and_then(|t| t.rpm),
                tenant.and_then(|t| t.tpm),
                tenant.and_then(|t| t.budget_usd.zip(t.period)),
            ),
            (Level::Gateway, None, None, None, global),
        ] {
            let mut entry = serde_json::Map::new();
            for (name, metric, limit) in [
                ("rpm", rate::Metric::Requests, rpm),
                ("tpm", rate::Metric::Tokens, tpm),
            ] {
                let (Some(limit), Some(scope)) = (limit, scope) else {
                    continue;
                };
                let mut counters = Vec::new();
                for s in 0..shards {
                    counters.push((
                        rate::counter_id(scope, metric, w.saturating_sub(1), s),
                        CounterField::Count,
                    ));
                    counters.push((rate::counter_id(scope, metric, w, s), CounterField::Count));
                }
                let values = self.store.read_counters(&counters).await?;
                let used: i64 = values
                    .chunks(2)
                    .map(|pair| window::estimate(pair[0], pair[1], elapsed))
                    .sum();
                entry.insert(
                    name.into(),
                    json!({"limit": limit, "used": used, "remaining": (i64::from(limit) - used).max(0),
                           "window_s": window::WINDOW_MS / 1000}),
                );
            }
            if let Some((usd, period)) = cap {
                let scope = scope.map_or("global", String::as_str);
                let (id, ends) = period::current(period, now);
                let mut counters = Vec::new();
                for s in 0..self.budget_shards_of(level, budget::usd_to_nanos(usd)) {
                    let c = budget::counter_id(scope, &id, s);
                    counters.push((c.clone(), CounterField::Committed));
                    counters.push((c, CounterField::Spent));
                }
                let values = self.store.read_counters(&counters).await?;
                let committed: i64 = values.iter().step_by(2).sum();
                let spent: i64 = values.iter().skip(1).step_by(2).sum();
                let cap = signed(budget::usd_to_nanos(usd));
                entry.insert(
                    "budget".into(),
                    json!({
                        "period": period.as_str(),
                        "period_id": id,
                        "cap_usd": usd,
                        "spent_usd": spent as f64 / 1e9,
                        "reserved_usd": (committed - spent).max(0) as f64 / 1e9,
                        "remaining_usd": cap.saturating_sub(committed).max(0) as f64 / 1e9,
                        "resets_at": ends / 1000,
                    }),
                );
            }
            if !entry.is_empty() {
                levels.insert(level.as_str().into(), Value::Object(entry));
            }
        }
        Ok(json!({
            "object": "usage",
            "key_id": subject.key_id,
            "tenant": subject.tenant,
            "limits": levels,
        }))
    }
}
