//! Stage 3, **admit**: the caller's rate limits and spending caps, and the model's `on_limit`
//! when a limit refuses.
//!
//! A request for the provider reserves its worst case ([`Gateway::ask`]: the prompt's upper
//! bound plus the most it may write, priced at the dearest model that could answer); a stored
//! answer is admitted as one request per minute, no tokens, no spend
//! ([`Gateway::serve_stored`]). Either way, a refusal goes to [`Gateway::over_limit`], which
//! answers from a stale entry, a cheaper model or a message when the model says so.

use bytes::Bytes;
use serde_json::Value;

use super::cache::CacheStatus;
use super::catalog::Model;
use super::coalesce::{Across, Lead};
use super::fallback::{Fallback, canned_completion};
use super::request::{InvalidRequest, ParsedRequest};
use super::resolve::Context;
use super::{Caller, Gateway, GatewayError, Reply, Trace};
use crate::config::OnLimit;
use crate::limits::{Admission, Ask, Grant, Marker, Refusal, Subject};
use crate::providers::Endpoint;
use crate::store::CachedResponse;
use crate::tokens;

/// An admitted request: its reservation, and what to tell the provider.
pub(super) struct Admitted {
    /// The reservation, settled with the real usage by the record stage.
    pub grant: Grant,
    /// The request's worst-case tokens (routing weighs deployments' room by it).
    pub tokens: u64,
    /// The output ceiling to impose when the request set none and a limit depends on it.
    pub output_ceiling: Option<u64>,
}

/// What admitting a request that may lead identical ones came to.
pub(super) enum Admit {
    /// Reserved: call the provider.
    Admitted(Admitted),
    /// A limit refused it.
    Refused(Refusal),
    /// Another process's identical request called the provider meanwhile: serve its answer
    /// (nothing of this request's reservation was kept).
    Answered((CachedResponse, CacheStatus)),
}

impl Gateway {
    /// Admits a request, and when it leads identical requests ([`Context::lead`]) takes the
    /// store's in-flight marker in the reservation's write; if another process's flight holds
    /// it, follows that flight (nothing was written) and admits again once it ends, or serves
    /// its answer.
    pub(super) async fn admit_leading(&self, ctx: &mut Context<'_>) -> Result<Admit, GatewayError> {
        loop {
            let (subject, ask, output_ceiling) = self.reservation(ctx)?;
            let admitted = |grant| Admitted {
                grant,
                tokens: ask.tokens,
                output_ceiling,
            };
            let claim = ctx.lead.as_mut().and_then(Lead::claim);
            let admission = self.limiter.admit_leading(&subject, ask, claim).await?;
            let policy = &ctx.policy;
            let fresh = |e: &CachedResponse, now| policy.is_fresh(e, now);
            let answer = match admission {
                Admission::Refused(refusal) => return Ok(Admit::Refused(refusal)),
                Admission::Granted(grant, marker) => {
                    let Some(mut lead) = ctx.lead.take() else {
                        return Ok(Admit::Admitted(admitted(grant)));
                    };
                    if marker == Marker::Taken {
                        lead.claimed();
                        ctx.lead = Some(lead);
                        return Ok(Admit::Admitted(admitted(grant)));
                    }
                    // No limit applies, so nothing was written: the marker on its own.
                    match lead.begin(fresh).await {
                        Across::Lead(lead) => {
                            ctx.lead = Some(lead);
                            return Ok(Admit::Admitted(admitted(grant)));
                        }
                        Across::Answer(entry) => {
                            self.settle(grant, 0, 0).await;
                            entry
                        }
                    }
                }
                Admission::InFlight => {
                    let Some(lead) = ctx.lead.take() else {
                        continue;
                    };
                    match lead.follow(fresh).await {
                        // Its flight ended (take over) or the wait is over (call alone).
                        Across::Lead(lead) => {
                            ctx.lead = Some(lead);
                            continue;
                        }
                        Across::Answer(entry) => entry,
                    }
                }
            };
            if let Some(key) = &ctx.key {
                self.cache.remember(key, &answer);
            }
            return Ok(Admit::Answered((answer, CacheStatus::Coalesced)));
        }
    }

    /// What admitting `ctx` reserves: who is limited, the worst case, and the output ceiling
    /// to impose (and the soft-threshold warnings, when due).
    fn reservation<'c>(
        &self,
        ctx: &Context<'c>,
    ) -> Result<(Subject<'c>, Ask, Option<u64>), GatewayError> {
        self.limiter.warn_soft_thresholds_if_due();
        let caller: &'c Caller = ctx.caller;
        let subject = caller.subject();
        let (ask, output_ceiling) = self.ask(&ctx.model, &ctx.request, &subject)?;
        Ok((subject, ask, output_ceiling))
    }

    /// Reserves the request's worst case against every limit that applies; `Ok(Err(_))` is a
    /// refusal for [`Gateway::over_limit`].
    pub(super) async fn admit(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Result<Admitted, Refusal>, GatewayError> {
        let (subject, ask, output_ceiling) = self.reservation(ctx)?;
        Ok(self
            .limiter
            .admit(&subject, ask)
            .await?
            .map(|grant| Admitted {
                grant,
                tokens: ask.tokens,
                output_ceiling,
            }))
    }

    /// Serves a stored answer (a cache hit, or an identical request's answer): admitted as a
    /// request for the rate limits (requests per minute), no tokens, no reservation, no spend.
    pub(super) async fn serve_stored(
        &self,
        ctx: Context<'_>,
        (entry, status): (CachedResponse, CacheStatus),
        trace: &mut Trace,
    ) -> Result<Reply, GatewayError> {
        match self.limiter.admit_cached(&ctx.caller.subject()).await? {
            Ok(()) => Ok(Reply::cached(entry.body, status)),
            Err(refusal) => self.over_limit(ctx, refusal, Some(entry), trace).await,
        }
    }

    /// What a model does over a limit (`on_limit` in its config). `stale` is the stored
    /// answer `cache_only` may serve.
    pub(super) async fn over_limit(
        &self,
        ctx: Context<'_>,
        refusal: Refusal,
        stale: Option<CachedResponse>,
        trace: &mut Trace,
    ) -> Result<Reply, GatewayError> {
        let refused = || GatewayError::Limited(refusal.clone());
        match &ctx.model.on_limit {
            OnLimit::Reject => Err(refused()),
            OnLimit::CacheOnly => match stale {
                Some(entry) => {
                    let status = if entry.expires_at_ms > self.clock.now_ms() {
                        CacheStatus::Hit
                    } else {
                        CacheStatus::Stale
                    };
                    let mut reply = Reply::cached(entry.body, status);
                    reply.fallback = Some(Fallback::StaleCache);
                    Ok(reply)
                }
                None => Err(refused()),
            },
            OnLimit::Downgrade(target) if !ctx.downgraded => {
                let target = target.clone();
                let (caller, options) = (ctx.caller, ctx.options);
                let mut cheaper = ctx.request;
                cheaper.model = target.clone();
                cheaper.body.insert("model".into(), Value::String(target));
                let cheaper = self.resolve(caller, cheaper, options, true, trace)?;
                match Box::pin(self.answer(cheaper, trace)).await {
                    Ok(mut reply) => {
                        reply.fallback = Some(Fallback::Downgrade);
                        Ok(reply)
                    }
                    Err(GatewayError::Limited(_)) => Err(refused()),
                    Err(e) => Err(e),
                }
            }
            OnLimit::Downgrade(_) => Err(refused()),
            OnLimit::Message(text) if ctx.request.endpoint == Endpoint::ChatCompletions => {
                let completion = canned_completion(&ctx.model.name, text, self.clock.now_ms());
                let mut reply =
                    Reply::cached(Bytes::from(completion.to_string()), CacheStatus::Bypass);
                reply.fallback = Some(Fallback::Message);
                Ok(reply)
            }
            OnLimit::Message(_) => Err(refused()),
        }
    }

    /// The worst case a request can use, and the output ceiling to impose on the provider
    /// when the request set none and a limit depends on it. Refuses what cannot be bounded
    /// (audio, files) or priced (a model without a price) where a limit needs the number.
    pub(super) fn ask(
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
}
