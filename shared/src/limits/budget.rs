//! Spending caps per UTC day or month, per key, per tenant and for the whole gateway.
//!
//! A cap is a counter `budget:<scope>:<period>:<shard>` with two numbers in nano-USD:
//! `committed` (settled spend plus outstanding reservations — what the cap is checked
//! against) and `spent` (settled spend only — the ledger). Reserving adds the worst case to
//! `committed` only if the result stays within the cap; settling moves `committed` to the
//! real cost and adds it to `spent`. So spend never passes a cap, whatever the concurrency.

use super::period;
use crate::keys::BudgetPeriod;
use crate::store::{CounterField, Increment};

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
