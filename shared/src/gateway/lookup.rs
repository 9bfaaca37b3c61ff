//! Stage 2, **lookup**: a stored answer for the request — a fresh cache entry, or the answer
//! of an identical request already calling the provider ([`super::coalesce`]). An entry too
//! old to serve is kept in the context for the stale fallbacks; a request that is to call the
//! provider for identical ones waiting gets the [`super::coalesce::Lead`].
//!
//! Finding an answer here does not admit the request: [`Gateway::serve_stored`] does (a
//! stored answer still counts against the caller's requests per minute).

use super::Gateway;
use super::cache::CacheStatus;
use super::coalesce::Joined;
use super::resolve::Context;
use crate::store::CachedResponse;

/// Whether identical requests may wait for each other's provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Coalescing {
    /// Join or lead a flight (a request answered on its own).
    Join,
    /// Never wait: the caller itself sends requests together (the embeddings micro-batch,
    /// whose one upstream call would otherwise wait for its own answer).
    Skip,
}

impl Gateway {
    /// Looks the request up; `Some` is an answer to serve (with how it was found).
    pub(super) async fn lookup(
        &self,
        ctx: &mut Context<'_>,
        coalescing: Coalescing,
    ) -> Option<(CachedResponse, CacheStatus)> {
        let (true, Some(key)) = (ctx.policy.lookup, &ctx.key) else {
            return None;
        };
        let now = self.clock.now_ms();
        match self.cache.get(key, now).await {
            Ok(Some(entry)) if ctx.policy.is_fresh(&entry, now) => {
                return Some((entry, CacheStatus::Hit));
            }
            Ok(entry) => ctx.stale = entry,
            // The cache is an optimisation: when it fails, the provider still answers.
            Err(e) => tracing::warn!(error = %e, "cache lookup failed; calling provider"),
        }
        // Streams are not coalesced (README, "Coalescing"): a follower would wait for the
        // leader's whole answer before its first byte, or need the leader's events relayed
        // live between processes, which the store cannot do.
        let coalescer = match (coalescing, ctx.policy.store, ctx.request.stream) {
            (Coalescing::Join, true, false) => self.coalescer.as_ref()?,
            _ => return None,
        };
        let landed = ctx.stale.as_ref().map_or(0, |e| e.created_at_ms);
        match coalescer.join(key, landed, ctx.deadline).await {
            Joined::Answer(entry) => {
                self.cache.remember(key, &entry);
                Some((entry, CacheStatus::Coalesced))
            }
            Joined::Lead(lead) => {
                ctx.lead = Some(lead);
                None
            }
            Joined::Alone => None,
        }
    }
}
