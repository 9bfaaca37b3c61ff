//! `[logging]`: what the request log may hold beyond ids and numbers (bodies, redaction).

use serde::Deserialize;

use super::{ConfigError, Pattern, invalid};

/// The request log's optional contents. Keys and headers are never logged, whatever this says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Add the request body and the JSON response body (not event streams) to the access line.
    pub bodies: bool,
    /// Each logged body is cut to this many bytes (after redaction).
    pub max_logged_body_bytes: usize,
    /// Regular expressions whose every match in a logged body becomes `[REDACTED]`.
    pub redact: Vec<Pattern>,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            bodies: false,
            max_logged_body_bytes: 8192,
            redact: Vec::new(),
        }
    }
}

impl LoggingConfig {
    /// Checks the logged body size (the patterns were checked as they were read).
    pub(super) fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        if !(1..=1024 * 1024).contains(&self.max_logged_body_bytes) {
            return Err(invalid(
                origin,
                "logging.max_logged_body_bytes",
                "must be between 1 and 1048576",
            ));
        }
        Ok(())
    }
}
