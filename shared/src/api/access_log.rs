//! One structured JSON line per request (target `sluice::access`), and `x-request-id`.
//!
//! Handlers describe what happened in an [`Outcome`] placed in the response's extensions;
//! this middleware times the request, adds the request id and writes the line. It never logs
//! keys: only ids, names, numbers and error codes, plus the redacted bodies when
//! `logging.bodies` is on ([`super::body_log`]). The request runs inside a
//! [`crate::logging::request_span`], so every line logged while serving it carries its id.

use std::time::Instant;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::body_log::LoggedBodies;
use crate::gateway::cache::CacheStatus;
use crate::keys::random_alnum;

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
    pub fallback: Option<&'static str>,
    /// Error code, if the request failed.
    pub error: Option<&'static str>,
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

/// Middleware: assigns the request id, runs the request, writes the access-log line.
pub async fn access_log(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = format!("req_{}", random_alnum(24));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    request
        .extensions_mut()
        .insert(RequestId(request_id.clone()));
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
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: "sluice::access",
        request_id = %request_id,
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        latency_ms = (latency_ms * 1000.0).round() / 1000.0,
        tenant = outcome.tenant.as_deref(),
        key_id = outcome.key_id.as_deref(),
        model = outcome.model.as_deref(),
        deployment = outcome.deployment.as_deref(),
        tokens_in = outcome.tokens_in,
        tokens_out = outcome.tokens_out,
        cost_usd = outcome.cost_nano_usd as f64 / 1e9,
        cache = outcome.cache.as_str(),
        fallback = outcome.fallback,
        error = outcome.error,
        request_body = bodies.request.as_deref(),
        response_body = bodies.response.as_deref(),
        "request"
    );
    response
}
