//! Load balancing, retries, circuit breaking and the fallback ladder, each driven by fake
//! upstreams that fail the way real providers do.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway};

use crate::e2e::{assert_error, header, json};

/// Two providers `a` and `b`; model `m` has one deployment on each with the given settings;
/// `extra` is appended (more `[routing]` keys, more models...).
fn two(a: &FakeUpstream, b: &FakeUpstream, model_extra: &str, extra: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout_s = 1

[routing]
backoff_base_ms = 10
backoff_max_ms = 50
{extra}

[[providers]]
name = "a"
kind = "openai"
base_url = "{}"
api_keys = ["ka"]

[[providers]]
name = "b"
kind = "openai"
base_url = "{}"
api_keys = ["kb"]

[[models]]
name = "m"
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
{model_extra}
{no_cache}
"#,
        a.base_url,
        b.base_url,
        // Counting calls needs every request to reach a provider, unless a test caches.
        no_cache = if model_extra.contains("cache_ttl_s") {
            ""
        } else {
            "cache_ttl_s = 0"
        }
    )
}

async fn ask(gw: &TestGateway, key: &str, model: &str, text: &str) -> reqwest::Response {
    gw.post(
        "/v1/chat/completions",
        key,
        &json!({"model": model, "messages": [{"role": "user", "content": text}]}),
    )
    .await
}

#[tokio::test]
async fn a_failed_call_is_retried_on_the_same_deployment() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\" }]",
        "attempts_per_deployment = 3",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    a.fail_next(2, Behaviour::Status(503, None));
    let r = ask(&gw, &key, "m", "retry me").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-sluice-fallback").is_none(),
        "a retry is not a fallback"
    );
    assert_eq!(a.calls(), 3);
    // Retry-After is honoured.
    a.fail_next(1, Behaviour::Status(429, Some(1)));
    let started = Instant::now();
    assert_eq!(ask(&gw, &key, "m", "after a 429").await.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    // The request's own fault is not retried.
    a.fail_next(1, Behaviour::Status(400, None));
    let before = a.calls();
    assert_error(
        ask(&gw, &key, "m", "bad").await,
        400,
        "upstream_rejected_request",
    )
    .await;
    assert_eq!(a.calls(), before + 1);
}

#[tokio::test]
async fn the_ladder_next_deployment_then_fallback_model() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    a.set(Behaviour::Status(500, None));
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\", weight = 1000000 }, { provider = \"b\", model = \"y\", weight = 1 }]",
        "",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let r = ask(&gw, &key, "m", "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "next_deployment");
    assert_eq!(header(&r, "x-sluice-provider"), "b/y");
    assert_eq!(a.calls(), 2, "two attempts on a first");

    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\" }]\nfallbacks = [\"backup\"]\n\n\
         [[models]]\nname = \"backup\"\ndeployments = [{ provider = \"b\", model = \"z\" }]\n\
         price = { input_per_mtok = 1.0, output_per_mtok = 1.0 }",
        "",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let r = ask(&gw, &key, "m", "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "fallback_model");
    assert_eq!(header(&r, "x-sluice-provider"), "b/z");
    assert_eq!(b.last().body["model"], "z");
}

#[tokio::test]
async fn every_failure_kind_reaches_the_last_tiers() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\" }]\ncache_ttl_s = 1\n\
         rules = [{ pattern = \"(?i)opening hours\", reply = \"We are open 9 to 5.\" }]\n\
         fallback_message = \"Sorry, we are having trouble; please try again soon.\"",
        "attempts_per_deployment = 1",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    // Cache an answer, then let it expire: it can still be served stale.
    assert_eq!(ask(&gw, &key, "m", "cached question").await.status(), 200);
    gw.clock.advance_ms(5_000);
    let failures = [
        Behaviour::Status(500, None),
        Behaviour::Status(429, None),
        Behaviour::Garbage,
        Behaviour::ErrorIn200,
        Behaviour::Slow(Duration::from_millis(1500)),
    ];
    for failure in failures {
        a.set(failure.clone());
        let r = ask(&gw, &key, "m", "cached question").await;
        assert_eq!(r.status(), 200, "{failure:?}");
        assert_eq!(
            header(&r, "x-sluice-fallback"),
            "stale_cache",
            "{failure:?}"
        );
        assert_eq!(header(&r, "x-sluice-cache"), "stale");
        let r = ask(&gw, &key, "m", "What are your OPENING HOURS?").await;
        assert_eq!(header(&r, "x-sluice-fallback"), "rule", "{failure:?}");
        assert_eq!(
            json(r).await["choices"][0]["message"]["content"],
            "We are open 9 to 5."
        );
        let r = ask(&gw, &key, "m", "anything else").await;
        assert_eq!(header(&r, "x-sluice-fallback"), "message", "{failure:?}");
        assert_eq!(header(&r, "x-sluice-provider"), "sluice/message");
        let body = json(r).await;
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Sorry, we are having trouble; please try again soon."
        );
    }
    // A connection that is refused outright, too.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = format!(
        "[[providers]]\nname = \"gone\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{closed}/v1\"\napi_keys = [\"k\"]\n\
         [[models]]\nname = \"m\"\ndeployments = [{{ provider = \"gone\", model = \"x\" }}]\n\
         fallback_message = \"down\"\n[routing]\nbackoff_base_ms = 1\n"
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let r = ask(&gw, &key, "m", "hi").await;
    assert_eq!(header(&r, "x-sluice-fallback"), "message");
}

#[tokio::test]
async fn with_every_tier_disabled_the_client_gets_a_clear_error() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\" }]\nstale_fallback = false",
        "attempts_per_deployment = 1",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    a.set(Behaviour::Status(500, None));
    assert_error(ask(&gw, &key, "m", "q").await, 502, "upstream_failed").await;
    a.set(Behaviour::Slow(Duration::from_millis(1500)));
    assert_error(ask(&gw, &key, "m", "q").await, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn a_deadline_bounds_retries_and_fallbacks() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    a.set(Behaviour::Slow(Duration::from_millis(800)));
    b.set(Behaviour::Slow(Duration::from_millis(800)));
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\" }, { provider = \"b\", model = \"y\" }]\nstale_fallback = false",
        "attempts_per_deployment = 3",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let started = Instant::now();
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("x-sluice-timeout", "0.5")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "quick"}]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 504, "upstream_timeout").await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("x-sluice-timeout", "soon")
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "quick"}]}))
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "invalid_request").await;
}

#[tokio::test]
async fn a_failing_deployment_is_skipped_for_a_cooldown_then_probed() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    a.set(Behaviour::Status(500, None));
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\", weight = 1000000 }, { provider = \"b\", model = \"y\", weight = 1 }]",
        "attempts_per_deployment = 1\ncircuit_failures = 3\ncircuit_cooldown_s = 30",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    for i in 0..10 {
        assert_eq!(ask(&gw, &key, "m", &format!("q{i}")).await.status(), 200);
    }
    assert_eq!(
        a.calls(),
        3,
        "open after 3 consecutive failures: a is skipped"
    );
    gw.clock.advance_ms(31_000);
    a.set(Behaviour::Ok);
    let r = ask(&gw, &key, "m", "probe").await;
    assert_eq!(
        header(&r, "x-sluice-provider"),
        "a/x",
        "the probe goes to a and closes the circuit"
    );
    assert_eq!(
        ask(&gw, &key, "m", "after").await.headers()["x-sluice-provider"],
        "a/x"
    );
    // With every circuit open and nothing else to answer: 503.
    a.set(Behaviour::Status(500, None));
    b.set(Behaviour::Status(500, None));
    for i in 0..4 {
        ask(&gw, &key, "m", &format!("break{i}")).await;
    }
    assert_error(
        ask(&gw, &key, "m", "nothing left").await,
        503,
        "no_deployment_available",
    )
    .await;
}

async fn distribution(
    routing: &str,
    a: &FakeUpstream,
    b: &FakeUpstream,
    n: usize,
    concurrent: bool,
) -> (usize, usize) {
    let config = two(
        a,
        b,
        &format!(
            "routing = \"{routing}\"\ndeployments = [{{ provider = \"a\", model = \"x\", weight = 3 }}, {{ provider = \"b\", model = \"y\", weight = 1 }}]"
        ),
        "",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let (a0, b0) = (a.calls(), b.calls());
    if concurrent {
        let prompts: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let sends = prompts.iter().map(|p| ask(&gw, &key, "m", p));
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.status(), 200);
        }
    } else {
        for i in 0..n {
            assert_eq!(ask(&gw, &key, "m", &format!("s{i}")).await.status(), 200);
        }
    }
    (a.calls() - a0, b.calls() - b0)
}

#[tokio::test]
async fn each_strategy_spreads_traffic_its_own_way() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    // weighted: 3:1.
    let (na, nb) = distribution("weighted", &a, &b, 400, false).await;
    assert!((260..=340).contains(&na), "weighted gave a={na} b={nb}");
    // least_inflight: with slow answers and 40 at once, the load evens out despite 3:1 weights.
    a.set(Behaviour::Slow(Duration::from_millis(200)));
    b.set(Behaviour::Slow(Duration::from_millis(200)));
    let (na, nb) = distribution("least_inflight", &a, &b, 40, true).await;
    assert!((15..=25).contains(&na), "least_inflight gave a={na} b={nb}");
    // lowest_latency: b answers 10x faster, so after measuring both it gets nearly everything.
    a.set(Behaviour::Slow(Duration::from_millis(100)));
    b.set(Behaviour::Slow(Duration::from_millis(10)));
    let (na, nb) = distribution("lowest_latency", &a, &b, 40, false).await;
    assert!(na <= 3 && nb >= 37, "lowest_latency gave a={na} b={nb}");
    a.set(Behaviour::Ok);
    b.set(Behaviour::Ok);
    // most_headroom: a reports 5 requests left, b 1000: b is preferred.
    a.set_headers(&[
        ("x-ratelimit-remaining-requests", "5"),
        ("x-ratelimit-reset-requests", "60s"),
    ]);
    b.set_headers(&[
        ("x-ratelimit-remaining-requests", "1000"),
        ("x-ratelimit-reset-requests", "60s"),
    ]);
    let (na, nb) = distribution("most_headroom", &a, &b, 40, false).await;
    assert!(na <= 2 && nb >= 38, "most_headroom gave a={na} b={nb}");
}

#[tokio::test]
async fn a_key_near_its_provider_limit_is_skipped_before_a_429() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    // a says it has nothing left; it is skipped even though it is the heavier choice.
    a.set_headers(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1m0s"),
    ]);
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\", weight = 1000000 }, { provider = \"b\", model = \"y\", weight = 1 }]",
        "",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    assert_eq!(
        ask(&gw, &key, "m", "first").await.headers()["x-sluice-provider"],
        "a/x"
    );
    for i in 0..10 {
        assert_eq!(
            ask(&gw, &key, "m", &format!("n{i}")).await.headers()["x-sluice-provider"],
            "b/y"
        );
    }
    assert_eq!(
        a.calls(),
        1,
        "a was never asked again, so it never had to answer 429"
    );

    // The key's own configured rpm works the same way, without any headers.
    let c = FakeUpstream::start().await;
    let d = FakeUpstream::start().await;
    let config = two(
        &c,
        &d,
        "deployments = [{ provider = \"a\", model = \"x\", weight = 1000000, rpm = 3 }, { provider = \"b\", model = \"y\", weight = 1 }]",
        "",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    for i in 0..8 {
        assert_eq!(ask(&gw, &key, "m", &format!("r{i}")).await.status(), 200);
    }
    assert_eq!((c.calls(), d.calls()), (3, 5));
}

#[tokio::test]
async fn a_stream_falls_back_until_its_first_byte() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    a.set(Behaviour::Garbage);
    let config = two(
        &a,
        &b,
        "deployments = [{ provider = \"a\", model = \"x\", weight = 1000000 }, { provider = \"b\", model = \"y\", weight = 1 }]",
        "attempts_per_deployment = 1",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "s"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "next_deployment");
    let text = r.text().await.unwrap();
    assert!(text.contains("fake answer #1"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}
