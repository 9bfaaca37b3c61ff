//! `[routing]`: retries, backoff, the request deadline and circuit breaking.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Retries, deadlines and circuit breaking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Tries per deployment for failures worth retrying (connection, timeout, 408/429/5xx,
    /// malformed answers) before moving to the next deployment.
    pub attempts_per_deployment: u32,
    /// First backoff; doubled per retry, with full jitter.
    pub backoff_base_ms: u64,
    /// Longest backoff.
    pub backoff_max_ms: u64,
    /// Whole-request deadline unless the client sends `x-sluice-timeout` (seconds).
    pub request_timeout_s: f64,
    /// Consecutive failures that open a deployment's circuit.
    pub circuit_failures: u32,
    /// How long an open circuit skips the deployment before one probe is let through.
    pub circuit_cooldown_s: f64,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            attempts_per_deployment: 2,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            request_timeout_s: 120.0,
            circuit_failures: 5,
            circuit_cooldown_s: 30.0,
        }
    }
}

impl RoutingConfig {
    /// Checks that a deployment is tried at all, the deadline is positive and the breaker
    /// can open.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if self.attempts_per_deployment == 0
            || !(self.request_timeout_s.is_finite() && self.request_timeout_s > 0.0)
            || !(self.circuit_cooldown_s.is_finite() && self.circuit_cooldown_s >= 0.0)
            || self.circuit_failures == 0
        {
            return Err(invalid(
                origin,
                "routing",
                "attempts_per_deployment and circuit_failures must be at least 1, \
                 request_timeout_s positive and circuit_cooldown_s not negative",
            ));
        }
        Ok(())
    }
}
