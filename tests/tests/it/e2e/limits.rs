//! Rate limits and spending caps on the local backend: exact under concurrency, sliding
//! windows that move with the clock, never overspent, reservations that expire, and the
//! per-model behaviour over a limit.

use std::sync::Arc;

use futures_util::future::join_all;
use serde_json::{Value, json};
use sluice::keys::KeyLimits;
use sluice::limits::Ask;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, fake_config_with};

use crate::e2e::{assert_error, header, json, nanos};

fn prompt(i: usize) -> Value {
    json!({"model": "gpt-test", "max_tokens": 5, "messages": [{"role": "user", "content": format!("q{i}")}]})
}

/// Fires `n` distinct chat requests at once; returns (status, cost nanos, response) for each.
async fn burst(gw: &TestGateway, key: &str, n: usize) -> Vec<(u16, u64, reqwest::Response)> {
    let bodies: Vec<Value> = (0..n).map(prompt).collect();
    let sends = bodies
        .iter()
        .map(|b| gw.post("/v1/chat/completions", key, b));
    join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let cost = r
                .headers()
                .get("x-sluice-cost-usd")
                .map(|v| nanos(v.to_str().unwrap()))
                .unwrap_or(0);
            (r.status().as_u16(), cost, r)
        })
        .collect()
}

#[tokio::test]
async fn fifty_concurrent_requests_against_rpm_10_admit_exactly_10() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let key = gw.admin_create(json!({"tenant": "t1", "rpm": 10})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = burst(&gw, &key, 50).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    assert_eq!(ok, 10, "exactly the limit must pass");
    assert_eq!(up.calls(), 10);
    for (status, _, r) in results.into_iter().filter(|(s, _, _)| *s != 200) {
        assert_eq!(status, 429);
        let retry: u64 = header(&r, "retry-after").parse().unwrap();
        assert!((1..=120).contains(&retry), "{retry}");
        assert_eq!(header(&r, "ratelimit-limit"), "10");
        assert_eq!(header(&r, "ratelimit-remaining"), "0");
        assert!(header(&r, "ratelimit-reset").parse::<u64>().unwrap() >= 1);
        let error = assert_error(r, 429, "rate_limit_exceeded").await;
        assert_eq!(error["type"], "rate_limit_error");
    }
}

#[tokio::test]
async fn the_window_slides_with_the_clock_and_a_boundary_does_not_double_the_limit() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    // The test clock starts exactly on a window boundary.
    let key = gw.admin_create(json!({"tenant": "t1", "rpm": 10})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.clock.advance_ms(59_000); // the last second of window 0
    assert_eq!(
        burst(&gw, &key, 12)
            .await
            .iter()
            .filter(|r| r.0 == 200)
            .count(),
        10
    );
    gw.clock.advance_ms(1_000); // window 1 starts: the previous 10 still weigh fully
    let early = burst(&gw, &key, 10).await;
    assert_eq!(
        early.iter().filter(|r| r.0 == 200).count(),
        0,
        "no 2x at a boundary"
    );
    gw.clock.advance_ms(30_000); // halfway: half of the previous window has decayed
    assert_eq!(
        burst(&gw, &key, 10)
            .await
            .iter()
            .filter(|r| r.0 == 200)
            .count(),
        5
    );
    gw.clock.advance_ms(60_000); // window 2 halfway: previous (5) weighs 2.5 → 3
    assert_eq!(
        burst(&gw, &key, 10)
            .await
            .iter()
            .filter(|r| r.0 == 200)
            .count(),
        7
    );
}

#[tokio::test]
async fn tokens_per_minute_count_prompt_and_max_tokens() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let key = gw.admin_create(json!({"tenant": "t1", "tpm": 200})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // More than the whole limit: waiting cannot help, so it is a 400 naming the limit.
    let big = json!({"model": "gpt-test", "max_tokens": 500, "messages": [{"role": "user", "content": "x"}]});
    let r = gw.post("/v1/chat/completions", &key, &big).await;
    assert!(r.headers().get("retry-after").is_none());
    let error = assert_error(r, 400, "request_exceeds_rate_limit").await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("tokens per minute"), "{message}");
    assert!(message.contains("limit of 200"), "{message}");
    // Small requests reserve ~45 tokens each and are settled to their real usage (15 from
    // the fake), so one after another more fit than their reservations alone would allow.
    for i in 0..6 {
        let r = gw.post("/v1/chat/completions", &key, &prompt(i)).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    let u = gw.usage(&key).await;
    assert_eq!(u["limits"]["key"]["tpm"]["used"], 6 * 15);
}

/// Regression (found by schemathesis): `max_tokens` is any u64 the client sends. The worst
/// case it implies used to overflow: `prompt + max_tokens` and the reserved cost panicked in
/// debug builds and wrapped in release ones (reserving nothing), and an amount over
/// `i64::MAX` became a negative counter delta that lowered the counter. Now such a request
/// is refused like any other over the limit, and leaves the counters as they were.
#[tokio::test]
async fn a_max_tokens_beyond_any_counter_is_refused_and_changes_nothing() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let tpm = gw.admin_create(json!({"tenant": "t1", "tpm": 200})).await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let capped = gw
        .admin_create(json!({"tenant": "t2", "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for max_tokens in [u64::MAX, u64::MAX - 2, (1u64 << 63) + 5] {
        let huge = json!({"model": "gpt-test", "max_tokens": max_tokens,
                          "messages": [{"role": "user", "content": "x"}]});
        let r = gw.post("/v1/chat/completions", &tpm, &huge).await;
        assert_error(r, 400, "request_exceeds_rate_limit").await;
        let r = gw.post("/v1/chat/completions", &capped, &huge).await;
        assert_error(r, 400, "request_exceeds_budget").await;
    }
    assert_eq!(gw.usage(&tpm).await["limits"]["key"]["tpm"]["used"], 0);
    let budget = &gw.usage(&capped).await["limits"]["key"]["budget"];
    assert_eq!(budget["reserved_usd"], 0.0, "{budget}");
    assert_eq!(budget["remaining_usd"], 1.0, "{budget}");
    // The counters still count: the same small requests as above fit, and are counted.
    for i in 0..6 {
        let r = gw.post("/v1/chat/completions", &tpm, &prompt(i)).await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(gw.usage(&tpm).await["limits"]["key"]["tpm"]["used"], 6 * 15);
    // A cap too large for a counter is the largest there is, not a negative one.
    let rich = gw
        .admin_create(json!({"tenant": "t3", "budget_usd": 1e300, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = gw.post("/v1/chat/completions", &rich, &prompt(0)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_tenant_limit_binds_all_its_keys_together() {
    let up = FakeUpstream::start().await;
    let config = fake_config_with(&up.base_url, "[[tenants]]\nname = \"shared\"\nrpm = 6\n");
    let gw = TestGateway::start(&config).await;
    let a = gw.create_key("shared").await;
    let b = gw.create_key("shared").await;
    let (ra, rb) = tokio::join!(burst(&gw, &a, 10), burst(&gw, &b, 10));
    let ok = ra.iter().chain(&rb).filter(|r| r.0 == 200).count();
    assert_eq!(ok, 6);
    let refused = ra.into_iter().chain(rb).find(|r| r.0 == 429).unwrap().2;
    let error = assert_error(refused, 429, "rate_limit_exceeded").await;
    assert!(error["message"].as_str().unwrap().contains("tenant"));
}

async fn never_overspent_round(gw: &TestGateway, tenant: &str) {
    // The fake answers 10 prompt + 5 completion tokens: $0.0000045 a call. A $0.00009 cap fits
    // 20 such calls; each reserves its worst case (prompt bound + max_tokens 5) first.
    let key = gw
        .admin_create(json!({"tenant": tenant, "budget_usd": 0.00009, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let results = burst(gw, &key, 200).await;
    let ok: Vec<&(u16, u64, reqwest::Response)> = results.iter().filter(|r| r.0 == 200).collect();
    let answered: u64 = ok.iter().map(|r| r.1).sum();
    assert!(!ok.is_empty());
    for r in results.iter().filter(|r| r.0 != 200) {
        assert_eq!(r.0, 429);
        // The cap is spent for now: waiting for the next period helps, and says so.
        let retry: u64 = header(&r.2, "retry-after").parse().unwrap();
        assert!(retry > 0);
    }
    let budget = &gw.usage(&key).await["limits"]["key"]["budget"];
    let spent = (budget["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
    assert!(spent <= 90_000, "spent {spent} nano-USD over a 90000 cap");
    assert_eq!(
        spent, answered,
        "the ledger must equal what the responses reported"
    );
    assert_eq!(budget["reserved_usd"], 0.0, "every reservation settled");
}

#[tokio::test]
async fn two_hundred_concurrent_requests_never_overspend_a_cap() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    never_overspent_round(&gw, "t1").await;
    let poor = gw
        .admin_create(json!({"tenant": "t9", "budget_usd": 0.000001, "period": "month"}))
        .await;
    // A cap smaller than one request's worst case can never admit it: 400, no Retry-After.
    let refused = burst(&gw, poor["key"].as_str().unwrap(), 1).await;
    let r = refused.into_iter().next().unwrap().2;
    assert!(r.headers().get("retry-after").is_none());
    let error = assert_error(r, 400, "request_exceeds_budget").await;
    assert!(
        error["message"].as_str().unwrap().contains("$0.000001000"),
        "{error}"
    );
}

#[tokio::test]
async fn stress_fifty_rounds_never_overspend() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    for round in 0..50 {
        never_overspent_round(&gw, &format!("stress-{round}")).await;
    }
}

#[tokio::test]
async fn tenant_and_gateway_caps_hold_too() {
    let up = FakeUpstream::start().await;
    let config = fake_config_with(
        &up.base_url,
        "[limits]\nglobal_budget_usd = 0.00009\nglobal_period = \"day\"\n\
         [[tenants]]\nname = \"capped\"\nbudget_usd = 0.000045\nperiod = \"month\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let capped = gw.create_key("capped").await;
    let free = gw.create_key("free").await;
    let (a, b) = tokio::join!(burst(&gw, &capped, 100), burst(&gw, &free, 100));
    let tenant_spend: u64 = a.iter().filter(|r| r.0 == 200).map(|r| r.1).sum();
    let other_spend: u64 = b.iter().filter(|r| r.0 == 200).map(|r| r.1).sum();
    assert!(tenant_spend <= 45_000, "{tenant_spend}");
    assert!(
        tenant_spend + other_spend <= 90_000,
        "{}",
        tenant_spend + other_spend
    );
    // The gateway level is the admin's to see (a key's `/v1/usage` leaves it out).
    let u = json(
        gw.http
            .get(format!("{}/admin/usage?tenant=capped", gw.url))
            .bearer_auth(sluice_tests::gateway::ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let spent = (u["limits"]["gateway"]["budget"]["spent_usd"]
        .as_f64()
        .unwrap()
        * 1e9)
        .round() as u64;
    assert_eq!(spent, tenant_spend + other_spend);
}

#[tokio::test]
async fn a_reservation_of_a_crashed_request_expires_and_is_given_back() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[limits]\nreservation_ttl_s = 60\n",
    ))
    .await;
    let created = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 0.001, "period": "day"}))
        .await;
    let key = created["key"].as_str().unwrap();
    let limits = KeyLimits {
        budget_usd: Some(0.001),
        budget_period: Some(sluice::keys::BudgetPeriod::Day),
        ..KeyLimits::default()
    };
    let subject = sluice::limits::Subject {
        key_id: created["id"].as_str().unwrap(),
        tenant: "t1",
        key_limits: &limits,
    };
    let limiter = Arc::clone(gw.services.gateway.limiter());
    // A request reserves most of the cap, then "crashes": its grant is never settled.
    let ask = Ask {
        tokens: 10,
        cost_nano_usd: 995_000,
    };
    let grant = limiter.admit(&subject, ask).await.unwrap().unwrap();
    drop(grant);
    let r = gw.post("/v1/chat/completions", key, &prompt(1)).await;
    assert_error(r, 429, "budget_exceeded").await;
    assert_eq!(
        limiter.release_expired().await.unwrap(),
        0,
        "not expired yet"
    );
    gw.clock.advance_ms(61_000);
    assert_eq!(limiter.release_expired().await.unwrap(), 1);
    let r = gw.post("/v1/chat/completions", key, &prompt(2)).await;
    assert_eq!(r.status(), 200);
    let budget = &gw.usage(key).await["limits"]["key"]["budget"];
    assert_eq!(budget["reserved_usd"], 0.0);
    assert_eq!(budget["spent_usd"], 0.0000045);
}

#[tokio::test]
async fn a_failed_provider_call_gives_its_reservation_back() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Status(500, None));
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 0.01, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        gw.post("/v1/chat/completions", &key, &prompt(1))
            .await
            .status(),
        502
    );
    let budget = &gw.usage(&key).await["limits"]["key"]["budget"];
    assert_eq!(budget["spent_usd"], 0.0);
    assert_eq!(budget["reserved_usd"], 0.0);
    assert_eq!(budget["remaining_usd"], 0.01);
}

#[tokio::test]
async fn over_limit_models_can_serve_stale_cache_downgrade_or_answer_a_message() {
    let up = FakeUpstream::start().await;
    let base = &up.base_url;
    let config = format!(
        r#"
[server]
upstream_timeout_s = 1

[[providers]]
name = "fake"
kind = "openai"
base_url = "{base}"
api_keys = ["k"]

[[models]]
name = "cached"
deployments = [{{ provider = "fake", model = "up-cached" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
cache_ttl_s = 10
on_limit = "cache_only"

[[models]]
name = "big"
deployments = [{{ provider = "fake", model = "up-big" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
on_limit = {{ downgrade = "small" }}

[[models]]
name = "small"
deployments = [{{ provider = "fake", model = "up-small" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.1 }}

[[models]]
name = "polite"
deployments = [{{ provider = "fake", model = "up-polite" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 1.0 }}
on_limit = {{ message = "We are busy; please try again in a minute." }}

[[tenants]]
name = "limited"
rpm = 1
"#
    );
    let gw = TestGateway::start(&config).await;
    let send = |model: &str, content: &str, key: &str| {
        let body = json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": content}]});
        let key = key.to_owned();
        let gw = &gw;
        async move { gw.post("/v1/chat/completions", &key, &body).await }
    };

    // cache_only: a stale answer is served when over the limit.
    let k1 = gw.create_key("limited").await;
    let first = send("cached", "same", &k1).await;
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap();
    gw.clock.advance_ms(120_000); // entry now stale (ttl 10 s); the rate windows moved on
    assert_eq!(send("cached", "other", &k1).await.status(), 200); // uses this minute's 1 request
    let r = send("cached", "same", &k1).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "stale_cache");
    assert_eq!(header(&r, "x-sluice-cache"), "stale");
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.000000000");
    assert_eq!(r.bytes().await.unwrap(), first_body);
    // ... and nothing cached to fall back on means a 429.
    assert_error(
        send("cached", "never seen", &k1).await,
        429,
        "rate_limit_exceeded",
    )
    .await;

    // downgrade: over its budget the big model answers with the small one.
    let k2 = gw
        .admin_create(json!({"tenant": "t2", "budget_usd": 0.00005, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = up.calls();
    let r = send("big", "expensive question", &k2).await;
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    assert_eq!(header(&r, "x-sluice-fallback"), "downgrade");
    assert_eq!(up.calls(), calls + 1);
    assert_eq!(up.last().body["model"], "up-small");

    // message: a friendly completion instead of a provider call, billed nothing.
    let k3 = gw.create_key("limited").await;
    gw.clock.advance_ms(120_000);
    assert_eq!(send("polite", "one", &k3).await.status(), 200);
    let calls = up.calls();
    let r = send("polite", "two", &k3).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "message");
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.000000000");
    let body = json(r).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "We are busy; please try again in a minute."
    );
    assert_eq!(up.calls(), calls, "a canned answer calls no provider");
}

#[tokio::test]
async fn a_soft_threshold_is_warned_about_once_per_period() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[limits]\nsoft_threshold = 0.25\n",
    ))
    .await;
    // 4.5 µ$ a call; 3 calls pass a quarter of a 40 µ$ cap.
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 0.00004, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let limiter = Arc::clone(gw.services.gateway.limiter());
    assert_eq!(
        gw.post("/v1/chat/completions", &key, &prompt(1))
            .await
            .status(),
        200
    );
    assert!(
        limiter.check_soft_thresholds().await.unwrap().is_empty(),
        "4.5 of 40 is below a quarter"
    );
    for i in 2..4 {
        assert_eq!(
            gw.post("/v1/chat/completions", &key, &prompt(i))
                .await
                .status(),
            200
        );
    }
    assert_eq!(limiter.check_soft_thresholds().await.unwrap().len(), 1);
    assert_eq!(
        gw.post("/v1/chat/completions", &key, &prompt(9))
            .await
            .status(),
        200
    );
    assert!(
        limiter.check_soft_thresholds().await.unwrap().is_empty(),
        "once per period"
    );
}

#[tokio::test]
async fn usage_reports_every_level_and_admin_usage_needs_the_admin_key() {
    let up = FakeUpstream::start().await;
    let config = fake_config_with(
        &up.base_url,
        "[[tenants]]\nname = \"t1\"\nrpm = 100\nbudget_usd = 1.0\nperiod = \"month\"\n",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw
        .admin_create(
            json!({"tenant": "t1", "rpm": 10, "tpm": 1000, "budget_usd": 0.5, "period": "day"}),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        gw.post("/v1/chat/completions", &key, &prompt(1))
            .await
            .status(),
        200
    );
    let u = gw.usage(&key).await;
    assert_eq!(u["object"], "usage");
    assert_eq!(u["limits"]["key"]["rpm"]["used"], 1);
    assert_eq!(u["limits"]["key"]["rpm"]["remaining"], 9);
    assert_eq!(u["limits"]["key"]["tpm"]["used"], 15);
    assert_eq!(u["limits"]["key"]["budget"]["spent_usd"], 0.0000045);
    assert_eq!(u["limits"]["key"]["budget"]["period"], "day");
    assert_eq!(u["limits"]["tenant"]["rpm"]["used"], 1);
    assert_eq!(u["limits"]["tenant"]["budget"]["cap_usd"], 1.0);

    let url = format!("{}/admin/usage?tenant=t1", gw.url);
    let r = gw.http.get(&url).bearer_auth(&key).send().await.unwrap();
    assert_error(r, 403, "admin_key_required").await;
    let admin = json(
        gw.http
            .get(&url)
            .bearer_auth(sluice_tests::gateway::ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(admin["tenant"], "t1");
    assert_eq!(admin["limits"]["tenant"]["budget"]["spent_usd"], 0.0000045);
    assert!(admin["limits"].get("key").is_none());
}

#[tokio::test]
async fn an_idempotency_key_replays_without_a_second_call_or_charge() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = |idem: &str, body: Value| {
        let req = gw
            .http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .header("idempotency-key", idem)
            .header("cache-control", "no-cache")
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let first = send("order-42", prompt(1)).await;
    assert_eq!(first.status(), 200);
    assert_eq!(header(&first, "x-sluice-cost-usd"), "0.000004500");
    let first_body = first.bytes().await.unwrap();
    // Same key, same request (key order changed): the stored answer, nothing called or charged.
    let reordered: Value = serde_json::from_str(
        r#"{"messages":[{"content":"q1","role":"user"}],"max_tokens":5,"model":"gpt-test"}"#,
    )
    .unwrap();
    let again = send("order-42", reordered).await;
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(header(&again, "x-sluice-cost-usd"), "0.000000000");
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(up.calls(), 1);
    let spent = gw.usage(&key).await["limits"]["key"]["budget"]["spent_usd"].clone();
    assert_eq!(spent, 0.0000045, "charged once");
    // Same key, different request: 422.
    let error = assert_error(
        send("order-42", prompt(2)).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    // Keys are per tenant: another tenant's same key is a different request.
    let other = gw.create_key("t2").await;
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&other)
        .header("idempotency-key", "order-42")
        .json(&prompt(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Failures worth retrying are not kept: after a 502 the same key runs again.
    up.set(Behaviour::Status(500, None));
    assert_eq!(send("order-43", prompt(3)).await.status(), 502);
    up.set(Behaviour::Ok);
    let retried = send("order-43", prompt(3)).await;
    assert_eq!(retried.status(), 200);
    assert!(retried.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_duplicate_while_the_first_runs_gets_409() {
    let up = FakeUpstream::start().await;
    up.set(Behaviour::Slow(std::time::Duration::from_millis(400)));
    let gw = TestGateway::start(&fake_config_with(&up.base_url, "")).await;
    let key = gw.create_key("t1").await;
    let send = || {
        gw.http
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .header("idempotency-key", "once")
            .json(&prompt(7))
            .send()
    };
    let (a, b) = tokio::join!(send(), async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        send().await
    });
    assert_eq!(a.unwrap().status(), 200);
    assert_error(b.unwrap(), 409, "idempotency_key_in_use").await;
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn names_that_look_like_counter_parts_do_not_confuse_the_counters() {
    let up = FakeUpstream::start().await;
    let config = fake_config_with(
        &up.base_url,
        "[[tenants]]\nname = \"x:tpm:y\"\nrpm = 3\ntpm = 100000\n",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("x:tpm:y").await;
    let mut ok = 0;
    for i in 0..6 {
        if gw
            .post("/v1/chat/completions", &key, &prompt(i))
            .await
            .status()
            == 200
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 3);
    let u = gw.usage(&key).await;
    assert_eq!(u["limits"]["tenant"]["rpm"]["used"], 3);
    assert_eq!(u["limits"]["tenant"]["tpm"]["used"], 3 * 15);
}

#[tokio::test]
async fn a_late_write_to_the_previous_window_is_not_missed() {
    use sluice::clock::ManualClock;
    use sluice::store::{CounterField, Increment, LimitStore};
    // Two limiters (two processes) over one store; the clock sits 1 s into window 1.
    let store = Arc::new(sluice::store::sqlite::SqliteStore::open(":memory:").unwrap());
    let clock = ManualClock::new(61_000);
    let config = sluice::config::Config::builtin();
    let a = sluice::limits::Limiter::new(&config, store.clone(), Arc::new(clock.clone()));
    let limits = KeyLimits {
        rpm: Some(10),
        ..KeyLimits::default()
    };
    let subject = sluice::limits::Subject {
        key_id: "k",
        tenant: "t",
        key_limits: &limits,
    };
    // A admits one request in window 1, reading (and caching) window 0 as empty.
    assert!(a.admit_cached(&subject).await.unwrap().is_ok());
    // Another process's request from window 0 lands late: window 0 now holds 9.
    let late = Increment {
        counter: sluice::limits::rate::counter_id(
            "key:k",
            sluice::limits::rate::Metric::Requests,
            0,
            0,
        ),
        field: CounterField::Count,
        delta: 9,
        at_most: None,
        expires_at_ms: u64::MAX / 2,
        guard: None,
    };
    store.apply(&[late], None).await.unwrap();
    // 9 × (1 − 1/60) carries 9, plus 1 in this window: exactly nothing more fits. Without the
    // guard, A's cached "0" would let 9 more through.
    let mut admitted = 0;
    for _ in 0..10 {
        if a.admit_cached(&subject).await.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 0);
}

#[tokio::test]
async fn a_sharded_tenant_cap_holds_its_shares_and_small_caps_stay_whole() {
    use sluice::clock::ManualClock;
    use sluice::limits::{Ask, LimitKind, Limiter, Subject};
    let store = Arc::new(sluice::store::sqlite::SqliteStore::open(":memory:").unwrap());
    let clock = ManualClock::new(1_800_000_000_000);
    // As on DynamoDB: eight shards for tenant and gateway caps of at least 8 × 10 USD.
    let config = sluice::config::Config::parse(
        "[limits]\nbudget_shards = 8\n\n\
         [[tenants]]\nname = \"big\"\nbudget_usd = 100.0\nperiod = \"day\"\n\n\
         [[tenants]]\nname = \"small\"\nbudget_usd = 0.2\nperiod = \"day\"\n",
        "test",
        &|_| None,
    )
    .unwrap();
    let limiter = Arc::new(Limiter::new(&config, store, Arc::new(clock)));
    let no_limits = KeyLimits::default();
    let subject = |tenant: &'static str| Subject {
        key_id: "k",
        tenant,
        key_limits: &no_limits,
    };
    let ask = |usd: f64| Ask {
        tokens: 10,
        cost_nano_usd: (usd * 1e9) as u64,
    };
    // 40 concurrent asks of 3 USD against 100 USD in eight shares of 12.5 USD: four fit each
    // share, so exactly 32 are admitted (one undivided counter would admit 33), whatever the
    // order, because a refused request tries every shard.
    let admitted = futures_util::future::join_all((0..40).map(|_| {
        let limiter = Arc::clone(&limiter);
        async move { limiter.admit(&subject("big"), ask(3.0)).await.unwrap() }
    }))
    .await;
    let ok = admitted.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 32);
    let refusal = admitted
        .iter()
        .find_map(|r| r.as_ref().err())
        .unwrap()
        .clone();
    assert_eq!(
        (refusal.kind, refusal.level),
        (LimitKind::Budget, sluice::limits::Level::Tenant)
    );
    assert!(!refusal.impossible);
    let usage = limiter
        .usage(&subject("big"), sluice::limits::GatewayLevel::Hidden)
        .await
        .unwrap();
    assert_eq!(usage["limits"]["tenant"]["budget"]["reserved_usd"], 96.0);
    // Spent in full: every shard is past 80% of its share, and the soft-threshold warning
    // comes once for the cap, not once per shard.
    for grant in admitted.into_iter().filter_map(Result::ok) {
        limiter.settle(grant, 10, 3_000_000_000).await.unwrap();
    }
    let warned = limiter.check_soft_thresholds().await.unwrap();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(limiter.check_soft_thresholds().await.unwrap().is_empty());
    // A worst case above one share (12.5 USD) can never be admitted: refused at once.
    let too_big = limiter.admit(&subject("big"), ask(13.0)).await.unwrap();
    assert!(too_big.unwrap_err().impossible);
    // A cap too small to split (0.2 USD < 8 × 10 USD) stays one counter: 0.03 USD asks fit
    // six times, and a 0.15 USD ask is not impossible.
    let mut ok = 0;
    for _ in 0..10 {
        ok += usize::from(
            limiter
                .admit(&subject("small"), ask(0.03))
                .await
                .unwrap()
                .is_ok(),
        );
    }
    assert_eq!(ok, 6);
    let fits = limiter.beyond_capacity(&subject("small"), Some(ask(0.15)));
    assert!(fits.is_none(), "{fits:?}");
}
