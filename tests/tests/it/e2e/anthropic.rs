//! The Anthropic provider end to end: OpenAI-format requests in, the Messages API on the wire
//! (checked against the fake's copy of the real API's request rules), OpenAI-format answers
//! out, for plain, tool-calling and streamed requests, errors and rate-limit headers.

use serde_json::{Value, json};
use sluice_tests::{Behaviour, FakeUpstream, TestGateway};

use crate::e2e::{assert_error, events, header, json};

/// Model `claude` on Anthropic (keys `ak-1`, and `ak-2` when `two_keys`); model `gpt` on the
/// same fake's OpenAI routes, as a fallback target.
fn config(up: &FakeUpstream, model_extra: &str, two_keys: bool) -> String {
    let keys = if two_keys {
        r#"["ak-1", "ak-2"]"#
    } else {
        r#"["ak-1"]"#
    };
    format!(
        r#"
[server]
upstream_timeout_s = 2

[routing]
backoff_base_ms = 10
backoff_max_ms = 50

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{url}"
api_keys = {keys}

[[providers]]
name = "openai"
kind = "openai"
base_url = "{url}"
api_keys = ["sk-up"]

[[models]]
name = "claude"
deployments = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]
price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}
{model_extra}

[[models]]
name = "gpt"
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]
"#,
        url = up.base_url
    )
}

#[tokio::test]
async fn a_chat_completion_is_sent_as_a_message_and_answered_as_a_completion() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "", false)).await;
    let key = gw.create_key("t").await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "max_tokens": 64, "temperature": 0.5, "stop": ["END"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "How are you?"}
            ]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-sluice-provider"),
        "anthropic/claude-sonnet-4-5"
    );
    // 10 input tokens at $3/M + 5 output at $15/M.
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.000105000");
    let body = json(r).await;
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["id"], "msg_fake1");
    assert_eq!(body["choices"][0]["message"]["content"], "fake answer #1");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 10);
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["usage"]["total_tokens"], 15);

    let seen = up.last();
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.headers["x-api-key"], "ak-1");
    assert_eq!(seen.headers["anthropic-version"], "2023-06-01");
    assert!(
        seen.headers.get("authorization").is_none(),
        "no bearer token"
    );
    assert_eq!(seen.body["model"], "claude-sonnet-4-5");
    assert_eq!(seen.body["system"][0]["text"], "Be brief.");
    assert_eq!(seen.body["max_tokens"], 64);
    assert_eq!(seen.body["temperature"], 0.5);
    assert_eq!(seen.body["stop_sequences"], json!(["END"]));
    let roles: Vec<&str> = seen.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user"]);
}

#[tokio::test]
async fn tool_calls_and_tool_results_make_the_round_trip() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "cache_ttl_s = 0", false)).await;
    let key = gw.create_key("t").await;
    let tools = json!([{"type": "function", "function": {"name": "lookup", "description": "Finds things",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]);
    let mut messages = vec![json!({"role": "user", "content": "find cats"})];
    let first = json(
        gw.post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "messages": messages, "tools": tools, "tool_choice": "auto"}),
        )
        .await,
    )
    .await;
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "find cats"}));
    let sent = up.last().body;
    assert_eq!(sent["tools"][0]["name"], "lookup");
    assert_eq!(
        sent["tools"][0]["input_schema"]["required"],
        json!(["query"])
    );

    messages.push(choice["message"].clone());
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "3 cats"}));
    let second = json(
        gw.post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "messages": messages}),
        )
        .await,
    )
    .await;
    assert_eq!(
        second["choices"][0]["message"]["content"],
        "tool said: 3 cats"
    );
    let sent = up.last().body;
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert_eq!(turns[1]["content"][0]["id"], call["id"]);
    assert_eq!(
        turns[1]["content"][0]["input"],
        json!({"query": "find cats"})
    );
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][0]["tool_use_id"], call["id"]);
}

#[tokio::test]
async fn a_stream_is_translated_metered_cached_and_replayed() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "", false)).await;
    let key = gw
        .admin_create(json!({"tenant": "t", "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let request = json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream please"}]});
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let chunks = events(&r.text().await.unwrap());
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "fake answer #1");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].clone(),
            usage["completion_tokens"].clone()
        ),
        (json!(10), json!(5))
    );
    assert_eq!(up.last().body["stream"], true);

    // Settled from the streamed usage: the same 0.000105 USD as a plain answer.
    let spent = gw.usage(&key).await;
    let text = spent.to_string();
    assert!(text.contains("0.000105"), "{text}");

    let again = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(header(&again, "x-sluice-cache"), "hit");
    let replayed = events(&again.text().await.unwrap());
    let text: String = replayed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "fake answer #1");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn a_streamed_tool_call_arrives_as_tool_call_deltas() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "", false)).await;
    let key = gw.create_key("t").await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "stream": true,
                "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
                "messages": [{"role": "user", "content": "dogs"}]}),
        )
        .await;
    let chunks = events(&r.text().await.unwrap());
    let arguments: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, r#"{"query":"dogs"}"#);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage only for clients that asked"
    );
}

#[tokio::test]
async fn anthropic_errors_are_mapped_retried_and_fallen_back_from() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(
        &up,
        "cache_ttl_s = 0\nfallbacks = [\"gpt\"]",
        false,
    ))
    .await;
    let key = gw.create_key("t").await;
    let ask = async |text: &str| {
        gw.post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "messages": [{"role": "user", "content": text}]}),
        )
        .await
    };
    // A 429 with retry-after: retried on the same key, answered by Anthropic.
    up.fail_next(1, Behaviour::Status(429, Some(0)));
    let r = ask("one").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-sluice-provider"),
        "anthropic/claude-sonnet-4-5"
    );
    assert!(r.headers().get("x-sluice-fallback").is_none());

    // Overloaded (529) on every attempt: the fallback model on OpenAI answers.
    up.fail_next(2, Behaviour::Status(529, None));
    let r = ask("two").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "fallback_model");
    assert_eq!(header(&r, "x-sluice-provider"), "openai/gpt-4o-mini");
    assert_eq!(up.last().path, "/v1/chat/completions");

    // The request's own fault: Anthropic's message reaches the client, nothing is retried.
    let before = up.calls();
    up.fail_next(1, Behaviour::Status(400, None));
    let error = assert_error(ask("three").await, 400, "upstream_rejected_request").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fake upstream error 400"),
        "{error}"
    );
    assert_eq!(up.calls(), before + 1);

    // Anthropic has no embeddings: a clear 400, no call.
    let before = up.calls();
    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "claude", "input": "x"}),
        )
        .await;
    let error = assert_error(r, 400, "upstream_rejected_request").await;
    assert!(
        error["message"].as_str().unwrap().contains("no embeddings"),
        "{error}"
    );
    assert_eq!(up.calls(), before);
}

#[tokio::test]
async fn a_key_anthropic_reports_exhausted_is_skipped_before_a_429() {
    let a = FakeUpstream::start().await;
    let b = FakeUpstream::start().await;
    // a's key has no requests left until its reset, in Anthropic's header format.
    let reset = "2099-01-01T00:00:00Z";
    a.set_headers(&[
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", reset),
        ("anthropic-ratelimit-tokens-remaining", "80000"),
    ]);
    let config = format!(
        r#"
[[providers]]
name = "a"
kind = "anthropic"
base_url = "{}"
api_keys = ["ak-a"]

[[providers]]
name = "b"
kind = "anthropic"
base_url = "{}"
api_keys = ["ak-b"]

[[models]]
name = "claude"
cache_ttl_s = 0
routing = "most_headroom"
deployments = [{{ provider = "a", model = "claude-x", weight = 1000000 }}, {{ provider = "b", model = "claude-x", weight = 1 }}]
"#,
        a.base_url, b.base_url
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t").await;
    for i in 0..8 {
        let r = gw
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "claude", "messages": [{"role": "user", "content": format!("n{i}")}]}),
            )
            .await;
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(
        (a.calls(), b.calls()),
        (1, 7),
        "after a said it had nothing left, it was not asked again"
    );
}

/// `POST /v1/messages` with an Anthropic-format body and the key in `x-api-key`.
async fn messages(gw: &TestGateway, key: &str, body: &Value) -> reqwest::Response {
    gw.http
        .post(format!("{}/v1/messages", gw.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_messages_ingress_reaches_any_provider_through_the_pipeline() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "", false)).await;
    let key = gw.create_key("t").await;
    // Anthropic format in, an OpenAI provider behind.
    let request = json!({"model": "gpt", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
    let r = messages(&gw, &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-provider"), "openai/gpt-4o-mini");
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let message = json(r).await;
    assert_eq!(message["type"], "message");
    assert_eq!(message["role"], "assistant");
    assert_eq!(message["model"], "gpt");
    assert_eq!(
        message["content"],
        json!([{"type": "text", "text": "fake answer #1"}])
    );
    assert_eq!(message["stop_reason"], "end_turn");
    assert_eq!(message["usage"]["input_tokens"], 10);
    assert_eq!(message["usage"]["output_tokens"], 5);
    let sent = up.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-up");
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(
        sent.body["messages"][1],
        json!({"role": "user", "content": "hello"})
    );
    assert_eq!(sent.body["max_tokens"], 50);
    // The same question again is a cache hit, in either format.
    let r = messages(&gw, &key, &request).await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(json(r).await["content"][0]["text"], "fake answer #1");
    assert_eq!(up.calls(), 1);

    // Streaming, with Anthropic behind: Anthropic's event sequence comes out.
    let r = messages(
        &gw,
        &key,
        &json!({"model": "claude", "max_tokens": 50, "stream": true,
                "messages": [{"role": "user", "content": "stream it"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let text = r.text().await.unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"content_block_delta"), "{text}");
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = data
        .iter()
        .filter_map(|d| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, "fake answer #2");
    let end = data.iter().find(|d| d["type"] == "message_delta").unwrap();
    assert_eq!(end["usage"]["output_tokens"], 5);
    assert_eq!(end["delta"]["stop_reason"], "end_turn");
}

#[tokio::test]
async fn messages_ingress_errors_are_anthropic_shaped() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, "", false)).await;
    let key = gw.create_key("t").await;
    let check = async |r: reqwest::Response, status: u16, kind: &str| {
        assert_eq!(r.status().as_u16(), status);
        let body = json(r).await;
        assert_eq!(body["type"], "error", "{body}");
        assert_eq!(body["error"]["type"], kind, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        body
    };
    let no_max = json!({"model": "claude", "messages": [{"role": "user", "content": "x"}]});
    let body = check(
        messages(&gw, &key, &no_max).await,
        400,
        "invalid_request_error",
    )
    .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens")
    );
    let ok =
        json!({"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    check(
        messages(&gw, "sk-sluice-wrong", &ok).await,
        401,
        "authentication_error",
    )
    .await;
    let unknown =
        json!({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
    check(messages(&gw, &key, &unknown).await, 404, "not_found_error").await;
    up.fail_next(10, Behaviour::Status(429, Some(0)));
    let r = messages(&gw, &key, &ok).await;
    assert!(r.headers().get("retry-after").is_some());
    check(r, 429, "rate_limit_error").await;
    assert_eq!(
        up.calls(),
        2,
        "two attempts (the default), then refused: no fallback is configured"
    );
}
