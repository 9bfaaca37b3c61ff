//! Spending caps and token limits against any request a client can send.
//!
//! The fake provider bills the most each request allows ([`billing`]): every prompt byte a
//! token, each image the most any provider bills, every choice (`n`) its whole output
//! allowance and every predicted token again. Requests are generated (proptest) over every
//! provider kind (OpenAI-compatible, Anthropic, Gemini, the mock) and both ingress formats
//! (`/v1/chat/completions`, `/v1/messages`), plus embeddings, and for each answered one:
//! what was billed ≤ what was reserved ≤ the cap. A request whose worst case exceeds the
//! whole cap is a 400 that costs nothing; a fresh key never sees a 429.

use std::time::Duration;

use futures_util::future::join_all;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseError;
use serde_json::{Map, Value, json};
use sluice::gateway::Caller;
use sluice::keys::{BudgetPeriod, KeyLimits};
use sluice::providers::Endpoint;
use sluice_tests::fake_upstream::billing;
use sluice_tests::requests::{chat_request, config, embeddings_request, messages_request, runner};
use sluice_tests::{FakeUpstream, TestGateway};

use crate::e2e::{assert_error, json};

// ---- the check ---------------------------------------------------------------------------

/// Spend and reservations of the cap at `level` (`key` or `tenant`) as the key sees it, in
/// nano-USD.
async fn budget(gw: &TestGateway, key: &str, level: &str) -> (u64, u64) {
    let u = gw.usage(key).await;
    let b = &u["limits"][level]["budget"];
    let nanos = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as u64;
    (nanos(&b["spent_usd"]), nanos(&b["reserved_usd"]))
}

/// A fresh key with a daily cap of `cap_usd`, and the caller the gateway sees for it.
async fn capped_key(gw: &TestGateway, cap_usd: f64) -> (String, Caller) {
    let created = gw
        .admin_create(json!({"tenant": "hostile", "budget_usd": cap_usd, "period": "day"}))
        .await;
    let caller = Caller {
        key_id: created["id"].as_str().unwrap().to_owned(),
        tenant: "hostile".into(),
        limits: KeyLimits {
            budget_usd: Some(cap_usd),
            budget_period: Some(BudgetPeriod::Day),
            ..KeyLimits::default()
        },
    };
    (created["key"].as_str().unwrap().to_owned(), caller)
}

/// Waits until every reservation of the key's cap is settled (a stream settles after its
/// last byte), then returns what was spent.
async fn settled_spend(gw: &TestGateway, key: &str) -> u64 {
    settled_spend_at(gw, key, "key").await
}

/// [`settled_spend`] of the cap at `level` (`key` or `tenant`).
async fn settled_spend_at(gw: &TestGateway, key: &str, level: &str) -> u64 {
    for _ in 0..200 {
        let (spent, reserved) = budget(gw, key, level).await;
        if reserved == 0 {
            return spent;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a reservation was never settled");
}

/// One generated request on a fresh key: answered within its reservation and the cap, or
/// refused as impossible (400) without cost. Returns whether it was answered.
async fn one_request(
    gw: &TestGateway,
    path: &str,
    openai_form: &Map<String, Value>,
    sent: &Value,
    endpoint: Endpoint,
    cap_usd: f64,
) -> Result<bool, TestCaseError> {
    let (key, caller) = capped_key(gw, cap_usd).await;
    let cap = (cap_usd * 1e9).round() as u64;
    let worst = gw
        .services
        .gateway
        .worst_case(
            &caller,
            endpoint,
            Value::Object(openai_form.clone()).to_string().as_bytes(),
        )
        .map_err(|e| TestCaseError::fail(format!("no reservation: {e}")))?;
    let r = gw.post(path, &key, sent).await;
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").is_some();
    let body = r.text().await.unwrap();
    let spent = settled_spend(gw, &key).await;
    prop_assert!(spent <= cap, "spent {spent} over the cap {cap}: {body}");
    match status {
        200 => {
            prop_assert!(
                spent <= worst.cost_nano_usd,
                "billed {spent} > reserved {}: {}",
                worst.cost_nano_usd,
                sent
            );
            prop_assert!(worst.cost_nano_usd <= cap);
            Ok(true)
        }
        400 if body.contains("request_exceeds_budget") => {
            prop_assert!(worst.cost_nano_usd > cap, "refused though it fits: {body}");
            prop_assert_eq!(spent, 0);
            prop_assert!(
                !retry_after,
                "waiting cannot help, and no Retry-After says it does"
            );
            Ok(false)
        }
        // The request itself is refused (by Sluice or by a provider's own rules, e.g.
        // Anthropic's one choice): nothing may be billed.
        400 | 422 => {
            prop_assert_eq!(spent, 0, "{}", body);
            Ok(false)
        }
        _ => Err(TestCaseError::fail(format!(
            "{path}: unexpected {status} for a fresh key: {body}"
        ))),
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    up: FakeUpstream,
    gw: TestGateway,
}

/// A gateway and a maximum-billing fake on their own runtime (proptest drives it from a
/// plain thread).
fn world() -> World {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (up, gw) = rt.block_on(async {
        let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
        up.bill_max(true);
        let gw = TestGateway::start(&config(&up)).await;
        (up, gw)
    });
    World { rt, up, gw }
}

fn cap() -> impl Strategy<Value = f64> {
    prop_oneof![Just(0.0001), Just(0.005), Just(0.05), Just(5.0)]
}

#[test]
fn generated_chat_requests_never_bill_more_than_they_reserve() {
    let w = world();
    let models = prop_oneof![
        Just("m-openai"),
        Just("m-anthropic"),
        Just("m-gemini"),
        Just("m-mock")
    ];
    let answered = std::cell::Cell::new(0);
    let result = runner(160).run(&(chat_request(), models, cap()), |(body, model, cap)| {
        let mut body = body;
        body.insert("model".into(), model.into());
        let sent = Value::Object(body.clone());
        if w.rt.block_on(one_request(
            &w.gw,
            "/v1/chat/completions",
            &body,
            &sent,
            Endpoint::ChatCompletions,
            cap,
        ))? {
            answered.set(answered.get() + 1);
        }
        Ok(())
    });
    result.unwrap();
    // Not a vacuous pass: most generated requests fit some cap and were billed.
    let answered = answered.get();
    assert!(answered >= 40, "only {answered} answered");
}

#[test]
fn generated_anthropic_ingress_requests_never_bill_more_than_they_reserve() {
    let w = world();
    let models = prop_oneof![
        Just("m-openai"),
        Just("m-anthropic"),
        Just("m-gemini"),
        Just("m-mock")
    ];
    let answered = std::cell::Cell::new(0);
    let result = runner(96).run(
        &(messages_request(), models, cap()),
        |(body, model, cap)| {
            let mut body = body;
            body.insert("model".into(), model.into());
            let sent = Value::Object(body.clone());
            let openai_form = sluice::api::to_chat_request(&sent)
                .map_err(|e| TestCaseError::fail(format!("untranslatable: {}", e.message)))?;
            if w.rt.block_on(one_request(
                &w.gw,
                "/v1/messages",
                &openai_form,
                &sent,
                Endpoint::ChatCompletions,
                cap,
            ))? {
                answered.set(answered.get() + 1);
            }
            Ok(())
        },
    );
    result.unwrap();
    let answered = answered.get();
    assert!(answered >= 20, "only {answered} answered");
}

#[test]
fn generated_embedding_requests_never_bill_more_than_they_reserve() {
    let w = world();
    let models = prop_oneof![Just("e-openai"), Just("e-gemini"), Just("e-mock")];
    let caps = prop_oneof![Just(0.000001), Just(0.00005), Just(1.0)];
    let answered = std::cell::Cell::new(0);
    let result = runner(96).run(
        &(embeddings_request(), models, caps),
        |(body, model, cap)| {
            let mut body = body;
            body.insert("model".into(), model.into());
            let sent = Value::Object(body.clone());
            if w.rt.block_on(one_request(
                &w.gw,
                "/v1/embeddings",
                &body,
                &sent,
                Endpoint::Embeddings,
                cap,
            ))? {
                answered.set(answered.get() + 1);
            }
            Ok(())
        },
    );
    result.unwrap();
    let answered = answered.get();
    assert!(answered >= 30, "only {answered} answered");
}

/// Many generated requests at once on one key: the cap holds however they interleave, and
/// the ledger is exactly what the answers were billed.
#[test]
fn concurrent_generated_requests_never_overspend_a_cap() {
    let w = world();
    let mut runner = runner(1);
    let bodies: Vec<Value> = (0..120)
        .map(|i| {
            let mut body = chat_request().new_tree(&mut runner).unwrap().current();
            let models = ["m-openai", "m-anthropic", "m-gemini", "m-mock"];
            body.insert("model".into(), models[i % 4].into());
            body.remove("stream");
            Value::Object(body)
        })
        .collect();
    w.rt.block_on(async {
        let cap_usd = 0.02;
        let (key, _) = capped_key(&w.gw, cap_usd).await;
        let answers = join_all(
            bodies
                .iter()
                .map(|b| w.gw.post("/v1/chat/completions", &key, b)),
        )
        .await;
        let mut billed = 0;
        let mut ok = 0;
        for r in answers {
            let status = r.status().as_u16();
            if status == 200 {
                ok += 1;
                billed += crate::e2e::nanos(r.headers()["x-sluice-cost-usd"].to_str().unwrap());
            } else {
                assert!(matches!(status, 400 | 422 | 429), "{status}");
            }
        }
        let spent = settled_spend(&w.gw, &key).await;
        assert!(ok > 0, "nothing was answered");
        assert_eq!(spent, billed, "the ledger is what the answers were billed");
        assert!(spent <= 20_000_000, "spent {spent} over the 0.02 USD cap");
    });
}

/// A tenant's cap split into 8 shards (as on DynamoDB by default, forced here on SQLite with
/// a low `budget_shard_min_usd`): many generated requests at once from several keys of the
/// tenant. Each shard holds an eighth of the cap, so the cap holds however the requests land
/// on shards; a request whose worst case exceeds one shard is refused as impossible (400,
/// free); the ledger is exactly what the answers were billed.
#[test]
fn concurrent_generated_requests_never_overspend_a_sharded_tenant_cap() {
    let up_and_gw = |rt: &tokio::runtime::Runtime| {
        rt.block_on(async {
            let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
            up.bill_max(true);
            let cfg = format!(
                "{}\n[limits]\nbudget_shards = 8\nbudget_shard_min_usd = 0.001\n\n\
                 [[tenants]]\nname = \"sharded\"\nbudget_usd = 1.0\nperiod = \"day\"\n",
                config(&up)
            );
            let gw = TestGateway::start(&cfg).await;
            (up, gw)
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_up, gw) = up_and_gw(&rt);
    let mut runner = runner(1);
    let bodies: Vec<Value> = (0..240)
        .map(|i| {
            let mut body = chat_request().new_tree(&mut runner).unwrap().current();
            let models = ["m-openai", "m-anthropic", "m-gemini", "m-mock"];
            body.insert("model".into(), models[i % 4].into());
            body.remove("stream");
            Value::Object(body)
        })
        .collect();
    rt.block_on(async {
        let mut keys = Vec::new();
        for _ in 0..4 {
            let created = gw.admin_create(json!({"tenant": "sharded"})).await;
            keys.push(created["key"].as_str().unwrap().to_owned());
        }
        let answers = join_all(
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| gw.post("/v1/chat/completions", &keys[i % 4], b)),
        )
        .await;
        let (mut billed, mut ok, mut impossible, mut over) = (0, 0, 0, 0);
        for r in answers {
            let status = r.status().as_u16();
            if status == 200 {
                ok += 1;
                billed += crate::e2e::nanos(r.headers()["x-sluice-cost-usd"].to_str().unwrap());
                continue;
            }
            over += usize::from(status == 429);
            let body = r.text().await.unwrap();
            assert!(matches!(status, 400 | 422 | 429), "{status}: {body}");
            if body.contains("request_exceeds_budget") {
                impossible += 1;
                // The refusal names the configured cap and the part a request must fit.
                assert!(
                    body.contains("spending cap of $1.000000000 per day")
                        && body.contains("split into 8 parts of up to $0.125000000"),
                    "{body}"
                );
            }
        }
        let spent = settled_spend_at(&gw, &keys[0], "tenant").await;
        eprintln!(
            "sharded tenant cap: {ok} answered, {over} refused at the cap, {impossible} \
             impossible, spent {spent}"
        );
        assert!(ok >= 10, "only {ok} answered");
        // Not a vacuous pass: the requests together asked for more than the cap holds.
        assert!(over > 0, "the cap was never reached");
        assert_eq!(spent, billed, "the ledger is what the answers were billed");
        assert!(spent <= 1_000_000_000, "spent {spent} over the 1 USD cap");
    });
}

/// The gateway's per-image bound covers the most the fake (any provider) bills for one.
const _: () = assert!(sluice::tokens::IMAGE_TOKENS_MAX >= billing::IMAGE_TOKENS);

// ---- the reported cases ------------------------------------------------------------------

/// The issue's reproductions, each against a maximum-billing provider: a large `n` with a
/// large `max_tokens`, a large `response_format` schema, a `max_tokens` no day can hold, and
/// a prompt larger than the key's whole tokens-per-minute limit.
#[tokio::test]
async fn the_reported_overspends_are_refused_or_fit() {
    let up = FakeUpstream::start().await;
    up.bill_max(true);
    let gw = TestGateway::start(&config(&up)).await;

    // n = 100 × 8,000 output tokens at $4/M is $3.20: far over a $0.05 cap.
    let (key, _) = capped_key(&gw, 0.05).await;
    let many = json!({"model": "m-openai", "n": 100, "max_tokens": 8000,
        "messages": [{"role": "user", "content": "tell me everything"}]});
    let r = gw.post("/v1/chat/completions", &key, &many).await;
    let e = assert_error(r, 400, "request_exceeds_budget").await;
    assert!(
        e["message"].as_str().unwrap().contains("$0.050000000"),
        "{e}"
    );
    // Without `max_tokens`, every one of the 100 choices may use the model's ceiling.
    let many = json!({"model": "m-openai", "n": 100,
        "messages": [{"role": "user", "content": "tell me everything"}]});
    let r = gw.post("/v1/chat/completions", &key, &many).await;
    assert_error(r, 400, "request_exceeds_budget").await;

    // A 200 KB schema is 200 K prompt tokens at $1/M, $0.20: over the cap, refused; the
    // same with a cap that holds it is answered within it.
    let schema = json!({"type": "object", "properties": {"x": {"type": "string",
        "description": "y".repeat(200_000)}}});
    let big = json!({"model": "m-openai", "max_tokens": 10,
        "messages": [{"role": "user", "content": "fill it"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}});
    let r = gw.post("/v1/chat/completions", &key, &big).await;
    assert_error(r, 400, "request_exceeds_budget").await;
    let (rich, _) = capped_key(&gw, 0.5).await;
    let r = gw.post("/v1/chat/completions", &rich, &big).await;
    assert_eq!(r.status(), 200);
    let billed = crate::e2e::nanos(r.headers()["x-sluice-cost-usd"].to_str().unwrap());
    assert!(billed >= 200_000_000, "the schema was billed: {billed}");
    assert!(settled_spend(&gw, &rich).await <= 500_000_000);

    // 2^32 output tokens fit no day.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "m-openai", "max_tokens": 4_294_967_296u64,
                    "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_error(r, 400, "request_exceeds_budget").await;

    // A prompt bigger than the key's whole tokens-per-minute limit.
    let tpm = gw
        .admin_create(json!({"tenant": "hostile", "tpm": 1000}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let long = json!({"model": "m-openai", "max_tokens": 10,
        "messages": [{"role": "user", "content": "z".repeat(5000)}]});
    let r = gw.post("/v1/chat/completions", &tpm, &long).await;
    assert!(r.headers().get("retry-after").is_none());
    let e = assert_error(r, 400, "request_exceeds_rate_limit").await;
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("tokens per minute") && message.contains("1000"),
        "{message}"
    );
    // Refused requests never reached the provider, and spent nothing.
    assert_eq!(up.calls(), 1, "only the request that fit was sent");
    assert_eq!(settled_spend(&gw, &key).await, 0);
}

/// An impossible job is refused when it is submitted (400), not accepted and failed later;
/// `/v1/messages` answers the same refusal in Anthropic's error shape.
#[tokio::test]
async fn impossible_requests_are_refused_at_every_ingress() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let (key, _) = capped_key(&gw, 0.001).await;
    let huge = json!({"model": "m-openai", "max_tokens": 1_000_000,
        "messages": [{"role": "user", "content": "x"}]});
    let r = gw
        .post(
            "/v1/jobs",
            &key,
            &json!({"endpoint": "/v1/chat/completions", "request": huge}),
        )
        .await;
    assert_error(r, 400, "request_exceeds_budget").await;
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_error(r, 400, "request_exceeds_budget").await;
    let r = gw
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "m-anthropic", "max_tokens": 1_000_000,
                    "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let e = json(r).await;
    assert_eq!(e["type"], "error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("spending cap"),
        "{e}"
    );
    assert_eq!(up.calls(), 0);
}

/// Audio and files have no token bound a gateway can compute: refused where a limit needs
/// one, passed through where none applies.
#[tokio::test]
async fn unbounded_inputs_are_refused_only_under_a_limit() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let (capped, _) = capped_key(&gw, 1.0).await;
    let tpm = gw
        .admin_create(json!({"tenant": "hostile", "tpm": 100_000}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let free = gw.create_key("hostile").await;
    let audio = json!({"model": "m-openai", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "transcribe"},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}]});
    let file = json!({"model": "m-openai", "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}]}]});
    let speak = json!({"model": "m-openai", "modalities": ["text", "audio"],
        "audio": {"voice": "alloy", "format": "wav"},
        "messages": [{"role": "user", "content": "say hi"}]});
    for (body, param) in [
        (&audio, "messages[0].content[1]"),
        (&file, "messages[0].content[0]"),
        (&speak, "modalities"),
    ] {
        for key in [&capped, &tpm] {
            let r = gw.post("/v1/chat/completions", key, body).await;
            let e = assert_error(r, 400, "invalid_request").await;
            assert_eq!(e["param"], param);
        }
        let r = gw.post("/v1/chat/completions", &free, body).await;
        assert_eq!(r.status(), 200, "no limit depends on it");
    }
    assert_eq!(up.calls(), 3);
}

// ---- prices ------------------------------------------------------------------------------

/// A model without a price cannot be held by a cap: requests to it from a budgeted key
/// are refused with a clear error (keys get budgets at runtime, so config cannot catch
/// them); other keys are served. With a gateway or tenant cap in config, the config is
/// refused instead (see `config` unit tests).
#[tokio::test]
async fn a_model_without_a_price_is_refused_under_a_cap() {
    let up = FakeUpstream::start().await;
    let text = format!(
        "{}\n[[models]]\nname = \"unpriced\"\ndeployments = [{{ provider = \"openai\", model = \"my-finetune\" }}]\n\
         [[models]]\nname = \"priced-with-unpriced-fallback\"\nfallbacks = [\"unpriced\"]\n\
         deployments = [{{ provider = \"openai\", model = \"gpt-4o-mini\" }}]\n",
        config(&up)
    );
    let gw = TestGateway::start(&text).await;
    let (capped, _) = capped_key(&gw, 1.0).await;
    let free = gw.create_key("hostile").await;
    for model in ["unpriced", "priced-with-unpriced-fallback"] {
        let r = gw.chat(&capped, model, "hi").await;
        let e = assert_error(r, 400, "model_not_priced").await;
        assert!(e["message"].as_str().unwrap().contains("unpriced"), "{e}");
        assert_eq!(e["param"], "model");
        let r = gw.chat(&free, model, "hi").await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(up.calls(), 2);
}

// ---- cache lifetimes ---------------------------------------------------------------------

/// A client may shorten the model's cache TTL, never lengthen it; a `max-age` as large as
/// `u64` overflows nothing (the entry expires with the model's TTL in memory and in the
/// store alike).
#[tokio::test]
async fn max_age_cannot_outlive_the_models_ttl() {
    let up = FakeUpstream::start().await;
    let text = sluice_tests::fake_config_with(&up.base_url, "")
        .replace("cache_ttl_s = 3600", "cache_ttl_s = 60");
    for memory_mb in [0, 16] {
        let text = format!("{text}\n[cache]\nmemory_mb = {memory_mb}\n");
        let gw = TestGateway::start(&text).await;
        let key = gw.create_key("t").await;
        for (i, max_age) in [
            "31536000000",
            &u64::MAX.to_string(),
            "99999999999999999999999",
        ]
        .into_iter()
        .enumerate()
        {
            let body = json!({"model": "gpt-test",
                "messages": [{"role": "user", "content": format!("ttl {memory_mb} {i}")}]});
            let send = || {
                gw.http
                    .post(format!("{}/v1/chat/completions", gw.url))
                    .bearer_auth(&key)
                    .header("cache-control", format!("max-age={max_age}"))
                    .json(&body)
                    .send()
            };
            let r = send().await.unwrap();
            assert_eq!(r.status(), 200, "max-age={max_age}");
            assert_eq!(r.headers()["x-sluice-cache"], "miss");
            gw.clock.advance_ms(59_000);
            assert_eq!(send().await.unwrap().headers()["x-sluice-cache"], "hit");
            gw.clock.advance_ms(2_000);
            assert_eq!(
                send().await.unwrap().headers()["x-sluice-cache"],
                "miss",
                "max-age={max_age} kept an entry past the model's 60 s (memory_mb {memory_mb})"
            );
        }
        // Shortening works.
        let body = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "short"}]});
        let send = |cc: &'static str| {
            gw.http
                .post(format!("{}/v1/chat/completions", gw.url))
                .bearer_auth(&key)
                .header("cache-control", cc)
                .json(&body)
                .send()
        };
        send("max-age=5").await.unwrap();
        gw.clock.advance_ms(6_000);
        assert_eq!(send("").await.unwrap().headers()["x-sluice-cache"], "miss");
    }
}

// ---- resource bounds ---------------------------------------------------------------------

/// Every dimension of work a request can ask for is bounded before any work: requests just
/// over each bound (generated sizes) are 400 naming the field, and nothing reaches the
/// provider, whichever provider kind serves the model.
#[test]
fn requests_over_a_bound_are_refused_before_any_work() {
    let w = world();
    let over = prop_oneof![
        (129u64..10_000).prop_map(|n| ("n", json!({"n": n}))),
        (129usize..300).prop_map(|k| {
            let tools: Vec<Value> = (0..k)
                .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
                .collect();
            ("tools", json!({ "tools": tools }))
        }),
        (5usize..50).prop_map(|k| ("stop", json!({"stop": vec!["x"; k]}))),
        (21u64..1000).prop_map(|k| ("top_logprobs", json!({"logprobs": true, "top_logprobs": k}))),
        (2049usize..3000).prop_map(|k| {
            let messages = vec![json!({"role": "user", "content": "a"}); k];
            ("messages", json!({ "messages": messages }))
        }),
        (501usize..600).prop_map(|k| {
            let parts =
                vec![json!({"type": "image_url", "image_url": {"url": "https://x/y.png"}}); k];
            (
                "messages",
                json!({"messages": [{"role": "user", "content": parts}]}),
            )
        }),
    ];
    let models = prop_oneof![
        Just("m-openai"),
        Just("m-anthropic"),
        Just("m-gemini"),
        Just("m-mock")
    ];
    let (key, _) = w.rt.block_on(capped_key(&w.gw, 1000.0));
    let free = w.rt.block_on(w.gw.create_key("hostile"));
    let result = runner(48).run(
        &(over, models, any::<bool>()),
        |((param, extra), model, capped)| {
            let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let key = if capped { &key } else { &free };
            let r = w.rt.block_on(w.gw.post("/v1/chat/completions", key, &body));
            prop_assert_eq!(r.status().as_u16(), 400);
            let e = w.rt.block_on(json(r));
            prop_assert_eq!(&e["error"]["param"], param, "{}", e);
            Ok(())
        },
    );
    result.unwrap();
    let embeddings = [
        ("input", json!({"input": vec!["a"; 2049]})),
        ("input", json!({"input": vec![vec![1]; 2049]})),
        ("input[0]", json!({"input": [vec![1; 8193]]})),
        ("input", json!({"input": vec![1; 8193]})),
        ("input", json!({"input": vec![vec![7; 8000]; 40]})),
        ("input[1]", json!({"input": [[1], [2_000_000]]})),
        ("dimensions", json!({"input": "x", "dimensions": 3073})),
        ("dimensions", json!({"input": "x", "dimensions": 0})),
    ];
    w.rt.block_on(async {
        for (param, extra) in embeddings {
            for model in ["e-openai", "e-gemini", "e-mock"] {
                let mut body = extra.clone();
                body["model"] = model.into();
                let r = w.gw.post("/v1/embeddings", &free, &body).await;
                let e = assert_error(r, 400, "invalid_request").await;
                assert_eq!(e["param"], param, "{model}: {e}");
            }
        }
        // Nesting deeper than the parser's 128 levels is a clean 400 too.
        let deep = format!(
            r#"{{"model":"m-mock","messages":[{{"role":"user","content":"hi"}}],"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        let r =
            w.gw.http
                .post(format!("{}/v1/chat/completions", w.gw.url))
                .bearer_auth(&free)
                .header("content-type", "application/json")
                .body(deep)
                .send()
                .await
                .unwrap();
        assert_error(r, 400, "invalid_request").await;
    });
    assert_eq!(w.up.calls(), 0, "nothing over a bound reached a provider");
}

/// The same promise through the jobs ingress: generated chat and embedding jobs on one
/// capped key, run by the workers (embeddings micro-batched), against a provider that bills
/// the most each allows. Impossible jobs are refused when submitted; the others finish, and
/// the ledger is exactly what the finished jobs cost, within the cap.
#[test]
fn generated_jobs_never_overspend_a_cap() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = runner(1);
    let models = ["m-openai", "m-anthropic", "m-gemini", "m-mock"];
    let mut jobs: Vec<Value> = (0..40)
        .map(|i| {
            let mut body = chat_request().new_tree(&mut runner).unwrap().current();
            body.insert("model".into(), models[i % 4].into());
            body.remove("stream");
            json!({"endpoint": "/v1/chat/completions", "request": body})
        })
        .collect();
    let embedders = ["e-openai", "e-gemini", "e-mock"];
    jobs.extend((0..30).map(|i| {
        let mut body = embeddings_request()
            .new_tree(&mut runner)
            .unwrap()
            .current();
        body.insert("model".into(), embedders[i % 3].into());
        json!({"endpoint": "/v1/embeddings", "request": body})
    }));
    rt.block_on(async {
        let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
        up.bill_max(true);
        let text = format!(
            "{}\n[jobs]\nworkers = 2\nbatch_window_ms = 50\n",
            config(&up)
        );
        let gw = TestGateway::start(&text).await;
        let (key, _) = capped_key(&gw, 0.1).await;
        let mut ids = Vec::new();
        let mut refused = 0;
        for job in &jobs {
            let r = gw.post("/v1/jobs", &key, job).await;
            match r.status().as_u16() {
                202 => ids.push(json(r).await["id"].as_str().unwrap().to_owned()),
                400 => refused += 1,
                s => panic!("job answered {s}: {}", r.text().await.unwrap()),
            }
        }
        let mut cost = 0;
        let mut succeeded = 0;
        for id in &ids {
            let job = loop {
                let job = json(
                    gw.http
                        .get(format!("{}/v1/jobs/{id}", gw.url))
                        .bearer_auth(&key)
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                if job["status"] == "succeeded" || job["status"] == "failed" {
                    break job;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            cost += (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
            succeeded += u32::from(job["status"] == "succeeded");
        }
        let spent = settled_spend(&gw, &key).await;
        assert!(
            succeeded > 10,
            "only {succeeded} of {} jobs succeeded",
            ids.len()
        );
        assert!(refused > 0, "no job was impossible: the cap was not tested");
        assert!(spent <= 100_000_000, "spent {spent} over the 0.1 USD cap");
        // Each job's cost is rounded to 1e-9 USD in its view; allow that rounding only.
        assert!(
            spent.abs_diff(cost) <= ids.len() as u64,
            "ledger {spent} ≠ jobs' costs {cost}"
        );
    });
}

/// Regression (found by schemathesis through the local topology): a deployment's in-flight
/// token count added each request's worst case, and two requests with a `max_tokens` near
/// `u64::MAX` overflowed it — a panic on the request path in a debug build, a wrapped count
/// in a release one. Without a limit on the key nothing refuses such a request before it is
/// routed, so both must be answered.
#[tokio::test]
async fn worst_cases_near_u64_max_are_routed_without_overflow() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let key = gw.create_key("hostile").await;
    for i in 0..3 {
        let body = json!({"model": "m-openai", "max_completion_tokens": u64::MAX - i,
            "messages": [{"role": "user", "content": format!("huge {i}")}]});
        let r = gw.post("/v1/chat/completions", &key, &body).await;
        assert!(r.status().as_u16() < 500, "{}", r.status());
    }
    assert_eq!(up.calls(), 3);
}
