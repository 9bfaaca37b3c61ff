//! Gateway keys: how they are made, hashed and described.
//!
//! A key is shown once when created and stored only as its SHA-256 hash; the hash is what the
//! store indexes and what is compared (in constant time) on every request.

use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every gateway key starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "sk-sluice-";

/// SHA-256 of a secret key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// Hashes a presented secret.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Constant-time comparison, so response timing says nothing about how much matched.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Lower-case hex, as stored.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the stored hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(Self(out))
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

/// The period a spending cap applies to (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
}

impl BudgetPeriod {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Self::Day),
            "month" => Some(Self::Month),
            _ => None,
        }
    }
}

/// Limits attached to a key. Stored now; enforced by `limits`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Spending cap in USD per `budget_period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// The period of `budget_usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_period: Option<BudgetPeriod>,
}

/// A stored gateway key: everything but the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// Public identifier, e.g. `key_3fK9…`; safe to log.
    pub id: String,
    /// SHA-256 of the secret.
    pub hash: KeyHash,
    /// The first characters of the secret, for recognising it in lists.
    pub hint: String,
    /// The tenant the key belongs to; every cache entry and job is scoped by it.
    pub tenant: String,
    /// Free-form label.
    pub name: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// Set once the key is revoked.
    pub revoked_at_ms: Option<u64>,
    /// Rate limits and spending cap.
    pub limits: KeyLimits,
}

/// A newly created key: the record to store and the secret to show once.
pub struct NewKey {
    /// What the store keeps.
    pub record: KeyRecord,
    /// The secret; shown to the creator once and never stored.
    pub secret: String,
}

/// Why a key cannot be created as asked.
#[derive(Debug, thiserror::Error)]
pub enum KeySpecError {
    /// Missing tenant name in the key request
    #[error("`tenant` must be a non-empty name of at most 128 characters")]
    BadTenant,
    /// Budget without a positive finite amount
    #[error("`budget_usd` must be a positive number")]
    BadBudget,
    /// Period given without a budget, or a budget without a period
    #[error("`budget_usd` and `period` must be given together")]
    BudgetWithoutPeriod,
    /// A zero rate limit would block every request
    #[error("`{0}` must be at least 1")]
    ZeroLimit(&'static str),
}

/// Makes a new key for `tenant` with a fresh random secret.
pub fn generate(
    tenant: &str,
    name: Option<String>,
    limits: KeyLimits,
    now_ms: u64,
) -> Result<NewKey, KeySpecError> {
    let tenant = tenant.trim();
    if tenant.is_empty() || tenant.len() > 128 {
        return Err(KeySpecError::BadTenant);
    }
    if let Some(b) = limits.budget_usd
        && !(b.is_finite() && b > 0.0)
    {
        return Err(KeySpecError::BadBudget);
    }
    if limits.budget_usd.is_some() != limits.budget_period.is_some() {
        return Err(KeySpecError::BudgetWithoutPeriod);
    }
    if limits.rpm == Some(0) {
        return Err(KeySpecError::ZeroLimit("rpm"));
    }
    if limits.tpm == Some(0) {
        return Err(KeySpecError::ZeroLimit("tpm"));
    }
    // ThreadRng is a CSPRNG seeded from the OS; 40 alphanumerics carry ~238 bits.
    let secret = random_id(KEY_PREFIX, 40);
    let record = KeyRecord {
        id: random_id("key_", 16),
        hash: KeyHash::of(&secret),
        hint: format!("{}…", &secret[..KEY_PREFIX.len() + 4]),
        tenant: tenant.to_owned(),
        name,
        created_at_ms: now_ms,
        revoked_at_ms: None,
        limits,
    };
    Ok(NewKey { record, secret })
}

/// Random ASCII letters and digits from the thread's CSPRNG.
pub fn random_alnum(len: usize) -> String {
    random_id("", len)
}

/// `prefix` followed by `len` random ASCII letters and digits from the thread's CSPRNG, in one
/// allocation (request, event and hold ids are made on every request).
pub fn random_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(len)
            .map(char::from),
    );
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_hash_to_their_record_and_differ() {
        let a = generate("t1", None, KeyLimits::default(), 1).unwrap();
        let b = generate("t1", None, KeyLimits::default(), 1).unwrap();
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_ne!(a.secret, b.secret);
        assert_ne!(a.record.id, b.record.id);
        assert!(KeyHash::of(&a.secret).ct_eq(&a.record.hash));
        assert!(!KeyHash::of(&b.secret).ct_eq(&a.record.hash));
        assert!(!a.record.hint.contains(&a.secret[KEY_PREFIX.len() + 4..]));
        assert_eq!(
            KeyHash::from_hex(&a.record.hash.to_hex()),
            Some(a.record.hash)
        );
    }

    #[test]
    fn key_specs_are_checked() {
        let budget = KeyLimits {
            budget_usd: Some(1.0),
            ..KeyLimits::default()
        };
        assert!(matches!(
            generate("t", None, budget, 0),
            Err(KeySpecError::BudgetWithoutPeriod)
        ));
        assert!(matches!(
            generate(" ", None, KeyLimits::default(), 0),
            Err(KeySpecError::BadTenant)
        ));
        let zero = KeyLimits {
            rpm: Some(0),
            ..KeyLimits::default()
        };
        assert!(matches!(
            generate("t", None, zero, 0),
            Err(KeySpecError::ZeroLimit("rpm"))
        ));
    }
}
