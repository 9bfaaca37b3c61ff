//! `[metrics]`: how usage events are collected and rolled up.

use serde::Deserialize;

/// Usage events and their rollups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// How long usage events are collected before their rollups are stored (and, on AWS,
    /// before buffered events are sent to the usage queue), milliseconds.
    pub flush_every_ms: u64,
    /// Events waiting for the aggregator in `sluice serve`; more are dropped and counted.
    pub max_pending_events: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            flush_every_ms: 1000,
            max_pending_events: 100_000,
        }
    }
}
