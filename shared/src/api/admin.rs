//! The admin API: create, list and revoke gateway keys. Every route needs the admin key.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::openai::finish;
use crate::keys::{self, BudgetPeriod, KeyLimits, KeyRecord};

/// Body of `POST /admin/keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Tenant the key belongs to: 1 to 128 characters once trimmed.
    #[schema(min_length = 1, max_length = 128)]
    pub tenant: String,
    /// Optional label.
    #[serde(default)]
    pub name: Option<String>,
    /// Requests per minute (at least 1).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub rpm: Option<u32>,
    /// Tokens per minute (at least 1).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub tpm: Option<u32>,
    /// Spending cap in USD per `period` (positive; give `period` with it).
    #[serde(default)]
    #[schema(exclusive_minimum = 0)]
    pub budget_usd: Option<f64>,
    /// `day` or `month` (UTC).
    #[serde(default)]
    pub period: Option<BudgetPeriod>,
}

/// The public view of a key (never the secret, never the hash).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = GatewayKey)]
pub struct KeyView {
    /// Public identifier, `key_…`.
    pub id: String,
    /// Always `gateway_key`.
    pub object: &'static str,
    /// The tenant the key belongs to.
    pub tenant: String,
    /// Free-form label, or null.
    #[schema(required = true)]
    pub name: Option<String>,
    /// The first characters of the secret, for recognising it.
    pub hint: String,
    /// Created at, Unix seconds.
    pub created_at: u64,
    /// Revoked at, Unix seconds, or null.
    #[schema(required = true)]
    pub revoked_at: Option<u64>,
    /// Requests per minute, or null for no limit.
    #[schema(required = true)]
    pub rpm: Option<u32>,
    /// Tokens per minute, or null for no limit.
    #[schema(required = true)]
    pub tpm: Option<u32>,
    /// Spending cap in USD per `period`, or null.
    #[schema(required = true)]
    pub budget_usd: Option<f64>,
    /// The period of `budget_usd`, or null.
    #[schema(required = true)]
    pub period: Option<BudgetPeriod>,
}

impl KeyView {
    /// The view of `k`.
    pub fn of(k: &KeyRecord) -> Self {
        Self {
            id: k.id.clone(),
            object: "gateway_key",
            tenant: k.tenant.clone(),
            name: k.name.clone(),
            hint: k.hint.clone(),
            created_at: k.created_at_ms / 1000,
            revoked_at: k.revoked_at_ms.map(|t| t / 1000),
            rpm: k.limits.rpm,
            tpm: k.limits.tpm,
            budget_usd: k.limits.budget_usd,
            period: k.limits.budget_period,
        }
    }
}

/// The answer of `POST /admin/keys`: the key and, this once, its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub view: KeyView,
    /// The secret, `sk-sluice-…`; shown only in this answer.
    pub key: String,
}

/// The answer of `GET /admin/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Always `list`.
    pub object: &'static str,
    /// Every key, revoked ones included.
    pub data: Vec<KeyView>,
}

/// The answer of `DELETE /admin/keys/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKey {
    /// The key's id.
    pub id: String,
    /// Always `gateway_key`.
    pub object: &'static str,
    /// Always true.
    pub revoked: bool,
}

/// The public JSON view of a key (never the secret, never the hash).
pub fn key_json(k: &KeyRecord) -> Value {
    serde_json::to_value(KeyView::of(k)).unwrap_or(Value::Null)
}

fn bad_body(message: String) -> ApiError {
    ApiError::invalid_request(message, None)
}

/// `POST /admin/keys`: creates a key and returns its secret, once.
#[utoipa::path(post, path = "/admin/keys", tag = "admin",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, with its secret (shown this once).",
            body = CreatedKey),
        (status = 403, description = "Not the admin key.", body = super::error::ErrorResponse),
    ))]
pub async fn create_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = async {
        state.admin.check(&headers)?;
        let body = super::openai::read_body(&state, body)?;
        let spec: CreateKeyRequest = serde_json::from_slice(&body)
            .map_err(|e| bad_body(format!("Invalid key request: {e}")))?;
        let limits = KeyLimits {
            rpm: spec.rpm,
            tpm: spec.tpm,
            budget_usd: spec.budget_usd,
            budget_period: spec.period,
        };
        let new = keys::generate(&spec.tenant, spec.name, limits, state.clock.now_ms())?;
        state.store.insert_key(&new.record).await?;
        let view = CreatedKey {
            view: KeyView::of(&new.record),
            key: new.secret,
        };
        Ok::<_, ApiError>((StatusCode::CREATED, Json(view)).into_response())
    }
    .await;
    finish(result, Outcome::default())
}

/// `GET /admin/keys`: every key, without secrets.
#[utoipa::path(get, path = "/admin/keys", tag = "admin",
    responses(
        (status = 200, description = "Every key, without secrets.", body = KeyList),
        (status = 403, description = "Not the admin key.", body = super::error::ErrorResponse),
    ))]
pub async fn list_keys(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let result = async {
        state.admin.check(&headers)?;
        let keys = state.store.list_keys().await?;
        let data = keys.iter().map(KeyView::of).collect();
        Ok::<_, ApiError>(
            Json(KeyList {
                object: "list",
                data,
            })
            .into_response(),
        )
    }
    .await;
    finish(result, Outcome::default())
}

/// `DELETE /admin/keys/{id}`: revokes a key.
#[utoipa::path(delete, path = "/admin/keys/{id}", tag = "admin",
    params(("id" = String, Path, description = "`key_…`")),
    responses(
        (status = 200, description = "Revoked.", body = RevokedKey),
        (status = 403, description = "Not the admin key.", body = super::error::ErrorResponse),
        (status = 404, description = "No active key has that id.",
            body = super::error::ErrorResponse),
    ))]
pub async fn revoke_key(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        state.admin.check(&headers)?;
        if !state.store.revoke_key(&id, state.clock.now_ms()).await? {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "key_not_found",
                "No active key has that id.",
            ));
        }
        // Take effect at once in this process rather than after the lookup cache's TTL.
        state.keys.forget_all();
        Ok(Json(RevokedKey {
            id,
            object: "gateway_key",
            revoked: true,
        })
        .into_response())
    }
    .await;
    finish(result, Outcome::default())
}

/// Fallback of the public routers ([`super::Surface::Public`]): `/admin` and `/admin/*` are
/// served only by the admin function, so they answer 404 `admin_not_served` here whatever the
/// credentials; any other unknown path is the usual 404 `unknown_url`.
pub async fn not_served_here(OriginalUri(uri): OriginalUri) -> Response {
    let path = uri.path();
    if path == "/admin" || path.starts_with("/admin/") {
        finish(Err(ApiError::admin_not_served(path)), Outcome::default())
    } else {
        super::openai::no_route(OriginalUri(uri)).await
    }
}
