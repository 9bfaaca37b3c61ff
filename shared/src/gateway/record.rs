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
        if entry.body.len() > self.max_entry_bytes {
            return false;
        }
        match self.cache.put(&self.key, entry).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cache store failed; answer not cached");
                false
            }
        }
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

    /// Records a complete answer that cost `usage` at `price`: the cache write and the
    /// settlement go together (independent writes), then waiting requests are served.
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
        let target = self.cache_target(&ctx);
        let entry = target
            .as_ref()
            .map(|t| t.entry(body.clone(), self.clock.now_ms()));
        let store_answer = async {
            match (&target, &entry) {
                (Some(target), Some(entry)) => target.put(entry).await,
                _ => false,
            }
        };
        let defer = ctx.options.defer_settlement;
        let settlement = if defer {
            self.limiter
                .settlement(&grant, usage.total(), cost_nano_usd)
        } else {
            None
        };
        let settle = async {
            if !defer {
                self.settle(grant, usage.total(), cost_nano_usd).await;
            }
        };
        let ((), stored) = tokio::join!(settle, store_answer);
        let cache = miss(&ctx);
        if let (Some(lead), Some(entry)) = (ctx.lead, entry) {
            lead.land(entry, stored).await;
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
