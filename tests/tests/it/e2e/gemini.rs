//! Gemini end to end: OpenAI-format clients talk to a `gemini` provider; the fake upstream
//! speaks Google's wire format (`generateContent`, `streamGenerateContent?alt=sse`,
//! `batchEmbedContents`, `google.rpc.Status` errors with `RetryInfo`).

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_tests::{Behaviour, FakeUpstream, TestGateway};

use crate::e2e::{assert_error, events, header, json};

const GEMINI_KEY: &str = "gk-test";

/// Model `gem` on `gemini-2.0-flash` and `gem-embed` on `text-embedding-004`, both on the
/// fake's Gemini API; `routing` is the `[routing]` table's body.
fn config(upstream: &FakeUpstream, routing: &str, api_keys: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout_s = 5

[routing]
backoff_base_ms = 10
backoff_max_ms = 50
circuit_failures = 1000000
{routing}

[[providers]]
name = "g"
kind = "gemini"
base_url = "{url}"
api_keys = {api_keys}

[[models]]
name = "gem"
deployments = [{{ provider = "g", model = "gemini-2.0-flash" }}]
price = {{ input_per_mtok = 0.10, output_per_mtok = 0.40 }}
cache_ttl_s = 3600
stale_fallback = false

[[models]]
name = "gem-embed"
deployments = [{{ provider = "g", model = "text-embedding-004" }}]
price = {{ input_per_mtok = 0.02, output_per_mtok = 0.0 }}
cache_ttl_s = 0
"#,
        url = upstream.gemini_url,
    )
}

async fn start(routing: &str) -> (FakeUpstream, TestGateway, String) {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up, routing, "[\"gk-test\"]")).await;
    let key = gw.create_key("t1").await;
    (up, gw, key)
}

fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[tokio::test]
async fn chat_is_translated_to_generate_content_and_back() {
    let (up, gw, key) = start("attempts_per_deployment = 1").await;
    let request = json!({
        "model": "gem",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How can I help?"},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 64,
        "stop": ["\n\n"],
        "seed": 42,
        "response_format": {"type": "json_object"}
    });
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-provider"), "g/gemini-2.0-flash");
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    // 10 prompt tokens at $0.10/M + 5 completion tokens at $0.40/M.
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.000003000");
    let answer = json(r).await;
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["id"], "chatcmpl-gfake1");
    assert_eq!(answer["model"], "gemini-2.0-flash");
    assert_eq!(answer["choices"][0]["index"], 0);
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(answer["choices"][0]["message"]["content"], "fake answer #1");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        answer["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}})
    );

    let seen = up.last();
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_eq!(seen.headers["x-goog-api-key"], GEMINI_KEY);
    assert!(seen.headers.get("authorization").is_none());
    for (name, value) in &seen.headers {
        let value = value.to_str().unwrap_or("");
        assert!(!value.contains(&key), "gateway key forwarded in {name}");
    }
    assert_eq!(
        seen.body,
        json!({
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [
                {"role": "user", "parts": [{"text": "Hello"}]},
                {"role": "model", "parts": [{"text": "Hi! How can I help?"}]},
                {"role": "user", "parts": [{"text": "Name a colour."}]}
            ],
            "generationConfig": {
                "temperature": 0.2, "topP": 0.9, "maxOutputTokens": 64,
                "stopSequences": ["\n\n"], "seed": 42, "responseMimeType": "application/json"
            }
        })
    );
}

#[tokio::test]
async fn tool_calls_and_tool_results_make_a_two_round_conversation() {
    let (up, gw, key) = start("attempts_per_deployment = 1").await;
    let tools = json!([{"type": "function", "function": {
        "name": "lookup", "description": "Searches the knowledge base",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]);
    let mut messages = vec![json!({"role": "user", "content": "Who wrote Peer Gynt?"})];

    // Round one: the model asks for the tool.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gem", "messages": messages, "tools": tools, "tool_choice": "auto"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let first = json(r).await;
    let choice = &first["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "lookup");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"query": "Who wrote Peer Gynt?"}));
    let call_id = call["id"].as_str().unwrap().to_owned();
    assert!(!call_id.is_empty());
    let seen = up.last().body;
    assert_eq!(
        seen["tools"],
        json!([{"functionDeclarations": [{"name": "lookup", "description": "Searches the knowledge base",
            "parametersJsonSchema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}]}])
    );
    assert_eq!(
        seen["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );

    // Round two: the client runs the tool and sends its result back.
    messages.push(choice["message"].clone());
    messages.push(
        json!({"role": "tool", "tool_call_id": call_id, "content": "{\"author\":\"Ibsen\"}"}),
    );
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gem", "messages": messages, "tools": tools}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let second = json(r).await;
    assert_eq!(
        second["choices"][0]["message"]["content"],
        "tool said: {\"author\":\"Ibsen\"}"
    );
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert!(second["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(
        up.last().body["contents"],
        json!([
            {"role": "user", "parts": [{"text": "Who wrote Peer Gynt?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"query": "Who wrote Peer Gynt?"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"author": "Ibsen"}}}]}
        ])
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn streams_are_translated_metered_cached_and_replayed() {
    let (up, gw, key) = start("attempts_per_deployment = 1").await;
    let request = json!({"model": "gem", "stream": true, "stream_options": {"include_usage": true},
                         "messages": [{"role": "user", "content": "Stream please"}]});
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let chunks = events(&r.text().await.unwrap());
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(streamed_text(&chunks), "fake answer #1");
    // The fake sends the text a word at a time.
    let pieces = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"].is_string())
        .count();
    assert_eq!(pieces, 3);
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&json!("stop")]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}})
    );
    let seen = up.last();
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    );
    assert_eq!(seen.headers["x-goog-api-key"], GEMINI_KEY);
    assert_eq!(
        seen.body["contents"],
        json!([{"role": "user", "parts": [{"text": "Stream please"}]}])
    );

    // The assembled answer was cached; the same request is a hit replayed as events.
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
    assert_eq!(header(&r, "content-type"), "text/event-stream");
    let replayed = events(&r.text().await.unwrap());
    assert_eq!(streamed_text(&replayed), "fake answer #1");
    assert_eq!(replayed.last().unwrap()["usage"]["total_tokens"], 15);
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn streamed_tool_calls_arrive_as_tool_call_deltas() {
    let (_up, gw, key) = start("attempts_per_deployment = 1").await;
    let request = json!({"model": "gem", "stream": true,
        "messages": [{"role": "user", "content": "find it"}],
        "tools": [{"type": "function", "function": {"name": "lookup",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]});
    let r = gw.post("/v1/chat/completions", &key, &request).await;
    assert_eq!(r.status(), 200);
    let chunks = events(&r.text().await.unwrap());
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1, "{chunks:?}");
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "lookup");
    assert_eq!(calls[0]["function"]["arguments"], "{\"query\":\"find it\"}");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    // No usage chunk: the client did not ask for one.
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
}

fn decode_f32s(encoded: &str) -> Vec<f32> {
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[tokio::test]
async fn embeddings_use_batch_embed_contents_as_floats_or_base64() {
    let (up, gw, key) = start("attempts_per_deployment = 1").await;
    let request = json!({"model": "gem-embed", "input": ["alpha", "beta"], "dimensions": 3,
                         "encoding_format": "float"});
    let r = gw.post("/v1/embeddings", &key, &request).await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "text-embedding-004");
    // The fake's 768-value vectors are ±1/√768, the sign pattern shifted by the input's
    // index; `dimensions: 3` is their first three values, which Sluice scales back to unit
    // length: ±1/√3.
    let s = 1.0 / 3f64.sqrt();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, signs) in [[-1.0, 1.0, 1.0], [1.0, 1.0, -1.0]].iter().enumerate() {
        assert_eq!(data[i]["object"], "embedding");
        assert_eq!(data[i]["index"], i);
        let values = data[i]["embedding"].as_array().unwrap();
        assert_eq!(values.len(), 3);
        for (v, sign) in values.iter().zip(signs) {
            assert!((v.as_f64().unwrap() - sign * s).abs() < 1e-12, "{values:?}");
        }
    }
    // Estimated: Gemini reports no usage for embeddings ("alpha" and "beta" are 2 + 1).
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "total_tokens": 3})
    );
    let seen = up.last();
    assert_eq!(
        seen.path,
        "/v1beta/models/text-embedding-004:batchEmbedContents"
    );
    assert_eq!(seen.headers["x-goog-api-key"], GEMINI_KEY);
    assert_eq!(
        seen.body,
        json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "alpha"}]}, "outputDimensionality": 3},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "beta"}]}, "outputDimensionality": 3}
        ]})
    );

    // The OpenAI SDKs ask for base64 by default: little-endian f32s.
    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gem-embed", "input": "gamma", "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    let floats = decode_f32s(encoded);
    assert_eq!(floats.len(), 768);
    let s = (1.0 / 768f64.sqrt()) as f32;
    assert_eq!(floats[..3], [-s, s, s]);
    assert!(
        up.last().body["requests"][0]
            .get("outputDimensionality")
            .is_none()
    );

    // Token ids cannot be embedded by Gemini: refused before any call.
    let before = up.calls();
    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gem-embed", "input": [[1, 2, 3]]}),
        )
        .await;
    let error = assert_error(r, 400, "upstream_rejected_request").await;
    assert!(
        error["message"].as_str().unwrap().contains("text only"),
        "{error}"
    );
    assert_eq!(up.calls(), before);
}

#[tokio::test]
async fn a_429_with_retry_info_is_retried_after_the_delay_it_names() {
    let (up, gw, key) = start("attempts_per_deployment = 2").await;
    up.fail_next(1, Behaviour::Status(429, Some(0)));
    let r = gw.chat(&key, "gem", "once more").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-sluice-fallback").is_none(),
        "a retry is not a fallback"
    );
    assert_eq!(
        json(r).await["choices"][0]["message"]["content"],
        "fake answer #2"
    );
    assert_eq!(up.calls(), 2);

    // The wait comes from the body's RetryInfo (Gemini sends no Retry-After header); without
    // it the backoff would be at most 50 ms.
    up.fail_next(1, Behaviour::Status(429, Some(1)));
    let started = Instant::now();
    let r = gw.chat(&key, "gem", "after the quota refills").await;
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.calls(), 4);
}

#[tokio::test]
async fn a_429_moves_on_to_the_next_key() {
    let up = FakeUpstream::start().await;
    let config = config(
        &up,
        "attempts_per_deployment = 1",
        "[\"gk-one\", \"gk-two\"]",
    );
    let gw = TestGateway::start(&config).await;
    let key = gw.create_key("t1").await;
    up.fail_next(1, Behaviour::Status(429, Some(30)));
    let r = gw.chat(&key, "gem", "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-sluice-fallback"), "next_deployment");
    let keys: Vec<String> = up
        .requests()
        .iter()
        .map(|r| r.headers["x-goog-api-key"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1], "the second try uses the other key");
}

#[tokio::test]
async fn a_400_from_gemini_reaches_the_client_with_its_message() {
    let (up, gw, key) = start("attempts_per_deployment = 3").await;
    up.fail_next(1, Behaviour::Status(400, None));
    let error = assert_error(
        gw.chat(&key, "gem", "bad").await,
        400,
        "upstream_rejected_request",
    )
    .await;
    assert_eq!(error["type"], "invalid_request_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("fake gemini error 400: Request contains an invalid argument."),
        "{error}"
    );
    assert_eq!(up.calls(), 1, "the request's own fault is not retried");
}

#[tokio::test]
async fn broken_answers_and_auth_failures_are_gateway_errors() {
    let (up, gw, key) = start("attempts_per_deployment = 1").await;
    for broken in [Behaviour::Garbage, Behaviour::ErrorIn200] {
        up.set(broken.clone());
        let r = gw.chat(&key, "gem", &format!("{broken:?}")).await;
        assert_error(r, 502, "upstream_bad_response").await;
    }
    up.set(Behaviour::Status(403, None));
    assert_error(
        gw.chat(&key, "gem", "who am i").await,
        502,
        "upstream_auth_failed",
    )
    .await;
    up.set(Behaviour::Status(503, None));
    assert_error(gw.chat(&key, "gem", "busy").await, 502, "upstream_failed").await;
}
