//! `Idempotency-Key` on the OpenAI POST routes: the same key and request within 24 h get the
//! stored response again — no second provider call, no second charge; the same key with a
//! different request is a 422; while the first is still running, a duplicate gets 409.
//!
//! Keys are scoped by tenant. The request's fingerprint is a SHA-256 of the endpoint and the
//! body in canonical JSON, so key order and whitespace do not make it "different". Responses
//! that are worth retrying (429, 5xx) are not kept: the claim is released instead.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::gateway::cache::canonical_json;
use crate::providers::Endpoint;
use crate::store::{IdempotencyBegin, IdempotencyStore, StoredResponse};

/// How long a finished response is kept for replays.
pub const KEEP_MS: u64 = 24 * 3600 * 1000;
/// How long a claim may stay unfinished before another attempt may take it over.
pub const LEASE_MS: u64 = 10 * 60 * 1000;

/// An idempotent request in flight.
pub struct Claim {
    key: String,
    fingerprint: [u8; 32],
}

/// What to do with a request that carries an `Idempotency-Key`.
pub enum Begin {
    /// Run it, then [`finish`].
    Run(Claim),
    /// Answer with the stored response.
    Replay(StoredResponse),
}

/// The client's `Idempotency-Key`, if any.
pub fn header_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

fn conflict(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, "invalid_request_error", code, message)
}

/// Claims the key for this request, or finds its earlier outcome.
pub async fn begin(
    store: &dyn IdempotencyStore,
    tenant: &str,
    key: &str,
    endpoint: Endpoint,
    body: &Bytes,
    now_ms: u64,
) -> Result<Begin, ApiError> {
    if key.len() > 255 {
        let mut e = conflict(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "`Idempotency-Key` must be at most 255 characters.",
        );
        e.param = Some("Idempotency-Key".into());
        return Err(e);
    }
    let scoped = format!("{tenant}#{}", hex::encode(Sha256::digest(key.as_bytes())));
    let mut h = Sha256::new();
    h.update(endpoint.path().as_bytes());
    h.update([0]);
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => h.update(canonical_json(&v)),
        Err(_) => h.update(body),
    }
    let fingerprint: [u8; 32] = h.finalize().into();
    match store
        .idempotency_begin(&scoped, &fingerprint, now_ms, LEASE_MS)
        .await?
    {
        IdempotencyBegin::Started => Ok(Begin::Run(Claim {
            key: scoped,
            fingerprint,
        })),
        IdempotencyBegin::Replay(stored) => Ok(Begin::Replay(stored)),
        IdempotencyBegin::Mismatch => Err(conflict(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request.",
        )),
        IdempotencyBegin::InProgress => Err(conflict(
            StatusCode::CONFLICT,
            "idempotency_key_in_use",
            "A request with this Idempotency-Key is still being processed.",
        )),
    }
}

/// Keeps the response for replays, or releases the claim if the outcome is worth retrying.
pub async fn finish(
    store: &dyn IdempotencyStore,
    claim: Claim,
    status: StatusCode,
    body: Option<Bytes>,
    now_ms: u64,
) {
    let keep = status != StatusCode::TOO_MANY_REQUESTS && !status.is_server_error();
    let stored = body.filter(|_| keep).map(|body| StoredResponse {
        status: status.as_u16(),
        body,
    });
    // Both writes can be repeated safely. Given up, the key would stay claimed for its lease
    // (a retry of the request is refused as in progress, then runs again).
    let result = crate::store::retrying("recording an idempotent response", |_| async {
        match &stored {
            Some(stored) => {
                store
                    .idempotency_finish(&claim.key, &claim.fingerprint, stored, now_ms + KEEP_MS)
                    .await
            }
            None => store.idempotency_release(&claim.key).await,
        }
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not record an idempotent response");
    }
}
