//! `[server]`: the HTTP server's body limit, timeouts, connection cap and `/metrics` token.

use serde::Deserialize;

use super::{ConfigError, Secret, invalid};

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest accepted request body; larger bodies get 413 without being read whole.
    pub max_body_bytes: usize,
    /// Deadline for one upstream call (connect + full answer, or first byte for streams).
    pub upstream_timeout_s: f64,
    /// How long a looked-up gateway key is trusted from memory before the store is asked again.
    pub key_cache_ttl_s: f64,
    /// `sluice serve`: a request's headers must be complete this long after the connection
    /// was accepted, or after their first byte on a kept-alive connection; else it is closed.
    pub header_read_timeout_s: f64,
    /// `sluice serve`: a request's body must be complete this long after its headers; else
    /// 408 and the connection is closed.
    pub body_read_timeout_s: f64,
    /// `sluice serve`: a kept-alive connection with no request for this long is closed.
    pub idle_timeout_s: f64,
    /// `sluice serve`: most connections open at once (also held to what the process's file
    /// descriptor limit allows). At the cap a new connection closes the one that has waited
    /// longest for a request.
    pub max_connections: usize,
    /// A bearer token `GET /metrics` requires (none: `/metrics` is open).
    pub metrics_token: Option<Secret>,
    /// `sluice serve`: how often it runs housekeeping (jobs left behind, dead letters,
    /// abandoned reservations). On AWS a scheduled function does it instead.
    pub housekeeping_every_s: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            upstream_timeout_s: 120.0,
            key_cache_ttl_s: 5.0,
            header_read_timeout_s: 10.0,
            body_read_timeout_s: 30.0,
            idle_timeout_s: 60.0,
            max_connections: 4096,
            metrics_token: None,
            housekeeping_every_s: 60,
        }
    }
}

impl ServerConfig {
    /// Checks that every timeout, limit and period is usable, and that a `/metrics` token,
    /// when given, is not empty.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if !(self.upstream_timeout_s.is_finite() && self.upstream_timeout_s > 0.0) {
            return Err(invalid(
                origin,
                "server.upstream_timeout_s",
                "must be a positive number of seconds",
            ));
        }
        if !(self.key_cache_ttl_s.is_finite() && self.key_cache_ttl_s >= 0.0) {
            return Err(invalid(
                origin,
                "server.key_cache_ttl_s",
                "must be zero or a positive number of seconds",
            ));
        }
        if self.housekeeping_every_s == 0 {
            return Err(invalid(
                origin,
                "server.housekeeping_every_s",
                "must be at least 1",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(invalid(
                origin,
                "server.max_body_bytes",
                "must be greater than 0",
            ));
        }
        for (field, seconds) in [
            ("header_read_timeout_s", self.header_read_timeout_s),
            ("body_read_timeout_s", self.body_read_timeout_s),
            ("idle_timeout_s", self.idle_timeout_s),
        ] {
            // Up to a day: longer is no deadline at all, and `Duration` must not overflow.
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                return Err(invalid(
                    origin,
                    format!("server.{field}"),
                    "must be a number of seconds above 0 and at most 86400",
                ));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid(
                origin,
                "server.max_connections",
                "must be at least 1",
            ));
        }
        if self
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(invalid(
                origin,
                "server.metrics_token",
                "is empty; leave it out to keep /metrics open",
            ));
        }
        Ok(())
    }
}
