//! Stage 4, **call**: which deployment answers — load balancing, retries with backoff, circuit
//! breaking, and the provider tiers of the fallback ladder (next deployment, then fallback
//! models).
//!
//! Per deployment, each process keeps live statistics ([`DeploymentStats`]): requests in
//! flight, an EWMA of latency, consecutive failures (the circuit breaker), the rate-limit room
//! the provider's headers last reported, and this process's own count against the key's
//! `rpm`/`tpm`. They are per process on purpose: every process sees a failing or throttled
//! deployment within a request or two, while sharing them through the store would put a write
//! on every request's path. The limits that must hold across processes are in `limits`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use rand::seq::SliceRandom;
use serde_json::{Map, Value};

use super::admit::Admitted;
use super::catalog::{Deployment, Model};
use super::fallback::Fallback;
use super::resolve::Context;
use super::{Gateway, GatewayError};
use crate::config::Routing;
use crate::providers::{
    Endpoint, Headroom, ProviderApi, ProviderError, UpstreamRequest, UpstreamResponse,
};

/// Live statistics of one deployment in this process.
#[derive(Debug, Default)]
pub struct DeploymentStats {
    inflight: AtomicU64,
    /// Latency EWMA in microseconds; 0 = no sample yet.
    ewma_us: AtomicU64,
    failures: AtomicU32,
    /// 0 = closed; otherwise open until then (ms), then half-open.
    open_until_ms: AtomicU64,
    probing: AtomicBool,
    room: Mutex<Room>,
    own: Mutex<OwnWindow>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Room {
    headroom: Headroom,
    valid_until_ms: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct OwnWindow {
    minute: u64,
    requests: u64,
    tokens: u64,
}

/// Weight of a new latency sample in the EWMA.
const EWMA_ALPHA: f64 = 0.3;

impl DeploymentStats {
    /// Requests in flight now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Recent latency (EWMA), if measured.
    pub fn latency(&self) -> Option<Duration> {
        match self.ewma_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Whether the circuit is open (the deployment is being skipped) at `now_ms`.
    pub fn is_open(&self, now_ms: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms < until
    }

    /// May a request go to this deployment? Closed: yes. Open: no. Half-open (cooldown over):
    /// exactly one probe at a time.
    fn admit(&self, now_ms: u64) -> bool {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        if now_ms < until {
            return false;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        // Plain counters: a poisoned lock holds nothing inconsistent.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn started(&self, tokens: u64, now_ms: u64) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        let mut own = Self::lock(&self.own);
        let minute = now_ms / 60_000;
        if own.minute != minute {
            *own = OwnWindow {
                minute,
                ..OwnWindow::default()
            };
        }
        // A request's token bound comes from the client (`max_tokens` up to u64::MAX when no
        // limit caps it): the sum saturates rather than overflowing (a panic in debug builds).
        own.requests = own.requests.saturating_add(1);
        own.tokens = own.tokens.saturating_add(tokens);
    }

    fn succeeded(&self, latency: Duration, headroom: Headroom, now_ms: u64) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        let sample = latency.as_micros().max(1) as f64;
        let old = self.ewma_us.load(Ordering::Relaxed) as f64;
        let new = if old == 0.0 {
            sample
        } else {
            old * (1.0 - EWMA_ALPHA) + sample * EWMA_ALPHA
        };
        self.ewma_us
            .store(crate::num::f64_to_u64(new), Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
        self.probing.store(false, Ordering::Release);
        self.observe(headroom, now_ms);
    }

    fn failed(&self, error: &ProviderError, threshold: u32, cooldown_ms: u64, now_ms: u64) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        if let ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } = error
        {
            // The provider said it is out of room: believe it until it says when.
            let reset_ms = retry_after.map_or(1000, |d| crate::num::u128_to_u64(d.as_millis()));
            self.observe(
                Headroom {
                    requests: Some(0),
                    tokens: None,
                    reset_ms: Some(reset_ms),
                },
                now_ms,
            );
        }
        if !error.may_work_elsewhere() {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let probing = self.probing.swap(false, Ordering::AcqRel);
        if failures >= threshold || probing {
            self.open_until_ms
                .store(now_ms + cooldown_ms.max(1), Ordering::Relaxed);
        }
    }

    fn observe(&self, headroom: Headroom, now_ms: u64) {
        if headroom.requests.is_none() && headroom.tokens.is_none() {
            return;
        }
        *Self::lock(&self.room) = Room {
            headroom,
            valid_until_ms: now_ms + headroom.reset_ms.unwrap_or(60_000),
        };
    }

    /// How much room is left before a 429 is likely (smaller = tighter), if known.
    fn room_left(&self, deployment: &Deployment, tokens: u64, now_ms: u64) -> Option<f64> {
        let mut left: Option<f64> = None;
        let mut take = |v: f64| left = Some(left.map_or(v, |l| l.min(v)));
        let room = *Self::lock(&self.room);
        if now_ms < room.valid_until_ms {
            if let Some(r) = room.headroom.requests {
                take(r as f64);
            }
            if let Some(t) = room.headroom.tokens {
                take(t as f64 / tokens.max(1) as f64);
            }
        }
        let own = *Self::lock(&self.own);
        let current = own.minute == now_ms / 60_000;
        if let Some(rpm) = deployment.rpm {
            take(u64::from(rpm).saturating_sub(if current { own.requests } else { 0 }) as f64);
        }
        if let Some(tpm) = deployment.tpm {
            let used = if current { own.tokens } else { 0 };
            take(u64::from(tpm).saturating_sub(used) as f64 / tokens.max(1) as f64);
        }
        left
    }
}

/// The deployments of a model in the order to try them for one request.
pub(super) fn order(model: &Model, tokens: u64, now_ms: u64) -> Vec<&Deployment> {
    // A deployment with (almost) no room left goes last, so it is skipped before the provider
    // answers 429 — but still tried if nothing else can answer.
    let (mut ready, mut tight): (Vec<&Deployment>, Vec<&Deployment>) =
        model.deployments.iter().partition(|d| {
            d.stats
                .room_left(d, tokens, now_ms)
                .is_none_or(|left| left >= 1.0)
        });
    let room = |d: &Deployment| d.stats.room_left(d, tokens, now_ms).unwrap_or(f64::MAX);
    let mut rng = rand::rng();
    match model.routing {
        Routing::Weighted => {
            let mut ordered = Vec::with_capacity(ready.len());
            while !ready.is_empty() {
                let total: u64 = ready.iter().map(|d| u64::from(d.weight)).sum();
                let mut ticket = rng.random_range(0..total.max(1));
                let i = ready
                    .iter()
                    .position(|d| {
                        let w = u64::from(d.weight);
                        if ticket < w {
                            true
                        } else {
                            ticket -= w;
                            false
                        }
                    })
                    .unwrap_or(0);
                ordered.push(ready.remove(i));
            }
            ready = ordered;
        }
        Routing::LeastInflight => {
            // Shuffle first so equal loads share traffic.
            ready.shuffle(&mut rng);
            ready.sort_by_key(|d| d.stats.inflight());
        }
        Routing::LowestLatency => {
            ready.shuffle(&mut rng);
            // Unmeasured deployments first, so every one gets measured.
            ready.sort_by_key(|d| d.stats.latency().unwrap_or(Duration::ZERO));
        }
        Routing::MostHeadroom => {
            ready.shuffle(&mut rng);
            ready.sort_by(|a, b| room(b).total_cmp(&room(a)));
        }
    }
    tight.sort_by(|a, b| room(b).total_cmp(&room(a)));
    ready.extend(tight);
    ready
}

/// The client's body as a deployment is sent it: its `model` is the deployment's upstream
/// model and, with an output ceiling, its `max_tokens` is the ceiling the reservation assumed.
/// Set in place in the client's own map; the client's values are put back when this is dropped,
/// whichever way the call ended (answered, failed, or the request dropped mid-call). The map
/// keeps its keys sorted, so the body is afterwards exactly what the client sent.
struct UpstreamBody<'b> {
    body: &'b mut Map<String, Value>,
    /// The client's `model` (every parsed request has one).
    model: Option<Value>,
    /// The client's `max_tokens`, when an output ceiling replaced it.
    max_tokens: Option<Option<Value>>,
}

impl<'b> UpstreamBody<'b> {
    fn new(body: &'b mut Map<String, Value>, output_ceiling: Option<u64>) -> Self {
        // Taken out: every deployment sets its own before the body is sent.
        let model = body.remove("model");
        // The reservation assumed at most this many output tokens.
        let max_tokens =
            output_ceiling.map(|ceiling| body.insert("max_tokens".into(), Value::from(ceiling)));
        Self {
            body,
            model,
            max_tokens,
        }
    }

    /// The body with `upstream_model` as its `model`.
    fn for_deployment(&mut self, upstream_model: &str) -> &Map<String, Value> {
        self.body
            .insert("model".into(), Value::String(upstream_model.to_owned()));
        self.body
    }
}

impl Drop for UpstreamBody<'_> {
    fn drop(&mut self) {
        let put_back = |body: &mut Map<String, Value>, key: &str, value: Option<Value>| {
            match value {
                Some(value) => body.insert(key.to_owned(), value),
                None => body.remove(key),
            };
        };
        put_back(self.body, "model", self.model.take());
        if let Some(max_tokens) = self.max_tokens.take() {
            put_back(self.body, "max_tokens", max_tokens);
        }
    }
}

/// A provider answer and who gave it.
pub(super) struct Answered {
    /// The model that answered (the requested one or a fallback).
    pub model: std::sync::Arc<Model>,
    /// The deployment that answered.
    pub deployment: String,
    /// The answer.
    pub response: UpstreamResponse,
    /// `next_deployment` or `fallback_model` when not the first choice.
    pub tier: Option<Fallback>,
}

/// What one request needs from the providers.
pub(super) struct Call<'a> {
    pub endpoint: Endpoint,
    /// The client's body. Each deployment's `model` (and the reservation's `max_tokens`) is
    /// set in it for the call and the client's values put back after ([`UpstreamBody`]):
    /// no copy of the conversation per attempt.
    pub body: &'a mut Map<String, Value>,
    pub stream: bool,
    pub tokens: u64,
    pub output_ceiling: Option<u64>,
    pub deadline: Instant,
}

impl Gateway {
    /// Stage 4, **call**: the admitted request to the providers (see [`Gateway::call_providers`]).
    pub(super) async fn call(
        &self,
        ctx: &mut Context<'_>,
        admitted: &Admitted,
    ) -> Result<Answered, GatewayError> {
        let call = Call {
            endpoint: ctx.request.endpoint,
            body: &mut ctx.request.body,
            stream: ctx.request.stream,
            tokens: admitted.tokens,
            output_ceiling: admitted.output_ceiling,
            deadline: ctx.deadline,
        };
        self.call_providers(&ctx.model, call).await
    }

    /// Tries the model's deployments (in routing order, with retries), then its fallback
    /// models, until one answers, a failure shows the request itself is at fault, or the
    /// deadline passes. The error is the last provider failure.
    pub(super) async fn call_providers(
        &self,
        model: &std::sync::Arc<Model>,
        call: Call<'_>,
    ) -> Result<Answered, GatewayError> {
        let mut models = vec![std::sync::Arc::clone(model)];
        models.extend(
            model
                .fallbacks
                .iter()
                .filter_map(|name| self.catalog.get(name).cloned()),
        );
        let attempts = self.routing.attempts_per_deployment.max(1);
        let cooldown_ms = crate::num::f64_to_u64(self.routing.circuit_cooldown_s * 1000.0);
        let mut last: Option<(String, ProviderError)> = None;
        let Call {
            endpoint,
            body,
            stream,
            tokens,
            output_ceiling,
            deadline,
        } = call;
        let mut body = UpstreamBody::new(body, output_ceiling);
        for (m, candidate) in models.iter().enumerate() {
            let now = self.clock.now_ms();
            for (d, deployment) in order(candidate, tokens, now).into_iter().enumerate() {
                if !deployment.stats.admit(self.clock.now_ms()) {
                    continue;
                }
                let body = body.for_deployment(&deployment.upstream_model);
                for attempt in 0..attempts {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.give_up(last, true));
                    }
                    deployment.stats.started(tokens, self.clock.now_ms());
                    let started = Instant::now();
                    let result = self
                        .call_once(
                            deployment,
                            (endpoint, stream),
                            body,
                            left.min(self.upstream_timeout),
                        )
                        .await;
                    let now = self.clock.now_ms();
                    match result {
                        Ok((response, headroom)) => {
                            deployment.stats.succeeded(started.elapsed(), headroom, now);
                            let tier = match (m, d) {
                                (0, 0) => None,
                                (0, _) => Some(Fallback::NextDeployment),
                                _ => Some(Fallback::FallbackModel),
                            };
                            return Ok(Answered {
                                model: std::sync::Arc::clone(candidate),
                                deployment: deployment.id.clone(),
                                response,
                                tier,
                            });
                        }
                        Err(error) => {
                            deployment.stats.failed(
                                &error,
                                self.routing.circuit_failures,
                                cooldown_ms,
                                now,
                            );
                            tracing::warn!(
                                deployment = %deployment.id,
                                attempt = attempt + 1,
                                error = %error,
                                "provider call failed"
                            );
                            let retry = error.is_retryable();
                            let elsewhere = error.may_work_elsewhere();
                            let retry_after = match &error {
                                ProviderError::Status { retry_after, .. } => *retry_after,
                                _ => None,
                            };
                            last = Some((deployment.id.clone(), error));
                            if !elsewhere {
                                // The request itself is at fault: no other provider will do better.
                                return Err(self.give_up(last, false));
                            }
                            if !retry || attempt + 1 == attempts {
                                break;
                            }
                            let wait = self.backoff(attempt, retry_after);
                            if Instant::now() + wait >= deadline {
                                break;
                            }
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
            }
        }
        Err(self.give_up(last, false))
    }

    /// One call; for streams, the first chunk must arrive too (fallback applies until then).
    async fn call_once(
        &self,
        deployment: &Deployment,
        (endpoint, stream): (Endpoint, bool),
        body: &Map<String, Value>,
        timeout: Duration,
    ) -> Result<(UpstreamResponse, Headroom), ProviderError> {
        let started = Instant::now();
        let response = deployment
            .provider
            .call(
                &self.http,
                UpstreamRequest {
                    endpoint,
                    body,
                    api_key: &deployment.api_key.expose(),
                    stream,
                    timeout,
                    now_ms: self.clock.now_ms(),
                },
            )
            .await?;
        match response {
            UpstreamResponse::Complete {
                body,
                usage,
                headroom,
            } => Ok((
                UpstreamResponse::Complete {
                    body,
                    usage,
                    headroom,
                },
                headroom,
            )),
            UpstreamResponse::Stream {
                mut chunks,
                headroom,
            } => {
                let left = timeout.saturating_sub(started.elapsed());
                let first = tokio::time::timeout(left, chunks.next())
                    .await
                    .map_err(|_| ProviderError::Timeout)?;
                let first = match first {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => return Err(e),
                    None => return Err(ProviderError::Malformed("empty stream".into())),
                };
                let chunks = futures_util::stream::iter([Ok(first)])
                    .chain(chunks)
                    .boxed();
                Ok((UpstreamResponse::Stream { chunks, headroom }, headroom))
            }
        }
    }

    /// Exponential backoff with full jitter, or the provider's `Retry-After` when it gave one.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after;
        }
        let cap = self
            .routing
            .backoff_base_ms
            .saturating_mul(1 << attempt.min(16))
            .min(self.routing.backoff_max_ms);
        Duration::from_millis(rand::rng().random_range(0..=cap.max(1)))
    }

    fn give_up(&self, last: Option<(String, ProviderError)>, deadline: bool) -> GatewayError {
        match (last, deadline) {
            (_, true) => GatewayError::Upstream {
                deployment: String::new(),
                error: ProviderError::Timeout,
            },
            (Some((deployment, error)), false) => GatewayError::Upstream { deployment, error },
            (None, false) => GatewayError::AllUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by schemathesis: `max_tokens` near u64::MAX (no limit caps it) made the
    /// deployment's own token count overflow, a panic in debug builds.
    #[test]
    fn token_bounds_from_clients_saturate_the_own_window() {
        let stats = DeploymentStats::default();
        stats.started(u64::MAX, 60_000);
        stats.started(u64::MAX, 60_001);
        assert_eq!(DeploymentStats::lock(&stats.own).tokens, u64::MAX);
    }

    /// A JSON value of any shape, a few levels deep.
    fn any_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            "[a-z]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the client sent (with or without `model` and `max_tokens`, of any type),
        /// each deployment sees its own model and the ceiling, every other field as sent, and
        /// after the call the body is exactly the client's again — also when no deployment
        /// was tried.
        #[test]
        fn deployments_see_their_model_and_the_client_gets_its_body_back(
            fields in proptest::collection::btree_map(
                prop_oneof!["[a-z_]{1,10}", Just("model".to_owned()), Just("max_tokens".to_owned())],
                any_value(),
                0..8,
            ),
            ceiling in proptest::option::of(any::<u64>()),
            deployments in proptest::collection::vec("[a-z0-9-]{1,12}", 0..4),
        ) {
            let sent: Map<String, Value> = fields.into_iter().collect();
            let mut body = sent.clone();
            {
                let mut upstream = UpstreamBody::new(&mut body, ceiling);
                for model in &deployments {
                    let seen = upstream.for_deployment(model);
                    prop_assert_eq!(seen.get("model"), Some(&Value::from(model.as_str())));
                    match ceiling {
                        Some(c) => prop_assert_eq!(seen.get("max_tokens"), Some(&Value::from(c))),
                        None => prop_assert_eq!(seen.get("max_tokens"), sent.get("max_tokens")),
                    }
                    for (k, v) in &sent {
                        if k != "model" && (k != "max_tokens" || ceiling.is_none()) {
                            prop_assert_eq!(seen.get(k), Some(v));
                        }
                    }
                    let extra = seen.keys().filter(|k| !sent.contains_key(*k)).count();
                    let added = usize::from(!sent.contains_key("model"))
                        + usize::from(ceiling.is_some() && !sent.contains_key("max_tokens"));
                    prop_assert_eq!(extra, added);
                }
            }
            prop_assert_eq!(body, sent);
        }
    }
}
