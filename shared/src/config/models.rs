//! `[[models]]`: each public model name, its deployments, and what it does over a limit or
//! when every deployment failed (routing strategy, fallbacks, rules, last-resort message).

use std::collections::HashSet;

use serde::Deserialize;

use super::{ConfigError, Pattern, Price, invalid};

/// One public model name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send in `model`.
    pub name: String,
    /// Other names that resolve to this model (e.g. `fast`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Where requests for this model can go.
    pub deployments: Vec<DeploymentConfig>,
    /// USD per million tokens; defaults to the built-in table for well-known upstream models.
    #[serde(default)]
    pub price: Option<Price>,
    /// Cache TTL for this model's answers; `0` disables caching for it.
    #[serde(default)]
    pub cache_ttl_s: Option<u64>,
    /// Output-token ceiling reserved when a request has no `max_tokens`.
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    /// What to do over a limit: `"reject"`, `"cache_only"`, `{ downgrade = "model" }` or
    /// `{ message = "text" }`.
    #[serde(default)]
    pub on_limit: OnLimit,
    /// How a deployment is chosen: `weighted`, `least_inflight`, `lowest_latency`,
    /// `most_headroom`.
    #[serde(default)]
    pub routing: Routing,
    /// Models to try, in order, when every deployment of this one failed.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Whether an expired cached answer may be served when every provider failed.
    #[serde(default = "default_true")]
    pub stale_fallback: bool,
    /// Canned answers for when everything else failed: a regex on the last user message.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// The last resort: a friendly assistant message when nothing could answer.
    #[serde(default)]
    pub fallback_message: Option<String>,
}

fn default_true() -> bool {
    true
}

/// How a model's deployment is chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// At random, in proportion to `weight`.
    #[default]
    Weighted,
    /// The one with the fewest requests in flight.
    LeastInflight,
    /// The one with the lowest recent latency (EWMA).
    LowestLatency,
    /// The one with the most rate-limit room left (provider headers and its own rpm/tpm).
    MostHeadroom,
}

/// A rule-based answer: if `pattern` (a regex) matches the last user message, answer `reply`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Regular expression (Rust `regex` syntax), compiled as the config is read.
    pub pattern: Pattern,
    /// The answer's text.
    pub reply: String,
}

/// What a model does when a request is over a rate limit or spending cap.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// 429 with `rate_limit_exceeded` or `budget_exceeded`.
    #[default]
    Reject,
    /// Serve a cached answer (stale allowed), else reject.
    CacheOnly,
    /// Answer with this (cheaper) model instead, within its own limits.
    Downgrade(String),
    /// Answer with this text as a normal completion.
    Message(String),
}

/// One provider + upstream model + weight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// A provider `name`.
    pub provider: String,
    /// The model name sent upstream.
    pub model: String,
    /// Relative share of traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// This key's requests per minute at the provider (skipped before it would get a 429).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// This key's tokens per minute at the provider.
    #[serde(default)]
    pub tpm: Option<u32>,
}

fn default_weight() -> u32 {
    1
}

impl ModelConfig {
    /// Checks that every name and alias is unique and not empty, then each model against the
    /// others and the `providers` names.
    pub(super) fn validate_all(
        models: &[Self],
        providers: &HashSet<&str>,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, m) in models.iter().enumerate() {
            for name in std::iter::once(&m.name).chain(&m.aliases) {
                if name.trim().is_empty() {
                    return Err(invalid(
                        origin,
                        format!("models[{i}].name"),
                        "model names must not be empty",
                    ));
                }
                if !names.insert(name.as_str()) {
                    return Err(invalid(
                        origin,
                        format!("models[{i}].name"),
                        format!("model name or alias `{name}` is used twice"),
                    ));
                }
            }
            m.validate(i, models, providers, origin)?;
        }
        Ok(())
    }

    /// Checks model `i`: its deployments name providers, its downgrade and fallback targets
    /// are other models, and its numbers and price make sense.
    fn validate(
        &self,
        i: usize,
        models: &[Self],
        providers: &HashSet<&str>,
        origin: &str,
    ) -> Result<(), ConfigError> {
        let at = |f: &str| format!("models[{i}].{f}");
        let is_other_model = |target: &String| {
            target != &self.name
                && models
                    .iter()
                    .any(|o| &o.name == target || o.aliases.contains(target))
        };
        if self.deployments.is_empty() {
            return Err(invalid(origin, at("deployments"), "needs at least one"));
        }
        for (j, d) in self.deployments.iter().enumerate() {
            d.validate(&format!("models[{i}].deployments[{j}]"), providers, origin)?;
        }
        if let OnLimit::Downgrade(target) = &self.on_limit
            && !is_other_model(target)
        {
            return Err(invalid(
                origin,
                at("on_limit"),
                format!("downgrade target `{target}` is not another configured model"),
            ));
        }
        if let Some(k) = self.fallbacks.iter().position(|f| !is_other_model(f)) {
            return Err(invalid(
                origin,
                format!("models[{i}].fallbacks[{k}]"),
                format!("`{}` is not another configured model", self.fallbacks[k]),
            ));
        }
        if self.max_output_tokens == Some(0) {
            return Err(invalid(
                origin,
                at("max_output_tokens"),
                "must be at least 1",
            ));
        }
        if let Some(price) = &self.price {
            for (f, v) in price.components() {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(invalid(
                        origin,
                        format!("models[{i}].price.{f}"),
                        "must be a non-negative number",
                    ));
                }
            }
            if price
                .batch_discount
                .is_some_and(|d| !(d.is_finite() && (0.0..1.0).contains(&d)))
            {
                return Err(invalid(
                    origin,
                    format!("models[{i}].price.batch_discount"),
                    "must be at least 0 and less than 1 (0.5 = half price)",
                ));
            }
        }
        Ok(())
    }
}

impl DeploymentConfig {
    /// Checks the deployment at `at` (`models[i].deployments[j]`): a known provider, an
    /// upstream model, a weight.
    fn validate(
        &self,
        at: &str,
        providers: &HashSet<&str>,
        origin: &str,
    ) -> Result<(), ConfigError> {
        if !providers.contains(self.provider.as_str()) {
            return Err(invalid(
                origin,
                format!("{at}.provider"),
                format!("no provider is named `{}`", self.provider),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(invalid(origin, format!("{at}.model"), "must not be empty"));
        }
        if self.weight == 0 {
            return Err(invalid(
                origin,
                format!("{at}.weight"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
