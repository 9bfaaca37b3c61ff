//! `[cache]`: the response cache's switch, TTLs, size limits and coalescing wait.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// Response cache settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Master switch; when off every request is `x-sluice-cache: bypass`.
    pub enabled: bool,
    /// TTL for models that do not set `cache_ttl_s`.
    pub default_ttl_s: u64,
    /// How long an expired entry is kept for stale fallbacks before it is purged.
    pub stale_keep_s: u64,
    /// Answers larger than this are not stored (they are still returned).
    pub max_entry_bytes: usize,
    /// Recent entries kept in process memory in front of the store, in MiB (0: none).
    pub memory_mb: usize,
    /// How long a request waits for an identical request's provider call already in flight
    /// (in this process or another sharing the store) before it calls the provider itself;
    /// 0 turns coalescing off (`gateway/coalesce.rs`).
    pub coalesce_wait_s: f64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            default_ttl_s: 3600,
            stale_keep_s: 86_400,
            max_entry_bytes: 1024 * 1024,
            memory_mb: 16,
            coalesce_wait_s: 30.0,
        }
    }
}

impl CacheConfig {
    /// Checks the coalescing wait.
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if !(self.coalesce_wait_s.is_finite() && (0.0..=3600.0).contains(&self.coalesce_wait_s)) {
            return Err(invalid(
                origin,
                "cache.coalesce_wait_s",
                "must be zero (off) or a number of seconds up to 3600",
            ));
        }
        Ok(())
    }
}
