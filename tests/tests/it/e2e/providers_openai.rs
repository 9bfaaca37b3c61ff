//! OpenAI's own rules, end to end: the strict fake refuses what OpenAI refuses (each rule
//! tested against the fake directly), the gateway sends reasoning models what they accept
//! (a budgeted request to `o4-mini` was a 400 before the provider renamed `max_tokens`), and
//! every usage component OpenAI reports is billed at its own price, plain and streamed.

use serde_json::{Value, json};
use sluice_tests::{FakeUpstream, TestGateway, fake_config_with};

use crate::e2e::{assert_error, events, header, json, nanos};

/// `o4-mini` (a reasoning model) and `gpt-4o-mini` on the fake, each with a cached-input
/// price, so bills show which component each token was priced as.
const MODELS: &str = r#"
[[models]]
name = "o4-mini"
deployments = [{ provider = "fake", model = "o4-mini" }]
price = { input_per_mtok = 1.0, output_per_mtok = 4.0, cached_input_per_mtok = 0.25 }
cache_ttl_s = 0
max_output_tokens = 1000

[[models]]
name = "mini"
deployments = [{ provider = "fake", model = "gpt-4o-mini" }]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60, cached_input_per_mtok = 0.075 }
cache_ttl_s = 0

# No `price`: the built-in table prices the dated snapshot as its family, gpt-4o-mini.
[[models]]
name = "dated"
deployments = [{ provider = "fake", model = "gpt-4o-mini-2024-07-18" }]
cache_ttl_s = 0
"#;

async fn start() -> (FakeUpstream, TestGateway) {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(&up.base_url, MODELS)).await;
    (up, gw)
}

/// A key with a daily spending cap of $5.
async fn capped_key(gw: &TestGateway) -> String {
    let created = gw
        .admin_create(json!({"tenant": "t1", "budget_usd": 5.0, "period": "day"}))
        .await;
    created["key"].as_str().unwrap().to_owned()
}

/// What the key has spent, in nano-USD, once nothing is reserved any more.
async fn spent(gw: &TestGateway, key: &str) -> u64 {
    for _ in 0..200 {
        let u = gw.usage(key).await;
        let b = &u["limits"]["key"]["budget"];
        if b["reserved_usd"].as_f64() == Some(0.0) {
            return (b["spent_usd"].as_f64().unwrap() * 1e9).round() as u64;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("a reservation was never settled");
}

/// Nano-USD of an OpenAI `usage` object at USD-per-million prices (input, cached, output).
fn cost(usage: &Value, (input, cached_price, output): (f64, f64, f64)) -> u64 {
    let prompt = usage["prompt_tokens"].as_u64().unwrap() as f64;
    let cached = usage["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0) as f64;
    let completion = usage["completion_tokens"].as_u64().unwrap() as f64;
    ((prompt - cached) * input * 1000.0
        + cached * cached_price * 1000.0
        + completion * output * 1000.0)
        .round() as u64
}

// ---- the strict fake, directly --------------------------------------------------------------

/// POSTs `body` to the fake's OpenAI `path` and returns the status and body.
async fn to_fake(up: &FakeUpstream, path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", up.base_url))
        .bearer_auth("sk-test")
        .json(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn the_fake_refuses_what_openai_refuses_with_openai_error_shape() {
    let up = FakeUpstream::start().await;
    let chat = |extra: Value| {
        let mut body = json!({"model": "gpt-4o-mini", "messages": user("hi")});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
    let call = json!({"role": "assistant", "content": null, "tool_calls":
        [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]});
    let cases = [
        // Reasoning models.
        (
            json!({"model": "o4-mini", "max_tokens": 10}),
            "max_tokens",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o3", "max_tokens": 10}),
            "max_tokens",
            "unsupported_parameter",
        ),
        (
            json!({"model": "gpt-5-mini", "max_tokens": 10}),
            "max_tokens",
            "unsupported_parameter",
        ),
        (
            json!({"model": "gpt-5.1", "max_tokens": 10}),
            "max_tokens",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o4-mini", "temperature": 0.2}),
            "temperature",
            "unsupported_value",
        ),
        (
            json!({"model": "o1", "top_p": 0.5}),
            "top_p",
            "unsupported_value",
        ),
        (
            json!({"model": "o4-mini", "presence_penalty": 1}),
            "presence_penalty",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o4-mini", "frequency_penalty": 1}),
            "frequency_penalty",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o4-mini", "logprobs": true}),
            "logprobs",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o4-mini", "logit_bias": {"1": 5}}),
            "logit_bias",
            "unsupported_parameter",
        ),
        (
            json!({"model": "o3", "stop": ["x"]}),
            "stop",
            "unsupported_parameter",
        ),
        (
            json!({"model": "gpt-5", "stop": "x"}),
            "stop",
            "unsupported_parameter",
        ),
        // Ranges.
        (json!({"n": 0}), "n", "integer_out_of_range"),
        (json!({"n": 129}), "n", "integer_out_of_range"),
        (
            json!({"temperature": 2.5}),
            "temperature",
            "decimal_above_max_value",
        ),
        (
            json!({"temperature": -0.1}),
            "temperature",
            "decimal_below_min_value",
        ),
        (json!({"top_p": 1.5}), "top_p", "decimal_above_max_value"),
        (
            json!({"presence_penalty": 2.5}),
            "presence_penalty",
            "decimal_above_max_value",
        ),
        (
            json!({"frequency_penalty": -3}),
            "frequency_penalty",
            "decimal_below_min_value",
        ),
        (
            json!({"max_tokens": 0}),
            "max_tokens",
            "integer_below_min_value",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
            "integer_above_max_value",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs", "invalid_value"),
        (
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            "stop",
            "array_above_max_length",
        ),
        // Tools and formats.
        (
            json!({"tools": vec![tool("f"); 129]}),
            "tools",
            "array_above_max_length",
        ),
        (
            json!({"tools": [tool("get weather")]}),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            json!({"tools": [tool(&"f".repeat(65))]}),
            "tools[0].function.name",
            "invalid_value",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
            "missing_required_parameter",
        ),
        // Messages.
        (json!({"messages": []}), "messages", "empty_array"),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages.[0].content",
            "missing_required_parameter",
        ),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages.[0].role",
            "invalid_value",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}),
            "messages.[1].content",
            "missing_required_parameter",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, call.clone(),
            {"role": "tool", "content": "r"}]}),
            "messages.[2].tool_call_id",
            "missing_required_parameter",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "call_1", "content": "r"}]}),
            "messages.[1].role",
            "invalid_value",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}, call.clone(),
            {"role": "tool", "tool_call_id": "call_2", "content": "r"}]}),
            "messages.[2].role",
            "invalid_value",
        ),
    ];
    for (extra, param, code) in cases {
        let body = chat(extra.clone());
        let (status, answer) = to_fake(&up, "/chat/completions", &body).await;
        assert_eq!(status, 400, "{extra} was accepted");
        let error = &answer["error"];
        assert_eq!(error["param"], param, "{extra}: {answer}");
        assert_eq!(error["code"], code, "{extra}: {answer}");
        assert_eq!(error["type"], "invalid_request_error");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Each rule refuses only what it should: the same requests made valid are answered.
    let fine = [
        json!({"model": "o4-mini", "max_completion_tokens": 10, "temperature": 1, "stop": []}),
        json!({"model": "o1", "stop": ["x"]}),
        json!({"model": "gpt-5.1", "temperature": 0.2, "reasoning_effort": "none"}),
        json!({"model": "gpt-5-chat-latest", "max_tokens": 10, "temperature": 0.2}),
        json!({"n": 128, "temperature": 2, "top_p": 0, "presence_penalty": -2,
            "frequency_penalty": 2, "logprobs": true, "top_logprobs": 20, "stop": ["a", "b", "c", "d"]}),
        json!({"tools": vec![tool("get_weather-2"); 128]}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {}}}}),
        json!({"messages": [{"role": "user", "content": "x"}, call.clone(),
            {"role": "tool", "tool_call_id": "call_1", "content": "r"}]}),
    ];
    for extra in fine {
        let (status, answer) = to_fake(&up, "/chat/completions", &chat(extra.clone())).await;
        assert_eq!(status, 200, "{extra}: {answer}");
    }
}

#[tokio::test]
async fn the_fake_refuses_embeddings_openai_refuses() {
    let up = FakeUpstream::start().await;
    let cases = [
        (
            json!({"model": "text-embedding-3-small", "input": []}),
            "input",
            "empty_array",
        ),
        (
            json!({"model": "text-embedding-3-small", "input": vec!["a"; 2049]}),
            "input",
            "array_above_max_length",
        ),
        (
            json!({"model": "text-embedding-ada-002", "input": "a", "dimensions": 8}),
            "dimensions",
            "invalid_value",
        ),
        (
            json!({"model": "text-embedding-3-large", "input": "a", "dimensions": 0}),
            "dimensions",
            "integer_below_min_value",
        ),
    ];
    for (body, param, code) in cases {
        let (status, answer) = to_fake(&up, "/embeddings", &body).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["param"], param, "{answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
    }
    for body in [
        json!({"model": "text-embedding-3-small", "input": vec!["a"; 2048], "dimensions": 8}),
        json!({"model": "text-embedding-ada-002", "input": "a"}),
    ] {
        assert_eq!(to_fake(&up, "/embeddings", &body).await.0, 200);
    }
}

#[tokio::test]
async fn the_fake_reports_reasoning_and_cached_tokens() {
    let up = FakeUpstream::start().await;
    let (_, answer) = to_fake(
        &up,
        "/chat/completions",
        &json!({"model": "o4-mini", "messages": user("hi")}),
    )
    .await;
    let usage = &answer["usage"];
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 64);
    assert_eq!(usage["completion_tokens"], 69);
    // Reasoning stays within `max_completion_tokens`.
    let (_, answer) = to_fake(
        &up,
        "/chat/completions",
        &json!({"model": "o4-mini", "messages": user("hi"), "max_completion_tokens": 20}),
    )
    .await;
    assert_eq!(answer["usage"]["completion_tokens"], 20);
    // A long prefix seen before is partly cached, in 128-token steps from 1,024.
    let long = |q: &str| {
        json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "a".repeat(6000)}, {"role": "user", "content": q}]})
    };
    let (_, first) = to_fake(&up, "/chat/completions", &long("one")).await;
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let (_, second) = to_fake(&up, "/chat/completions", &long("two")).await;
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(cached >= 1024 && (cached - 1024) % 128 == 0, "{second}");
    assert!(cached < second["usage"]["prompt_tokens"].as_u64().unwrap());
}

// ---- the gateway in front of it -------------------------------------------------------------

#[tokio::test]
async fn a_budgeted_request_to_a_reasoning_model_is_answered() {
    let (up, gw) = start().await;
    let key = capped_key(&gw).await;
    // No output maximum: the gateway reserves the model's ceiling and imposes it upstream,
    // under the name o4-mini takes.
    let r = gw.chat(&key, "o4-mini", "think").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = up.last().body;
    assert_eq!(sent["max_completion_tokens"], 1000);
    assert!(sent.get("max_tokens").is_none(), "{sent}");
    // A client's own `max_tokens` is renamed; with both, the tighter one holds.
    for (request, limit) in [
        (json!({"max_tokens": 300}), 300),
        (
            json!({"max_tokens": 300, "max_completion_tokens": 200}),
            200,
        ),
    ] {
        let mut body = json!({"model": "o4-mini", "messages": user("think"), "stream": true});
        for (k, v) in request.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(r.status(), 200);
        events(&r.text().await.unwrap());
        let sent = up.last().body;
        assert_eq!(sent["max_completion_tokens"], limit);
        assert!(sent.get("max_tokens").is_none(), "{sent}");
    }
    // The Anthropic ingress always sets `max_tokens`.
    let r = gw
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "o4-mini", "max_tokens": 128, "messages": user("think")}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.last().body["max_completion_tokens"], 128);
    // Not a reasoning model: `max_tokens` stays what the client sent.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "mini", "messages": user("hi"), "max_tokens": 7}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = up.last().body;
    assert_eq!(sent["max_tokens"], 7);
    assert!(sent.get("max_completion_tokens").is_none());
}

#[tokio::test]
async fn what_a_reasoning_model_refuses_is_a_400_naming_the_field_without_a_call() {
    let (up, gw) = start().await;
    let key = capped_key(&gw).await;
    for (field, value) in [
        ("temperature", json!(0.2)),
        ("top_p", json!(0.9)),
        ("presence_penalty", json!(0.5)),
        ("logprobs", json!(true)),
        ("logit_bias", json!({"42": 3})),
        ("stop", json!(["END"])),
    ] {
        let mut body = json!({"model": "o4-mini", "messages": user("hi")});
        body[field] = value;
        let r = gw.post("/v1/chat/completions", &key, &body).await;
        let error = assert_error(r, 400, "unsupported_parameter").await;
        assert_eq!(error["param"], field);
        assert!(error["message"].as_str().unwrap().contains("o4-mini"));
    }
    assert_eq!(up.calls(), 0, "refused before any call");
    assert_eq!(spent(&gw, &key).await, 0);
    // Defaults ask for nothing: they are left out and the request is answered.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "o4-mini", "messages": user("hi"), "temperature": 1,
                "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0, "logprobs": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = up.last().body;
    for field in [
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
    ] {
        assert!(sent.get(field).is_none(), "{field} sent: {sent}");
    }
}

#[tokio::test]
async fn a_request_openai_refuses_is_passed_on_as_a_400_with_openai_reason() {
    let (up, gw) = start().await;
    let key = gw.create_key("t1").await;
    // A tool result without its call: the gateway does not judge conversations, OpenAI does.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "mini", "messages": [{"role": "user", "content": "x"},
                {"role": "tool", "tool_call_id": "call_9", "content": "r"}]}),
        )
        .await;
    let error = assert_error(r, 400, "upstream_rejected_request").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("must be a response to a preceeding message with 'tool_calls'"),
        "{error}"
    );
    assert_eq!(up.calls(), 1, "not retried");
}

#[tokio::test]
async fn reasoning_tokens_are_billed_as_output() {
    let (_up, gw) = start().await;
    let key = capped_key(&gw).await;
    let r = gw.chat(&key, "o4-mini", "think").await;
    assert_eq!(r.status(), 200);
    let billed = nanos(header(&r, "x-sluice-cost-usd"));
    let answer = json(r).await;
    let usage = &answer["usage"];
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 64);
    // 10 prompt tokens at $1/M, 69 output tokens (64 of them reasoning) at $4/M.
    assert_eq!(billed, 10_000 + 69 * 4_000);
    assert_eq!(billed, cost(usage, (1.0, 0.25, 4.0)));
    assert_eq!(spent(&gw, &key).await, billed);
}

#[tokio::test]
async fn cached_input_is_billed_at_the_cached_price_plain_and_streamed() {
    let (_up, gw) = start().await;
    let prices = (0.15, 0.075, 0.60);
    let long = |q: &str, stream: bool| {
        json!({"model": "mini", "stream": stream, "stream_options": {"include_usage": true},
            "messages": [{"role": "system", "content": "a".repeat(6000)},
                {"role": "user", "content": q}]})
    };
    // Plain: the second request's prefix is read from OpenAI's prompt cache.
    let key = capped_key(&gw).await;
    let mut bills = Vec::new();
    for q in ["one", "two"] {
        let r = gw.post("/v1/chat/completions", &key, &long(q, false)).await;
        assert_eq!(r.status(), 200);
        let billed = nanos(header(&r, "x-sluice-cost-usd"));
        let usage = json(r).await["usage"].clone();
        assert_eq!(billed, cost(&usage, prices), "{usage}");
        bills.push((billed, usage));
    }
    let (first, second) = (&bills[0], &bills[1]);
    assert_eq!(first.1["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(
        second.1["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 1024
    );
    assert!(second.0 < first.0, "the cached prefix costs less");
    assert_eq!(spent(&gw, &key).await, first.0 + second.0);

    // Streamed: the usage chunk carries the same details and settles the same bill.
    let key = capped_key(&gw).await;
    let r = gw
        .post("/v1/chat/completions", &key, &long("three", true))
        .await;
    assert_eq!(r.status(), 200);
    let chunks = events(&r.text().await.unwrap());
    let usage = chunks.last().unwrap()["usage"].clone();
    assert!(
        usage["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
            >= 1024
    );
    assert_eq!(spent(&gw, &key).await, cost(&usage, prices));
}

#[tokio::test]
async fn a_dated_snapshot_is_priced_by_the_built_in_table_and_held_by_a_cap() {
    let (up, gw) = start().await;
    let key = capped_key(&gw).await;
    // Before the table matched snapshots, this model had no price: a 400 model_not_priced.
    let r = gw.chat(&key, "dated", "hi").await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.last().body["model"], "gpt-4o-mini-2024-07-18");
    // gpt-4o-mini's list price: 10 prompt tokens at $0.15/M, 5 completion tokens at $0.60/M.
    assert_eq!(nanos(header(&r, "x-sluice-cost-usd")), 10 * 150 + 5 * 600);
    assert_eq!(spent(&gw, &key).await, 4_500);
}
