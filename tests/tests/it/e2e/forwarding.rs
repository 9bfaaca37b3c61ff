//! Requests reach the provider with every field preserved and the provider's key, never the
//! gateway's; answers come back unchanged.

use serde_json::{Value, json};
use sluice_tests::{FakeUpstream, PROVIDER_KEY, TestGateway, fake_config};

use crate::e2e::{events, header, json};

#[tokio::test]
async fn health_needs_no_key_and_models_lists_names_and_aliases() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let r = gw
        .http
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["status"], "ok");

    let key = gw.create_key("t1").await;
    let r = gw
        .http
        .get(format!("{}/v1/models", gw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gpt-test", "fast", "embed-test"]);
}

#[tokio::test]
async fn chat_body_is_forwarded_field_for_field_with_the_provider_key() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let request = json!({
        "model": "gpt-test",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":3}"}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "seed": 42,
        "temperature": 0.2,
        "logprobs": true,
        "top_logprobs": 2,
        "user": "end-user-7",
        "some_future_field": {"nested": [1, 2, {"deep": true}]}
    });
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-provider"), "fake/gpt-4o-mini");
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    assert!(header(&r, "x-request-id").starts_with("req_"));
    // 10 prompt tokens at $0.15/M + 5 completion tokens at $0.60/M.
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.000004500");
    let answer = json(r).await;
    // The conversation ends with a tool result, which the fake echoes.
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "tool said: {\"temp\":3}"
    );
    assert_eq!(answer["system_fingerprint"], "fp_fake");

    let seen = up.last();
    assert_eq!(seen.path, "/v1/chat/completions");
    let mut expected = request.clone();
    expected["model"] = json!("gpt-4o-mini");
    assert_eq!(
        seen.body, expected,
        "every field must reach the provider unchanged"
    );
    assert_eq!(
        seen.headers["authorization"].to_str().unwrap(),
        format!("Bearer {PROVIDER_KEY}")
    );
    for (name, value) in &seen.headers {
        assert!(
            !value
                .as_bytes()
                .windows(key.len())
                .any(|w| w == key.as_bytes()),
            "gateway key forwarded in header {name}"
        );
    }
}

#[tokio::test]
async fn aliases_route_to_their_model() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let r = gw.chat(&key, "fast", "hi").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn embeddings_are_forwarded_and_answered_in_openai_format() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("t1").await;
    let request = json!({"model": "embed-test", "input": ["a", "b"], "dimensions": 3,
                         "encoding_format": "float"});
    let r = gw.post("/v1/embeddings", &key, &request).await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["data"][1]["embedding"], json!([0.25, -0.5, 1.0]));
    let seen = up.last();
    assert_eq!(seen.path, "/v1/embeddings");
    assert_eq!(seen.body["model"], "text-embedding-3-small");
    assert_eq!(seen.body["dimensions"], 3);
    assert_eq!(seen.body["input"], json!(["a", "b"]));
}

#[tokio::test]
async fn streams_are_metered_cached_and_replayed() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = json!({"model": "gpt-test", "stream": true, "max_tokens": 50,
                         "messages": [{"role": "user", "content": "hi"}]});
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let first = events(&r.text().await.unwrap());
    assert!(first.iter().all(|c| c["object"] == "chat.completion.chunk"));
    // The provider was asked for usage; the client did not ask, so it sees none.
    assert_eq!(up.last().body["stream_options"]["include_usage"], true);
    assert!(first.iter().all(|c| c.get("usage").is_none()), "{first:?}");
    let text: String = first
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "fake answer #1");

    // Metered from the stream's own usage chunk: 10 + 5 tokens at gpt-test's price.
    let mut spent = 0.0;
    for _ in 0..50 {
        let u: Value = gw.usage(&key).await;
        spent = u["limits"]["key"]["budget"]["spent_usd"].as_f64().unwrap();
        if spent > 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(spent, 0.0000045);

    // The assembled answer was cached: streamed again, it is a hit replayed as events...
    let mut with_usage = request.clone();
    with_usage["stream_options"] = json!({"include_usage": true});
    let r = gw.post("/v1/chat/completions", &key, &with_usage).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    let replayed = events(&r.text().await.unwrap());
    let text: String = replayed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "fake answer #1");
    assert_eq!(replayed.last().unwrap()["usage"]["total_tokens"], 15);
    // ... and not streamed, a plain completion.
    let mut plain = request.clone();
    plain["stream"] = json!(false);
    let r = gw.post("/v1/chat/completions", &key, &plain).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    let body = json(r).await;
    assert_eq!(body["choices"][0]["message"]["content"], "fake answer #1");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn the_builtin_mock_answers_offline() {
    let gw = TestGateway::start_builtin().await;
    let key = gw.create_key("t1").await;
    let r = gw.chat(&key, "gpt-4o-mini", "hello mock").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-provider"), "mock/mock-chat");
    let body = json(r).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Mock response to: hello mock"
    );
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "text-embedding-3-small", "input": "x", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    // 16 little-endian f32s.
    assert_eq!(encoded.len(), (16 * 4usize).div_ceil(3) * 4);
}
