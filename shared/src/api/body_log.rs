//! Request and response bodies in the access line, only with `[logging] bodies = true`.
//!
//! A middleware just inside the access log (layered only when body logging is on) copies the
//! request body as the handler reads it (so the body limit and its 413 are untouched) and the
//! response body when it is JSON (JSON answers are already whole in memory; event streams are
//! left alone). The copies are redacted, cut to `logging.max_logged_body_bytes` and handed to
//! the access log in the response's extensions as [`LoggedBodies`]. Handlers know nothing of it.
//!
//! Redaction runs before the cut, over the first `max_logged_body_bytes` + 4 KiB of a body, so
//! a match up to 4 KiB long is caught even where the body is cut. Always redacted, whatever the
//! config says: the configured secrets (provider keys, the admin key, the callback secret, the
//! metrics token), gateway keys, bearer tokens and other key-shaped strings; then each
//! `logging.redact` pattern ([`crate::redact`] holds them all). Headers are never logged.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use futures_util::StreamExt;
use regex_lite::Regex;

use crate::config::{Config, Secret};
use crate::redact::Redactor;

/// Redaction also sees this many bytes past the cut, so matches straddling it are caught.
const CUT_MARGIN: usize = 4096;

/// The bodies of one request as they go into its access line.
#[derive(Debug, Clone, Default)]
pub struct LoggedBodies {
    /// The request body, redacted and cut.
    pub request: Option<String>,
    /// The JSON response body, redacted and cut.
    pub response: Option<String>,
}

/// Body logging as configured: on when `logging.bodies` is.
#[derive(Debug)]
pub struct BodyLog {
    /// The secrets to redact, read at each use: a rotated key is redacted from then on.
    secrets: Vec<Secret>,
    patterns: Vec<Regex>,
    /// The redactor for the secrets' values it was built from, rebuilt when one changes.
    current: Mutex<(Vec<Arc<str>>, Arc<Redactor>)>,
    max_bytes: usize,
}

impl BodyLog {
    /// Body logging for this config, or `None` when it is off. `admin` is redacted like the
    /// secrets in the config.
    pub fn from_config(config: &Config, admin: &Secret) -> Option<Self> {
        if !config.logging.bodies {
            return None;
        }
        let secrets = config
            .secrets()
            .into_iter()
            .map(|(_, s)| s.clone())
            .chain([admin.clone()])
            .collect();
        let patterns: Vec<Regex> = config
            .logging
            .redact
            .iter()
            .map(|p| p.regex().clone())
            .collect();
        Some(Self::new(
            secrets,
            patterns,
            config.logging.max_logged_body_bytes,
        ))
    }

    fn new(secrets: Vec<Secret>, patterns: Vec<Regex>, max_bytes: usize) -> Self {
        let values: Vec<Arc<str>> = secrets.iter().map(Secret::expose).collect();
        let redactor = Arc::new(Redactor::new(values.iter().map(|v| &**v), &patterns));
        Self {
            secrets,
            patterns,
            current: Mutex::new((values, redactor)),
            max_bytes,
        }
    }

    /// The redactor for the secrets' current values.
    fn redactor(&self) -> Arc<Redactor> {
        let values: Vec<Arc<str>> = self.secrets.iter().map(Secret::expose).collect();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != values {
            let redactor = Redactor::new(values.iter().map(|v| &**v), &self.patterns);
            *current = (values, Arc::new(redactor));
        }
        Arc::clone(&current.1)
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
        let mut text = self.redactor().redact(&String::from_utf8_lossy(head));
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

/// Middleware (inside the access log), layered only when body logging is on: copies the
/// request and JSON response bodies into [`LoggedBodies`] for the access line.
pub async fn capture(
    State(body_log): State<Arc<BodyLog>>,
    request: Request,
    next: Next,
) -> Response {
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

    fn body_log(max_bytes: usize, configured: &[&str]) -> BodyLog {
        let patterns: Vec<Regex> = configured.iter().map(|p| Regex::new(p).unwrap()).collect();
        let secrets = ["prov-key-123", "admin secret/with \"quotes\""].map(Secret::new);
        BodyLog::new(secrets.to_vec(), patterns, max_bytes)
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
        assert!(BodyLog::from_config(&config, &Secret::new("admin")).is_none());
        config.logging.bodies = true;
        config.providers[0].api_keys = vec![Secret::new("k-one")];
        config.jobs.callback_secret = Some(Secret::new("cb-secret"));
        config.server.metrics_token = Some(Secret::new("scrape-token"));
        let admin = Secret::new("the-admin-key");
        let log = BodyLog::from_config(&config, &admin).unwrap();
        assert_eq!(
            log.redactor()
                .redact("k-one cb-secret the-admin-key scrape-token"),
            "[REDACTED] [REDACTED] [REDACTED] [REDACTED]"
        );
        // Rotated: the new values are redacted from then on.
        admin.replace("admin-two");
        config.providers[0].api_keys[0].replace("k-two");
        assert_eq!(
            log.redactor().redact("k-two admin-two"),
            "[REDACTED] [REDACTED]"
        );
    }
}
