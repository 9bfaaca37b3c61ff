//! The exact-match cache, observed from outside: upstream call counts and `x-sluice-cache`.

use serde_json::{Value, json};
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, fake_config};

use crate::e2e::{header, json};

async fn send(
    gw: &TestGateway,
    key: &str,
    body: &str,
    cache_control: Option<&str>,
) -> reqwest::Response {
    let mut req = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(cc) = cache_control {
        req = req.header("cache-control", cc);
    }
    req.send().await.unwrap()
}

const HELLO: &str =
    r#"{"model":"gpt-test","messages":[{"role":"user","content":"hello"}],"temperature":0}"#;

#[tokio::test]
async fn a_repeated_request_is_answered_from_the_cache() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;

    let first = send(&gw, &key, HELLO, None).await;
    assert_eq!(header(&first, "x-sluice-cache"), "miss");
    let first_body = first.bytes().await.unwrap();

    let second = send(&gw, &key, HELLO, None).await;
    assert_eq!(second.status(), 200);
    assert_eq!(header(&second, "x-sluice-cache"), "hit");
    assert_eq!(header(&second, "x-sluice-cost-usd"), "0.000000000");
    assert_eq!(second.bytes().await.unwrap(), first_body);
    assert_eq!(up.calls(), 1, "a hit must not call the provider");
}

#[tokio::test]
async fn key_order_whitespace_and_stream_flag_do_not_split_the_cache() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    send(&gw, &key, HELLO, None).await;
    let reordered = r#"{ "temperature" : 0.0,
        "messages" : [ { "content" : "hello", "role" : "user" } ],
        "model" : "fast" }"#;
    let r = send(&gw, &key, reordered, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn every_answer_changing_field_is_part_of_the_key() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    send(&gw, &key, HELLO, None).await;
    let base: Value = serde_json::from_str(HELLO).unwrap();
    let changes = [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        ),
        ("response_format", json!({"type": "json_object"})),
        ("seed", json!(1)),
        ("temperature", json!(0.7)),
        ("max_tokens", json!(5)),
        ("a_future_field", json!("x")),
    ];
    for (i, (field, value)) in changes.into_iter().enumerate() {
        let mut body = base.clone();
        body[field] = value;
        let r = send(&gw, &key, &body.to_string(), None).await;
        assert_eq!(header(&r, "x-sluice-cache"), "miss", "changing {field}");
        assert_eq!(
            up.calls(),
            i + 2,
            "changing {field} must reach the provider"
        );
    }
}

#[tokio::test]
async fn tenants_never_share_entries() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let a = gw.create_key("tenant-a").await;
    let a2 = gw.create_key("tenant-a").await;
    let b = gw.create_key("tenant-b").await;
    send(&gw, &a, HELLO, None).await;
    let r = send(&gw, &b, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert_eq!(up.calls(), 2);
    // Keys of the same tenant do share.
    let r = send(&gw, &a2, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn cache_control_no_cache_no_store_and_max_age() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;

    // no-store: looked up (miss), not stored.
    let r = send(&gw, &key, HELLO, Some("no-store")).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let r = send(&gw, &key, HELLO, Some("no-store")).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert_eq!(up.calls(), 2);

    // Stored by a plain request, then no-cache skips the lookup (and refreshes the entry).
    send(&gw, &key, HELLO, None).await;
    assert_eq!(up.calls(), 3);
    let r = send(&gw, &key, HELLO, Some("no-cache")).await;
    assert_eq!(header(&r, "x-sluice-cache"), "bypass");
    assert_eq!(up.calls(), 4);
    let refreshed = json(r).await;
    let r = send(&gw, &key, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(
        json(r).await,
        refreshed,
        "no-cache must store its fresh answer"
    );
    assert_eq!(up.calls(), 4);

    // max-age: an entry older than N seconds is not served.
    gw.clock.advance_ms(30_000);
    let r = send(&gw, &key, HELLO, Some("max-age=60")).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    let r = send(&gw, &key, HELLO, Some("max-age=10")).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert_eq!(up.calls(), 5);

    // max-age also sets the stored TTL: stored for 10 s, gone after 11.
    let other = HELLO.replace("hello", "short-lived");
    send(&gw, &key, &other, Some("max-age=10")).await;
    let r = send(&gw, &key, &other, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    gw.clock.advance_ms(11_000);
    let r = send(&gw, &key, &other, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
}

#[tokio::test]
async fn entries_expire_after_the_model_ttl() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    send(&gw, &key, HELLO, None).await;
    gw.clock.advance_ms(3_599_000);
    let r = send(&gw, &key, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    gw.clock.advance_ms(2_000);
    let r = send(&gw, &key, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn a_model_with_ttl_zero_is_never_cached() {
    let up = FakeUpstream::start().await;
    let config = fake_config(&up.base_url).replacen("cache_ttl_s = 3600", "cache_ttl_s = 0", 1);
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    for _ in 0..2 {
        let r = send(&gw, &key, HELLO, None).await;
        assert_eq!(header(&r, "x-sluice-cache"), "bypass");
    }
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn only_successful_answers_are_stored() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    for failure in [
        Behaviour::Status(500, None),
        Behaviour::Garbage,
        Behaviour::ErrorIn200,
        Behaviour::Status(400, None),
    ] {
        up.set(failure.clone());
        let r = send(&gw, &key, HELLO, None).await;
        assert_ne!(r.status(), 200, "{failure:?}");
    }
    up.set(Behaviour::Ok);
    let r = send(&gw, &key, HELLO, None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert_eq!(up.calls(), 5);
    let r = send(&gw, &key, HELLO, None).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
}

#[tokio::test]
async fn embeddings_are_cached_too() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let body = json!({"model": "embed-test", "input": "cache me"});
    let r = gw.post("/v1/embeddings", &key, &body).await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let r = gw.post("/v1/embeddings", &key, &body).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(up.calls(), 1);
}
