//! A string that must never be printed: provider API keys, the admin key, tokens.
//!
//! A secret can change while the process runs: on Lambda the values come from Secrets Manager
//! and are read again on a TTL (`crate::secrets`), so a rotated key takes effect without a
//! redeploy. Clones therefore share one cell: the catalog's deployments, the admin check and
//! the body-log redactor hold clones of the secrets in the config, and a rotation that
//! replaces the value reaches every one of them. Each use reads the current value.

use std::sync::{Arc, RwLock};

use serde::Deserialize;

/// A secret value. `Debug` and `Display` print a placeholder; [`Secret::expose`] is the only
/// way to the value, so every use of a key is easy to find. Clones share the value.
#[derive(Clone)]
pub struct Secret(Arc<RwLock<Arc<str>>>);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(Arc::from(value.into()))))
    }

    /// The current value, for the one place that sends or checks it.
    pub fn expose(&self) -> Arc<str> {
        // A panic while holding the lock cannot leave a half-written `Arc`: still usable.
        Arc::clone(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the value for this secret and every clone of it; whether it changed.
    pub(crate) fn replace(&self, value: &str) -> bool {
        let mut current = self.0.write().unwrap_or_else(|p| p.into_inner());
        if **current == *value {
            return false;
        }
        *current = Arc::from(value);
        true
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_a_replaced_value_and_nothing_prints_it() {
        let a = Secret::new("sk-old");
        let b = a.clone();
        let other = Secret::new("sk-old");
        assert!(a.replace("sk-new"));
        assert!(!a.replace("sk-new"), "the same value is no change");
        assert_eq!(&*b.expose(), "sk-new");
        assert_eq!(
            &*other.expose(),
            "sk-old",
            "a separate secret keeps its value"
        );
        let shown = format!("{a:?} {a} {b:?}");
        assert!(!shown.contains("sk-"), "{shown}");
    }
}
