//! Authentication: gateway keys for the API, the admin key for `/admin`, the metrics token
//! for `/metrics` (when one is configured).
//!
//! Keys arrive as `Authorization: Bearer …` (OpenAI SDKs) or `x-api-key: …` (Anthropic SDKs),
//! are hashed with SHA-256, found by hash, and compared in constant time. Lookups are cached in
//! memory for `server.key_cache_ttl_s` (default 5 s) so the hot path does not hit the store on
//! every request; a revocation through this process takes effect at once, through another
//! process within that TTL (on DynamoDB, plus the lag of its eventually consistent read, about
//! a second: see `DynamoStore::key_by_hash`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;

use crate::clock::Clock;
use crate::config::Secret;
use crate::gateway::Caller;
use crate::keys::{KeyHash, KeyRecord};
use crate::store::{KeyStore, StoreError};

/// Entries kept before the lookup cache is cleared (bounds memory under a key-guessing flood).
const MAX_CACHED_LOOKUPS: usize = 10_000;

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key in the request
    #[error("no API key")]
    Missing,
    /// Unknown or revoked key
    #[error("invalid API key")]
    Invalid,
    /// A valid key that is not the admin key, on an admin route
    #[error("admin key required")]
    NotAdmin,
    /// The key that submitted a job was revoked before the job ran
    #[error("the job's key was revoked")]
    Revoked,
    /// The key store could not be asked
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The secret presented in a request's headers, if any: a bearer token, else `x-api-key`
/// (also when `Authorization` carries another scheme, such as the SigV4 signature a request
/// to the IAM-authenticated admin function URL carries).
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim()).filter(|k| !k.is_empty());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Checks gateway keys against the store, with a short-lived in-memory cache.
pub struct KeyAuth {
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    cache: Mutex<Lookups>,
}

/// Cached lookups: each key's record (shared, so a hit copies only what the caller needs) or
/// its absence, until a time.
type Lookups = HashMap<KeyHash, (Option<Arc<KeyRecord>>, u64)>;

impl KeyAuth {
    /// A checker over `store`, trusting lookups for `ttl_ms`.
    pub fn new(store: Arc<dyn KeyStore>, clock: Arc<dyn Clock>, ttl_ms: u64) -> Self {
        Self {
            store,
            clock,
            ttl_ms,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller a request's key identifies.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let secret = presented_key(headers).ok_or(AuthError::Missing)?;
        let hash = KeyHash::of(secret);
        let record = self.lookup(&hash).await?;
        match record {
            Some(r) if r.revoked_at_ms.is_none() && r.hash.ct_eq(&hash) => Ok(Caller {
                key_id: r.id.clone(),
                tenant: r.tenant.clone(),
                limits: r.limits.clone(),
            }),
            _ => Err(AuthError::Invalid),
        }
    }

    async fn lookup(&self, hash: &KeyHash) -> Result<Option<Arc<KeyRecord>>, AuthError> {
        let now = self.clock.now_ms();
        if let Some((record, until)) = self.lock().get(hash)
            && now < *until
        {
            return Ok(record.clone());
        }
        let record = self.store.key_by_hash(hash).await?.map(Arc::new);
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED_LOOKUPS {
            cache.clear();
        }
        cache.insert(*hash, (record.clone(), now.saturating_add(self.ttl_ms)));
        Ok(record)
    }

    /// Drops every cached lookup (after a key is created or revoked here).
    pub fn forget_all(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lookups> {
        // The map holds no invariants a panic could break; a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The admin key. It is read at each check, so a rotated key (`crate::secrets`) takes
/// effect without a restart; compared as hashes in constant time.
pub struct AdminKey(Secret);

impl AdminKey {
    /// Checks requests against `secret`'s current value.
    pub fn new(secret: Secret) -> Self {
        Self(secret)
    }

    /// Checks a request for the admin key: 401 without a key, 403 with another one.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let secret = presented_key(headers).ok_or(AuthError::Missing)?;
        if KeyHash::of(secret).ct_eq(&KeyHash::of(&self.0.expose())) {
            Ok(())
        } else {
            Err(AuthError::NotAdmin)
        }
    }
}

/// The bearer token `GET /metrics` requires when `server.metrics_token` is set, read at each
/// check like the admin key.
pub struct MetricsToken(Secret);

impl MetricsToken {
    /// Checks requests against `secret`'s current value.
    pub fn new(secret: Secret) -> Self {
        Self(secret)
    }

    /// Whether the request presents the token (`Authorization: Bearer …` or `x-api-key`),
    /// compared as hashes in constant time.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        presented_key(headers)
            .is_some_and(|secret| KeyHash::of(secret).ct_eq(&KeyHash::of(&self.0.expose())))
    }
}
