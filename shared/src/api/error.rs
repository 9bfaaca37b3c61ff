//! Errors as OpenAI returns them: `{"error":{"message","type","code","param"}}` with the right
//! status. This is the one place domain errors become HTTP; no internal detail crosses it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::AuthError;
use crate::gateway::GatewayError;
use crate::jobs::SubmitError;
use crate::keys::KeySpecError;
use crate::limits::{LimitKind, Refusal};
use crate::providers::ProviderError;
use crate::store::StoreError;

/// The body of every error answer (except on `/v1/messages`): OpenAI's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse<'a> {
    /// What went wrong.
    #[schema(inline)]
    pub error: ErrorBody<'a>,
}

/// OpenAI's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody<'a> {
    /// A sentence for humans.
    pub message: &'a str,
    /// The class of error, e.g. `invalid_request_error`, `rate_limit_error`, `upstream_error`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// A stable machine-readable reason, e.g. `model_not_found`, `rate_limit_exceeded`.
    pub code: &'a str,
    /// The request field at fault, or null.
    #[schema(required = true)]
    pub param: Option<&'a str>,
}

/// An error response.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's `type`.
    pub kind: &'static str,
    /// OpenAI's `code`: a stable machine-readable reason.
    pub code: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A sentence for humans; never internal detail.
    pub message: String,
    /// Seconds for `Retry-After`.
    pub retry_after_s: Option<u64>,
    /// More headers (e.g. `RateLimit-*`).
    pub headers: Box<[(&'static str, String)]>,
}

impl ApiError {
    /// An error with no param and no retry hint.
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            param: None,
            message: message.into(),
            retry_after_s: None,
            headers: Box::new([]),
        }
    }

    /// 400 `invalid_request`: the request is malformed; `param` names the field at fault.
    pub fn invalid_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        );
        e.param = param.map(str::to_owned);
        e
    }

    /// 404 for a path that does not exist.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            format!("Unrecognized request URL ({path})."),
        )
    }

    /// 404 for `/admin/*` on a public endpoint: the admin API is served only by the admin
    /// function, behind IAM authentication.
    pub fn admin_not_served(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "admin_not_served",
            format!(
                "The admin API ({path}) is not served on this endpoint. Call the admin \
                 function's URL (stack output AdminUrl) with AWS IAM (SigV4) credentials."
            ),
        )
    }

    /// 413 for an answer too large for a buffered Lambda response (`limit` bytes, the
    /// invocation payload limit), which would otherwise reach the client as an opaque 502.
    pub fn response_too_large(size: usize, limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "response_too_large",
            format!(
                "The answer ({size} bytes as a Lambda response) is larger than the {limit}-byte \
                 (6 MB) limit of a buffered Lambda response behind API Gateway. Ask for less \
                 per request (fewer embedding inputs, fewer `dimensions`, or \
                 `encoding_format: \"base64\"`), or send the request to the streaming \
                 endpoint (stack output StreamUrl), whose answers may be up to 200 MB."
            ),
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn wrong_method() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "This route does not accept that HTTP method.",
        )
    }

    /// 413 for a body over the configured limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the {limit}-byte limit."),
        )
    }

    /// 400 for a body that could not be read.
    pub fn unreadable_body() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_body",
            "The request body could not be read.",
        )
    }

    /// 408 for a body that did not arrive within `server.body_read_timeout_s`; the
    /// connection is closed after it (the rest of the body may still be coming).
    pub fn body_timeout() -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            "The request body did not arrive in time.",
        );
        e.headers = Box::new([("connection", "close".to_owned())]);
        e
    }

    /// 401 on `/metrics` without the configured `server.metrics_token`.
    pub fn metrics_token_required() -> Self {
        let mut e = Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_metrics_token",
            "`/metrics` needs `Authorization: Bearer <server.metrics_token>`.",
        );
        e.headers = Box::new([("www-authenticate", "Bearer".to_owned())]);
        e
    }

    /// 503 when a dependency the request needs is down.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "service_unavailable",
            "Sluice is temporarily unable to serve this request. Please retry.",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorBody {
                message: &self.message,
                kind: self.kind,
                code: self.code,
                param: self.param.as_deref(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        for (name, value) in self.headers.into_vec() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
        response
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "missing_api_key",
                "You didn't provide an API key. Send it as `Authorization: Bearer sk-sluice-…`.",
            ),
            AuthError::Invalid => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "Incorrect API key provided.",
            ),
            AuthError::Revoked => Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "key_revoked",
                "The API key that submitted this job was revoked before the job ran; it was not \
                 sent to the provider and not billed.",
            ),
            AuthError::NotAdmin => Self::new(
                StatusCode::FORBIDDEN,
                "permission_error",
                "admin_key_required",
                "This route needs the admin key.",
            ),
            AuthError::Store(_) => Self::unavailable(),
        }
    }
}

impl From<KeySpecError> for ApiError {
    fn from(e: KeySpecError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_key_spec",
            e.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(_) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                "The request is too large to keep as a job.",
            ),
            e => {
                tracing::error!(error = %e, "store error");
                Self::unavailable()
            }
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Gateway(e) => e.into(),
            SubmitError::Store(e) => e.into(),
            SubmitError::Callback(e) => {
                let mut err = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "invalid_callback_url",
                    e.to_string(),
                );
                err.param = Some("callback_url".into());
                err
            }
            SubmitError::Queue(e) => {
                tracing::error!(error = %e, "job queue error");
                Self::unavailable()
            }
        }
    }
}

impl From<GatewayError> for ApiError {
    fn from(e: GatewayError) -> Self {
        match e {
            GatewayError::Invalid(inv) => {
                Self::invalid_request(inv.to_string(), inv.param().as_deref())
            }
            GatewayError::UnknownModel(name) => {
                let mut err = Self::new(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    "model_not_found",
                    format!(
                        "The model `{}` does not exist or you do not have access to it.",
                        name.chars().take(200).collect::<String>()
                    ),
                );
                err.param = Some("model".into());
                err
            }
            GatewayError::NoDeployment(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "no_deployment",
                "No deployment is available for this model.",
            ),
            GatewayError::Upstream { error, .. } => upstream(error),
            GatewayError::Store(e) => e.into(),
            GatewayError::Limited(refusal) if refusal.impossible => beyond_capacity(&refusal),
            GatewayError::Limited(refusal) => limited(&refusal),
            GatewayError::Unpriced(model) => {
                let mut err = Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "model_not_priced",
                    format!(
                        "The model `{model}` has no price, so it cannot be billed against a \
                         spending cap. The operator must set `price` for it in the config."
                    ),
                );
                err.param = Some("model".into());
                err
            }
            GatewayError::AllUnavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream_error",
                "no_deployment_available",
                "Every provider for this model is failing right now. Please retry shortly.",
            ),
        }
    }
}

/// 400 for a request that needs more than a limit's whole capacity: retrying cannot help,
/// so it gets no `Retry-After`; the message names the limit and by how much it is over.
fn beyond_capacity(r: &Refusal) -> ApiError {
    let over = r.asked.saturating_sub(r.limit);
    let (code, message, param) = match r.kind {
        // The gateway-wide cap is the operator's figure: a key learns that its request is
        // beyond it, not how large it is (see `limited`).
        LimitKind::Budget if r.level == crate::limits::Level::Gateway => (
            "request_exceeds_budget",
            format!(
                "This request could cost up to ${:.9} (every prompt byte a token, every choice \
                 at its output maximum), more than the gateway's whole spending cap {}. \
                 Retrying cannot help: lower `max_tokens`, `n` or the prompt.",
                r.asked as f64 / 1e9,
                r.metric.trim_start_matches("spend "),
            ),
            "max_tokens",
        ),
        // A cap split into parts (shards, so many instances can charge it at once): one
        // request's reservation must fit one part, and the message says so — naming the
        // part as the whole cap would contradict the operator's configured figure.
        LimitKind::Budget if r.shards > 1 => (
            "request_exceeds_budget",
            format!(
                "This request could cost up to ${:.9} (every prompt byte a token, every choice \
                 at its output maximum), more than one part of this {}'s spending cap of ${:.9} \
                 {}: the cap is split into {} parts of up to ${:.9} so that concurrent requests \
                 can charge it at once, and one request must fit one part (over by ${:.9}). \
                 Retrying cannot help: lower `max_tokens`, `n` or the prompt.",
                r.asked as f64 / 1e9,
                r.level,
                r.whole as f64 / 1e9,
                r.metric.trim_start_matches("spend "),
                r.shards,
                r.limit as f64 / 1e9,
                over as f64 / 1e9,
            ),
            "max_tokens",
        ),
        LimitKind::Budget => (
            "request_exceeds_budget",
            format!(
                "This request could cost up to ${:.9} (every prompt byte a token, every choice \
                 at its output maximum), more than this {}'s whole spending cap of ${:.9} {} \
                 (over by ${:.9}). Retrying cannot help: lower `max_tokens`, `n` or the prompt.",
                r.asked as f64 / 1e9,
                r.level,
                r.limit as f64 / 1e9,
                r.metric.trim_start_matches("spend "),
                over as f64 / 1e9,
            ),
            "max_tokens",
        ),
        LimitKind::Rate if r.shards > 1 => (
            "request_exceeds_rate_limit",
            format!(
                "This request needs up to {} of this {}'s {}, more than one part of its limit \
                 of {}: the limit is split into {} parts of up to {} so that concurrent \
                 requests can count against it at once, and one request must fit one part \
                 (over by {}). Retrying cannot help: lower `max_tokens`, `n` or the prompt.",
                r.asked, r.level, r.metric, r.whole, r.shards, r.limit, over,
            ),
            "max_tokens",
        ),
        LimitKind::Rate => (
            "request_exceeds_rate_limit",
            format!(
                "This request needs up to {} of this {}'s {}, more than the whole limit of {} \
                 (over by {}). Retrying cannot help: lower `max_tokens`, `n` or the prompt.",
                r.asked, r.level, r.metric, r.limit, over,
            ),
            "max_tokens",
        ),
    };
    let mut e = ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        code,
        message,
    );
    // A limit of zero requests per minute is no parameter's fault.
    e.param = (r.asked > 1 || r.kind == LimitKind::Budget).then(|| param.into());
    e
}

/// 429 for a request over a rate limit or spending cap, with `Retry-After` and the IETF
/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` headers.
fn limited(r: &Refusal) -> ApiError {
    // The gateway-wide cap is the operator's figure (`/admin/usage`): a key learns that it
    // was reached and when it resets, not how large it is or what is left of it.
    let gateway = r.level == crate::limits::Level::Gateway;
    let (code, message) = match r.kind {
        LimitKind::Rate => (
            "rate_limit_exceeded",
            format!(
                "Rate limit reached for this {}: {} {}. Retry in {} s.",
                r.level, r.limit, r.metric, r.retry_after_s
            ),
        ),
        LimitKind::Budget if gateway => (
            "budget_exceeded",
            format!(
                "The gateway's spending cap is reached. It resets in {} s.",
                r.reset_s
            ),
        ),
        LimitKind::Budget => (
            "budget_exceeded",
            format!(
                "Spending cap reached for this {}: ${:.6} {}. It resets in {} s.",
                r.level,
                r.limit as f64 / 1e9,
                r.metric,
                r.reset_s
            ),
        ),
    };
    let mut e = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        code,
        message,
    );
    e.retry_after_s = Some(r.retry_after_s);
    e.headers = if gateway {
        Box::new([("ratelimit-reset", r.reset_s.to_string())])
    } else {
        Box::new([
            ("ratelimit-limit", r.limit.to_string()),
            ("ratelimit-remaining", r.remaining.to_string()),
            ("ratelimit-reset", r.reset_s.to_string()),
        ])
    };
    e
}

fn upstream(error: ProviderError) -> ApiError {
    const KIND: &str = "upstream_error";
    let rejected = error.rejects_request();
    match error {
        ProviderError::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            KIND,
            "upstream_timeout",
            "The provider did not answer in time.",
        ),
        ProviderError::Connect(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            KIND,
            "upstream_unreachable",
            "The provider could not be reached.",
        ),
        ProviderError::Malformed(_) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            KIND,
            "upstream_bad_response",
            "The provider returned a malformed answer.",
        ),
        // The model is documented to refuse a parameter: name it, as OpenAI does.
        ProviderError::Unsupported { param, message } => {
            let mut e = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "unsupported_parameter",
                message,
            );
            e.param = Some(param);
            e
        }
        // The provider judged the request itself invalid: pass its reason on.
        ProviderError::Status {
            status, message, ..
        } if rejected => {
            let mut e = ApiError::new(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                "upstream_rejected_request",
                format!(
                    "The provider rejected the request: {}",
                    message.as_deref().unwrap_or("no reason given")
                ),
            );
            e.param = None;
            e
        }
        ProviderError::Status {
            status,
            retry_after,
            ..
        } => match status {
            // The client's key is fine; it is the gateway's provider credentials that failed.
            401 | 403 => ApiError::new(
                StatusCode::BAD_GATEWAY,
                KIND,
                "upstream_auth_failed",
                "The provider refused the gateway's credentials.",
            ),
            429 => {
                let mut e = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "upstream_rate_limited",
                    "The provider is rate limiting requests. Please retry later.",
                );
                e.retry_after_s =
                    Some(retry_after.map_or(1, |d| crate::num::f64_to_u64(d.as_secs_f64().ceil())));
                e
            }
            408 | 504 => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                KIND,
                "upstream_timeout",
                "The provider did not answer in time.",
            ),
            _ => ApiError::new(
                StatusCode::BAD_GATEWAY,
                KIND,
                "upstream_failed",
                format!("The provider failed (HTTP {status})."),
            ),
        },
    }
}
