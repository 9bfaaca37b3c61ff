//! The aggregator's work on a batch of usage-queue messages, shared by the aggregator Lambda
//! (and usable by any other driver): each message's events are rolled up and stored once per
//! message id, so a redelivered message is not counted twice; each newly stored rollup is
//! also written as a CloudWatch Embedded Metric Format line.

use serde_json::{Value, json};

use super::event::UsageEvent;
use super::rollup::{RollupRow, roll_up};
use crate::store::MetricsStore;

/// One queue message: its id (the dedup key) and body.
#[derive(Debug, Clone)]
pub struct Message {
    /// SQS message id.
    pub id: String,
    /// `{"events": [...]}`.
    pub body: String,
}

/// What became of a batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Ids of messages to deliver again (store failures).
    pub retry: Vec<String>,
    /// Messages whose body is not usage events: dropped, logged (retrying cannot fix them).
    pub malformed: usize,
    /// Messages already counted before (redeliveries).
    pub duplicates: usize,
    /// Newly stored rollup rows.
    pub rows: Vec<RollupRow>,
}

/// Rolls up and stores each message's events once.
pub async fn handle(store: &dyn MetricsStore, messages: &[Message]) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    for m in messages {
        let events: Vec<UsageEvent> = match serde_json::from_str::<Value>(&m.body)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("events")?.clone()).ok())
        {
            Some(events) => events,
            None => {
                tracing::error!(target: "sluice::metrics", message_id = %m.id, "usage message is not a list of events; dropped");
                outcome.malformed += 1;
                continue;
            }
        };
        let rows = roll_up(&events);
        match store.add_rollups(&m.id, &rows).await {
            Ok(true) => outcome.rows.extend(rows),
            Ok(false) => outcome.duplicates += 1,
            Err(e) => {
                tracing::warn!(target: "sluice::metrics", message_id = %m.id, error = %e, "could not store rollups; will retry");
                outcome.retry.push(m.id.clone());
            }
        }
    }
    outcome
}

/// A CloudWatch Embedded Metric Format document for one rollup row: namespace `Sluice`,
/// dimension sets none (gateway-wide), `Model` and `Provider`; the tenant is a property.
pub fn emf(row: &RollupRow) -> Value {
    let r = &row.rollup;
    let ms = |q: f64| r.latency.quantile(q).map_or(0.0, |us| us / 1000.0);
    let metric = |name: &str, unit: &str| json!({"Name": name, "Unit": unit});
    json!({
        "_aws": {
            "Timestamp": row.key.minute * 1000,
            "CloudWatchMetrics": [{
                "Namespace": "Sluice",
                "Dimensions": [[], ["Model"], ["Provider"]],
                "Metrics": [
                    metric("Requests", "Count"),
                    metric("Errors", "Count"),
                    metric("ServerErrors", "Count"),
                    metric("CacheHits", "Count"),
                    metric("Fallbacks", "Count"),
                    metric("TokensIn", "Count"),
                    metric("TokensOut", "Count"),
                    metric("CostUSD", "None"),
                    metric("LatencyP50", "Milliseconds"),
                    metric("LatencyP95", "Milliseconds"),
                    metric("LatencyP99", "Milliseconds"),
                ],
            }],
        },
        "Model": row.key.model,
        "Provider": row.key.provider,
        "Tenant": row.key.tenant,
        "Requests": r.requests,
        "Errors": r.errors(),
        "ServerErrors": r.errors_upstream + r.errors_server,
        "CacheHits": r.cache_hits,
        "Fallbacks": r.fallbacks,
        "TokensIn": r.tokens_in,
        "TokensOut": r.tokens_out,
        "CostUSD": r.cost_nano_usd as f64 / 1e9,
        "LatencyP50": ms(0.50),
        "LatencyP95": ms(0.95),
        "LatencyP99": ms(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Rollup, RollupKey};

    #[test]
    fn emf_names_every_metric_it_declares() {
        let mut rollup = Rollup {
            requests: 3,
            errors_server: 1,
            cost_nano_usd: 1_500,
            ..Rollup::default()
        };
        rollup.latency.record(2_000);
        let row = RollupRow {
            key: RollupKey {
                minute: 1_800_000_000,
                tenant: "t".into(),
                model: "m".into(),
                provider: "p".into(),
            },
            rollup,
        };
        let doc = emf(&row);
        assert_eq!(doc["_aws"]["Timestamp"], 1_800_000_000_000u64);
        for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = m["Name"].as_str().unwrap();
            assert!(doc[name].is_number(), "{name} is declared but missing");
        }
        for set in doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
            .as_array()
            .unwrap()
        {
            for d in set.as_array().unwrap() {
                assert!(doc[d.as_str().unwrap()].is_string());
            }
        }
        assert_eq!(doc["ServerErrors"], 1);
        assert!((doc["LatencyP99"].as_f64().unwrap() - 2.0).abs() < 0.2);
    }
}
