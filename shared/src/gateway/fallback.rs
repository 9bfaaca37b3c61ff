//! The fallback ladder's names ([`Fallback`], reported in `x-sluice-fallback`) and its last
//! tiers, taken when no provider could answer: a stale cached answer, a rule-based answer, a
//! friendly message — each only if the model enables it. The provider tiers (next deployment,
//! fallback models) are in [`super::routing`]; the limit tiers (`on_limit`) in [`super::admit`].

use bytes::Bytes;
use serde_json::Value;

use super::cache::CacheStatus;
use super::resolve::Context;
use super::{Gateway, GatewayError, Reply, Trace};
use crate::providers::Endpoint;

/// Which tier of the fallback ladder produced a degraded answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Another deployment of the model than the first choice.
    NextDeployment,
    /// One of the model's `fallbacks`.
    FallbackModel,
    /// A stored answer past its freshness (providers down, or `on_limit = "cache_only"`).
    StaleCache,
    /// A configured rule matched the last user message.
    Rule,
    /// The model's configured message.
    Message,
    /// The cheaper model `on_limit` points to.
    Downgrade,
}

impl Fallback {
    /// The name in `x-sluice-fallback`, logs and usage events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NextDeployment => "next_deployment",
            Self::FallbackModel => "fallback_model",
            Self::StaleCache => "stale_cache",
            Self::Rule => "rule",
            Self::Message => "message",
            Self::Downgrade => "downgrade",
        }
    }
}

impl std::fmt::Display for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Gateway {
    /// The ladder's last tiers for a request no provider answered. Failures that are the
    /// request's own fault (a 400 from the provider) are returned as they are.
    pub(super) fn last_resorts(
        &self,
        ctx: Context<'_>,
        error: GatewayError,
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
        let model = &ctx.model;
        if let (true, Some(entry)) = (model.stale_fallback, ctx.stale) {
            trace.deployment = Some("sluice/cache".into());
            let mut reply = Reply::cached(entry.body, CacheStatus::Stale);
            reply.fallback = Some(Fallback::StaleCache);
            return Ok(reply);
        }
        if ctx.request.endpoint != Endpoint::ChatCompletions {
            return Err(error);
        }
        let last_user = last_user_text(&ctx.request.body);
        let (tier, deployment, text) =
            match model.rules.iter().find(|(re, _)| re.is_match(&last_user)) {
                Some((_, reply)) => (Fallback::Rule, "sluice/rule", reply),
                None => match &model.fallback_message {
                    Some(text) => (Fallback::Message, "sluice/message", text),
                    None => return Err(error),
                },
            };
        trace.deployment = Some(deployment.into());
        let completion = canned_completion(&model.name, text, self.clock.now_ms());
        let mut reply = Reply::cached(Bytes::from(completion.to_string()), CacheStatus::Bypass);
        reply.fallback = Some(tier);
        Ok(reply)
    }
}

/// A completion whose content is a configured text (a rule's or a message fallback's).
pub(super) fn canned_completion(model: &str, text: &str, now_ms: u64) -> Value {
    serde_json::json!({
        "id": crate::keys::random_id("chatcmpl-sluice-", 20),
        "object": "chat.completion",
        "created": now_ms / 1000,
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
