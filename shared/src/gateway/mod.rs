//! The request pipeline: validate → resolve model → cache → pick deployment → provider →
//! price → store → answer. Hosting-agnostic: the HTTP layer calls [`Gateway::handle`] with an
//! authenticated [`Caller`]; the same code serves `sluice serve` and the Lambda functions.

pub mod batch;
pub mod cache;
pub mod catalog;
pub mod request;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{CacheConfig, Config};
use crate::providers::{
    Endpoint, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse, UpstreamStream, Usage,
};
use crate::store::{CachedResponse, SharedStore, StoreError};
use crate::tokens;
use cache::{CacheControl, CacheStatus};
use catalog::{Catalog, Model};
use request::{InvalidRequest, ParsedRequest};

/// Who is calling: established by the HTTP layer from a gateway key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's public id.
    pub key_id: String,
    /// The key's tenant; scopes the cache.
    pub tenant: String,
}

/// Why the pipeline could not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// No model with that name or alias is configured.
    #[error("unknown model `{0}`")]
    UnknownModel(String),
    /// The model has no deployment to send to.
    #[error("model `{0}` has no deployment")]
    NoDeployment(String),
    /// The provider failed.
    #[error("deployment {deployment}: {error}")]
    Upstream {
        /// The deployment that failed.
        deployment: String,
        /// How it failed.
        error: ProviderError,
    },
    /// The store failed where the request cannot go on without it.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The body of a successful answer.
pub enum ReplyBody {
    /// A complete JSON body.
    Json(Bytes),
    /// OpenAI-format server-sent events.
    EventStream(UpstreamStream),
}

/// A successful answer and what it cost.
pub struct Reply {
    /// What to send back.
    pub body: ReplyBody,
    /// What the cache did.
    pub cache: CacheStatus,
    /// Tokens used (zero for cache hits, which cost no provider call).
    pub usage: Usage,
    /// Cost of the provider call in nano-USD (zero for cache hits).
    pub cost_nano_usd: u64,
}

/// What is known about a request so far, for its log line; filled in as the pipeline goes.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The public model name resolved.
    pub model: Option<String>,
    /// The deployment that was called.
    pub deployment: Option<String>,
}

/// The gateway: configuration, store, HTTP client and clock, built once at start-up.
pub struct Gateway {
    catalog: Catalog,
    cache_config: CacheConfig,
    upstream_timeout: Duration,
    store: SharedStore,
    http: reqwest::Client,
    clock: Arc<dyn Clock>,
}

/// Builds the one HTTP client a process uses for every provider: pooled keep-alive
/// connections, HTTP/2 where the provider offers it over TLS (rustls).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .build()
}

impl Gateway {
    /// Assembles a gateway from a validated config and its dependencies.
    pub fn new(
        config: &Config,
        store: SharedStore,
        http: reqwest::Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog: Catalog::from_config(config),
            cache_config: config.cache.clone(),
            upstream_timeout: Duration::from_secs_f64(config.server.upstream_timeout_s),
            store,
            http,
            clock,
        }
    }

    /// Checks a request for an async job without running it: the same validation as a
    /// synchronous call, the model must exist, and streaming is refused.
    pub fn check_async(&self, endpoint: Endpoint, body: &[u8]) -> Result<(), GatewayError> {
        let request = request::parse(endpoint, body)?;
        if request.stream {
            return Err(InvalidRequest::Invalid {
                field: "stream".into(),
                expected: "false or absent for async jobs",
            }
            .into());
        }
        if self.catalog.get(&request.model).is_none() {
            return Err(GatewayError::UnknownModel(request.model));
        }
        Ok(())
    }

    /// The routing table.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Runs one request through the pipeline.
    pub async fn handle(
        &self,
        caller: &Caller,
        endpoint: Endpoint,
        body: &[u8],
        cache_control: CacheControl,
        trace: &mut Trace,
    ) -> Result<Reply, GatewayError> {
        let request = request::parse(endpoint, body)?;
        let model = self
            .catalog
            .get(&request.model)
            .ok_or_else(|| GatewayError::UnknownModel(request.model.clone()))?;
        trace.model = Some(model.name.clone());

        let policy = self.cache_policy(model, &request, cache_control);
        let key = (policy.lookup || policy.store)
            .then(|| cache::cache_key(&caller.tenant, endpoint, &model.name, &request.body));
        if let (true, Some(key)) = (policy.lookup, &key) {
            let now = self.clock.now_ms();
            match self.store.cache_get(key, now).await {
                Ok(Some(entry)) if policy.is_fresh(&entry, now) => {
                    return Ok(Reply {
                        body: ReplyBody::Json(entry.body),
                        cache: CacheStatus::Hit,
                        usage: Usage::default(),
                        cost_nano_usd: 0,
                    });
                }
                Ok(_) => {}
                // The cache is an optimisation: when it fails, the provider still answers.
                Err(e) => tracing::warn!(error = %e, "cache lookup failed; calling provider"),
            }
        }

        let deployment = model
            .pick()
            .ok_or_else(|| GatewayError::NoDeployment(model.name.clone()))?;
        trace.deployment = Some(deployment.id.clone());
        let mut upstream_body = request.body.clone();
        upstream_body.insert(
            "model".into(),
            Value::String(deployment.upstream_model.clone()),
        );
        let answer = deployment
            .provider
            .call(
                &self.http,
                UpstreamRequest {
                    endpoint,
                    body: &upstream_body,
                    api_key: deployment.api_key.expose(),
                    stream: request.stream,
                    timeout: self.upstream_timeout,
                },
            )
            .await
            .map_err(|error| GatewayError::Upstream {
                deployment: deployment.id.clone(),
                error,
            })?;
        let status = if policy.lookup {
            CacheStatus::Miss
        } else {
            CacheStatus::Bypass
        };
        match answer {
            UpstreamResponse::Stream(stream) => Ok(Reply {
                body: ReplyBody::EventStream(stream),
                cache: status,
                usage: Usage::default(),
                cost_nano_usd: 0,
            }),
            UpstreamResponse::Complete { body, usage } => {
                let usage = usage.unwrap_or_else(|| estimate_usage(&request));
                let cost_nano_usd = model
                    .price
                    .cost_nano_usd(usage.prompt_tokens, usage.completion_tokens);
                if let (true, Some(key)) = (policy.store, &key)
                    && body.len() <= self.cache_config.max_entry_bytes
                {
                    let now = self.clock.now_ms();
                    let expires_at_ms = now.saturating_add(policy.ttl_s.saturating_mul(1000));
                    let entry = CachedResponse {
                        body: body.clone(),
                        created_at_ms: now,
                        expires_at_ms,
                        purge_at_ms: expires_at_ms
                            .saturating_add(self.cache_config.stale_keep_s * 1000),
                    };
                    if let Err(e) = self.store.cache_put(key, &entry).await {
                        tracing::warn!(error = %e, "cache store failed; answer not cached");
                    }
                }
                Ok(Reply {
                    body: ReplyBody::Json(body),
                    cache: status,
                    usage,
                    cost_nano_usd,
                })
            }
        }
    }

    fn cache_policy(
        &self,
        model: &Model,
        request: &ParsedRequest,
        cc: CacheControl,
    ) -> CachePolicy {
        let ttl_s = cc.max_age_s.unwrap_or(model.cache_ttl_s);
        let usable = self.cache_config.enabled && model.cache_ttl_s > 0 && !request.stream;
        CachePolicy {
            lookup: usable && !cc.no_cache && cc.max_age_s != Some(0),
            store: usable && !cc.no_store && ttl_s > 0,
            max_age_ms: cc.max_age_s.map(|s| s.saturating_mul(1000)),
            ttl_s,
        }
    }
}

/// What the cache may do for one request.
struct CachePolicy {
    lookup: bool,
    store: bool,
    max_age_ms: Option<u64>,
    ttl_s: u64,
}

impl CachePolicy {
    /// Fresh = not expired, and no older than the request's `max-age` if it gave one.
    fn is_fresh(&self, entry: &CachedResponse, now: u64) -> bool {
        now < entry.expires_at_ms
            && self
                .max_age_ms
                .is_none_or(|max| now.saturating_sub(entry.created_at_ms) <= max)
    }
}

/// Usage for a provider that reported none: the prompt estimated, the answer unknown (0).
fn estimate_usage(request: &ParsedRequest) -> Usage {
    let prompt_tokens = match request.endpoint {
        Endpoint::ChatCompletions => {
            let messages = request
                .body
                .get("messages")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            tokens::estimate_chat_prompt(messages, request.body.get("tools"))
        }
        Endpoint::Embeddings => request.body.get("input").map_or(0, tokens::estimate_value),
    };
    Usage {
        prompt_tokens,
        completion_tokens: 0,
    }
}
