//! The OpenAI-compatible routes. Handlers are thin: authenticate, hand the body to the
//! gateway, turn the reply into HTTP, and report the outcome for the access log.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::headers::{X_SLUICE_CACHE, X_SLUICE_COST_USD, X_SLUICE_FALLBACK, X_SLUICE_PROVIDER};
use super::idempotency;
use crate::gateway::cache::CacheControl;
use crate::gateway::{Reply, ReplyBody, RequestOptions, Trace};
use crate::jobs::Submission;
use crate::metrics::UsageTicket;
use crate::providers::Endpoint;

/// The answer of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves requests.
    pub status: &'static str,
}

/// `GET /health`: liveness, no auth.
#[utoipa::path(get, path = "/health", tag = "meta", security(()),
    responses((status = 200, description = "The process is up.", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The answer of `GET /v1/models`, as OpenAI lists models.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// Every public model name and alias.
    pub data: Vec<Model>,
}

/// A public model name (or alias).
#[derive(Debug, Serialize, ToSchema)]
pub struct Model {
    /// The name to send as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0 (unknown).
    pub created: u64,
    /// Always `sluice`.
    pub owned_by: &'static str,
}

/// Fallback for unknown paths.
pub async fn no_route(OriginalUri(uri): OriginalUri) -> Response {
    finish(Err(ApiError::no_route(uri.path())), Outcome::default())
}

/// Fallback for known paths with the wrong method.
pub async fn wrong_method() -> Response {
    finish(Err(ApiError::wrong_method()), Outcome::default())
}

/// Finishes a response: attaches the outcome, or turns an error into OpenAI's shape.
pub(super) fn finish(result: Result<Response, ApiError>, mut outcome: Outcome) -> Response {
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(e.code);
            e.into_response()
        }
    };
    response.extensions_mut().insert(outcome);
    response
}

/// `GET /v1/models`: the public model names and aliases.
#[utoipa::path(get, path = "/v1/models", tag = "openai",
    responses((status = 200, description = "Public model names and aliases.", body = ModelList)))]
pub async fn models(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut outcome = Outcome::default();
    let result = async {
        let caller = state.keys.authenticate(&headers).await?;
        outcome.tenant = Some(caller.tenant);
        outcome.key_id = Some(caller.key_id);
        let data = state
            .gateway
            .catalog()
            .names()
            .iter()
            .map(|name| Model {
                id: name.clone(),
                object: "model",
                created: 0,
                owned_by: "sluice",
            })
            .collect();
        Ok::<_, ApiError>(
            Json(ModelList {
                object: "list",
                data,
            })
            .into_response(),
        )
    }
    .await;
    finish(result, outcome)
}

/// `POST /v1/chat/completions`
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai",
    params(super::openapi::ProxyHeaders),
    request_body = super::openapi::ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer; server-sent events with `stream: true`.",
            headers(
                ("x-sluice-cache" = String, description = "`hit`, `coalesced`, `miss`, `stale` or `bypass`"),
                ("x-sluice-provider" = String, description = "The deployment that answered"),
                ("x-sluice-cost-usd" = String, description = "Exact cost (JSON answers)"),
            ),
            content(
                (super::openapi::ChatCompletion = "application/json"),
                (super::openapi::ServerSentEvent = "text/event-stream"),
            )),
        (status = 202, description = "Accepted as a job (`Prefer: respond-async`).",
            body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
        (status = 404, description = "Unknown model.", body = super::error::ErrorResponse),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.",
            body = super::error::ErrorResponse),
        (status = 422, description = "This `Idempotency-Key` was used with another body, or the \
            provider rejected the request.", body = super::error::ErrorResponse),
        (status = 429, description = "Over a rate limit or spending cap, or the provider is \
            rate limiting (`Retry-After`).", body = super::error::ErrorResponse),
        (status = 502, description = "The provider failed or answered malformed JSON.",
            body = super::error::ErrorResponse),
        (status = 504, description = "The provider did not answer in time.",
            body = super::error::ErrorResponse),
    ))]
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    ticket: Option<Extension<Arc<UsageTicket>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let ticket = ticket.map(|Extension(t)| t);
    proxy(&state, Endpoint::ChatCompletions, ticket, &headers, body).await
}

/// `POST /v1/embeddings`
#[utoipa::path(post, path = "/v1/embeddings", tag = "openai",
    params(super::openapi::ProxyHeaders),
    request_body = super::openapi::EmbeddingRequest,
    responses(
        (status = 200, description = "The vectors.", body = super::openapi::EmbeddingList,
            headers(
                ("x-sluice-cache" = String, description = "`hit`, `coalesced`, `miss`, `stale` or `bypass`"),
                ("x-sluice-cost-usd" = String, description = "Exact cost"),
            )),
        (status = 202, description = "Accepted as a job (`Prefer: respond-async`).",
            body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
        (status = 404, description = "Unknown model.", body = super::error::ErrorResponse),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.",
            body = super::error::ErrorResponse),
        (status = 422, description = "This `Idempotency-Key` was used with another body, or the \
            provider rejected the request.", body = super::error::ErrorResponse),
        (status = 429, description = "Over a rate limit or spending cap, or the provider is \
            rate limiting (`Retry-After`).", body = super::error::ErrorResponse),
        (status = 502, description = "The provider failed or answered malformed JSON.",
            body = super::error::ErrorResponse),
        (status = 504, description = "The provider did not answer in time.",
            body = super::error::ErrorResponse),
    ))]
pub async fn embeddings(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    proxy(&state, Endpoint::Embeddings, None, &headers, body).await
}

async fn proxy(
    state: &AppState,
    endpoint: Endpoint,
    ticket: Option<Arc<UsageTicket>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut outcome = Outcome {
        metered: true,
        ..Outcome::default()
    };
    let mut trace = Trace {
        usage: ticket,
        ..Trace::default()
    };
    let mut claim = None;
    let result = async {
        let caller = state.keys.authenticate(headers).await?;
        outcome.tenant = Some(caller.tenant.clone());
        outcome.key_id = Some(caller.key_id.clone());
        let body = read_body(state, body)?;
        let key = idempotency::header_key(headers)?;
        if super::jobs::wants_async(headers) {
            let submission = Submission {
                endpoint,
                body,
                cache_control: super::jobs::header_str(headers, header::CACHE_CONTROL.as_str()),
                callback_url: super::jobs::header_str(headers, super::jobs::CALLBACK_HEADER),
                completion_window_s: None,
            };
            // The job reports its usage when it runs.
            outcome.metered = false;
            return super::jobs::accept_once(state, &caller, key, submission).await;
        }
        if let Some(key) = key {
            let request = idempotency::Request::Call {
                route: endpoint.path(),
                body: &body,
            };
            let now = state.clock.now_ms();
            match idempotency::begin(&*state.store, &caller.tenant, key, request, now).await? {
                idempotency::Begin::Run(c) => claim = Some(c),
                idempotency::Begin::Replay(stored) => return Ok(idempotency::replayed(stored)),
            }
        }
        let mut reply = state
            .gateway
            .handle(&caller, endpoint, &body, options(headers)?, &mut trace)
            .await?;
        outcome.record(&reply);
        if let ReplyBody::EventStream(events) = reply.body {
            // The key is held until the stream ends, then kept or released by the stream.
            reply.body = ReplyBody::EventStream(match claim.take() {
                Some(c) => idempotency::guard_stream(
                    events,
                    Arc::clone(&state.store),
                    Arc::clone(&state.clock),
                    c,
                    idempotency::openai_stream_refusal().await,
                ),
                None => events,
            });
        }
        Ok(reply_response(reply, trace.deployment.as_deref()))
    }
    .await;
    outcome.model = trace.model;
    outcome.deployment = trace.deployment;
    let response = finish(result, outcome);
    match claim {
        Some(claim) => {
            let now = state.clock.now_ms();
            idempotency::respond(&*state.store, claim, response, now).await
        }
        None => response,
    }
}

/// The pipeline options a request's headers ask for.
pub(super) fn options(headers: &HeaderMap) -> Result<RequestOptions, ApiError> {
    Ok(RequestOptions {
        cache: CacheControl::parse(
            headers
                .get(header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
        ),
        timeout: request_timeout(headers)?,
        defer_settlement: false,
    })
}

/// `x-sluice-timeout`: seconds for the whole request, retries and fallbacks included.
fn request_timeout(headers: &HeaderMap) -> Result<Option<std::time::Duration>, ApiError> {
    let Some(v) = headers.get("x-sluice-timeout") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 3600.0)
        .map(|s| Some(std::time::Duration::from_secs_f64(s)))
        .ok_or_else(|| {
            ApiError::invalid_request(
                "`x-sluice-timeout` must be a number of seconds between 0 and 3600.",
                Some("x-sluice-timeout"),
            )
        })
}

/// The body; 413 when it is over the limit (read no further than the limit), 408 when it
/// did not arrive within `server.body_read_timeout_s` ([`crate::server`]).
pub(super) fn read_body(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(state.max_body_bytes)
        } else if crate::server::body_timed_out(&rejection) {
            ApiError::body_timeout()
        } else {
            ApiError::unreadable_body()
        }
    })
}

/// A cost in nano-USD as a header value in USD with all nine decimals ("0.000001950"),
/// written into a stack buffer (one allocation, the value's own, on every JSON answer).
fn usd(nanos: u64) -> HeaderValue {
    use std::io::Write as _;
    // u64::MAX nano-USD is "18446744073.709551615": 21 bytes.
    let mut buf = [0u8; 24];
    let mut out = std::io::Cursor::new(&mut buf[..]);
    let written = write!(
        out,
        "{}.{:09}",
        nanos / 1_000_000_000,
        nanos % 1_000_000_000
    );
    let len = usize::try_from(out.position()).unwrap_or(0);
    written
        .ok()
        .and_then(|()| HeaderValue::from_bytes(&buf[..len]).ok())
        .unwrap_or(HeaderValue::from_static(""))
}

/// An answer as HTTP: the body (JSON or an event stream) and the `x-sluice-*` headers.
pub(super) fn reply_response(reply: Reply, deployment: Option<&str>) -> Response {
    let fallback = reply.fallback;
    let (content_type, body) = match reply.body {
        ReplyBody::Json(bytes) => ("application/json", Body::from(bytes)),
        ReplyBody::EventStream(stream) => ("text/event-stream", Body::from_stream(stream)),
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    // Room for these and what the access log and hyper add, without growing the map.
    headers.reserve(8);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        X_SLUICE_CACHE,
        HeaderValue::from_static(reply.cache.as_str()),
    );
    if content_type == "text/event-stream" {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    // A stream's cost is known only at its end (it is in the usage chunk and the log).
    if content_type == "application/json" {
        headers.insert(X_SLUICE_COST_USD, usd(reply.cost_nano_usd));
    }
    if let Some(v) = deployment.and_then(|d| HeaderValue::from_str(d).ok()) {
        headers.insert(X_SLUICE_PROVIDER, v);
    }
    if let Some(tier) = fallback {
        headers.insert(X_SLUICE_FALLBACK, HeaderValue::from_static(tier.as_str()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::usd;

    #[test]
    fn usd_is_exact() {
        for (nanos, spelled) in [
            (0, "0.000000000"),
            (1_950, "0.000001950"),
            (999_999_999, "0.999999999"),
            (1_000_000_000, "1.000000000"),
            (2_500_000_001, "2.500000001"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(usd(nanos).to_str().unwrap(), spelled);
        }
    }
}
