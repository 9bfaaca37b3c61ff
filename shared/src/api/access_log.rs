//! One structured JSON line per request (target `sluice::access`), and `x-request-id`.
//!
//! Handlers describe what happened in an [`Outcome`] placed in the response's extensions;
//! this middleware times the request, adds the request id and writes the line. It never logs
//! keys: only ids, names, numbers and error codes, plus the redacted bodies when
//! `logging.bodies` is on ([`super::body_log`]). The path is logged with key-shaped strings
//! redacted, also when the client percent-encoded them; the query string is not logged (a
//! `?key=…` is how some clients send keys). The request id is always Sluice's own, never
//! one the client sent. The request runs inside a [`crate::logging::request_span`], so every
//! line logged while serving it carries its id.

use std::time::Instant;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::AppState;
use super::body_log::LoggedBodies;
use super::headers::X_REQUEST_ID;
use crate::gateway::cache::CacheStatus;
use crate::keys::random_id;
use crate::metrics::{EventKind, UsageEvent, UsageTicket};

/// What a handler reports about a request for its log line.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Tenant of the calling key.
    pub tenant: Option<String>,
    /// Public id of the calling key.
    pub key_id: Option<String>,
    /// Public model name.
    pub model: Option<String>,
    /// Deployment called.
    pub deployment: Option<String>,
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Completion tokens.
    pub tokens_out: u64,
    /// Cost in nano-USD.
    pub cost_nano_usd: u64,
    /// Cache status.
    pub cache: CacheStatus,
    /// The fallback that answered, for degraded answers.
    pub fallback: Option<crate::gateway::Fallback>,
    /// Error code, if the request failed.
    pub error: Option<&'static str>,
    /// Whether the request yields a usage event (model routes; not async acceptances,
    /// whose job reports its own when it runs).
    pub metered: bool,
}

impl Outcome {
    /// Records what an answer cost and how it was produced.
    pub fn record(&mut self, reply: &crate::gateway::Reply) {
        self.cache = reply.cache;
        self.tokens_in = reply.usage.prompt_tokens;
        self.tokens_out = reply.usage.completion_tokens;
        self.cost_nano_usd = reply.cost_nano_usd;
        self.fallback = reply.fallback;
    }
}

/// The id of the request being served (in request extensions).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Middleware: assigns the request id, runs the request, writes the access-log line, and
/// sends the request's usage event (for streams, once the stream has ended).
pub async fn access_log(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let request_id = random_id("req_", 24);
    let method = request.method().clone();
    let path = loggable_path(request.uri().path());
    let ticket = Arc::new(UsageTicket::new(
        Arc::clone(&state.usage),
        // What is not known yet is filled in when the ticket is armed; only armed tickets
        // are sent.
        UsageEvent {
            event_id: UsageEvent::new_id(),
            request_id: request_id.clone(),
            time_ms: state.clock.now_ms(),
            ..UsageEvent::default()
        },
    ));
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
    request.extensions_mut().insert(Arc::clone(&ticket));
    #[cfg(feature = "prometheus")]
    let in_flight = state.prometheus.as_ref().map(|p| p.in_flight());
    #[cfg(not(feature = "prometheus"))]
    let in_flight: Option<()> = None;
    let span = crate::logging::request_span(&request_id);
    let mut response = next.run(request).instrument(span).await;
    let outcome = response
        .extensions_mut()
        .remove::<Outcome>()
        .unwrap_or_default();
    let bodies = response
        .extensions_mut()
        .remove::<LoggedBodies>()
        .unwrap_or_default();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    tracing::info!(
        target: "sluice::access",
        request_id = %request_id,
        method = %method,
        path = %path,
        status,
        latency_ms = (latency_ms * 1000.0).round() / 1000.0,
        tenant = outcome.tenant.as_deref(),
        key_id = outcome.key_id.as_deref(),
        model = outcome.model.as_deref(),
        deployment = outcome.deployment.as_deref(),
        tokens_in = outcome.tokens_in,
        tokens_out = outcome.tokens_out,
        cost_usd = outcome.cost_nano_usd as f64 / 1e9,
        cache = outcome.cache.as_str(),
        fallback = outcome.fallback.map(crate::gateway::Fallback::as_str),
        error = outcome.error,
        request_body = bodies.request.as_deref(),
        response_body = bodies.response.as_deref(),
        "request"
    );
    if outcome.metered {
        // The line is written: the outcome's strings move into the event.
        let Outcome {
            tenant,
            key_id,
            model,
            deployment,
            tokens_in,
            tokens_out,
            cost_nano_usd,
            cache,
            fallback,
            error,
            metered: _,
        } = outcome;
        ticket.arm(|e| {
            e.tenant = tenant.unwrap_or_default();
            e.key_id = key_id;
            e.model = model;
            e.deployment = deployment;
            e.kind = if streamed {
                EventKind::Stream
            } else {
                EventKind::Sync
            };
            e.status = status;
            e.error = error.map(str::to_owned);
            e.ttfb_ms = Some(latency_ms);
            e.tokens_in = tokens_in;
            e.tokens_out = tokens_out;
            e.cost_nano_usd = cost_nano_usd;
            e.cache = cache.as_str().to_owned();
            e.fallback = fallback.map(|f| f.as_str().to_owned());
        });
    }
    // The id's own bytes become the header value (allocated to its length: no copy).
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(request_id)) {
        response.headers_mut().insert(X_REQUEST_ID, v);
    }
    if !streamed {
        ticket.end();
        return response;
    }
    // The event waits for the stream's end: the body holds the ticket until then.
    let (parts, body) = response.into_parts();
    let body = Body::from_stream(EndsTicket {
        inner: body.into_data_stream(),
        ticket: Some(ticket),
        _in_flight: Box::new(in_flight),
    });
    Response::from_parts(parts, body)
}

/// The path as the access line shows it: key-shaped strings redacted. A path in which a key
/// shows only once percent-decoded (`sk%2Dsluice%2D…`) is logged decoded, and redacted.
fn loggable_path(path: &str) -> String {
    let raw = crate::redact::key_shaped(path);
    if !path.contains('%') {
        return raw.into_owned();
    }
    let decoded = percent_decoded(path);
    match crate::redact::key_shaped(&decoded) {
        std::borrow::Cow::Owned(redacted) => redacted,
        std::borrow::Cow::Borrowed(_) => raw.into_owned(),
    }
}

/// `%XX` escapes decoded; invalid escapes kept as they are, invalid UTF-8 replaced.
fn percent_decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A response body that marks the ticket ended when the last byte is out or the client
/// goes away, then lets go of it.
struct EndsTicket {
    inner: axum::body::BodyDataStream,
    ticket: Option<Arc<UsageTicket>>,
    /// Keeps the request counted as in flight until the stream ends.
    _in_flight: Box<dyn Send + Sync>,
}

impl futures_util::Stream for EndsTicket {
    type Item = Result<axum::body::Bytes, axum::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let next = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(None) = next
            && let Some(ticket) = self.ticket.take()
        {
            ticket.end();
            self._in_flight = Box::new(());
        }
        next
    }
}

impl Drop for EndsTicket {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            ticket.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_paths_have_keys_redacted_even_percent_encoded() {
        let key = format!("sk-sluice-{}", "aB3".repeat(11));
        assert_eq!(
            loggable_path(&format!("/v1/jobs/{key}")),
            "/v1/jobs/[REDACTED]"
        );
        let encoded = key.replace('-', "%2D").replace('a', "%61");
        assert_eq!(
            loggable_path(&format!("/v1/jobs/{encoded}/x%20y")),
            "/v1/jobs/[REDACTED]/x y"
        );
        // Paths without keys are logged as sent.
        assert_eq!(loggable_path("/v1/jobs/job_1%20x"), "/v1/jobs/job_1%20x");
        assert_eq!(loggable_path("/a%zz%4"), "/a%zz%4");
        assert_eq!(percent_decoded("%e2%82%ac%ff"), "€\u{fffd}");
    }
}
