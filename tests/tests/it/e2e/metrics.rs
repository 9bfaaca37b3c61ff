//! Usage events and `GET /v1/metrics`: every kind of request yields one event, the rollups
//! add up to the raw events, percentiles match the raw latencies within the histogram's
//! resolution, and each key sees only its own tenant.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::metrics::{EventKind, UsageEvent};
use sluice_tests::gateway::ADMIN_KEY;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, fake_config_with};

use crate::e2e::json;

/// Quantile resolution of the latency histogram (four buckets per doubling).
const RESOLUTION: f64 = 0.0906;

fn config(up: &FakeUpstream) -> String {
    fake_config_with(
        &up.base_url,
        "[metrics]\nflush_every_ms = 50\n\n[jobs]\nworkers = 1\nbatch_window_ms = 50\n",
    )
}

async fn metrics(gw: &TestGateway, key: &str, query: &str) -> reqwest::Response {
    gw.http
        .get(format!("{}/v1/metrics?{query}", gw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// Polls until the metrics report `n` requests in total.
async fn settled(gw: &TestGateway, key: &str, query: &str, n: u64) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let r = metrics(gw, key, query).await;
        assert_eq!(r.status(), 200);
        last = json(r).await;
        if last["totals"]["requests"] == n {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("metrics never reached {n} requests: {last}");
}

fn exact_quantile(events: &[UsageEvent], q: f64) -> f64 {
    let mut v: Vec<f64> = events.iter().map(|e| e.latency_ms).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).max(1);
    v[rank - 1]
}

#[tokio::test]
async fn metrics_add_up_to_the_raw_events() {
    let up = FakeUpstream::start().await;
    let (gw, recording) = TestGateway::start_recording(&config(&up)).await;
    let key = gw.create_key("t1").await;
    let limited = gw.admin_create(json!({"tenant": "t1", "rpm": 2})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = gw.create_key("t2").await;

    // Misses with spread-out upstream latencies, then hits of the same prompts.
    for i in 0..24u64 {
        up.set(Behaviour::Slow(Duration::from_millis((i * 7) % 60)));
        assert_eq!(
            gw.chat(&key, "gpt-test", &format!("q{i}")).await.status(),
            200
        );
    }
    up.set(Behaviour::Ok);
    for i in 0..6 {
        let r = gw.chat(&key, "gpt-test", &format!("q{i}")).await;
        assert_eq!(r.headers()["x-sluice-cache"], "hit");
    }
    // A provider refusal (client error), rate-limit refusals, an unknown model.
    up.fail_next(1, Behaviour::Status(400, None));
    assert_eq!(gw.chat(&key, "gpt-test", "bad").await.status(), 400);
    for i in 0..3 {
        let status = gw
            .chat(&limited, "gpt-test", &format!("l{i}"))
            .await
            .status();
        assert_eq!(status, if i < 2 { 200 } else { 429 });
    }
    assert_eq!(gw.chat(&key, "nope", "x").await.status(), 404);
    // A stream, settled from its usage chunk.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "s"}]}),
        )
        .await;
    assert!(r.text().await.unwrap().contains("[DONE]"));
    // An async job reports when it runs, not when it is accepted.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "later"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // Another tenant's traffic.
    for i in 0..5 {
        assert_eq!(
            gw.chat(&other, "gpt-test", &format!("o{i}")).await.status(),
            200
        );
    }

    // 24 + 6 + 1 + 3 + 1 + 1 stream + 1 job for t1; 5 for t2.
    let t1 = settled(&gw, &key, "", 37).await;
    let events = recording.events();
    let mine: Vec<UsageEvent> = events
        .iter()
        .filter(|e| e.tenant == "t1")
        .cloned()
        .collect();
    assert_eq!(mine.len(), 37);
    assert_eq!(events.len(), 42, "one event per request, none for the 202");
    let ids: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids.len(), events.len());

    let totals = &t1["totals"];
    let count = |f: &dyn Fn(&UsageEvent) -> bool| mine.iter().filter(|e| f(e)).count() as u64;
    assert_eq!(totals["cache_hits"], count(&|e| e.cache == "hit"));
    assert_eq!(totals["cache_hits"], 6);
    assert_eq!(totals["errors_by_class"]["rate_limited"], 1);
    assert_eq!(
        totals["errors_by_class"]["client"], 2,
        "the 400 and the 404"
    );
    assert_eq!(totals["errors"], count(&|e| e.status >= 400));
    let tokens_in: u64 = mine.iter().map(|e| e.tokens_in).sum();
    let cost: u64 = mine.iter().map(|e| e.cost_nano_usd).sum();
    assert_eq!(totals["tokens_in"], tokens_in);
    assert!((totals["cost_usd"].as_f64().unwrap() - cost as f64 / 1e9).abs() < 1e-12);
    for q in [(0.5, "p50_ms"), (0.95, "p95_ms"), (0.99, "p99_ms")] {
        let truth = exact_quantile(&mine, q.0);
        let got = totals[q.1].as_f64().unwrap();
        assert!(
            (got / truth - 1.0).abs() <= RESOLUTION,
            "{}: reported {got} ms, raw events say {truth} ms",
            q.1
        );
    }

    // The stream's event carries its settled usage; the job's is async.
    let stream = mine.iter().find(|e| e.kind == EventKind::Stream).unwrap();
    assert_eq!((stream.tokens_in, stream.tokens_out), (10, 5));
    assert!(stream.cost_nano_usd > 0);
    assert!(stream.latency_ms >= stream.ttfb_ms.unwrap());
    let job = mine.iter().find(|e| e.kind == EventKind::Async).unwrap();
    assert_eq!(job.status, 200);
    assert_eq!(job.model.as_deref(), Some("gpt-test"));

    // Grouped by model: the series add up to the totals.
    let by_model = &t1["series"];
    let sum: u64 = by_model
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["points"].as_array().unwrap().iter())
        .map(|p| p["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, 37);
    let groups: Vec<&str> = by_model
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["group"].as_str().unwrap())
        .collect();
    // An unknown model name is not a series of its own: clients cannot create groups.
    assert_eq!(groups, ["gpt-test", "none"]);
    let by_provider = json(metrics(&gw, &key, "group_by=provider&step=1h").await).await;
    assert_eq!(by_provider["step"], "1h");
    assert_eq!(by_provider["totals"]["requests"], 37);
    assert!(
        by_provider["series"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["group"] == "fake")
    );

    // Tenants: the other key sees only its own; the admin sees both.
    let t2 = json(metrics(&gw, &other, "").await).await;
    assert_eq!(t2["totals"]["requests"], 5);
    assert_eq!(t2["totals"]["errors"], 0);
    let all = settled(&gw, ADMIN_KEY, "group_by=tenant", 42).await;
    let tenants: Vec<&str> = all["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["group"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, ["t1", "t2"]);
    let only_t2 = json(metrics(&gw, ADMIN_KEY, "tenant=t2").await).await;
    assert_eq!(only_t2["totals"]["requests"], 5);
}

#[tokio::test]
async fn metrics_refuse_what_a_key_may_not_see_and_bad_parameters() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let key = gw.create_key("t1").await;
    for (query, param) in [
        ("group_by=tenant", "group_by"),
        ("tenant=t2", "tenant"),
        ("step=5m", "step"),
        ("group_by=colour", "group_by"),
        ("from=yesterday", "from"),
        ("from=100&to=50", "from"),
        ("from=0&to=1800000000", "from"),
    ] {
        let error =
            crate::e2e::assert_error(metrics(&gw, &key, query).await, 400, "invalid_request").await;
        assert_eq!(error["param"], param, "{query}");
    }
    crate::e2e::assert_error(
        metrics(&gw, "sk-sluice-nope", "").await,
        401,
        "invalid_api_key",
    )
    .await;
    let empty = json(metrics(&gw, &key, "").await).await;
    assert_eq!(empty["totals"]["requests"], 0);
    assert_eq!(empty["series"], json!([]));
    assert_eq!(empty["totals"]["p99_ms"], Value::Null);
}

#[tokio::test]
async fn prometheus_text_counts_requests_and_shows_open_circuits() {
    let up = FakeUpstream::start().await;
    let config = format!(
        r#"
[routing]
attempts_per_deployment = 1
circuit_failures = 2
circuit_cooldown_s = 60

[[providers]]
name = "fake"
kind = "openai"
base_url = "{}"
api_keys = ["sk-provider-test"]

[[models]]
name = "gpt-test"
deployments = [{{ provider = "fake", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
"#,
        up.base_url
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("secret-tenant").await;
    for i in 0..3 {
        assert_eq!(
            gw.chat(&key, "gpt-test", &format!("p{i}")).await.status(),
            200
        );
    }
    assert_eq!(
        gw.chat(&key, "gpt-test", "p0").await.headers()["x-sluice-cache"],
        "hit"
    );
    let scrape = async || {
        let r = gw
            .http
            .get(format!("{}/metrics", gw.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        r.text().await.unwrap()
    };
    let text = scrape().await;
    for line in [
        r#"sluice_requests_total{model="gpt-test",provider="fake",status="2xx",cache="miss"} 3"#,
        r#"sluice_requests_total{model="gpt-test",provider="none",status="2xx",cache="hit"} 1"#,
        r#"sluice_cache_hits_total{model="gpt-test"} 1"#,
        r#"sluice_tokens_total{model="gpt-test",direction="in"} 30"#,
        r#"sluice_request_duration_seconds_count{model="gpt-test"} 4"#,
        r#"sluice_circuit_open{model="gpt-test",deployment="fake/gpt-4o-mini"} 0"#,
        // The scrape itself is the one request in flight.
        "sluice_in_flight_requests 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    // 30 input + 15 output tokens at $1/M.
    assert!(
        text.lines()
            .any(|l| l.starts_with("sluice_spend_usd_total{") && l.ends_with(" 0.000045")),
        "{text}"
    );
    assert!(!text.contains("secret-tenant") && !text.contains(&key));

    up.set(Behaviour::Status(500, None));
    for i in 0..2 {
        assert_eq!(
            gw.chat(&key, "gpt-test", &format!("f{i}")).await.status(),
            502
        );
    }
    let text = scrape().await;
    assert!(
        text.lines().any(
            |l| l == r#"sluice_circuit_open{model="gpt-test",deployment="fake/gpt-4o-mini"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l
            == r#"sluice_requests_total{model="gpt-test",provider="fake",status="5xx",cache="bypass"} 2"#),
        "{text}"
    );
}
