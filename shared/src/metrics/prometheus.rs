//! Prometheus text at `/metrics` for `sluice serve`: this process's request counts, latency
//! histograms, cache hits, tokens and spend (fed by the same usage events as the rollups),
//! requests in flight, and each deployment's circuit-breaker state (read at scrape time).
//! Labels are model, provider, status class and cache status: never tenants or keys, so the
//! series count stays bounded and nothing about callers leaks to the scraper.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::event::UsageEvent;
use super::rollup::NONE;
use super::sink::UsageSink;
use crate::gateway::catalog::Catalog;

// Label values are shared (`Arc<str>`) or static: looking a series up on every request then
// allocates the model's and provider's names once, not once per family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: Arc<str>,
    provider: Arc<str>,
    status: Cow<'static, str>,
    cache: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpendLabels {
    model: Arc<str>,
    provider: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: Arc<str>,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    model: String,
    deployment: String,
}

/// This process's Prometheus metrics.
pub struct Prometheus {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ModelLabels, Histogram>,
    cache_hits: Family<ModelLabels, Counter>,
    spend: Family<SpendLabels, Counter<f64, AtomicU64>>,
    tokens: Family<TokenLabels, Counter>,
    in_flight: Gauge,
    circuit_open: Family<DeploymentLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Prometheus {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ModelLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let cache_hits = Family::<ModelLabels, Counter>::default();
        let spend = Family::<SpendLabels, Counter<f64, AtomicU64>>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let in_flight = Gauge::default();
        let circuit_open = Family::<DeploymentLabels, Gauge>::default();
        registry.register(
            "requests",
            "Requests to model routes, by model, provider, status class and cache status",
            requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            "Request latency (streams: until the last byte)",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        registry.register(
            "cache_hits",
            "Answers served from the cache",
            cache_hits.clone(),
        );
        registry.register("spend_usd", "Provider spend in US dollars", spend.clone());
        registry.register("tokens", "Tokens used, by direction", tokens.clone());
        registry.register(
            "in_flight_requests",
            "Requests being served now",
            in_flight.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while a deployment's circuit breaker is open (the deployment is skipped)",
            circuit_open.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            cache_hits,
            spend,
            tokens,
            in_flight,
            circuit_open,
        }
    }
}

/// Counts a request in flight while it lives.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Prometheus {
    /// Marks a request as in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// The text exposition, with circuit states read from `catalog` now.
    pub fn render(&self, catalog: &Catalog, now_ms: u64) -> String {
        for model in catalog.models() {
            for d in &model.deployments {
                let labels = DeploymentLabels {
                    model: model.name.clone(),
                    deployment: d.id.clone(),
                };
                self.circuit_open
                    .get_or_create(&labels)
                    .set(i64::from(d.stats.is_open(now_ms)));
            }
        }
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode Prometheus metrics");
        }
        out
    }
}

impl UsageSink for Prometheus {
    fn record(&self, event: UsageEvent) {
        self.record_ref(&event);
    }

    fn record_ref(&self, event: &UsageEvent) {
        let model: Arc<str> = Arc::from(event.model.as_deref().unwrap_or(NONE));
        let provider: Arc<str> = Arc::from(event.provider().unwrap_or(NONE));
        self.requests
            .get_or_create(&RequestLabels {
                model: Arc::clone(&model),
                provider: Arc::clone(&provider),
                status: status_class(event.status),
                cache: cache_label(&event.cache),
            })
            .inc();
        self.latency
            .get_or_create(&ModelLabels {
                model: Arc::clone(&model),
            })
            .observe(event.latency_ms / 1000.0);
        // An identical request's answer saved a provider call as a hit does.
        if matches!(event.cache.as_str(), "hit" | "coalesced") {
            self.cache_hits
                .get_or_create(&ModelLabels {
                    model: Arc::clone(&model),
                })
                .inc();
        }
        if event.cost_nano_usd > 0 {
            self.spend
                .get_or_create(&SpendLabels {
                    model: Arc::clone(&model),
                    provider,
                })
                .inc_by(event.cost_nano_usd as f64 / 1e9);
        }
        for (direction, n) in [("in", event.tokens_in), ("out", event.tokens_out)] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: Arc::clone(&model),
                        direction,
                    })
                    .inc_by(n);
            }
        }
    }
}

/// `2xx` and so on: the status label.
fn status_class(status: u16) -> Cow<'static, str> {
    match status / 100 {
        1 => Cow::Borrowed("1xx"),
        2 => Cow::Borrowed("2xx"),
        3 => Cow::Borrowed("3xx"),
        4 => Cow::Borrowed("4xx"),
        5 => Cow::Borrowed("5xx"),
        class => Cow::Owned(format!("{class}xx")),
    }
}

/// The cache label: one of the statuses events carry, without a copy.
fn cache_label(cache: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 5] = ["hit", "coalesced", "miss", "stale", "bypass"];
    match KNOWN.iter().find(|known| **known == cache) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(cache.to_owned()),
    }
}

/// Hands every event to several sinks.
pub struct Fanout(pub Vec<Arc<dyn UsageSink>>);

impl UsageSink for Fanout {
    fn record(&self, event: UsageEvent) {
        if let Some((last, rest)) = self.0.split_last() {
            for sink in rest {
                sink.record_ref(&event);
            }
            last.record(event);
        }
    }

    fn flush(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {
            for sink in &self.0 {
                sink.flush().await;
            }
        })
    }
}
