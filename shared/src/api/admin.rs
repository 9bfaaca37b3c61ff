//! The admin API: create, list and revoke gateway keys. Every route needs the admin key.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::access_log::Outcome;
use super::error::ApiError;
use super::openai::finish;
use crate::keys::{self, BudgetPeriod, KeyLimits, KeyRecord};

/// Body of `POST /admin/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// Tenant the key belongs to.
    pub tenant: String,
    /// Optional label.
    #[serde(default)]
    pub name: Option<String>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Spending cap in USD per `period`.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// `day` or `month` (UTC).
    #[serde(default)]
    pub period: Option<BudgetPeriod>,
}

/// The public view of a key (never the secret, never the hash).
pub fn key_json(k: &KeyRecord) -> Value {
    json!({
        "id": k.id,
        "object": "gateway_key",
        "tenant": k.tenant,
        "name": k.name,
        "hint": k.hint,
        "created_at": k.created_at_ms / 1000,
        "revoked_at": k.revoked_at_ms.map(|t| t / 1000),
        "rpm": k.limits.rpm,
        "tpm": k.limits.tpm,
        "budget_usd": k.limits.budget_usd,
        "period": k.limits.budget_period,
    })
}

fn bad_body(message: String) -> ApiError {
    ApiError::invalid_request(message, None)
}

/// `POST /admin/keys`: creates a key and returns its secret, once.
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
        let mut view = key_json(&new.record);
        view["key"] = Value::String(new.secret);
        Ok::<_, ApiError>((StatusCode::CREATED, Json(view)).into_response())
    }
    .await;
    finish(result, Outcome::default())
}

/// `GET /admin/keys`: every key, without secrets.
pub async fn list_keys(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let result = async {
        state.admin.check(&headers)?;
        let keys = state.store.list_keys().await?;
        let data: Vec<Value> = keys.iter().map(key_json).collect();
        Ok::<_, ApiError>(Json(json!({"object": "list", "data": data})).into_response())
    }
    .await;
    finish(result, Outcome::default())
}

/// `DELETE /admin/keys/{id}`: revokes a key.
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
        Ok(Json(json!({"id": id, "object": "gateway_key", "revoked": true})).into_response())
    }
    .await;
    finish(result, Outcome::default())
}
