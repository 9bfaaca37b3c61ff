//! `[logging]`: what the request log may hold beyond ids and numbers (bodies, redaction).

use serde::Deserialize;

/// The request log's optional contents. Keys and headers are never logged, whatever this says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// Add the request body and the JSON response body (not event streams) to the access line.
    pub bodies: bool,
    /// Each logged body is cut to this many bytes (after redaction).
    pub max_logged_body_bytes: usize,
    /// Regular expressions whose every match in a logged body becomes `[REDACTED]`.
    pub redact: Vec<RedactPattern>,
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

/// A `logging.redact` pattern, compiled when the config is read so a bad one is a config
/// error naming its field (`logging.redact[1]`), never a surprise at the first request.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct RedactPattern(regex_lite::Regex);

impl RedactPattern {
    /// The compiled pattern.
    pub fn regex(&self) -> &regex_lite::Regex {
        &self.0
    }
}

impl TryFrom<String> for RedactPattern {
    type Error = String;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        regex_lite::Regex::new(&pattern)
            .map(Self)
            .map_err(|e| format!("not a valid regex: {e}"))
    }
}
