//! The request pipeline, in named stages over one request [`resolve::Context`]:
//!
//! 1. **resolve** ([`resolve`]): the model, the cache policy and key, the deadline;
//! 2. **lookup** ([`lookup`]): a fresh cache entry, or an identical request's answer
//!    ([`coalesce`]);
//! 3. **admit** ([`admit`]): rate limits and spending caps, the model's `on_limit` on a
//!    refusal — for stored answers too;
//! 4. **call** ([`routing`]): deployments in routing order with retries, then fallback
//!    models; the ladder's last tiers when none answers ([`fallback`]);
//! 5. **record** ([`record`]): the cache entry, the settlement, the waiting requests served.
//!
//! [`Gateway::handle`] runs them in that order for one request (a stream records when it ends,
//! [`stream`]); async jobs run the same with their settlement deferred to the job's own write;
//! the embeddings micro-batch ([`batch`]) runs resolve, lookup and admit per job and replaces
//! only the call (one upstream call for many jobs, split back) before recording each.
//! Hosting-agnostic: the HTTP layer calls [`Gateway::handle`] with an authenticated
//! [`Caller`]; the same code serves `sluice serve` and the Lambda functions.

mod admit;
pub mod batch;
pub mod batch_api;
pub mod cache;
pub mod catalog;
pub mod coalesce;
pub mod fallback;
mod lookup;
mod record;
pub mod request;
mod resolve;
pub mod response_cache;
pub mod routing;
pub mod stream;

pub use fallback::Fallback;
pub use record::CacheTarget;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{CacheConfig, Config, OnLimit, RoutingConfig};
use crate::keys::KeyLimits;
use crate::limits::{Ask, Limiter, Refusal, Subject};
use crate::providers::{Endpoint, HttpClient, ProviderError, Usage};
use crate::store::{Settlement, SharedStore, StoreError};
use cache::{CacheControl, CacheStatus};
use catalog::Catalog;
use lookup::Coalescing;
use request::{InvalidRequest, ParsedRequest};
use resolve::Context;

/// Per-request options from the client's headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestOptions {
    /// `Cache-Control`.
    pub cache: CacheControl,
    /// `x-sluice-timeout`: the whole request's deadline, retries and fallbacks included.
    pub timeout: Option<Duration>,
    /// The caller records the spend itself, in the same write as its own result (async
    /// jobs): a provider's answer comes back with its [`Reply::settlement`] instead of
    /// settled. Streams and failures are settled as usual.
    pub defer_settlement: bool,
}

impl From<CacheControl> for RequestOptions {
    fn from(cache: CacheControl) -> Self {
        Self {
            cache,
            ..Self::default()
        }
    }
}

/// Who is calling: established by the HTTP layer from a gateway key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's public id.
    pub key_id: String,
    /// The key's tenant; scopes the cache.
    pub tenant: String,
    /// The key's own rate limits and spending cap.
    pub limits: KeyLimits,
}

impl Caller {
    /// The caller as the limiter sees it.
    pub fn subject(&self) -> Subject<'_> {
        Subject {
            key_id: &self.key_id,
            tenant: &self.tenant,
            key_limits: &self.limits,
        }
    }
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
    /// Every deployment is out of service (circuits open) and nothing else could answer.
    #[error("no deployment is available")]
    AllUnavailable,
    /// Over a rate limit or spending cap, and the model's `on_limit` did not answer instead.
    #[error("over a limit: {} {}", .0.level, .0.metric)]
    Limited(Refusal),
    /// The model has no price, so a spending cap cannot be enforced on it.
    #[error("model `{0}` has no price")]
    Unpriced(String),
}

/// The body of a successful answer.
pub enum ReplyBody {
    /// A complete JSON body.
    Json(Bytes),
    /// OpenAI-format server-sent events.
    EventStream(stream::EventBytes),
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
    /// Set when the answer is degraded: which fallback produced it (`x-sluice-fallback`).
    pub fallback: Option<Fallback>,
    /// With [`RequestOptions::defer_settlement`]: the reservation's settlement, for the
    /// caller to write. Dropped unwritten, the reservation expires and is given back.
    pub settlement: Option<Settlement>,
}

/// Whether a streamed request asked for the usage chunk (`stream_options.include_usage`).
fn wants_usage(request: &ParsedRequest) -> bool {
    request
        .body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl Reply {
    /// The same answer as server-sent events (a complete JSON answer is replayed as chunks).
    fn into_events(self, include_usage: bool) -> Self {
        match &self.body {
            ReplyBody::Json(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(completion) => Self {
                    body: ReplyBody::EventStream(stream::replay(&completion, include_usage)),
                    ..self
                },
                Err(_) => self,
            },
            ReplyBody::EventStream(_) => self,
        }
    }

    /// An answer that cost no provider call.
    fn cached(body: Bytes, cache: CacheStatus) -> Self {
        Self {
            body: ReplyBody::Json(body),
            cache,
            usage: Usage::default(),
            cost_nano_usd: 0,
            fallback: None,
            settlement: None,
        }
    }
}

/// What is known about a request so far, for its log line; filled in as the pipeline goes.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// The public model name resolved.
    pub model: Option<String>,
    /// The deployment that was called.
    pub deployment: Option<String>,
    /// The request's usage event, for a stream to report its final tokens and cost.
    pub usage: Option<Arc<crate::metrics::UsageTicket>>,
}

/// The gateway: configuration, store, HTTP client and clock, built once at start-up.
pub struct Gateway {
    catalog: Catalog,
    limiter: Arc<Limiter>,
    routing: RoutingConfig,
    request_timeout: Duration,
    cache_config: CacheConfig,
    upstream_timeout: Duration,
    cache: Arc<response_cache::ResponseCache>,
    /// Single-flight of identical misses; `None` when `cache.coalesce_wait_s` is 0.
    coalescer: Option<Arc<coalesce::Coalescer>>,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl Gateway {
    /// Assembles a gateway from a validated config and its dependencies.
    pub fn new(
        config: &Config,
        store: SharedStore,
        http: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog: Catalog::from_config(config),
            routing: config.routing.clone(),
            request_timeout: Duration::from_secs_f64(config.routing.request_timeout_s),
            limiter: Arc::new(Limiter::new(
                config,
                Arc::clone(&store) as Arc<dyn crate::store::LimitStore>,
                Arc::clone(&clock),
            )),
            cache_config: config.cache.clone(),
            upstream_timeout: Duration::from_secs_f64(config.server.upstream_timeout_s),
            cache: Arc::new(response_cache::ResponseCache::new(
                Arc::clone(&store),
                config.cache.memory_mb.saturating_mul(1024 * 1024),
            )),
            coalescer: (config.cache.coalesce_wait_s > 0.0).then(|| {
                Arc::new(coalesce::Coalescer::new(
                    store,
                    Arc::clone(&clock),
                    Duration::from_secs_f64(config.cache.coalesce_wait_s),
                ))
            }),
            http,
            clock,
        }
    }

    /// Checks a request for an async job without running it: the same validation as a
    /// synchronous call, the model must exist, streaming is refused, and so is a request
    /// whose worst case exceeds a limit's whole capacity (it could never run).
    pub fn check_async(
        &self,
        caller: &Caller,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<(), GatewayError> {
        let request = request::parse(endpoint, body)?;
        if request.stream {
            return Err(InvalidRequest::Invalid {
                field: "stream".into(),
                expected: "false or absent for async jobs",
            }
            .into());
        }
        let Some(model) = self.catalog.get(&request.model) else {
            return Err(GatewayError::UnknownModel(request.model));
        };
        let subject = caller.subject();
        let (ask, _) = self.ask(model, &request, &subject)?;
        match self.limiter.beyond_capacity(&subject, Some(ask)) {
            // `on_limit` may still answer it (a cheaper model, a message) when it runs.
            Some(refusal) if model.on_limit == OnLimit::Reject => {
                Err(GatewayError::Limited(refusal))
            }
            _ => Ok(()),
        }
    }

    /// The limiter (for usage reports, and for housekeeping to release abandoned reservations).
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// The whole-request deadline when the client sets none (`routing.request_timeout_s`).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Keys this process is calling the provider for with identical requests waiting (for
    /// tests: a finished or failed flight leaves nothing behind).
    pub fn coalesced_flights(&self) -> usize {
        self.coalescer.as_ref().map_or(0, |c| c.local_flights())
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
        options: impl Into<RequestOptions>,
        trace: &mut Trace,
    ) -> Result<Reply, GatewayError> {
        let options = options.into();
        let request = request::parse(endpoint, body)?;
        let streamed = request.stream;
        let include_usage = wants_usage(&request);
        let ctx = self.resolve(caller, request, options, false, trace)?;
        let reply = match self.answer(ctx, trace).await {
            Ok(reply) => reply,
            Err(e) => {
                // A failure is attributed to the deployment that failed last.
                if let GatewayError::Upstream { deployment, .. } = &e {
                    trace.deployment.get_or_insert_with(|| deployment.clone());
                }
                return Err(e);
            }
        };
        // A streamed request answered from the cache (or by a canned reply) gets events too.
        Ok(if streamed {
            reply.into_events(include_usage)
        } else {
            reply
        })
    }

    /// Runs the stages after resolve: lookup → admit → call → record, each refusal or
    /// failure handed to its fallbacks (`on_limit`, then the ladder's last tiers).
    async fn answer(&self, mut ctx: Context<'_>, trace: &mut Trace) -> Result<Reply, GatewayError> {
        if let Some(stored) = self.lookup(&mut ctx, Coalescing::Join).await {
            return self.serve_stored(ctx, stored, trace).await;
        }
        let admitted = match self.admit_leading(&mut ctx).await? {
            admit::Admit::Admitted(admitted) => admitted,
            admit::Admit::Refused(refusal) => {
                let stale = ctx.stale.take();
                return self.over_limit(ctx, refusal, stale, trace).await;
            }
            admit::Admit::Answered(stored) => return self.serve_stored(ctx, stored, trace).await,
        };
        match self.call(&mut ctx, &admitted).await {
            Ok(answered) => Ok(self.record(ctx, admitted.grant, answered, trace).await),
            Err(error) => {
                // Nothing was spent: give the whole reservation back.
                self.settle(admitted.grant, 0, 0).await;
                self.last_resorts(ctx, error, trace)
            }
        }
    }

    /// The reservation a request would make for `caller` (worst-case tokens and cost), as
    /// [`Gateway::handle`] computes it; for tests that check bills against reservations.
    pub fn worst_case(
        &self,
        caller: &Caller,
        endpoint: Endpoint,
        body: &[u8],
    ) -> Result<Ask, GatewayError> {
        let request = request::parse(endpoint, body)?;
        let model = self
            .catalog
            .get(&request.model)
            .ok_or_else(|| GatewayError::UnknownModel(request.model.clone()))?;
        Ok(self.ask(model, &request, &caller.subject())?.0)
    }
}
