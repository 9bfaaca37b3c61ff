//! `GET /v1/usage` (the calling key's limits and where it stands: its key and tenant levels)
//! and `GET /admin/usage` (a tenant's, and the gateway-wide budget, for the admin).

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
use crate::keys::KeyLimits;
use crate::limits::{GatewayLevel, Subject};

/// `GET /v1/usage`: rate windows and spend of the calling key and its tenant. The gateway-wide
/// budget is not a key's business: it is on `/admin/usage`.
#[utoipa::path(get, path = "/v1/usage", tag = "usage",
    responses((status = 200, description = "The key's and its tenant's limits and where they \
        stand (the gateway-wide budget is on `/admin/usage`).",
        body = super::openapi::UsageReport)))]
pub async fn key_usage(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut outcome = Outcome::default();
    let result = async {
        let caller = state.keys.authenticate(&headers).await?;
        outcome.tenant = Some(caller.tenant.clone());
        outcome.key_id = Some(caller.key_id.clone());
        let usage = state
            .gateway
            .limiter()
            .usage(&caller.subject(), GatewayLevel::Hidden)
            .await?;
        Ok::<_, ApiError>(Json(usage).into_response())
    }
    .await;
    finish(result, outcome)
}

/// `GET /admin/usage?tenant=NAME`: the tenant's and the gateway's limits and spend.
#[utoipa::path(get, path = "/admin/usage", tag = "admin",
    params(("tenant" = String, Query, description = "The tenant", min_length = 1)),
    responses(
        (status = 200, description = "The tenant's and the gateway's limits and spend.",
            body = super::openapi::UsageReport),
        (status = 400, description = "No `tenant`.", body = super::error::ErrorResponse),
        (status = 403, description = "Not the admin key.", body = super::error::ErrorResponse),
    ))]
pub async fn tenant_usage(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        state.admin.check(&headers)?;
        let Some(tenant) = query.get("tenant").filter(|t| !t.is_empty()) else {
            return Err(ApiError::invalid_request(
                "Give the tenant as `?tenant=NAME`.",
                Some("tenant"),
            ));
        };
        let no_key = KeyLimits::default();
        let subject = Subject {
            key_id: "",
            tenant,
            key_limits: &no_key,
        };
        let mut usage = state
            .gateway
            .limiter()
            .usage(&subject, GatewayLevel::Shown)
            .await?;
        if let Some(obj) = usage.as_object_mut() {
            obj.remove("key_id");
        }
        Ok(Json(usage).into_response())
    }
    .await;
    finish(result, Outcome::default())
}
