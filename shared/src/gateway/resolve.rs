//! Stage 1, **resolve**: from a parsed request to the [`Context`] every later stage reads —
//! the model its name or alias points to, what the cache may do for it (its [`CachePolicy`]
//! and key), and the whole request's deadline.

use std::sync::Arc;
use std::time::Instant;

use super::cache::{self, CacheControl};
use super::catalog::Model;
use super::coalesce::Lead;
use super::request::ParsedRequest;
use super::{Caller, Gateway, GatewayError, RequestOptions, Trace};
use crate::store::{CacheKey, CachedResponse};

/// One request on its way through the stages: filled in by [`Gateway::resolve`], read by
/// lookup, admit, call and record, which add what they learn (a stale entry, a lead).
pub(super) struct Context<'c> {
    /// Who is calling.
    pub caller: &'c Caller,
    /// The request, validated.
    pub request: ParsedRequest,
    /// The model it resolved to.
    pub model: Arc<Model>,
    /// The client's options (cache directives, deadline, deferred settlement).
    pub options: RequestOptions,
    /// What the cache may do for this request.
    pub policy: CachePolicy,
    /// The request's cache key, when the cache may be read or written.
    pub key: Option<CacheKey>,
    /// The whole request's deadline, from its start: waiting for an identical request's
    /// answer counts against it like the provider call.
    pub deadline: Instant,
    /// Already the cheaper model another model's `on_limit` pointed to (no second downgrade).
    pub downgraded: bool,
    /// An entry the lookup found too old to serve, kept for the stale fallbacks.
    pub stale: Option<CachedResponse>,
    /// Set when this request calls the provider for identical requests waiting for it.
    pub lead: Option<Lead>,
}

impl Gateway {
    /// Resolves the model and the cache policy; the first stage of every path.
    pub(super) fn resolve<'c>(
        &self,
        caller: &'c Caller,
        request: ParsedRequest,
        options: RequestOptions,
        downgraded: bool,
        trace: &mut Trace,
    ) -> Result<Context<'c>, GatewayError> {
        let model = Arc::clone(
            self.catalog
                .get(&request.model)
                .ok_or_else(|| GatewayError::UnknownModel(request.model.clone()))?,
        );
        trace.model = Some(model.name.clone());
        let policy = self.cache_policy(&model, options.cache);
        let key = (policy.lookup || policy.store).then(|| {
            cache::cache_key(&caller.tenant, request.endpoint, &model.name, &request.body)
        });
        let deadline =
            crate::invocation::deadline_within(options.timeout.unwrap_or(self.request_timeout));
        Ok(Context {
            caller,
            request,
            model,
            options,
            policy,
            key,
            deadline,
            downgraded,
            stale: None,
            lead: None,
        })
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
pub(super) struct CachePolicy {
    /// Answer from the cache when a fresh entry is there.
    pub lookup: bool,
    /// Store the provider's answer.
    pub store: bool,
    /// The client's `max-age`, in milliseconds.
    pub max_age_ms: Option<u64>,
    /// Seconds a stored answer stays fresh.
    pub ttl_s: u64,
}

impl CachePolicy {
    /// Fresh = not expired, and no older than the request's `max-age` if it gave one.
    pub fn is_fresh(&self, entry: &CachedResponse, now: u64) -> bool {
        now < entry.expires_at_ms
            && self
                .max_age_ms
                .is_none_or(|max| now.saturating_sub(entry.created_at_ms) <= max)
    }
}
