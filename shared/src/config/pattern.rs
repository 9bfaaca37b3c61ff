//! A regular expression in the config (`logging.redact`, a model's `rules[].pattern`),
//! compiled once when the config is read: a bad one is a config error naming its field
//! (`logging.redact[1]`, `models[0].rules[2].pattern`), never a surprise at the first request,
//! and what uses it gets the compiled pattern.

use serde::Deserialize;

/// How the error for a pattern that does not compile begins.
pub(super) const NOT_A_REGEX: &str = "not a valid regex: ";

/// A compiled regular expression (Rust `regex` syntax, as `regex_lite` reads it).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "String")]
pub struct Pattern(regex_lite::Regex);

impl Pattern {
    /// The compiled pattern.
    pub fn regex(&self) -> &regex_lite::Regex {
        &self.0
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        regex_lite::Regex::new(&pattern)
            .map(Self)
            .map_err(|e| format!("{NOT_A_REGEX}{e}"))
    }
}
