//! Reading rollups back as series: grouped by model, provider or tenant, in steps of a
//! minute or an hour, with rates and latency percentiles computed from the merged counts.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::rollup::{Rollup, RollupRow};

/// What series are split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Public model name.
    Model,
    /// Provider that answered.
    Provider,
    /// Tenant (admin only).
    Tenant,
}

impl GroupBy {
    /// Parses `model`, `provider` or `tenant`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "model" => Some(Self::Model),
            "provider" => Some(Self::Provider),
            "tenant" => Some(Self::Tenant),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Provider => "provider",
            Self::Tenant => "tenant",
        }
    }

    fn of(self, row: &RollupRow) -> &str {
        match self {
            Self::Model => &row.key.model,
            Self::Provider => &row.key.provider,
            Self::Tenant => &row.key.tenant,
        }
    }
}

/// A series query: which window, how coarse, split how.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Window start, Unix seconds (aligned down to the step).
    pub from_s: u64,
    /// Window end, Unix seconds (exclusive).
    pub to_s: u64,
    /// Step, seconds (60 or 3600).
    pub step_s: u64,
    /// Split by.
    pub group_by: GroupBy,
    /// The tenant the caller may see, `None` for all (admin).
    pub tenant: Option<&'a str>,
}

fn usd(nanos: u64) -> f64 {
    nanos as f64 / 1e9
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

fn millis(h: &super::Histogram, q: f64) -> Value {
    h.quantile(q).map_or(Value::Null, |us| {
        json!((us / 1000.0 * 1000.0).round() / 1000.0)
    })
}

/// The figures for one rollup (a point, or the totals).
pub fn figures(r: &Rollup) -> serde_json::Map<String, Value> {
    let v = json!({
        "requests": r.requests,
        "errors": r.errors(),
        "errors_by_class": {
            "client": r.errors_client,
            "rate_limited": r.errors_rate_limited,
            "upstream": r.errors_upstream,
            "server": r.errors_server,
        },
        "cache_hits": r.cache_hits,
        "fallbacks": r.fallbacks,
        "tokens_in": r.tokens_in,
        "tokens_out": r.tokens_out,
        "cost_usd": usd(r.cost_nano_usd),
        "error_rate": ratio(r.errors(), r.requests),
        "cache_hit_rate": ratio(r.cache_hits, r.requests),
        "cost_per_request_usd": if r.requests == 0 { 0.0 } else { usd(r.cost_nano_usd) / r.requests as f64 },
        "p50_ms": millis(&r.latency, 0.50),
        "p95_ms": millis(&r.latency, 0.95),
        "p99_ms": millis(&r.latency, 0.99),
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// The `GET /v1/metrics` answer for these rows.
pub fn series(rows: &[RollupRow], q: &Query<'_>) -> Value {
    let mut groups: BTreeMap<&str, BTreeMap<u64, Rollup>> = BTreeMap::new();
    let mut totals = Rollup::default();
    for row in rows {
        if row.key.minute < q.from_s || row.key.minute >= q.to_s {
            continue;
        }
        if q.tenant.is_some_and(|t| t != row.key.tenant) {
            continue;
        }
        let t = row.key.minute / q.step_s * q.step_s;
        groups
            .entry(q.group_by.of(row))
            .or_default()
            .entry(t)
            .or_default()
            .merge(&row.rollup);
        totals.merge(&row.rollup);
    }
    let series: Vec<Value> = groups
        .into_iter()
        .map(|(group, points)| {
            let points: Vec<Value> = points
                .into_iter()
                .map(|(t, r)| {
                    let mut p = figures(&r);
                    p.insert("t".into(), json!(t));
                    p.insert("rps".into(), json!(r.requests as f64 / q.step_s as f64));
                    Value::Object(p)
                })
                .collect();
            json!({"group": group, "points": points})
        })
        .collect();
    json!({
        "object": "metrics",
        "from": q.from_s,
        "to": q.to_s,
        "step": if q.step_s == 3600 { "1h" } else { "1m" },
        "step_s": q.step_s,
        "group_by": q.group_by.as_str(),
        "tenant": q.tenant,
        "series": series,
        "totals": figures(&totals),
    })
}
