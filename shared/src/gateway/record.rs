//! Stage 5, **record**: what follows a provider's answer — the cache entry written, the
//! reservation settled with the real usage (or handed to the caller to write with its own
//! result, for jobs), the identical requests waiting on this one served. A stream is recorded
//! when it ends ([`super::stream::Finish`]), through the same [`CacheTarget`].

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::cache::CacheStatus;
use super::fallback::Fallback;
use super::resolve::Context;
use super::response_cache::ResponseCache;
use super::routing::Answered;
use super::{Gateway, Reply, ReplyBody, Trace, stream, wants_usage};
use crate::config::Price;
use crate::limits::Grant;
use crate::providers::{Endpoint, UpstreamResponse, Usage};
use crate::store::{CacheKey, CachedResponse};
use crate::tokens;

/// Where an answer is cached, and for how long: the one place a cache entry is built.
pub struct CacheTarget {
    /// The cache (memory and store).
    pub cache: Arc<ResponseCache>,
    /// The entry's key.
    pub key: CacheKey,
    /// Seconds fresh.
    pub ttl_s: u64,
    /// Seconds kept after that for stale fallbacks.
    pub stale_keep_s: u64,
    /// Larger answers are not stored.
    pub max_entry_bytes: usize,
}

impl CacheTarget {
    /// The entry for `body`, created at `now_ms`.
    pub fn entry(&self, body: Bytes, now_ms: u64) -> CachedResponse {
        let expires_at_ms = now_ms.saturating_add(self.ttl_s.saturating_mul(1000));
        CachedResponse {
            body,
            created_at_ms: now_ms,
            expires_at_ms,
            purge_at_ms: expires_at_ms.saturating_add(self.stale_keep_s.saturating_mul(1000)),
        }
    }

    /// Stores `entry` unless it is too large; whether it is in the store now. A failure is
    /// logged: the answer is still served, only not cached.
    pub async fn put(&self, entry: &CachedResponse) -> bool {
        self.remember(entry);
        self.persist(entry).await
    }

    /// Keeps `entry` in this process's memory tier unless it is too large, so that identical
    /// requests here hit before [`Self::persist`] has written it.
    pub fn remember(&self, entry: &CachedResponse) {
        if self.fits(entry) {
            self.cache.remember(&self.key, entry);
        }
    }

    /// Writes `entry` to the store unless it is too large; whether it is in the store now. A
    /// failure is logged: the answer is still served, only not cached.
    pub async fn persist(&self, entry: &CachedResponse) -> bool {
        if !self.fits(entry) {
            return false;
        }
        match self.cache.persist(&self.key, entry).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cache store failed; answer not cached");
                false
            }
        }
    }

    fn fits(&self, entry: &CachedResponse) -> bool {
        entry.body.len() <= self.max_entry_bytes
    }
}

impl Gateway {
    /// Where this request's answer is cached, if anywhere.
    pub(super) fn cache_target(&self, ctx: &Context<'_>) -> Option<CacheTarget> {
        let key = ctx.key.clone().filter(|_| ctx.policy.store)?;
        Some(CacheTarget {
            cache: Arc::clone(&self.cache),
            key,
            ttl_s: ctx.policy.ttl_s,
            stale_keep_s: self.cache_config.stale_keep_s,
            max_entry_bytes: self.cache_config.max_entry_bytes,
        })
    }

    /// Records a provider's answer and makes the reply.
    pub(super) async fn record(
        &self,
        ctx: Context<'_>,
        grant: Grant,
        answered: Answered,
        trace: &mut Trace,
    ) -> Reply {
        trace.deployment = Some(answered.deployment);
        let price = answered.model.price;
        match answered.response {
            UpstreamResponse::Stream { chunks, .. } => {
                // Metered as it flows: settled and cached when the stream ends.
                let finish = stream::Finish {
                    limiter: Arc::clone(&self.limiter),
                    grant,
                    price,
                    prompt_estimate: estimate_usage(&ctx.request).prompt_tokens,
                    cache: self.cache_target(&ctx),
                    clock: Arc::clone(&self.clock),
                    usage: trace.usage.clone(),
                };
                Reply {
                    body: ReplyBody::EventStream(stream::metered(
                        chunks,
                        wants_usage(&ctx.request),
                        finish,
                    )),
                    cache: miss(&ctx),
                    usage: Usage::default(),
                    cost_nano_usd: 0,
                    fallback: answered.tier,
                    settlement: None,
                }
            }
            UpstreamResponse::Complete { body, usage, .. } => {
                let usage = usage.unwrap_or_else(|| estimate_usage(&ctx.request));
                self.record_answer(ctx, grant, body, usage, price, answered.tier)
                    .await
            }
        }
    }

    /// Records a complete answer that cost `usage` at `price`: the settlement is written
    /// before the reply (a counter is never lost), and the cache entry kept in memory; the
    /// store's entry is written after the reply ([`crate::invocation::after_response`]:
    /// spawned by `sluice serve`, awaited before a Lambda invocation ends), the requests waiting
    /// on this one in this process are served with the reply. Until the entry is written,
    /// other processes follow this lead's in-flight marker (and so does this one's next
    /// identical request if it has no memory tier), so none of them calls the provider
    /// again; a `kill -9` in between loses that one entry, never a counter.
    pub(super) async fn record_answer(
        &self,
        ctx: Context<'_>,
        grant: Grant,
        body: Bytes,
        usage: Usage,
        price: Price,
        fallback: Option<Fallback>,
    ) -> Reply {
        let cost_nano_usd = price.cost_nano_usd(&usage);
        let settlement = if ctx.options.defer_settlement {
            self.limiter
                .settlement(&grant, usage.total(), cost_nano_usd)
        } else {
            self.settle(grant, usage.total(), cost_nano_usd).await;
            None
        };
        let cache = miss(&ctx);
        if let Some(target) = self.cache_target(&ctx) {
            let entry = target.entry(body.clone(), self.clock.now_ms());
            target.remember(&entry);
            let landing = ctx.lead.map(|lead| lead.publish(entry.clone()));
            crate::invocation::after_response(async move {
                let stored = target.persist(&entry).await;
                if let Some(landing) = landing {
                    landing.stored(stored).await;
                }
            });
        }
        Reply {
            body: ReplyBody::Json(body),
            cache,
            usage,
            cost_nano_usd,
            fallback,
            settlement,
        }
    }

    /// Settles a grant; a failure is logged (the reservation then expires and is released).
    pub(super) async fn settle(&self, grant: Grant, tokens: u64, cost_nano_usd: u64) {
        if let Err(e) = self.limiter.settle(grant, tokens, cost_nano_usd).await {
            tracing::error!(target: "sluice::limits", error = %e, "could not settle a reservation");
        }
    }
}

/// What the cache did for a request the provider answered.
fn miss(ctx: &Context<'_>) -> CacheStatus {
    if ctx.policy.lookup {
        CacheStatus::Miss
    } else {
        CacheStatus::Bypass
    }
}

/// Usage for a provider that reported none: the prompt estimated, the answer unknown (0).
fn estimate_usage(request: &super::request::ParsedRequest) -> Usage {
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
