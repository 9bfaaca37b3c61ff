//! Redaction: the one place that knows what a key looks like and replaces it with
//! [`REDACTED`] before text reaches a log.
//!
//! Two users, one set of patterns ([`KEY_SHAPED`]):
//! - every log line, whatever field the key sits in (the access line's path, an error message,
//!   a model name a client made up): the JSON formatter in [`crate::logging`] passes each
//!   finished line through [`key_shaped_json`];
//! - logged bodies ([`crate::api::body_log`]), through a [`Redactor`] that also knows the
//!   configured secrets and the `logging.redact` patterns.
//!
//! Configured secrets and `logging.redact` patterns are applied to bodies only, before they are
//! encoded into a line: an arbitrary pattern run over encoded JSON could cut an escape sequence
//! in half (`\S+` eats a closing quote), while the key shapes cannot (see [`key_shaped_json`]).

use std::borrow::Cow;
use std::sync::LazyLock;

use regex_lite::{Captures, NoExpand, Regex};

/// What every redacted match becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Key-shaped strings, redacted whatever the config says.
///
/// Each character class excludes `"` and `\`, so a match never spans a JSON string's end or
/// the inside of an escape (see [`key_shaped_json`] for the one place a match can start).
pub const KEY_SHAPED: &[&str] = &[
    // Sluice gateway keys and generated admin keys.
    r"sk-sluice-[A-Za-z0-9-]+",
    // OpenAI- and Anthropic-style secret keys (sk-proj-…, sk-ant-…).
    r"\bsk-[A-Za-z0-9_-]{16,}",
    // Google API keys.
    r"\bAIza[0-9A-Za-z_-]{35}",
    // Bearer credentials (RFC 6750 token syntax).
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{12,}=*",
    // JSON Web Tokens.
    r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
];

/// Literal pieces at least one of which every [`KEY_SHAPED`] match contains (`bearer` in any
/// case): text without any of them is returned untouched without running a regex. This keeps
/// redaction of every log line cheap: `regex-lite` has no literal prefilter of its own.
const ANCHORS: &[&str] = &["sk-", "AIza", "eyJ"];

/// The compiled [`KEY_SHAPED`] patterns.
static KEY_PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    KEY_SHAPED
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .collect()
});

/// Whether `text` may hold a key-shaped string (a cheap check, no regex).
fn may_hold_a_key(text: &str) -> bool {
    ANCHORS.iter().any(|a| text.contains(a))
        || text
            .as_bytes()
            .windows(b"bearer".len())
            .any(|w| w.eq_ignore_ascii_case(b"bearer"))
}

/// `text` with every key-shaped string replaced by [`REDACTED`].
pub fn key_shaped(text: &str) -> Cow<'_, str> {
    if !may_hold_a_key(text) {
        return Cow::Borrowed(text);
    }
    let mut out = Cow::Borrowed(text);
    for pattern in KEY_PATTERNS.iter() {
        if let Cow::Owned(replaced) = pattern.replace_all(&out, NoExpand(REDACTED)) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// A JSON document (one log line) with every key-shaped string inside it replaced by
/// [`REDACTED`]; the result is still valid JSON.
///
/// The patterns' classes exclude `"` and `\`, so a match ends before any escape; it could only
/// *start* on the letter of an escape — `\b` (a backspace) followed by `earer <token>` reads
/// as `bearer <token>`. A match preceded by an odd run of backslashes therefore keeps its first
/// character, so the escape stays whole.
pub fn key_shaped_json(line: &str) -> Cow<'_, str> {
    if !may_hold_a_key(line) {
        return Cow::Borrowed(line);
    }
    let mut out = Cow::Borrowed(line);
    for pattern in KEY_PATTERNS.iter() {
        let haystack: &str = &out;
        let replaced = pattern.replace_all(haystack, |caps: &Captures<'_>| {
            let Some(m) = caps.get(0) else {
                return String::new();
            };
            let escapes = haystack[..m.start()]
                .bytes()
                .rev()
                .take_while(|&b| b == b'\\')
                .count();
            let kept = if escapes % 2 == 1 {
                m.as_str().chars().next()
            } else {
                None
            };
            kept.into_iter().collect::<String>() + REDACTED
        });
        if let Cow::Owned(replaced) = replaced {
            out = Cow::Owned(replaced);
        }
    }
    out
}

/// Replaces secrets, key-shaped strings and configured patterns in text bound for the log.
#[derive(Debug)]
pub struct Redactor {
    secrets: Vec<String>,
    patterns: Vec<Regex>,
}

impl Redactor {
    /// Redacts `secrets` verbatim (as written and as escaped inside a JSON string), the
    /// [`KEY_SHAPED`] strings, then `configured` patterns.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>, configured: &[Regex]) -> Self {
        let mut literal: Vec<String> = Vec::new();
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            let quoted = serde_json::to_string(secret).unwrap_or_default();
            let escaped = quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or_default();
            for form in [secret, escaped] {
                if !form.is_empty() && !literal.iter().any(|s| s == form) {
                    literal.push(form.to_owned());
                }
            }
        }
        // Longest first, so a secret containing another is replaced whole.
        literal.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self {
            secrets: literal,
            patterns: configured.to_vec(),
        }
    }

    /// `text` with every secret and every match replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), REDACTED);
            }
        }
        if let Cow::Owned(replaced) = key_shaped(&out) {
            out = replaced;
        }
        for pattern in &self.patterns {
            if let Cow::Owned(replaced) = pattern.replace_all(&out, NoExpand(REDACTED)) {
                out = replaced;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fuzzing;

    fn redactor(configured: &[&str]) -> Redactor {
        let patterns: Vec<Regex> = configured.iter().map(|p| Regex::new(p).unwrap()).collect();
        Redactor::new(["prov-key-123", "admin secret/with \"quotes\""], &patterns)
    }

    #[test]
    fn the_key_shaped_patterns_compile() {
        assert_eq!(KEY_PATTERNS.len(), KEY_SHAPED.len());
    }

    #[test]
    fn keys_and_tokens_are_redacted_without_any_config() {
        let r = redactor(&[]);
        let gateway = format!("sk-sluice-{}", "a1B2".repeat(10));
        let admin = format!("sk-sluice-admin-{}", "Zz9".repeat(10));
        let text = format!(
            "{{\"content\":\"use {gateway} or {admin}; Authorization: Bearer abc.def-ghi_jkl0=; \
             openai sk-proj-{openai}; google AIza{google}; jwt eyJhbGciOi.eyJzdWIi.c2ln; \
             provider prov-key-123\"}}",
            openai = "x".repeat(24),
            google = "g".repeat(35),
        );
        let out = r.redact(&text);
        for secret in [
            gateway.as_str(),
            admin.as_str(),
            "abc.def-ghi_jkl0",
            "sk-proj-",
            "AIza",
            "eyJ",
            "prov-key-123",
        ] {
            assert!(!out.contains(secret), "{secret} survived: {out}");
        }
        assert!(out.starts_with("{\"content\":\"use [REDACTED] or [REDACTED];"));
        // Ordinary words stay.
        assert!(out.contains("Authorization:") && out.contains("provider"));
        assert_eq!(
            r.redact("ask-me anything, a bearer of news"),
            "ask-me anything, a bearer of news"
        );
    }

    #[test]
    fn a_secret_is_found_as_escaped_inside_json_too() {
        let r = redactor(&[]);
        let body = serde_json::json!({"content": "admin secret/with \"quotes\""}).to_string();
        assert!(body.contains("\\\"quotes\\\""));
        assert_eq!(r.redact(&body), "{\"content\":\"[REDACTED]\"}");
    }

    #[test]
    fn configured_patterns_replace_every_match() {
        let r = redactor(&[r"card-\d{4}", r"(?i)ssn:\s*\d+"]);
        assert_eq!(
            r.redact("card-1234 and card-5678, SSN: 999"),
            "[REDACTED] and [REDACTED], [REDACTED]"
        );
        // `$` in the replacement is never expanded.
        assert_eq!(r.redact("$1 card-0000"), "$1 [REDACTED]");
    }

    #[test]
    fn text_without_an_anchor_is_not_copied() {
        assert!(matches!(
            key_shaped("/v1/jobs/job_abc?x=1"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(key_shaped_json("{\"a\":1}"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_match_starting_on_an_escape_letter_keeps_the_escape_whole() {
        // A backspace then `earer …` encodes as `\bearer …`, which reads as a bearer token.
        let line =
            serde_json::json!({"m": "\u{8}earer abcdefghijklmnop and \\bearer abcdefghijklmnop"})
                .to_string();
        assert!(line.contains("\\bearer abcdefghijklmnop"));
        let out = key_shaped_json(&line);
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        let m = parsed["m"].as_str().unwrap();
        assert!(!m.contains("abcdefghijklmnop"), "{m}");
        assert_eq!(m, "\u{8}[REDACTED] and \\[REDACTED]");
    }

    /// A key-shaped string as generated keys, provider keys and tokens look.
    pub(crate) fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            "sk-sluice-[A-Za-z0-9]{32}",
            "sk-sluice-admin-[A-Za-z0-9]{32}",
            "sk-(proj-|ant-api03-)?[A-Za-z0-9_-]{20,48}",
            "AIza[0-9A-Za-z_-]{35}",
            "eyJ[A-Za-z0-9_-]{8,24}\\.eyJ[A-Za-z0-9_-]{8,24}\\.[A-Za-z0-9_-]{8,24}",
            "(Bearer|bearer|BEARER) [A-Za-z0-9._~+/-]{16,40}",
        ]
    }

    /// Text around a key: anything at all, ending on a character that is not part of a word
    /// (a key glued to a word, `xsk-…`, is not a key; `sk-` is in ordinary words).
    fn around() -> impl Strategy<Value = (String, String)> {
        (any::<String>(), any::<String>())
            .prop_map(|(before, after)| (format!("{before} "), format!(" {after}")))
    }

    /// The random part of a key: what must not survive.
    fn secret_part(key: &str) -> &str {
        let start = key
            .find(' ')
            .map(|i| i + 1)
            .unwrap_or_else(|| key.len().min(12));
        &key[start..]
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_a_key_anywhere_in_text_is_redacted((before, after) in around(), key in key()) {
            let text = format!("{before}{key}{after}");
            let out = key_shaped(&text);
            prop_assert!(!out.contains(secret_part(&key)), "{out}");
        }

        #[test]
        fn fuzz_a_key_anywhere_in_a_log_line_is_redacted_and_the_line_stays_json(
            (before, after) in around(), key in key(), field in "[a-z_]{1,12}",
        ) {
            let line = serde_json::json!({"message": "request", field: format!("{before}{key}{after}")})
                .to_string();
            let out = key_shaped_json(&line);
            let parsed: serde_json::Value = serde_json::from_str(&out)
                .map_err(|e| TestCaseError::fail(format!("{e}: {out}")))?;
            prop_assert!(!out.contains(secret_part(&key)), "{out}");
            prop_assert_eq!(parsed["message"].as_str(), Some("request"));
        }

        #[test]
        fn fuzz_redacting_any_line_keeps_it_json(text in any::<String>(), key in proptest::option::of(key())) {
            let value = format!("{text}{}", key.unwrap_or_default());
            let line = serde_json::json!({ "m": value }).to_string();
            let out = key_shaped_json(&line);
            prop_assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
        }
    }
}
