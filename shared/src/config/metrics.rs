//! `[metrics]`: how usage events are collected and rolled up.

use serde::Deserialize;

use super::{ConfigError, invalid};

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

impl MetricsConfig {
    /// Checks that events are flushed and buffered at all.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.flush_every_ms == 0 || self.max_pending_events == 0 {
            return Err(invalid(
                origin,
                "metrics",
                "flush_every_ms and max_pending_events must be positive",
            ));
        }
        Ok(())
    }
}
