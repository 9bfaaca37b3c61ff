//! Async jobs over HTTP: `POST /v1/jobs`, `GET /v1/jobs/{id}`, and `Prefer: respond-async`
//! (RFC 7240) on the OpenAI routes. Accepting answers `202 Accepted` with the job, a
//! `Location` to poll, and `Preference-Applied: respond-async`. Both ways of submitting honour
//! `Idempotency-Key` (see [`super::idempotency`]): a repeat gets the same `202` and job again.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::idempotency;
use super::openai::{finish, read_body};
use crate::gateway::Caller;
use crate::jobs::{Submission, job_json};
use crate::providers::Endpoint;

/// Header carrying a callback URL on `Prefer: respond-async` requests.
pub const CALLBACK_HEADER: &str = "x-sluice-callback-url";

/// Whether the client prefers an asynchronous answer (`Prefer: respond-async`).
pub fn wants_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// Accepts a job and answers 202.
pub async fn accept(
    state: &AppState,
    caller: &Caller,
    submission: Submission,
) -> Result<Response, ApiError> {
    let job = state
        .jobs
        .submit(&state.gateway, caller, submission)
        .await?;
    let mut response = (StatusCode::ACCEPTED, Json(job_json(&job))).into_response();
    add_acceptance_headers(response.headers_mut(), &job.id);
    Ok(response)
}

/// `Location` of the job and `Preference-Applied: respond-async`, on every `202`.
pub fn add_acceptance_headers(headers: &mut HeaderMap, job_id: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/jobs/{job_id}")) {
        headers.insert(header::LOCATION, v);
    }
    headers.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
}

/// Accepts a job once per `Idempotency-Key`: the first request submits it, a repeat gets the
/// first `202` again (or the first refusal), without a second job.
pub async fn accept_once(
    state: &AppState,
    caller: &Caller,
    key: Option<&str>,
    submission: Submission,
) -> Result<Response, ApiError> {
    let Some(key) = key else {
        return accept(state, caller, submission).await;
    };
    let request = idempotency::Request::Job {
        endpoint: submission.endpoint,
        body: &submission.body,
        callback_url: submission.callback_url.as_deref(),
        completion_window_s: submission.completion_window_s,
    };
    let now = state.clock.now_ms();
    match idempotency::begin(&*state.store, &caller.tenant, key, request, now).await? {
        idempotency::Begin::Replay(stored) => Ok(idempotency::replayed(stored)),
        idempotency::Begin::Run(claim) => {
            let accepted = accept(state, caller, submission).await;
            let now = state.clock.now_ms();
            match accepted {
                Ok(response) => Ok(idempotency::respond(&*state.store, claim, response, now).await),
                // A refusal is kept like any answer (unless worth retrying); the caller sends
                // the same error, so the access log still names it.
                Err(e) => {
                    idempotency::respond(&*state.store, claim, e.clone().into_response(), now)
                        .await;
                    Err(e)
                }
            }
        }
    }
}

/// Body of `POST /v1/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"endpoint": "/v1/embeddings",
    "request": {"model": "text-embedding-3-small", "input": "later"}}))]
#[serde(deny_unknown_fields)]
struct CreateJob {
    /// `/v1/chat/completions` or `/v1/embeddings`.
    #[schema(pattern = "^/v1/(chat/completions|embeddings)$")]
    endpoint: String,
    /// The request body, as it would be sent to that endpoint (validated the same way).
    #[schema(value_type = Object)]
    request: Value,
    /// Where to POST the result.
    #[serde(default)]
    callback_url: Option<String>,
    /// `24h` (the only window, as in OpenAI's Batch API): the job may wait for a provider's
    /// Batch API and is billed at its batch price (about half); it is answered within the
    /// window, by an ordinary call if the batch fails or would finish too late. Refused (400)
    /// unless the operator enabled `[jobs.batch_api]`.
    #[serde(default)]
    #[schema(pattern = "^24h$")]
    completion_window: Option<String>,
}

/// `POST /v1/jobs`
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    params(super::openapi::JobHeaders),
    request_body = CreateJob,
    responses(
        (status = 202, description = "Accepted.", body = crate::jobs::JobView,
            headers(("Location" = String, description = "`/v1/jobs/{id}`"))),
        (status = 404, description = "Unknown model.", body = super::error::ErrorResponse),
        (status = 409, description = "A request with this `Idempotency-Key` is still running.",
            body = super::error::ErrorResponse),
        (status = 422, description = "This `Idempotency-Key` was used with another request.",
            body = super::error::ErrorResponse),
        (status = 429, description = "Over a rate limit or spending cap.",
            body = super::error::ErrorResponse),
    ))]
pub async fn create_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut outcome = Outcome::default();
    let result = async {
        let caller = state.keys.authenticate(&headers).await?;
        outcome.tenant = Some(caller.tenant.clone());
        outcome.key_id = Some(caller.key_id.clone());
        let body = read_body(&state, body)?;
        let key = idempotency::header_key(&headers)?;
        let spec: CreateJob = serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid_request(format!("Invalid job: {e}"), None))?;
        let endpoint = Endpoint::parse(&spec.endpoint).ok_or_else(|| {
            ApiError::invalid_request(
                "`endpoint` must be /v1/chat/completions or /v1/embeddings.",
                Some("endpoint"),
            )
        })?;
        let completion_window_s = match spec.completion_window.as_deref() {
            None => None,
            Some(window) => {
                let seconds = crate::jobs::batch_api::parse_window(window).map_err(|m| {
                    let mut e = ApiError::invalid_request(m, Some("completion_window"));
                    e.code = "invalid_value";
                    e
                })?;
                if !state.jobs.batch_api_enabled() {
                    return Err(ApiError::invalid_request(
                        "`completion_window` needs provider Batch APIs, which this gateway has \
                         not enabled (`[jobs.batch_api] enabled = true`); submit without it.",
                        Some("completion_window"),
                    ));
                }
                Some(seconds)
            }
        };
        let submission = Submission {
            endpoint,
            body: Bytes::from(spec.request.to_string()),
            cache_control: header_str(&headers, header::CACHE_CONTROL.as_str()),
            callback_url: spec.callback_url,
            completion_window_s,
        };
        accept_once(&state, &caller, key, submission).await
    }
    .await;
    finish(result, outcome)
}

/// `GET /v1/jobs/{id}`: the job, to keys of the same tenant only (others get 404).
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "`job_…`")),
    responses(
        (status = 200, description = "The job.", body = crate::jobs::JobView),
        (status = 404, description = "No such job for this tenant.",
            body = super::error::ErrorResponse),
    ))]
pub async fn get_job(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut outcome = Outcome::default();
    let result = async {
        let caller = state.keys.authenticate(&headers).await?;
        outcome.tenant = Some(caller.tenant.clone());
        outcome.key_id = Some(caller.key_id.clone());
        match state.jobs.get(&caller, &id).await? {
            Some(job) => Ok(Json(job_json(&job)).into_response()),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "job_not_found",
                "No job with that id.",
            )),
        }
    }
    .await;
    finish(result, outcome)
}

/// A header's value as a string, if present and visible ASCII.
pub fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
