//! The request pipeline: validate → resolve model → cache → coalesce identical misses
//! (`coalesce`) → pick deployment → provider → price → store → answer. Hosting-agnostic: the HTTP layer calls [`Gateway::handle`] with an
//! authenticated [`Caller`]; the same code serves `sluice serve` and the Lambda functions.

pub mod batch;
pub mod batch_api;
pub mod cache;
pub mod catalog;
pub mod coalesce;
pub mod request;
pub mod response_cache;
pub mod routing;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::clock::Clock;
use crate::config::{CacheConfig, Config, OnLimit, RoutingConfig};
use crate::keys::KeyLimits;
use crate::limits::{Ask, Grant, Limiter, Refusal, Subject};
use crate::providers::{Endpoint, ProviderError, UpstreamResponse, Usage};
use crate::store::{CachedResponse, Settlement, SharedStore, StoreError};
use crate::tokens;
use cache::{CacheControl, CacheStatus};
use catalog::{Catalog, Model};
use request::{InvalidRequest, ParsedRequest};

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
    pub fallback: Option<&'static str>,
    /// With [`RequestOptions::defer_settlement`]: the reservation's settlement, for the
    /// caller to write. Dropped unwritten, the reservation expires and is given back.
    pub settlement: Option<Settlement>,
}

/// Text of the last user message (string content, or the text parts of an array).
fn last_user_text(body: &serde_json::Map<String, Value>) -> String {
    let messages = body.get("messages").and_then(Value::as_array);
    let last = messages.and_then(|m| {
        m.iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    });
    match last.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
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

/// Why a request is being answered by `on_limit`.
struct Over {
    refusal: Refusal,
    stale: Option<CachedResponse>,
    downgraded: bool,
}

/// A completion whose content is a configured message (the `message` limit fallback).
fn canned_completion(model: &str, text: &str) -> Value {
    serde_json::json!({
        "id": format!("chatcmpl-sluice-{}", crate::keys::random_alnum(20)),
        "object": "chat.completion",
        "created": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    })
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
        let reply = match self.answer(caller, request, options, trace, false).await {
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

    /// Answers a parsed request: cache, limits, provider, settle. `downgraded` is set when
    /// this is already the cheaper model another model's `on_limit` pointed to.
    async fn answer(
        &self,
        caller: &Caller,
        request: ParsedRequest,
        options: RequestOptions,
        trace: &mut Trace,
        downgraded: bool,
    ) -> Result<Reply, GatewayError> {
        let endpoint = request.endpoint;
        let model = Arc::clone(
            self.catalog
                .get(&request.model)
                .ok_or_else(|| GatewayError::UnknownModel(request.model.clone()))?,
        );
        trace.model = Some(model.name.clone());
        let subject = caller.subject();

        let policy = self.cache_policy(&model, options.cache);
        let key = (policy.lookup || policy.store)
            .then(|| cache::cache_key(&caller.tenant, endpoint, &model.name, &request.body));
        // The whole request's deadline, from its start: waiting for an identical request's
        // answer counts against it like the provider call.
        let deadline =
            crate::invocation::deadline_within(options.timeout.unwrap_or(self.request_timeout));
        let mut stale = None;
        // Set when this request calls the provider for identical requests waiting for it.
        let mut lead = None;
        if let (true, Some(key)) = (policy.lookup, &key) {
            let now = self.clock.now_ms();
            match self.cache.get(key, now).await {
                Ok(Some(entry)) if policy.is_fresh(&entry, now) => {
                    let hit = (entry, CacheStatus::Hit);
                    return self
                        .serve_cached(caller, &model, request, options, trace, hit, downgraded)
                        .await;
                }
                Ok(entry) => stale = entry,
                // The cache is an optimisation: when it fails, the provider still answers.
                Err(e) => tracing::warn!(error = %e, "cache lookup failed; calling provider"),
            }
            // Streams are not coalesced (README, "Coalescing"): a follower would wait for the
            // leader's whole answer before its first byte, or need the leader's events
            // relayed live between processes, which the store cannot do.
            if let (true, false, Some(coalescer)) = (policy.store, request.stream, &self.coalescer)
            {
                let landed = stale
                    .as_ref()
                    .map_or(0, |e: &CachedResponse| e.created_at_ms);
                let fresh = |e: &CachedResponse, now| policy.is_fresh(e, now);
                match coalescer.join(key, landed, deadline, fresh).await {
                    coalesce::Joined::Answer(entry) => {
                        self.cache.remember(key, &entry);
                        let coalesced = (entry, CacheStatus::Coalesced);
                        return self
                            .serve_cached(
                                caller, &model, request, options, trace, coalesced, downgraded,
                            )
                            .await;
                    }
                    coalesce::Joined::Lead(l) => lead = Some(l),
                    coalesce::Joined::Alone => {}
                }
            }
        }

        self.limiter.warn_soft_thresholds_if_due();
        let (ask, output_ceiling) = self.ask(&model, &request, &subject)?;
        let grant = match self.limiter.admit(&subject, ask).await? {
            Ok(grant) => grant,
            Err(refusal) => {
                let over = Over {
                    refusal,
                    stale,
                    downgraded,
                };
                return self
                    .over_limit(caller, &model, request, options, trace, over)
                    .await;
            }
        };

        let call = routing::Call {
            endpoint,
            body: &request.body,
            stream: request.stream,
            tokens: ask.tokens,
            output_ceiling,
            deadline,
        };
        let answered = match self.call_providers(&model, call).await {
            Ok(a) => a,
            Err(error) => {
                // Nothing was spent: give the whole reservation back.
                self.settle(grant, 0, 0).await;
                return self.last_resorts(&model, &request, error, stale, trace);
            }
        };
        trace.deployment = Some(answered.deployment.clone());
        let tier = answered.tier;
        let model = answered.model;
        let answer = answered.response;
        let status = if policy.lookup {
            CacheStatus::Miss
        } else {
            CacheStatus::Bypass
        };
        match answer {
            UpstreamResponse::Stream { chunks, .. } => {
                // Metered as it flows: settled and cached when the stream ends.
                let finish = stream::Finish {
                    limiter: Arc::clone(&self.limiter),
                    grant,
                    price: model.price,
                    prompt_estimate: estimate_usage(&request).prompt_tokens,
                    cache: match (policy.store, key) {
                        (true, Some(key)) => Some(stream::CacheTarget {
                            cache: Arc::clone(&self.cache),
                            key,
                            ttl_s: policy.ttl_s,
                            stale_keep_s: self.cache_config.stale_keep_s,
                            max_entry_bytes: self.cache_config.max_entry_bytes,
                        }),
                        _ => None,
                    },
                    clock: Arc::clone(&self.clock),
                    usage: trace.usage.clone(),
                };
                Ok(Reply {
                    body: ReplyBody::EventStream(stream::metered(
                        chunks,
                        wants_usage(&request),
                        finish,
                    )),
                    cache: status,
                    usage: Usage::default(),
                    cost_nano_usd: 0,
                    fallback: tier,
                    settlement: None,
                })
            }
            UpstreamResponse::Complete { body, usage, .. } => {
                let usage = usage.unwrap_or_else(|| estimate_usage(&request));
                let cost_nano_usd = model.price.cost_nano_usd(&usage);
                let entry = policy.store.then(|| {
                    let now = self.clock.now_ms();
                    let expires_at_ms = now.saturating_add(policy.ttl_s.saturating_mul(1000));
                    CachedResponse {
                        body: body.clone(),
                        created_at_ms: now,
                        expires_at_ms,
                        purge_at_ms: expires_at_ms
                            .saturating_add(self.cache_config.stale_keep_s.saturating_mul(1000)),
                    }
                });
                let store_answer = async {
                    if let (Some(entry), Some(key)) = (&entry, &key)
                        && body.len() <= self.cache_config.max_entry_bytes
                    {
                        match self.cache.put(key, entry).await {
                            Ok(()) => return true,
                            Err(e) => {
                                tracing::warn!(error = %e, "cache store failed; answer not cached");
                            }
                        }
                    }
                    false
                };
                // Independent writes: settle the reservation and store the answer together.
                let settlement = if options.defer_settlement {
                    self.limiter
                        .settlement(&grant, usage.total(), cost_nano_usd)
                } else {
                    None
                };
                let settle = async {
                    if !options.defer_settlement {
                        self.settle(grant, usage.total(), cost_nano_usd).await;
                    }
                };
                let ((), stored) = tokio::join!(settle, store_answer);
                if let (Some(lead), Some(entry)) = (lead, entry) {
                    lead.land(entry, stored).await;
                }
                Ok(Reply {
                    body: ReplyBody::Json(body),
                    cache: status,
                    usage,
                    cost_nano_usd,
                    fallback: tier,
                    settlement,
                })
            }
        }
    }

    /// Serves a stored answer (a cache hit, or an identical request's answer): a request for
    /// the rate limits (requests per minute), no tokens, no reservation, no spend.
    #[allow(clippy::too_many_arguments)]
    async fn serve_cached(
        &self,
        caller: &Caller,
        model: &Model,
        request: ParsedRequest,
        options: RequestOptions,
        trace: &mut Trace,
        (entry, status): (CachedResponse, CacheStatus),
        downgraded: bool,
    ) -> Result<Reply, GatewayError> {
        match self.limiter.admit_cached(&caller.subject()).await? {
            Ok(()) => Ok(Reply::cached(entry.body, status)),
            Err(refusal) => {
                let over = Over {
                    refusal,
                    stale: Some(entry),
                    downgraded,
                };
                self.over_limit(caller, model, request, options, trace, over)
                    .await
            }
        }
    }

    /// The ladder's last tiers when no provider could answer: a stale cached answer, a
    /// rule-based answer, a friendly message — each only if the model enables it. Failures
    /// that are the request's own fault (a 400 from the provider) are returned as they are.
    fn last_resorts(
        &self,
        model: &Model,
        request: &ParsedRequest,
        error: GatewayError,
        stale: Option<CachedResponse>,
        trace: &mut Trace,
    ) -> Result<Reply, GatewayError> {
        let provider_trouble = match &error {
            GatewayError::Upstream { error, .. } => error.may_work_elsewhere(),
            GatewayError::AllUnavailable | GatewayError::NoDeployment(_) => true,
            _ => false,
        };
        if !provider_trouble {
            return Err(error);
        }
        if let (true, Some(entry)) = (model.stale_fallback, stale) {
            trace.deployment = Some("sluice/cache".into());
            let mut reply = Reply::cached(entry.body, CacheStatus::Stale);
            reply.fallback = Some("stale_cache");
            return Ok(reply);
        }
        if request.endpoint == Endpoint::ChatCompletions {
            let last_user = last_user_text(&request.body);
            if let Some((_, reply)) = model.rules.iter().find(|(re, _)| re.is_match(&last_user)) {
                trace.deployment = Some("sluice/rule".into());
                let mut r = Reply::cached(
                    Bytes::from(canned_completion(&model.name, reply).to_string()),
                    CacheStatus::Bypass,
                );
                r.fallback = Some("rule");
                return Ok(r);
            }
            if let Some(text) = &model.fallback_message {
                trace.deployment = Some("sluice/message".into());
                let mut r = Reply::cached(
                    Bytes::from(canned_completion(&model.name, text).to_string()),
                    CacheStatus::Bypass,
                );
                r.fallback = Some("message");
                return Ok(r);
            }
        }
        Err(error)
    }

    /// Settles a grant; a failure is logged (the reservation then expires and is released).
    async fn settle(&self, grant: Grant, tokens: u64, cost_nano_usd: u64) {
        if let Err(e) = self.limiter.settle(grant, tokens, cost_nano_usd).await {
            tracing::error!(target: "sluice::limits", error = %e, "could not settle a reservation");
        }
    }

    /// The worst case a request can use, and the output ceiling to impose on the provider
    /// when the request set none and a limit depends on it. Refuses what cannot be bounded
    /// (audio, files) or priced (a model without a price) where a limit needs the number.
    fn ask(
        &self,
        model: &Model,
        request: &ParsedRequest,
        subject: &Subject<'_>,
    ) -> Result<(Ask, Option<u64>), GatewayError> {
        let capped = self.limiter.budget_applies(subject);
        let metered = capped || self.limiter.tokens_limited(subject);
        if metered && let Some(field) = tokens::unbounded_input(request) {
            return Err(InvalidRequest::Unbounded { field }.into());
        }
        // A fallback model may answer instead: reserve for the most expensive that could.
        let candidates: Vec<&Model> = std::iter::once(model)
            .chain(
                model
                    .fallbacks
                    .iter()
                    .filter_map(|name| self.catalog.get(name).map(|m| &**m)),
            )
            .collect();
        if capped && let Some(unpriced) = candidates.iter().find(|m| !m.priced) {
            return Err(GatewayError::Unpriced(unpriced.name.clone()));
        }
        let prompt_bound = tokens::prompt_upper_bound(request);
        let ceiling = model
            .max_output_tokens
            .unwrap_or(self.limiter.config().default_max_output_tokens);
        let output = tokens::output_upper_bound(request, ceiling);
        let explicit = ["max_tokens", "max_completion_tokens"]
            .iter()
            .any(|f| request.body.get(*f).is_some_and(|v| !v.is_null()));
        let impose = (request.endpoint == Endpoint::ChatCompletions && !explicit && metered)
            .then_some(ceiling);
        let cost = candidates
            .iter()
            .map(|m| m.price.worst_case_nano_usd(prompt_bound, output))
            .max()
            .unwrap_or(0);
        let ask = Ask {
            // `max_tokens` is any u64 the client sends: saturate rather than wrap.
            tokens: prompt_bound.saturating_add(output),
            cost_nano_usd: cost,
        };
        Ok((ask, impose))
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

    /// What a model does over a limit (`on_limit` in its config).
    async fn over_limit(
        &self,
        caller: &Caller,
        model: &Model,
        request: ParsedRequest,
        options: RequestOptions,
        trace: &mut Trace,
        over: Over,
    ) -> Result<Reply, GatewayError> {
        let refused = || GatewayError::Limited(over.refusal.clone());
        match &model.on_limit {
            OnLimit::Reject => Err(refused()),
            OnLimit::CacheOnly => match over.stale {
                Some(entry) => {
                    let status = if entry.expires_at_ms > self.clock.now_ms() {
                        CacheStatus::Hit
                    } else {
                        CacheStatus::Stale
                    };
                    let mut reply = Reply::cached(entry.body, status);
                    reply.fallback = Some("stale_cache");
                    Ok(reply)
                }
                None => Err(refused()),
            },
            OnLimit::Downgrade(target) if !over.downgraded => {
                let mut cheaper = request;
                cheaper.model = target.clone();
                cheaper
                    .body
                    .insert("model".into(), Value::String(target.clone()));
                let attempt = Box::pin(self.answer(caller, cheaper, options, trace, true)).await;
                match attempt {
                    Ok(mut reply) => {
                        reply.fallback = Some("downgrade");
                        Ok(reply)
                    }
                    Err(GatewayError::Limited(_)) => Err(refused()),
                    Err(e) => Err(e),
                }
            }
            OnLimit::Downgrade(_) => Err(refused()),
            OnLimit::Message(text) if request.endpoint == Endpoint::ChatCompletions => {
                let mut reply = Reply::cached(
                    Bytes::from(canned_completion(&model.name, text).to_string()),
                    CacheStatus::Bypass,
                );
                reply.fallback = Some("message");
                Ok(reply)
            }
            OnLimit::Message(_) => Err(refused()),
        }
    }

    fn cache_policy(&self, model: &Model, cc: CacheControl) -> CachePolicy {
        // A client may keep its answer for less time than the operator allows, never longer.
        let ttl_s = cc
            .max_age_s
            .map_or(model.cache_ttl_s, |age| age.min(model.cache_ttl_s));
        let usable = self.cache_config.enabled && model.cache_ttl_s > 0;
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
    Usage::plain(prompt_tokens, 0)
}
