//! Spending caps per UTC day or month, per key, per tenant and for the whole gateway.
//!
//! A cap is a counter `budget:<scope>:<period>:<shard>` with two numbers in nano-USD:
//! `committed` (settled spend plus outstanding reservations — what the cap is checked
//! against) and `spent` (settled spend only — the ledger). Reserving adds the worst case to
//! `committed` only if the result stays within the cap; settling moves `committed` to the
//! real cost and adds it to `spent`. So spend never passes a cap, whatever the concurrency.
//!
//! Here too: which caps apply to a request ([`Limiter::budget_applies`]), how many shards a
//! cap's counter has, and the soft-threshold warnings.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{Level, LimitKind, Limiter, Plan, Subject, period};
use crate::keys::BudgetPeriod;
use crate::store::{CounterField, Increment, StoreError};

/// How often each process checks soft thresholds (see [`Limiter::warn_soft_thresholds_if_due`]).
const MAINTENANCE_EVERY_MS: u64 = 60_000;

/// Whole nano-USD in a USD amount.
pub fn usd_to_nanos(usd: f64) -> u64 {
    crate::num::f64_to_u64((usd * 1e9).round())
}

/// The counter of a scope's cap in a period and shard.
pub fn counter_id(scope: &str, period_id: &str, shard: u32) -> String {
    format!("budget:{scope}:{period_id}:{shard}")
}

/// The conditional reservation of `cost` against `cap` in the current period, and when the
/// period ends.
pub fn reserve(
    scope: &str,
    period: BudgetPeriod,
    cap: u64,
    cost: u64,
    now_ms: u64,
    shard: u32,
) -> (Increment, u64) {
    let (id, ends) = period::current(period, now_ms);
    (
        Increment {
            counter: counter_id(scope, &id, shard),
            field: CounterField::Committed,
            delta: super::signed(cost),
            at_most: Some(super::signed(cap)),
            // Kept a while after the period for usage reports.
            expires_at_ms: ends + 40 * 86_400_000,
            guard: None,
        },
        ends,
    )
}

impl Limiter {
    /// Shards of a spending cap's counter: a key's follow `limits.counter_shards`; a tenant's
    /// or the gateway's, written by every request of many keys, are split into
    /// `budget_shards` when each shard then holds at least `limits.budget_shard_min_usd`
    /// (a request's worst case must fit one shard), else they follow `counter_shards`.
    pub(super) fn budget_shards_of(&self, level: Level, cap_nanos: u64) -> u32 {
        let keyed = self.config.counter_shards.max(1);
        if level == Level::Key || self.budget_shards <= keyed {
            return keyed;
        }
        let min_share = usd_to_nanos(self.config.budget_shard_min_usd).max(1);
        if cap_nanos / u64::from(self.budget_shards) >= min_share {
            self.budget_shards
        } else {
            keyed
        }
    }

    /// At most once a minute per process: warn about spending caps past their soft
    /// threshold. Called on the request path (no timer survives between Lambda invocations);
    /// the check follows the answer ([`crate::invocation::after_response`]: spawned in
    /// `sluice serve`, awaited before a Lambda invocation ends). Giving back abandoned
    /// reservations is housekeeping's ([`crate::housekeeping`]): on DynamoDB it reads an
    /// index, which one scheduled function does, not every warm environment.
    pub fn warn_soft_thresholds_if_due(self: &Arc<Self>) {
        let now = self.clock.now_ms();
        let due = self.maintenance_due_ms.load(Ordering::Relaxed);
        if now < due
            || self
                .maintenance_due_ms
                .compare_exchange(
                    due,
                    now + MAINTENANCE_EVERY_MS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let limiter = Arc::clone(self);
        crate::invocation::after_response(async move {
            if let Err(e) = limiter.check_soft_thresholds().await {
                tracing::warn!(target: "sluice::limits", error = %e, "soft-threshold check failed");
            }
        });
    }

    /// Whether any spending cap applies to the subject's requests.
    pub fn budget_applies(&self, subject: &Subject<'_>) -> bool {
        subject.key_limits.budget_usd.is_some()
            || self
                .tenants
                .get(subject.tenant)
                .is_some_and(|t| t.budget_usd.is_some())
            || self.config.global_budget_usd.is_some()
    }

    /// Logs a warning event, once per period, for every recently used spending cap past the
    /// soft threshold (`limits.soft_threshold`). Returns the caps warned about now.
    pub async fn check_soft_thresholds(&self) -> Result<Vec<String>, StoreError> {
        let watched: Vec<(String, u64, Level)> = self
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        if watched.is_empty() {
            return Ok(Vec::new());
        }
        let counters: Vec<(String, CounterField)> = watched
            .iter()
            .map(|(c, _, _)| (c.clone(), CounterField::Spent))
            .collect();
        let spent = self.store.read_counters(&counters).await?;
        let mut warned = Vec::new();
        for ((counter, cap, level), spent) in watched.into_iter().zip(spent) {
            if (spent as f64) < cap as f64 * self.config.soft_threshold {
                continue;
            }
            let expires = self.clock.now_ms() + 40 * 86_400_000;
            // Once per cap, not per shard: a sharded cap warns when its first shard passes
            // the threshold of its share (requests spread evenly, so the others are close).
            let cap_counter = counter
                .rsplit_once(':')
                .map_or(counter.as_str(), |(c, _)| c);
            if self
                .store
                .mark_once(&format!("soft:{cap_counter}"), expires)
                .await?
            {
                tracing::warn!(
                    target: "sluice::limits",
                    event = "budget_soft_threshold",
                    level = level.as_str(),
                    counter = %counter,
                    spent_usd = spent as f64 / 1e9,
                    cap_usd = cap as f64 / 1e9,
                    threshold = self.config.soft_threshold,
                    "spend passed the soft threshold of a cap"
                );
                warned.push(counter);
            }
        }
        Ok(warned)
    }

    pub(super) fn watch(&self, plan: &Plan) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for (inc, meta) in plan.increments.iter().zip(&plan.meta) {
            if meta.kind == LimitKind::Budget && watched.len() < 10_000 {
                let cap = crate::num::to_u64(inc.at_most.unwrap_or(0));
                watched.insert((inc.counter.clone(), cap, meta.level));
            }
        }
    }

    /// The spending caps that apply to the subject: level, counter scope, USD, period.
    pub(super) fn caps(&self, subject: &Subject<'_>) -> Vec<(Level, String, f64, BudgetPeriod)> {
        let mut caps = Vec::new();
        if let (Some(usd), Some(p)) = (
            subject.key_limits.budget_usd,
            subject.key_limits.budget_period,
        ) {
            caps.push((Level::Key, format!("key:{}", subject.key_id), usd, p));
        }
        let tenant = self.tenants.get(subject.tenant);
        if let Some((usd, p)) = tenant.and_then(|t| t.budget_usd.zip(t.period)) {
            caps.push((Level::Tenant, format!("tenant:{}", subject.tenant), usd, p));
        }
        if let Some(usd) = self.config.global_budget_usd {
            caps.push((
                Level::Gateway,
                "global".to_owned(),
                usd,
                self.config.global_period,
            ));
        }
        caps
    }
}
