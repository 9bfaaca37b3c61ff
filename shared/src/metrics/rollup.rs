//! Per-minute rollups per tenant, model and provider: the unit the aggregator stores and
//! `GET /v1/metrics` reads. Rollups add up field by field, so the same code merges events
//! into a rollup, rollups into stored rows, and rows into coarser steps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::{ErrorClass, UsageEvent};
use super::histogram::Histogram;

/// Group name used when an event has no model or no provider (e.g. a refused key).
pub const NONE: &str = "none";

/// Which minute and which group a rollup is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RollupKey {
    /// Start of the minute, Unix seconds.
    pub minute: u64,
    /// Tenant (empty for unauthenticated requests).
    pub tenant: String,
    /// Public model name, or [`NONE`].
    pub model: String,
    /// Provider, or [`NONE`] (cache hits, refusals).
    pub provider: String,
}

/// Counts for one minute and group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollup {
    /// Requests.
    pub requests: u64,
    /// 4xx other than 429.
    pub errors_client: u64,
    /// 429s.
    pub errors_rate_limited: u64,
    /// 502/504.
    pub errors_upstream: u64,
    /// Other 5xx.
    pub errors_server: u64,
    /// Answers from the cache.
    pub cache_hits: u64,
    /// Degraded answers (any fallback tier).
    pub fallbacks: u64,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Cost, nano-USD.
    pub cost_nano_usd: u64,
    /// Latency, microseconds.
    pub latency: Histogram,
}

impl Rollup {
    /// Counts one event.
    pub fn add_event(&mut self, event: &UsageEvent) {
        self.requests += 1;
        match ErrorClass::of(event.status) {
            Some(ErrorClass::Client) => self.errors_client += 1,
            Some(ErrorClass::RateLimited) => self.errors_rate_limited += 1,
            Some(ErrorClass::Upstream) => self.errors_upstream += 1,
            Some(ErrorClass::Server) => self.errors_server += 1,
            None => {}
        }
        // An identical request's answer saved a provider call as a hit does.
        if matches!(event.cache.as_str(), "hit" | "coalesced") {
            self.cache_hits += 1;
        }
        if event.fallback.is_some() {
            self.fallbacks += 1;
        }
        // Saturating: the counts come from queue messages (and, before that, providers).
        self.tokens_in = self.tokens_in.saturating_add(event.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(event.tokens_out);
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(event.cost_nano_usd);
        self.latency
            .record(crate::num::f64_to_u64((event.latency_ms * 1000.0).round()));
    }

    /// Adds another rollup.
    pub fn merge(&mut self, other: &Rollup) {
        for (mine, (_, theirs)) in self.counters_mut().into_iter().zip(other.counters()) {
            *mine = mine.saturating_add(theirs);
        }
        self.latency.merge(&other.latency);
    }

    /// All errors.
    pub fn errors(&self) -> u64 {
        self.errors_client + self.errors_rate_limited + self.errors_upstream + self.errors_server
    }

    /// The plain counters with their stored names, in a fixed order.
    pub fn counters(&self) -> [(&'static str, u64); 10] {
        [
            ("requests", self.requests),
            ("errors_client", self.errors_client),
            ("errors_rate_limited", self.errors_rate_limited),
            ("errors_upstream", self.errors_upstream),
            ("errors_server", self.errors_server),
            ("cache_hits", self.cache_hits),
            ("fallbacks", self.fallbacks),
            ("tokens_in", self.tokens_in),
            ("tokens_out", self.tokens_out),
            ("cost_nano_usd", self.cost_nano_usd),
        ]
    }

    fn counters_mut(&mut self) -> [&mut u64; 10] {
        [
            &mut self.requests,
            &mut self.errors_client,
            &mut self.errors_rate_limited,
            &mut self.errors_upstream,
            &mut self.errors_server,
            &mut self.cache_hits,
            &mut self.fallbacks,
            &mut self.tokens_in,
            &mut self.tokens_out,
            &mut self.cost_nano_usd,
        ]
    }

    /// Sets a counter by its stored name (for adapters reading rows back).
    pub fn set_counter(&mut self, name: &str, value: u64) -> bool {
        let names = self.counters().map(|(n, _)| n);
        match names.iter().position(|n| *n == name) {
            Some(i) => {
                *self.counters_mut()[i] = value;
                true
            }
            None => false,
        }
    }
}

/// A stored rollup: its key and its counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupRow {
    /// Minute and group.
    pub key: RollupKey,
    /// Counts.
    pub rollup: Rollup,
}

/// Rolls events up per minute, tenant, model and provider, sorted by key (so the same
/// events always give the same rows, in the same order).
pub fn roll_up(events: &[UsageEvent]) -> Vec<RollupRow> {
    // Grouped under keys borrowed from the events, in `RollupKey`'s order (its fields in
    // declaration order); each group's key is copied once, not once per event.
    let mut rows: BTreeMap<(u64, &str, &str, &str), Rollup> = BTreeMap::new();
    for e in events {
        let key = (
            e.time_ms / 60_000 * 60,
            e.tenant.as_str(),
            e.model.as_deref().unwrap_or(NONE),
            e.provider().unwrap_or(NONE),
        );
        rows.entry(key).or_default().add_event(e);
    }
    rows.into_iter()
        .map(|((minute, tenant, model, provider), rollup)| RollupRow {
            key: RollupKey {
                minute,
                tenant: tenant.to_owned(),
                model: model.to_owned(),
                provider: provider.to_owned(),
            },
            rollup,
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::metrics::event::EventKind;

    pub(crate) fn event(time_ms: u64, model: &str, status: u16, latency_ms: f64) -> UsageEvent {
        UsageEvent {
            event_id: UsageEvent::new_id(),
            request_id: "req_1".into(),
            time_ms,
            tenant: "t1".into(),
            key_id: Some("key_1".into()),
            model: Some(model.into()),
            deployment: Some(format!("openai/{model}-up")),
            kind: EventKind::Sync,
            status,
            error: None,
            latency_ms,
            ttfb_ms: None,
            tokens_in: 10,
            tokens_out: 5,
            cost_nano_usd: 100,
            cache: "miss".into(),
            fallback: None,
        }
    }

    #[test]
    fn events_roll_up_per_minute_and_group() {
        let events = [
            event(60_000, "a", 200, 1.0),
            event(119_999, "a", 429, 2.0),
            event(120_000, "a", 502, 3.0),
            event(61_000, "b", 400, 4.0),
        ];
        let rows = roll_up(&events);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].key.minute, 60);
        assert_eq!(rows[0].key.provider, "openai");
        assert_eq!(rows[0].rollup.requests, 2);
        assert_eq!(rows[0].rollup.errors_rate_limited, 1);
        assert_eq!(rows[0].rollup.cost_nano_usd, 200);
        assert_eq!(rows[1].key.model, "b");
        assert_eq!(rows[1].rollup.errors_client, 1);
        assert_eq!(rows[2].key.minute, 120);
        assert_eq!(rows[2].rollup.errors_upstream, 1);
        let mut total = Rollup::default();
        for r in &rows {
            total.merge(&r.rollup);
        }
        assert_eq!(
            (total.requests, total.errors(), total.latency.count()),
            (4, 3, 4)
        );
        let mut copy = Rollup::default();
        for (name, v) in total.counters() {
            assert!(copy.set_counter(name, v));
        }
        copy.latency = total.latency.clone();
        assert_eq!(copy, total);
    }
}
