//! The resolved routing table: public model names → deployments, built once from config.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;

use regex_lite::Regex;

use super::routing::DeploymentStats;
use crate::config::{Config, OnLimit, Price, Routing, Secret};
use crate::providers::Provider;

/// One place a request can be sent: provider + upstream model + one API key + weight.
#[derive(Debug)]
pub struct Deployment {
    /// Stable name for logs and headers, e.g. `openai/gpt-4o-mini` or `openai/gpt-4o-mini#k2`.
    pub id: String,
    /// The provider that serves it.
    pub provider: Arc<Provider>,
    /// Model name sent upstream.
    pub upstream_model: String,
    /// The provider key used for this deployment (empty for the mock provider).
    pub api_key: Secret,
    /// Relative share of traffic.
    pub weight: u32,
    /// This key's requests per minute at the provider.
    pub rpm: Option<u32>,
    /// This key's tokens per minute at the provider.
    pub tpm: Option<u32>,
    /// Live statistics in this process (load, latency, circuit, rate-limit room).
    pub stats: DeploymentStats,
}

/// A public model.
#[derive(Debug)]
pub struct Model {
    /// The canonical public name (aliases resolve to it).
    pub name: String,
    /// Where its requests can go.
    pub deployments: Vec<Deployment>,
    /// USD per million tokens (zero when [`Model::priced`] is false).
    pub price: Price,
    /// Whether the model has a price (its own, or the built-in table's). Without one, a
    /// spending cap cannot be enforced on it: requests under a cap are refused.
    pub priced: bool,
    /// Cache TTL in seconds; 0 = not cached.
    pub cache_ttl_s: u64,
    /// Output-token ceiling reserved for requests without `max_tokens`.
    pub max_output_tokens: Option<u64>,
    /// What to do over a limit.
    pub on_limit: OnLimit,
    /// How a deployment is chosen.
    pub routing: Routing,
    /// Models tried, in order, when every deployment failed.
    pub fallbacks: Vec<String>,
    /// Whether an expired cached answer may be served when every provider failed.
    pub stale_fallback: bool,
    /// Rule-based answers: pattern on the last user message → reply.
    pub rules: Vec<(Regex, String)>,
    /// The friendly last-resort message.
    pub fallback_message: Option<String>,
}

impl Model {
    /// Picks a deployment at random in proportion to the weights.
    pub fn pick(&self) -> Option<&Deployment> {
        let total: u64 = self.deployments.iter().map(|d| u64::from(d.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rand::rng().random_range(0..total);
        self.deployments.iter().find(|d| {
            let w = u64::from(d.weight);
            if ticket < w {
                true
            } else {
                ticket -= w;
                false
            }
        })
    }
}

/// Every public model by name and alias.
#[derive(Debug, Default)]
pub struct Catalog {
    by_name: HashMap<String, Arc<Model>>,
    /// Names to list in `/v1/models`, in config order (canonical names then aliases).
    names: Vec<String>,
}

impl Catalog {
    /// Builds the table from a validated config.
    pub fn from_config(config: &Config) -> Self {
        let providers: HashMap<&str, (Arc<Provider>, &[Secret])> = config
            .providers
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    (Arc::new(Provider::from_config(p)), p.api_keys.as_slice()),
                )
            })
            .collect();
        let mut catalog = Self::default();
        for m in &config.models {
            let mut deployments = Vec::new();
            for d in &m.deployments {
                let Some((provider, keys)) = providers.get(d.provider.as_str()) else {
                    continue; // validate() guarantees this does not happen
                };
                let base = format!("{}/{}", d.provider, d.model);
                let keys: Vec<Secret> = if keys.is_empty() {
                    vec![Secret::new("")]
                } else {
                    keys.to_vec()
                };
                let several = keys.len() > 1;
                for (i, key) in keys.into_iter().enumerate() {
                    deployments.push(Deployment {
                        id: if several {
                            format!("{base}#k{}", i + 1)
                        } else {
                            base.clone()
                        },
                        provider: Arc::clone(provider),
                        upstream_model: d.model.clone(),
                        api_key: key,
                        weight: d.weight,
                        rpm: d.rpm,
                        tpm: d.tpm,
                        stats: DeploymentStats::default(),
                    });
                }
            }
            let price = Config::price_of(m);
            let model = Arc::new(Model {
                name: m.name.clone(),
                deployments,
                priced: price.is_some(),
                price: price.unwrap_or(Price::ZERO),
                cache_ttl_s: m.cache_ttl_s.unwrap_or(config.cache.default_ttl_s),
                max_output_tokens: m.max_output_tokens,
                on_limit: m.on_limit.clone(),
                routing: m.routing,
                fallbacks: m.fallbacks.clone(),
                stale_fallback: m.stale_fallback,
                // Patterns were compiled as the config was read (`config::Pattern`).
                rules: m
                    .rules
                    .iter()
                    .map(|r| (r.pattern.regex().clone(), r.reply.clone()))
                    .collect(),
                fallback_message: m.fallback_message.clone(),
            });
            for name in std::iter::once(&m.name).chain(&m.aliases) {
                catalog.by_name.insert(name.clone(), Arc::clone(&model));
                catalog.names.push(name.clone());
            }
        }
        catalog
    }

    /// The model a client-supplied name (or alias) refers to.
    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.by_name.get(name)
    }

    /// Every public name and alias, in config order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Every model once (aliases skipped), in config order.
    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.names
            .iter()
            .filter_map(|n| self.by_name.get(n).filter(|m| &m.name == n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_keys_become_several_deployments_and_weights_are_honoured() {
        let text = r#"
[[providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1/v1"
api_keys = ["a", "b"]

[[providers]]
name = "m"
kind = "mock"

[[models]]
name = "x"
aliases = ["fast"]
deployments = [{ provider = "p", model = "up", weight = 1 }, { provider = "m", model = "mm", weight = 2 }]
"#;
        let config = Config::parse(text, "t", &|_| None).unwrap();
        let catalog = Catalog::from_config(&config);
        let model = catalog.get("fast").unwrap();
        let ids: Vec<&str> = model.deployments.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["p/up#k1", "p/up#k2", "m/mm"]);
        let mut mock_share = 0;
        for _ in 0..4000 {
            if model.pick().unwrap().id == "m/mm" {
                mock_share += 1;
            }
        }
        // Weight 2 of a total 4: expect about half.
        assert!((1700..2300).contains(&mock_share), "{mock_share}");
        assert_eq!(catalog.names(), ["x", "fast"]);
    }
}
