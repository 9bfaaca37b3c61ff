//! Secrets of the Lambda functions: read from Secrets Manager by ARN at start-up, cached, and
//! read again on a TTL, so a rotated secret takes effect without a redeploy and no secret
//! value is ever in a function's configuration (only the ARNs are in its environment).
//!
//! Two secrets, each optional:
//! - the provider secret (`SLUICE_PROVIDER_SECRET_ARN`): a JSON object of strings such as
//!   `{"OPENAI_API_KEY":"sk-..."}`, for the config's `${VAR}` placeholders (the environment
//!   first, then the secret). A rotation resolves the same config text again and gives the
//!   new values to the config's [`Secret`]s, which every deployment of the model catalog
//!   shares, so the next provider call sends the new key.
//! - the admin key secret (`SLUICE_ADMIN_KEY_SECRET_ARN`): the admin key itself, whole.
//!
//! A frozen Lambda environment runs no timers, so nothing refreshes in the background: the
//! function calls [`FunctionSecrets::refresh_if_due`] as an invocation starts (one
//! `GetSecretValue` per secret per TTL per environment, `SLUICE_SECRETS_TTL_S`, default 300).
//! A refresh that fails or times out keeps the values in use, logs why (the secret's id and
//! the error, never a value) and is tried again after at most [`RETRY_AFTER_FAILURE_MS`].
//! A secret that cannot be read at start-up is a start-up error that names it.
//!
//! `sluice serve` does not use this: it reads its keys from the environment and config.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Clock;
use crate::config::{
    Config, ConfigError, ConfigSource, Secret, lookup_env, lookup_env_then_secret,
};
#[cfg(feature = "aws")]
use crate::deps::StartError;

/// How long a read secret is used before it is read again, unless `SLUICE_SECRETS_TTL_S` says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A failed refresh is tried again after the TTL or this, whichever is sooner.
pub const RETRY_AFTER_FAILURE_MS: u64 = 30_000;

/// How long a refresh may hold up the invocation that runs it; then the old values serve.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a function's secrets could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The secret could not be read (no such secret, no permission, no `SecretString`...).
    #[error("cannot read secret {id}: {message}")]
    Read { id: String, message: String },
    /// The config does not resolve with the provider secret's values.
    #[error("config with the provider secret {id}: {source}")]
    Config { id: String, source: ConfigError },
    /// A setting in the environment is malformed.
    #[error("{0}")]
    Setting(String),
}

/// Reads a secret's current value by id (ARN or name).
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync {
    /// The secret's current string value. The error never holds the value.
    async fn current(&self, id: &str) -> Result<String, String>;
}

/// Secrets Manager through the AWS SDK (`GetSecretValue`, the `AWSCURRENT` version).
#[cfg(feature = "aws")]
pub struct SecretsManager(aws_sdk_secretsmanager::Client);

#[cfg(feature = "aws")]
impl SecretsManager {
    /// Reads through `client`.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self(client)
    }
}

#[cfg(feature = "aws")]
#[async_trait::async_trait]
impl SecretSource for SecretsManager {
    async fn current(&self, id: &str) -> Result<String, String> {
        let out = self
            .0
            .get_secret_value()
            .secret_id(id)
            .send()
            .await
            .map_err(|e| aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string())?;
        out.secret_string
            .ok_or_else(|| "it has no SecretString (binary secrets are not supported)".to_owned())
    }
}

/// Which secrets a function reads, and how often (from its environment).
#[derive(Debug, Clone)]
pub struct SecretIds {
    /// `SLUICE_PROVIDER_SECRET_ARN`: the JSON object of provider keys.
    pub provider: Option<String>,
    /// `SLUICE_ADMIN_KEY_SECRET_ARN`: the admin key.
    pub admin_key: Option<String>,
    /// `SLUICE_SECRETS_TTL_S`: how long a read value is used.
    pub ttl: Duration,
    /// Whether the function calls providers. One that does not (the admin function) resolves
    /// its config without a provider secret, leaving the provider keys unresolved.
    pub calls_providers: bool,
}

impl SecretIds {
    /// From `SLUICE_PROVIDER_SECRET_ARN`, `SLUICE_ADMIN_KEY_SECRET_ARN` and
    /// `SLUICE_SECRETS_TTL_S` (empty values count as unset).
    pub fn from_env() -> Result<Self, SecretsError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let ttl = match var("SLUICE_SECRETS_TTL_S") {
            None => DEFAULT_TTL,
            Some(s) => Duration::from_secs(s.trim().parse().map_err(|_| {
                SecretsError::Setting(format!(
                    "SLUICE_SECRETS_TTL_S must be a whole number of seconds, not `{s}`"
                ))
            })?),
        };
        Ok(Self {
            provider: var("SLUICE_PROVIDER_SECRET_ARN"),
            admin_key: var("SLUICE_ADMIN_KEY_SECRET_ARN"),
            ttl,
            calls_providers: true,
        })
    }
}

/// The provider secret and the config text its values are resolved into.
struct ProviderSecret {
    id: String,
    source: ConfigSource,
}

/// A function's config and admin key, with the secrets behind them kept current.
pub struct FunctionSecrets {
    reader: Arc<dyn SecretSource>,
    clock: Arc<dyn Clock>,
    ttl_ms: u64,
    provider: Option<ProviderSecret>,
    /// The config in use; its secrets are replaced in place by a rotation.
    config: Config,
    admin: Option<(String, Secret)>,
    /// When the next refresh is due (ms since the epoch).
    due_ms: AtomicU64,
    /// Held by the one refresh under way; others go on with the current values.
    refreshing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for FunctionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionSecrets")
            .field("provider", &self.provider.as_ref().map(|p| &p.id))
            .field("admin_key", &self.admin.as_ref().map(|(id, _)| id))
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

impl FunctionSecrets {
    /// Reads the secrets named in `ids` and resolves the config with the provider secret's
    /// values (without one, from the environment only). Fails, naming the secret, if one
    /// cannot be read or the config does not resolve.
    pub async fn start(
        ids: SecretIds,
        source: ConfigSource,
        reader: Arc<dyn SecretSource>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SecretsError> {
        let read = |id: String| {
            let reader = Arc::clone(&reader);
            async move {
                match reader.current(&id).await {
                    Ok(value) => Ok((id, value)),
                    Err(message) => Err(SecretsError::Read { id, message }),
                }
            }
        };
        let (provider, config) = match ids.provider {
            Some(id) => {
                let (id, json) = read(id).await?;
                let config = source
                    .resolve(&lookup_env_then_secret(&json))
                    .map_err(|source| SecretsError::Config {
                        id: id.clone(),
                        source,
                    })?;
                (Some(ProviderSecret { id, source }), config)
            }
            None => {
                let config = if ids.calls_providers {
                    source.resolve(&lookup_env)
                } else {
                    source.resolve_without_provider_keys(&lookup_env)
                };
                let config = config.map_err(|source| SecretsError::Config {
                    id: "(none: SLUICE_PROVIDER_SECRET_ARN is not set)".into(),
                    source,
                })?;
                (None, config)
            }
        };
        let admin = match ids.admin_key {
            Some(id) => {
                let (id, key) = read(id).await?;
                if key.trim().is_empty() {
                    return Err(SecretsError::Read {
                        id,
                        message: "the admin key is empty".into(),
                    });
                }
                Some((id, Secret::new(key)))
            }
            None => None,
        };
        let ttl_ms = crate::num::u128_to_u64(ids.ttl.as_millis());
        Ok(Self {
            due_ms: AtomicU64::new(clock.now_ms().saturating_add(ttl_ms)),
            reader,
            clock,
            ttl_ms,
            provider,
            config,
            admin,
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// The config in use. Its secrets follow rotations; clone them, not their values.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The admin key from its secret, if the function has one; clones follow rotations.
    pub fn admin_key(&self) -> Option<Secret> {
        self.admin.as_ref().map(|(_, key)| key.clone())
    }

    /// Reads the secrets again if the TTL has passed since the last read. Never fails: what
    /// cannot be read keeps its current value, and the failure is logged.
    pub async fn refresh_if_due(&self) {
        if self.clock.now_ms() < self.due_ms.load(Ordering::Acquire) {
            return;
        }
        let Ok(_refreshing) = self.refreshing.try_lock() else {
            return; // another request is refreshing; the current values still serve
        };
        let now = self.clock.now_ms();
        if now < self.due_ms.load(Ordering::Acquire) {
            return; // refreshed while this one waited
        }
        let mut ok = true;
        if let Some(provider) = &self.provider {
            ok &= self.refresh_provider(provider).await;
        }
        if let Some((id, key)) = &self.admin {
            ok &= self.refresh_admin(id, key).await;
        }
        let wait = if ok {
            self.ttl_ms
        } else {
            self.ttl_ms.min(RETRY_AFTER_FAILURE_MS)
        };
        self.due_ms
            .store(self.clock.now_ms().saturating_add(wait), Ordering::Release);
    }

    async fn read(&self, id: &str) -> Result<String, String> {
        match tokio::time::timeout(REFRESH_TIMEOUT, self.reader.current(id)).await {
            Ok(read) => read,
            Err(_) => Err(format!("no answer within {REFRESH_TIMEOUT:?}")),
        }
    }

    async fn refresh_provider(&self, provider: &ProviderSecret) -> bool {
        let json = match self.read(&provider.id).await {
            Ok(json) => json,
            Err(error) => {
                tracing::warn!(target: "sluice::secrets", secret = %provider.id, %error, "cannot refresh the provider secret; the keys in use stay");
                return false;
            }
        };
        let rotated = provider
            .source
            .resolve(&lookup_env_then_secret(&json))
            .map_err(|e| e.to_string())
            .and_then(|newer| self.config.take_secret_values(&newer));
        match rotated {
            Ok(changed) if changed.is_empty() => true,
            Ok(changed) => {
                tracing::info!(target: "sluice::secrets", secret = %provider.id, fields = ?changed, "provider secret rotated");
                true
            }
            Err(error) => {
                tracing::warn!(target: "sluice::secrets", secret = %provider.id, %error, "the provider secret's new values do not fit the config; the keys in use stay");
                false
            }
        }
    }

    async fn refresh_admin(&self, id: &str, key: &Secret) -> bool {
        match self.read(id).await {
            Ok(value) if value.trim().is_empty() => {
                tracing::warn!(target: "sluice::secrets", secret = %id, "the admin key secret is empty; the key in use stays");
                false
            }
            Ok(value) => {
                if key.replace(&value) {
                    tracing::info!(target: "sluice::secrets", secret = %id, "admin key rotated");
                }
                true
            }
            Err(error) => {
                tracing::warn!(target: "sluice::secrets", secret = %id, %error, "cannot refresh the admin key; the key in use stays");
                false
            }
        }
    }
}

/// At a Lambda function's start: the secrets named in its environment, read from Secrets
/// Manager with `sdk` (which honours `AWS_ENDPOINT_URL`), and the config resolved with them.
/// `calls_providers`: see [`SecretIds::calls_providers`].
#[cfg(feature = "aws")]
pub async fn start_from_env(
    sdk: &aws_config::SdkConfig,
    calls_providers: bool,
) -> Result<FunctionSecrets, StartError> {
    let ids = SecretIds {
        calls_providers,
        ..SecretIds::from_env()?
    };
    let source = ConfigSource::from_env()?;
    let reader = Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
        sdk,
    )));
    Ok(FunctionSecrets::start(ids, source, reader, Arc::new(crate::clock::SystemClock)).await?)
}

/// Runs [`FunctionSecrets::refresh_if_due`] before each request reaches `router`.
pub fn refreshing(router: axum::Router, secrets: Arc<FunctionSecrets>) -> axum::Router {
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let secrets = Arc::clone(&secrets);
            async move {
                secrets.refresh_if_due().await;
                next.run(request).await
            }
        },
    ))
}
