//! The embeddings micro-batch answers each job as a request of its own would be answered: a
//! stored answer is still admitted against the rate limits, a refusal goes to the model's
//! `on_limit`, and a failed upstream call falls back to a stale answer. Driven through
//! [`sluice::gateway::Gateway::handle_embeddings_batch`] as the job processor calls it, next to
//! [`sluice::gateway::Gateway::handle`] for the same requests.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sluice::gateway::batch::{BatchItem, BatchOutcome};
use sluice::gateway::cache::{CacheControl, CacheStatus};
use sluice::gateway::{Caller, Fallback, GatewayError, Reply, ReplyBody, Trace};
use sluice::keys::KeyLimits;
use sluice::providers::Endpoint;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, fake_config_with};

/// Models over the fake's embeddings: a short freshness so entries go stale, one answering
/// over a limit from the cache, one falling back to stale answers when the provider fails.
const MODELS: &str = r#"
[[models]]
name = "embed-cache-only"
deployments = [{ provider = "fake", model = "text-embedding-3-small" }]
price = { input_per_mtok = 0.02, output_per_mtok = 0.0 }
cache_ttl_s = 10
on_limit = "cache_only"

[[models]]
name = "embed-stale"
deployments = [{ provider = "fake", model = "text-embedding-3-small" }]
price = { input_per_mtok = 0.02, output_per_mtok = 0.0 }
cache_ttl_s = 10
stale_fallback = true

[[tenants]]
name = "limited"
rpm = 1
"#;

async fn start() -> (FakeUpstream, TestGateway) {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, MODELS)).await;
    (up, gw)
}

fn caller(tenant: &str) -> Caller {
    Caller {
        key_id: format!("key-{tenant}"),
        tenant: tenant.into(),
        limits: KeyLimits::default(),
    }
}

fn body(model: &str, input: &str) -> Bytes {
    Bytes::from(json!({"model": model, "input": input}).to_string())
}

fn json_body(reply: Reply) -> Bytes {
    match reply.body {
        ReplyBody::Json(bytes) => bytes,
        ReplyBody::EventStream(_) => panic!("a JSON answer expected"),
    }
}

/// One request on its own, as the HTTP layer sends it.
async fn alone(gw: &TestGateway, caller: &Caller, body: &Bytes) -> Result<Reply, GatewayError> {
    let mut trace = Trace::default();
    gw.services
        .gateway
        .handle(
            caller,
            Endpoint::Embeddings,
            body,
            CacheControl::default(),
            &mut trace,
        )
        .await
}

/// The same requests as one micro-batch, as the job processor sends them.
async fn batch(gw: &TestGateway, caller: &Caller, bodies: &[Bytes]) -> Vec<BatchOutcome> {
    let items = bodies
        .iter()
        .map(|body| BatchItem {
            caller: caller.clone(),
            body: body.clone(),
            cache_control: CacheControl::default(),
        })
        .collect();
    gw.services
        .gateway
        .handle_embeddings_batch(items, Duration::from_secs(5))
        .await
}

#[tokio::test]
async fn a_cache_hit_in_a_batch_is_admitted_against_the_rate_limit() {
    let (up, gw) = start().await;
    let limited = caller("limited");
    let same = body("embed-test", "same");
    assert!(alone(&gw, &limited, &same).await.is_ok());
    // The windows move on (the entry stays fresh): one request left, and two jobs the cache
    // can answer.
    gw.clock.advance_ms(120_000);
    let outcomes = batch(&gw, &limited, &[same.clone(), same]).await;
    let hits = outcomes
        .iter()
        .filter(|(r, _)| matches!(r, Ok(reply) if reply.cache == CacheStatus::Hit))
        .count();
    let limited_out = outcomes
        .iter()
        .filter(|(r, _)| matches!(r, Err(GatewayError::Limited(_))))
        .count();
    assert_eq!(
        (hits, limited_out),
        (1, 1),
        "a hit counts as a request per minute, as it does alone"
    );
    assert_eq!(up.calls(), 1, "no job went upstream");
}

#[tokio::test]
async fn a_batch_job_over_a_limit_is_answered_by_the_models_on_limit() {
    let (up, gw) = start().await;
    let limited = caller("limited");
    let same = body("embed-cache-only", "same");
    let first = alone(&gw, &limited, &same).await.expect("first answer");
    // The entry goes stale; this minute's one request is used by another input.
    gw.clock.advance_ms(120_000);
    assert!(
        alone(&gw, &limited, &body("embed-cache-only", "other"))
            .await
            .is_ok()
    );
    // Alone, the stale answer is served (`on_limit = "cache_only"`) ...
    let single = alone(&gw, &limited, &same)
        .await
        .expect("cache_only answers");
    assert_eq!(single.fallback, Some(Fallback::StaleCache));
    // ... and in a batch too.
    let mut outcomes = batch(&gw, &limited, std::slice::from_ref(&same)).await;
    let (result, _) = outcomes.remove(0);
    let reply = result.expect("cache_only answers in a batch");
    assert_eq!(reply.fallback, Some(Fallback::StaleCache));
    assert_eq!(reply.cache, CacheStatus::Stale);
    assert_eq!(reply.cost_nano_usd, 0);
    assert_eq!(
        json_body(reply),
        json_body(first),
        "the stored answer, byte for byte"
    );
    assert_eq!(up.calls(), 2, "the batch called no provider");
}

#[tokio::test]
async fn a_batch_whose_provider_fails_falls_back_to_stale_answers() {
    let (up, gw) = start().await;
    let anyone = caller("t1");
    let seen = body("embed-stale", "seen before");
    assert!(alone(&gw, &anyone, &seen).await.is_ok());
    gw.clock.advance_ms(120_000); // past the 10 s freshness, within the stale keep
    up.set(Behaviour::Status(500, None));
    let single = alone(&gw, &anyone, &seen).await.expect("stale fallback");
    assert_eq!(single.fallback, Some(Fallback::StaleCache));
    let never = body("embed-stale", "never seen");
    let outcomes = batch(&gw, &anyone, &[seen, never]).await;
    let (seen_result, seen_trace) = &outcomes[0];
    let reply = seen_result.as_ref().expect("the stale answer, as alone");
    assert_eq!(reply.fallback, Some(Fallback::StaleCache));
    assert_eq!(reply.cache, CacheStatus::Stale);
    assert_eq!(seen_trace.deployment.as_deref(), Some("sluice/cache"));
    assert!(
        matches!(&outcomes[1].0, Err(GatewayError::Upstream { .. })),
        "nothing stored to fall back on: the provider's failure"
    );
}
