//! `GET /v1/metrics?from=&to=&group_by=model|provider|tenant&step=1m|1h`: usage rollups as
//! series. A gateway key sees its own tenant; the admin key sees every tenant (or one, with
//! `&tenant=`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::openai::finish;
use crate::metrics::query::{self, GroupBy};

/// The window when none is given.
const DEFAULT_WINDOW_S: u64 = 3600;
/// Widest window per step: two days of minutes, 31 days of hours.
const MAX_MINUTE_WINDOW_S: u64 = 2 * 86_400;
const MAX_HOUR_WINDOW_S: u64 = 31 * 86_400;

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid_request(message, Some(param))
}

fn seconds(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| bad(name, format!("`{name}` must be a Unix time in seconds.")))
        })
        .transpose()
}

/// `GET /v1/metrics`
#[utoipa::path(get, path = "/v1/metrics", tag = "usage",
    params(super::openapi::MetricsParams),
    responses(
        (status = 200, description = "Usage rollups as series.",
            body = super::openapi::MetricsSeries),
        (status = 400, description = "A bad parameter (`param` names it).",
            body = super::error::ErrorResponse),
    ))]
pub async fn metrics(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let mut outcome = Outcome::default();
    let result = async {
        let tenant = if state.admin.check(&headers).is_ok() {
            params.get("tenant").filter(|t| !t.is_empty()).cloned()
        } else {
            let caller = state.keys.authenticate(&headers).await?;
            outcome.tenant = Some(caller.tenant.clone());
            outcome.key_id = Some(caller.key_id.clone());
            if params.contains_key("tenant") {
                return Err(bad("tenant", "Only the admin key can choose a tenant."));
            }
            Some(caller.tenant)
        };
        let step_s = match params.get("step").map(String::as_str) {
            None | Some("1m") => 60,
            Some("1h") => 3600,
            Some(_) => return Err(bad("step", "`step` must be `1m` or `1h`.")),
        };
        let group_by = match params.get("group_by") {
            None => GroupBy::Model,
            Some(g) => GroupBy::parse(g).ok_or_else(|| {
                bad(
                    "group_by",
                    "`group_by` must be `model`, `provider` or `tenant`.",
                )
            })?,
        };
        if group_by == GroupBy::Tenant && outcome.key_id.is_some() {
            return Err(bad("group_by", "Only the admin key can group by tenant."));
        }
        let now_s = state.clock.now_ms() / 1000;
        // The current step is included: `to` defaults to the end of it.
        let to_s = seconds(&params, "to")?.unwrap_or((now_s / step_s + 1) * step_s);
        let from_s = seconds(&params, "from")?.unwrap_or(to_s.saturating_sub(DEFAULT_WINDOW_S))
            / step_s
            * step_s;
        let widest = if step_s == 60 {
            MAX_MINUTE_WINDOW_S
        } else {
            MAX_HOUR_WINDOW_S
        };
        if to_s <= from_s {
            return Err(bad("from", "`from` must be before `to`."));
        }
        if to_s - from_s > widest {
            return Err(bad(
                "from",
                format!(
                    "The window is at most {} days at step {}.",
                    widest / 86_400,
                    if step_s == 60 { "1m" } else { "1h" }
                ),
            ));
        }
        let rows = state.store.rollups(tenant.as_deref(), from_s, to_s).await?;
        let q = query::Query {
            from_s,
            to_s,
            step_s,
            group_by,
            tenant: tenant.as_deref(),
        };
        Ok::<_, ApiError>(Json(query::series(&rows, &q)).into_response())
    }
    .await;
    finish(result, outcome)
}

/// `GET /metrics`: this process's Prometheus text (404 where it is not kept, e.g. Lambda).
/// Open unless `server.metrics_token` is set; then that token as a bearer token, else 401.
#[utoipa::path(get, path = "/metrics", tag = "meta", security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition.", body = String,
            content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`server.metrics_token` is set and the request does not \
            present it.", body = super::error::ErrorResponse),
        (status = 404, description = "Not kept by this process (Lambda).",
            body = super::error::ErrorResponse),
    ))]
pub async fn prometheus(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
) -> Response {
    if let Some(token) = &state.metrics_token
        && !token.admits(&headers)
    {
        return finish(Err(ApiError::metrics_token_required()), Outcome::default());
    }
    #[cfg(feature = "prometheus")]
    if let Some(prometheus) = &state.prometheus {
        let text = prometheus.render(state.gateway.catalog(), state.clock.now_ms());
        return (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response();
    }
    let _ = &state;
    finish(Err(ApiError::no_route(uri.path())), Outcome::default())
}
