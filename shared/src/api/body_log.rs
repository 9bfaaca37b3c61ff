//! Request and response bodies in the access line, only with `[logging] bodies = true`.
//!
//! A middleware just inside the access log copies the request body as the handler reads it
//! (so the body limit and its 413 are untouched) and the response body when it is JSON
//! (JSON answers are already whole in memory; event streams are left alone). The copies are
//! redacted, cut to `logging.max_logged_body_bytes` and handed to the access log in the
//! response's extensions as [`LoggedBodies`]. Handlers know nothing of it.
//!
//! Redaction runs before the cut, over the first `max_logged_body_bytes` + 4 KiB of a body, so
//! a match up to 4 KiB long is caught even where the body is cut. Always redacted, whatever the
//! config says: the configured secrets (provider keys, the admin key, the callback secret),
//! gateway keys, bearer tokens and other key-shaped strings; then each `logging.redact`
//! pattern. Headers are never logged.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use regex_lite::{NoExpand, Regex};

use crate::config::Config;

/// What every redacted match becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Redaction also sees this many bytes past the cut, so matches straddling it are caught.
const CUT_MARGIN: usize = 4096;

/// Key-shaped strings redacted whatever the config says.
const ALWAYS_REDACTED: &[&str] = &[
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

/// The bodies of one request as they go into its access line.
#[derive(Debug, Clone, Default)]
pub struct LoggedBodies {
    /// The request body, redacted and cut.
    pub request: Option<String>,
    /// The JSON response body, redacted and cut.
    pub response: Option<String>,
}

/// Replaces secrets and configured patterns in text bound for the log.
#[derive(Debug)]
pub struct Redactor {
    secrets: Vec<String>,
    patterns: Vec<Regex>,
}

impl Redactor {
    /// Redacts `secrets` verbatim (as written and as escaped inside a JSON string), the
    /// key-shaped strings in [`ALWAYS_REDACTED`], then `configured` patterns.
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
        let patterns = ALWAYS_REDACTED
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .chain(configured.iter().cloned())
            .collect();
        Self {
            secrets: literal,
            patterns,
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
        for pattern in &self.patterns {
            if let Cow::Owned(replaced) = pattern.replace_all(&out, NoExpand(REDACTED)) {
                out = replaced;
            }
        }
        out
    }
}

/// Body logging as configured: on when `logging.bodies` is.
#[derive(Debug)]
pub struct BodyLog {
    redactor: Redactor,
    max_bytes: usize,
}

impl BodyLog {
    /// Body logging for this config, or `None` when it is off. `admin_secret` is redacted
    /// like the secrets in the config.
    pub fn from_config(config: &Config, admin_secret: &str) -> Option<Self> {
        if !config.logging.bodies {
            return None;
        }
        let provider_keys = config.providers.iter().flat_map(|p| &p.api_keys);
        let secrets = provider_keys
            .chain(&config.jobs.callback_secret)
            .map(|s| s.expose())
            .chain([admin_secret]);
        let patterns: Vec<Regex> = config
            .logging
            .redact
            .iter()
            .map(|p| p.regex().clone())
            .collect();
        Some(Self {
            redactor: Redactor::new(secrets, &patterns),
            max_bytes: config.logging.max_logged_body_bytes,
        })
    }

    /// How much of a body is kept for redaction.
    fn window(&self) -> usize {
        self.max_bytes.saturating_add(CUT_MARGIN)
    }

    /// What goes into the log for a body of `total` bytes whose first bytes are `head`.
    fn excerpt(&self, head: &[u8], total: usize) -> Option<String> {
        if total == 0 {
            return None;
        }
        let head = &head[..head.len().min(self.window())];
        let mut text = self.redactor.redact(&String::from_utf8_lossy(head));
        if text.len() > self.max_bytes || total > head.len() {
            text.truncate(text.floor_char_boundary(self.max_bytes));
            text.push_str(&format!("…[cut, {total} bytes]"));
        }
        Some(text)
    }
}

/// The first bytes of a request body seen so far, and its length.
#[derive(Default)]
struct Seen {
    head: Vec<u8>,
    total: usize,
}

/// Middleware (inside the access log): when body logging is on, copies the request and JSON
/// response bodies into [`LoggedBodies`] for the access line.
pub async fn capture(
    State(body_log): State<Option<Arc<BodyLog>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(body_log) = body_log else {
        return next.run(request).await;
    };
    let seen = Arc::new(Mutex::new(Seen::default()));
    let window = body_log.window();
    let sink = Arc::clone(&seen);
    let request = request.map(|body| {
        let copied = body.into_data_stream().map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let mut seen = sink.lock().unwrap_or_else(PoisonError::into_inner);
                seen.total += bytes.len();
                let room = window.saturating_sub(seen.head.len()).min(bytes.len());
                seen.head.extend_from_slice(&bytes[..room]);
            }
            chunk
        });
        Body::from_stream(copied)
    });
    let response = next.run(request).await;
    let request_body = {
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        body_log.excerpt(&seen.head, seen.total)
    };
    let (mut response, response_body) = if is_json(&response) {
        let (parts, body) = response.into_parts();
        // Built whole in memory by the handler, so collecting it costs no waiting.
        let bytes = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let logged = body_log.excerpt(&bytes, bytes.len());
        (Response::from_parts(parts, Body::from(bytes)), logged)
    } else {
        (response, None)
    };
    response.extensions_mut().insert(LoggedBodies {
        request: request_body,
        response: response_body,
    });
    response
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(configured: &[&str]) -> Redactor {
        let patterns: Vec<Regex> = configured.iter().map(|p| Regex::new(p).unwrap()).collect();
        Redactor::new(["prov-key-123", "admin secret/with \"quotes\""], &patterns)
    }

    #[test]
    fn the_always_redacted_patterns_compile() {
        let r = Redactor::new([], &[]);
        assert_eq!(r.patterns.len(), ALWAYS_REDACTED.len());
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

    fn body_log(max_bytes: usize, configured: &[&str]) -> BodyLog {
        BodyLog {
            redactor: redactor(configured),
            max_bytes,
        }
    }

    #[test]
    fn excerpts_are_redacted_before_they_are_cut() {
        let log = body_log(10, &[r"card-\d{16}"]);
        // The match straddles the cut: it is still recognised and not half-logged.
        let body = b"abcdefgcard-1234567812345678 tail";
        let out = log.excerpt(body, body.len()).unwrap();
        assert_eq!(out, format!("abcdefg[RE…[cut, {} bytes]", body.len()));
        assert_eq!(log.excerpt(b"short", 5).unwrap(), "short");
        assert_eq!(log.excerpt(b"", 0), None);
    }

    #[test]
    fn excerpts_cut_on_a_character_boundary() {
        let log = body_log(4, &[]);
        let out = log.excerpt("abcé€".as_bytes(), 8).unwrap();
        assert!(out.starts_with("abc…"), "{out}");
    }

    #[test]
    fn body_logging_is_off_by_default_and_takes_every_configured_secret() {
        let mut config = Config::builtin();
        assert!(BodyLog::from_config(&config, "admin").is_none());
        config.logging.bodies = true;
        config.providers[0].api_keys = vec![crate::config::Secret::new("k-one")];
        config.jobs.callback_secret = Some(crate::config::Secret::new("cb-secret"));
        let log = BodyLog::from_config(&config, "the-admin-key").unwrap();
        assert_eq!(
            log.redactor.redact("k-one cb-secret the-admin-key"),
            "[REDACTED] [REDACTED] [REDACTED]"
        );
    }
}
