//! Gemini's real rules, end to end (issue 14): OpenAI- and Anthropic-format clients in front
//! of the strict Gemini fake, which refuses what Google refuses. Each test is one finding of
//! the issue and failed before its fix: JSON Schema tools and structured output, Gemini 3
//! thought signatures across turns, tool-call ids across answers, content that was dropped,
//! usage billed by component, embedding batches of at most 100 and unit-length vectors.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sluice_tests::{Behaviour, FakeUpstream, TestGateway};

use crate::e2e::{assert_error, events, header, json};

/// Chat models on the fake's Gemini API: `g20` (gemini-2.0-flash), `g25` (gemini-2.5-flash,
/// a thinking model), `g3` (gemini-3-pro-preview, strict thought signatures) and `g25pro`
/// (gemini-2.5-pro, priced by component with its long-context tier); embeddings `gemb`
/// (gemini-embedding-001); and `gpt` on the fake's OpenAI API.
fn config(up: &FakeUpstream) -> String {
    format!(
        r#"
[routing]
attempts_per_deployment = 1

[[providers]]
name = "g"
kind = "gemini"
base_url = "{url}"
api_keys = ["gk-test"]

[[providers]]
name = "o"
kind = "openai"
base_url = "{openai}"
api_keys = ["sk-test"]

[[models]]
name = "gpt"
deployments = [{{ provider = "o", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
cache_ttl_s = 0

[[models]]
name = "g20"
deployments = [{{ provider = "g", model = "gemini-2.0-flash" }}]
price = {{ input_per_mtok = 0.10, output_per_mtok = 0.40 }}
cache_ttl_s = 0

[[models]]
name = "g25"
deployments = [{{ provider = "g", model = "gemini-2.5-flash" }}]
price = {{ input_per_mtok = 0.30, output_per_mtok = 2.50 }}
cache_ttl_s = 0

[[models]]
name = "g3"
deployments = [{{ provider = "g", model = "gemini-3-pro-preview" }}]
price = {{ input_per_mtok = 2.0, output_per_mtok = 12.0 }}
cache_ttl_s = 0

[[models]]
name = "g25pro"
deployments = [{{ provider = "g", model = "gemini-2.5-pro" }}]
price = {{ input_per_mtok = 1.25, output_per_mtok = 10.0, cached_input_per_mtok = 0.125, audio_input_per_mtok = 2.0, long_context = {{ above_prompt_tokens = 200000, input_per_mtok = 2.5, output_per_mtok = 15.0, cached_input_per_mtok = 0.25 }} }}
cache_ttl_s = 0

[[models]]
name = "gemb"
deployments = [{{ provider = "g", model = "gemini-embedding-001" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.0 }}
cache_ttl_s = 0
"#,
        url = up.gemini_url,
        openai = up.base_url,
    )
}

async fn start() -> (FakeUpstream, TestGateway, String) {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let key = gw.create_key("t1").await;
    (up, gw, key)
}

fn lookup_tool() -> Value {
    json!([{"type": "function", "function": {"name": "lookup", "description": "Looks a thing up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}])
}

// ---- JSON Schema ------------------------------------------------------------------------------

/// What OpenAI's `strict: true` tools, the SDKs' `.parse()` and MCP servers send. Gemini's
/// `Schema` refuses every one of these keywords; `parametersJsonSchema` and
/// `responseJsonSchema` take them.
fn strict_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": ["string", "null"], "enum": ["c", "f", null]},
            "kind": {"const": "weather"},
            "when": {"$ref": "#/$defs/when"}
        },
        "$defs": {"when": {"type": "object", "properties": {"day": {"type": "string"}},
                           "required": ["day"], "additionalProperties": false}},
        "required": ["city", "unit", "kind", "when"],
        "additionalProperties": false
    })
}

#[tokio::test]
async fn strict_tools_and_structured_output_reach_gemini_as_json_schema() {
    let (up, gw, key) = start().await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g25", "messages": [{"role": "user", "content": "Weather in Oslo?"}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "strict": true,
                    "parameters": strict_schema()}}]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let declaration = &up.last().body["tools"][0]["functionDeclarations"][0];
    assert_eq!(declaration["parametersJsonSchema"], strict_schema());
    assert!(declaration.get("parameters").is_none());

    // The OpenAI SDK's `.parse(response_format=Model)`.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g25", "messages": [{"role": "user", "content": "As JSON"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "Weather", "strict": true,
                    "schema": strict_schema()}}}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let config = &up.last().body["generationConfig"];
    assert_eq!(config["responseJsonSchema"], strict_schema());
    assert_eq!(config["responseMimeType"], "application/json");
    assert!(config.get("responseSchema").is_none());
}

/// Gemini's integer fields are int32: a client's (or the gateway's) larger ceiling is sent as
/// the largest Gemini takes instead of being refused.
#[tokio::test]
async fn an_output_ceiling_beyond_int32_is_the_largest_gemini_takes() {
    let (up, gw, key) = start().await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g20", "max_tokens": 3_000_000_000_u64,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        up.last().body["generationConfig"]["maxOutputTokens"],
        2_147_483_647
    );
}

// ---- thought signatures and tool-call ids ---------------------------------------------------

/// The assistant message of a streamed answer, rebuilt from its deltas as SDKs do.
fn streamed_message(chunks: &[Value]) -> Value {
    let mut calls: Vec<Value> = Vec::new();
    for delta in chunks.iter().map(|c| &c["choices"][0]["delta"]) {
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
            if calls.len() <= index {
                calls.push(json!({"id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}));
            }
            let arguments = format!(
                "{}{}",
                calls[index]["function"]["arguments"].as_str().unwrap(),
                call["function"]["arguments"].as_str().unwrap_or("")
            );
            calls[index]["function"]["arguments"] = json!(arguments);
        }
    }
    json!({"role": "assistant", "content": null, "tool_calls": calls})
}

/// Gemini 3 refuses the second turn of a tool conversation whose function call comes back
/// without its thought signature. The signature rides in the tool call's id, which clients
/// echo back (rebuilt as the SDKs do, from `id`, `type` and `function` only).
#[tokio::test]
async fn gemini_3_tool_calling_keeps_its_thought_signatures_across_turns() {
    let (up, gw, key) = start().await;
    for stream in [false, true] {
        let question = format!("Who wrote Peer Gynt? (stream: {stream})");
        let mut messages = vec![json!({"role": "user", "content": question})];
        let r = gw
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "g3", "messages": messages, "tools": lookup_tool(), "stream": stream}),
            )
            .await;
        assert_eq!(r.status(), 200);
        let assistant = if stream {
            streamed_message(&events(&r.text().await.unwrap()))
        } else {
            let message = json(r).await["choices"][0]["message"].clone();
            // Only what every client keeps.
            let call = &message["tool_calls"][0];
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": call["id"], "type": "function", "function": call["function"]}]})
        };
        let call_id = assistant["tool_calls"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        messages.push(assistant);
        messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": "Ibsen"}));
        let r = gw
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "g3", "messages": messages, "tools": lookup_tool(), "stream": stream}),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        // The signature went back on the call it came with, exactly as Gemini sent it.
        let sent = &up.last().body["contents"][1]["parts"][0];
        assert_eq!(sent["functionCall"]["name"], "lookup");
        assert!(sent["thoughtSignature"].is_string(), "{sent}");
        assert_eq!(up.calls(), if stream { 4 } else { 2 });
    }
}

/// The same through `/v1/messages`: a `tool_use` block's id carries the signature back.
#[tokio::test]
async fn gemini_3_tool_use_through_the_messages_endpoint_keeps_its_signature() {
    let (up, gw, key) = start().await;
    let tools = json!([{"name": "lookup", "description": "Looks a thing up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}]);
    let mut messages = vec![json!({"role": "user", "content": "Who wrote Peer Gynt?"})];
    let r = gw
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "g3", "max_tokens": 200, "messages": messages, "tools": tools}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let message = json(r).await;
    assert_eq!(message["stop_reason"], "tool_use");
    let block = &message["content"][0];
    assert_eq!(block["type"], "tool_use");
    let id = block["id"].as_str().unwrap().to_owned();
    // Within what Anthropic allows in a tool_use id.
    assert!(
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        "{id}"
    );
    messages.push(json!({"role": "assistant", "content": [
        {"type": "tool_use", "id": id, "name": block["name"], "input": block["input"]}]}));
    messages.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": id, "content": "Ibsen"}]}));
    let r = gw
        .post(
            "/v1/messages",
            &key,
            &json!({"model": "g3", "max_tokens": 200, "messages": messages, "tools": tools}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let message = json(r).await;
    assert_eq!(
        message["content"][0]["text"],
        "tool said: {\"content\":\"Ibsen\"}"
    );
    assert!(up.last().body["contents"][1]["parts"][0]["thoughtSignature"].is_string());
}

/// A conversation Gemini began can go on at another provider (another deployment of the
/// model, a fallback): it gets the tool-call ids without the signatures, as short as OpenAI
/// wants them (at most 40 characters).
#[tokio::test]
async fn other_providers_get_tool_call_ids_without_signatures() {
    let (up, gw, key) = start().await;
    let mut messages = vec![json!({"role": "user", "content": "Who wrote Peer Gynt?"})];
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g3", "messages": messages, "tools": lookup_tool()}),
        )
        .await;
    let message = json(r).await["choices"][0]["message"].clone();
    let id = message["tool_calls"][0]["id"].as_str().unwrap().to_owned();
    assert!(id.contains("__thought__"), "{id}");
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": id, "content": "Ibsen"}));
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt", "messages": messages, "tools": lookup_tool()}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = up.last();
    assert_eq!(sent.path, "/v1/chat/completions");
    let short = sent.body["messages"][1]["tool_calls"][0]["id"]
        .as_str()
        .unwrap();
    assert_eq!(short, id.split("__thought__").next().unwrap());
    assert!(short.len() <= 40, "{short}");
    assert_eq!(sent.body["messages"][2]["tool_call_id"], short);
}

/// Gemini gives its calls no ids; each answer's ids were `call_0`, … again, so an agent
/// loop keying results by id mixed up calls of different steps.
#[tokio::test]
async fn tool_call_ids_differ_across_answers() {
    let (_up, gw, key) = start().await;
    let mut ids = Vec::new();
    for question in ["first step", "second step"] {
        let r = gw
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "g20", "messages": [{"role": "user", "content": question}],
                        "tools": lookup_tool()}),
            )
            .await;
        assert_eq!(r.status(), 200);
        ids.push(json(r).await["choices"][0]["message"]["tool_calls"][0]["id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
    assert!(ids[0].as_str().unwrap().starts_with("call_"));
}

// ---- content that was dropped ---------------------------------------------------------------

/// PDFs and audio reach Gemini inline, `reasoning_effort` becomes its thinking config, and
/// what Gemini cannot take is a 400 naming the field, before any call.
#[tokio::test]
async fn files_audio_and_reasoning_are_translated_and_the_rest_refused() {
    let (up, gw, key) = start().await;
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g25", "reasoning_effort": "low", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Summarise both"},
                {"type": "file", "file": {"filename": "report.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQ="}},
                {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
            ]}]}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let sent = up.last().body;
    assert_eq!(
        sent["contents"][0]["parts"],
        json!([
            {"text": "Summarise both"},
            {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0xLjQ="}},
            {"inlineData": {"mimeType": "audio/wav", "data": "UklGRiQAAABXQVZF"}}
        ])
    );
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingBudget": 1024})
    );
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "g3", "reasoning_effort": "high",
                    "messages": [{"role": "user", "content": "think"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().body["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "high"})
    );

    let calls = up.calls();
    for (extra, field) in [
        (json!({"logprobs": true, "top_logprobs": 2}), "logprobs"),
        (json!({"logit_bias": {"1234": -100}}), "logit_bias"),
        (json!({"web_search_options": {}}), "web_search_options"),
    ] {
        let mut body = json!({"model": "g25", "messages": [{"role": "user", "content": "x"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let error = assert_error(
            gw.post("/v1/chat/completions", &key, &body).await,
            400,
            "upstream_rejected_request",
        )
        .await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let image_in_tool_result = json!({"model": "g25", "messages": [
        {"role": "user", "content": "look"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
    ], "tools": lookup_tool()});
    let error = assert_error(
        gw.post("/v1/chat/completions", &key, &image_in_tool_result)
            .await,
        400,
        "upstream_rejected_request",
    )
    .await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("messages[2].content[0]"),
        "{error}"
    );
    assert_eq!(up.calls(), calls, "refused before any call");
}

// ---- billing ---------------------------------------------------------------------------------

/// The fake (see its module note) reports a thinking model's system prompt as cached content
/// (one token per byte), 7 thought tokens, and an audio part's base64 length as AUDIO tokens.
/// Each is billed at its own price, and above 200k prompt tokens at 2.5 Pro's long-context
/// prices.
#[tokio::test]
async fn usage_is_billed_by_component_and_tier() {
    let (_up, gw, key) = start().await;
    let request = |system: String| {
        json!({"model": "g25pro", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": [
                {"type": "text", "text": "Transcribe"},
                {"type": "input_audio", "input_audio": {"data": "A".repeat(400), "format": "wav"}}]}]})
    };
    let r = gw
        .post("/v1/chat/completions", &key, &request("S".repeat(1000)))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // 10 text + 1,000 cached + 400 audio in, 5 + 7 thinking out:
    // 10 × $1.25 + 1,000 × $0.125 + 400 × $2.00 + 12 × $10.00 (per million).
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.001057500");
    let usage = &json(r).await["usage"];
    assert_eq!(
        *usage,
        json!({"prompt_tokens": 1410, "completion_tokens": 12, "total_tokens": 1422,
               "prompt_tokens_details": {"cached_tokens": 1000, "audio_tokens": 400},
               "completion_tokens_details": {"reasoning_tokens": 7, "audio_tokens": 0}})
    );

    // 210,000 cached + 10 text + 400 audio: above 200k, every component at the long-context
    // price (audio at the base audio price, the only one given for it):
    // 10 × $2.50 + 210,000 × $0.25 + 400 × $2.00 + 12 × $15.00.
    let r = gw
        .post("/v1/chat/completions", &key, &request("S".repeat(210_000)))
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(header(&r, "x-sluice-cost-usd"), "0.053505000");
}

// ---- embeddings ------------------------------------------------------------------------------

/// The fake's vector for `text` at `dimensions` as Sluice must return it: unit length.
fn expected_vector(full: usize, dimensions: usize, index_in_batch: usize) -> Vec<f64> {
    let values: Vec<f64> = (0..full)
        .map(|k| {
            if (k + index_in_batch).is_multiple_of(3) {
                -1.0
            } else {
                1.0
            }
        })
        .take(dimensions)
        .collect();
    let norm = values.iter().map(|v| v * v).sum::<f64>().sqrt();
    values.iter().map(|v| v / norm).collect()
}

fn norm(vector: &Value) -> f64 {
    vector
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap().powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Gemini takes at most 100 inputs per `batchEmbedContents` (OpenAI 2,048): more go in
/// batches of 100, at once, and come back in order with their usage summed.
#[tokio::test]
async fn more_than_100_inputs_go_in_batches_and_come_back_in_order() {
    let (up, gw, key) = start().await;
    // Each batch is answered after 2 s: sent one after another, the third would arrive only
    // after 4 s; sent at once, all three arrive while the first is still being answered.
    up.set(Behaviour::Slow(Duration::from_secs(2)));
    let inputs: Vec<String> = (0..250).map(|i| format!("text number {i}")).collect();
    let answered = std::sync::atomic::AtomicBool::new(false);
    let body = json!({"model": "gemb", "input": inputs, "dimensions": 256});
    let post = async {
        let r = gw.post("/v1/embeddings", &key, &body).await;
        answered.store(true, std::sync::atomic::Ordering::SeqCst);
        r
    };
    let watch = async {
        let started = Instant::now();
        while up.calls() < 3 && started.elapsed() < Duration::from_millis(1900) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (
            up.calls(),
            answered.load(std::sync::atomic::Ordering::SeqCst),
        )
    };
    let (r, (calls, answered_first)) = tokio::join!(post, watch);
    assert_eq!(calls, 3, "the batches were not sent at once");
    assert!(!answered_first);
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let body = json(r).await;
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 250);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        // Each batch's vectors follow its own order, so the 101st input is the first of the
        // second batch.
        let expected = expected_vector(3072, 256, i % 100);
        let got: Vec<f64> = item["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            got.iter()
                .zip(&expected)
                .all(|(a, b)| (a - b).abs() < 1e-12),
            "input {i}"
        );
    }
    let batches: Vec<usize> = up
        .requests()
        .iter()
        .map(|r| r.body["requests"].as_array().unwrap().len())
        .collect();
    assert_eq!(batches, [100, 100, 50]);
    let texts: Vec<Value> = up
        .requests()
        .iter()
        .flat_map(|r| r.body["requests"].as_array().unwrap().clone())
        .map(|r| r["content"]["parts"][0]["text"].clone())
        .collect();
    assert_eq!(texts, inputs);
    // Estimated usage (Gemini reports none), the same as for one call of all the inputs.
    let estimate: u64 = inputs
        .iter()
        .map(|t| (t.chars().count() as u64).div_ceil(4))
        .sum();
    assert_eq!(body["usage"]["prompt_tokens"], estimate);
}

/// Google normalizes only gemini-embedding-001's full 3,072 dimensions; OpenAI's vectors are
/// always unit length, and so are Sluice's, in both encodings.
#[tokio::test]
async fn reduced_dimension_vectors_are_unit_length() {
    let (up, gw, key) = start().await;
    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gemb", "input": ["alpha", "beta"], "dimensions": 768}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let body = json(r).await;
    assert_eq!(up.last().body["requests"][0]["outputDimensionality"], 768);
    for item in body["data"].as_array().unwrap() {
        assert_eq!(item["embedding"].as_array().unwrap().len(), 768);
        assert!((norm(&item["embedding"]) - 1.0).abs() < 1e-9);
    }
    let r = gw
        .post(
            "/v1/embeddings",
            &key,
            &json!({"model": "gemb", "input": "gamma", "dimensions": 128, "encoding_format": "base64"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let encoded = json(r).await["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let floats: Vec<f64> = bytes
        .chunks_exact(4)
        .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
        .collect();
    assert_eq!(floats.len(), 128);
    let norm = floats.iter().map(|v| v * v).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6, "{norm}");
}

// ---- round trips (property tests) -------------------------------------------------------------

mod round_trips {
    //! Any Gemini answer — text or not, 0–3 function calls, any finish reason, any usage —
    //! reaches an OpenAI client and an Anthropic (`/v1/messages`) client, streamed or not,
    //! with the stop reason Gemini gave, every call's name and arguments, ids that are unique,
    //! and usage by component exact; and the calls sent back by id reach Gemini as the very
    //! parts it answered (signature included) with one function response per call.

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use serde_json::{Value, json};
    use sluice_tests::requests::runner;
    use sluice_tests::{FakeUpstream, TestGateway};

    use super::config;
    use crate::e2e::events;

    #[derive(Debug, Clone)]
    struct Script {
        text: Option<String>,
        calls: Vec<(String, Value)>,
        finish: &'static str,
        prompt: u64,
        cached: u64,
        candidates: u64,
        thoughts: Option<u64>,
    }

    impl Script {
        /// The user message that makes the fake answer this (see the fake's `Reply`).
        fn prompt_text(&self) -> String {
            let mut parts: Vec<Value> = self.text.iter().map(|t| json!({ "text": t })).collect();
            parts.extend(
                self.calls
                    .iter()
                    .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}})),
            );
            let mut usage = json!({"promptTokenCount": self.prompt, "candidatesTokenCount": self.candidates,
                "totalTokenCount": self.prompt + self.candidates + self.thoughts.unwrap_or(0)});
            if self.cached > 0 {
                usage["cachedContentTokenCount"] = json!(self.cached);
            }
            if let Some(t) = self.thoughts {
                usage["thoughtsTokenCount"] = json!(t);
            }
            json!({"fake_gemini": {"parts": parts, "finishReason": self.finish, "usageMetadata": usage}})
                .to_string()
        }

        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = self.calls.iter().map(|(n, _)| n.clone()).collect();
            names.sort();
            names.dedup();
            names
        }

        fn completion_tokens(&self) -> u64 {
            self.candidates + self.thoughts.unwrap_or(0)
        }

        /// OpenAI's finish reason for this answer.
        fn finish_reason(&self) -> &'static str {
            match self.finish {
                _ if !self.calls.is_empty() => "tool_calls",
                "MAX_TOKENS" => "length",
                "SAFETY" | "RECITATION" => "content_filter",
                _ => "stop",
            }
        }

        /// Anthropic's stop reason for it.
        fn stop_reason(&self) -> &'static str {
            match self.finish_reason() {
                "tool_calls" => "tool_use",
                "length" => "max_tokens",
                "content_filter" => "refusal",
                _ => "end_turn",
            }
        }
    }

    fn script() -> impl Strategy<Value = Script> {
        let call = ("[a-z][a-z_]{0,9}", any::<i32>(), "[a-z ]{0,12}")
            .prop_map(|(name, n, q)| (name, json!({"n": n, "q": q})));
        (
            prop::option::of("[A-Za-z][A-Za-z .,]{0,30}"),
            prop::collection::vec(call, 0..4),
            prop_oneof![
                Just("STOP"),
                Just("MAX_TOKENS"),
                Just("SAFETY"),
                Just("RECITATION"),
                Just("OTHER")
            ],
            (1u64..2_000_000, prop::option::of(0u64..2_000_000)),
            (0u64..50_000, prop::option::of(0u64..50_000)),
        )
            .prop_map(
                |(text, calls, finish, (prompt, cached), (candidates, thoughts))| Script {
                    text,
                    calls,
                    finish,
                    prompt,
                    cached: cached.map_or(0, |c| c.min(prompt)),
                    candidates,
                    thoughts,
                },
            )
    }

    /// What a client sees of one answer, in either format.
    #[derive(Debug, Default)]
    struct Seen {
        text: String,
        /// (id, name, arguments)
        calls: Vec<(String, String, Value)>,
        stop: String,
        usage: Value,
    }

    fn check(script: &Script, seen: &Seen, anthropic: bool) -> Result<(), TestCaseError> {
        prop_assert_eq!(&seen.text, script.text.as_deref().unwrap_or(""));
        let expected_stop = if anthropic {
            script.stop_reason()
        } else {
            script.finish_reason()
        };
        prop_assert_eq!(seen.stop.as_str(), expected_stop);
        prop_assert_eq!(seen.calls.len(), script.calls.len());
        for ((_, name, args), (want_name, want_args)) in seen.calls.iter().zip(&script.calls) {
            prop_assert_eq!(name, want_name);
            prop_assert_eq!(args, want_args);
        }
        let mut ids: Vec<&String> = seen.calls.iter().map(|(id, _, _)| id).collect();
        prop_assert!(ids.iter().all(|id| !id.is_empty()));
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), script.calls.len(), "ids repeat");
        let u = &seen.usage;
        if anthropic {
            prop_assert_eq!(
                u["output_tokens"].as_u64(),
                Some(script.completion_tokens())
            );
            prop_assert_eq!(u["cache_read_input_tokens"].as_u64(), Some(script.cached));
            // Anthropic's `input_tokens` excludes cache reads and writes: the parts add up
            // to Gemini's prompt count, never counting a cached token twice.
            let parts = u["input_tokens"].as_u64().unwrap_or(0)
                + u["cache_read_input_tokens"].as_u64().unwrap_or(0)
                + u["cache_creation_input_tokens"].as_u64().unwrap_or(0);
            prop_assert_eq!(parts, script.prompt);
        } else {
            prop_assert_eq!(u["prompt_tokens"].as_u64(), Some(script.prompt));
            prop_assert_eq!(
                u["completion_tokens"].as_u64(),
                Some(script.completion_tokens())
            );
            prop_assert_eq!(
                u["total_tokens"].as_u64(),
                Some(script.prompt + script.completion_tokens())
            );
            prop_assert_eq!(
                u["prompt_tokens_details"]["cached_tokens"].as_u64(),
                Some(script.cached)
            );
            prop_assert_eq!(
                u["completion_tokens_details"]["reasoning_tokens"].as_u64(),
                Some(script.thoughts.unwrap_or(0))
            );
        }
        Ok(())
    }

    /// An OpenAI answer, whole or streamed.
    fn openai_seen(body: &str, stream: bool) -> Seen {
        if !stream {
            let answer: Value = serde_json::from_str(body).unwrap();
            let message = &answer["choices"][0]["message"];
            return Seen {
                text: message["content"].as_str().unwrap_or("").to_owned(),
                calls: message["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let args = c["function"]["arguments"].as_str().unwrap();
                        (
                            c["id"].as_str().unwrap().to_owned(),
                            c["function"]["name"].as_str().unwrap().to_owned(),
                            serde_json::from_str(args).unwrap(),
                        )
                    })
                    .collect(),
                stop: answer["choices"][0]["finish_reason"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                usage: answer["usage"].clone(),
            };
        }
        let chunks = events(body);
        let mut seen = Seen::default();
        let message = super::streamed_message(&chunks);
        for chunk in &chunks {
            let choice = &chunk["choices"][0];
            seen.text
                .push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(reason) = choice["finish_reason"].as_str() {
                reason.clone_into(&mut seen.stop);
            }
            if chunk["usage"].is_object() {
                seen.usage = chunk["usage"].clone();
            }
        }
        seen.calls = message["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let args = c["function"]["arguments"].as_str().unwrap();
                (
                    c["id"].as_str().unwrap().to_owned(),
                    c["function"]["name"].as_str().unwrap().to_owned(),
                    serde_json::from_str(args).unwrap(),
                )
            })
            .collect();
        seen
    }

    /// An Anthropic answer, whole or as its event sequence.
    fn anthropic_seen(body: &str, stream: bool) -> Seen {
        let blocks_of = |content: &[Value]| {
            let mut seen = Seen::default();
            for block in content {
                match block["type"].as_str() {
                    Some("text") => seen.text.push_str(block["text"].as_str().unwrap()),
                    Some("tool_use") => seen.calls.push((
                        block["id"].as_str().unwrap().to_owned(),
                        block["name"].as_str().unwrap().to_owned(),
                        block["input"].clone(),
                    )),
                    _ => {}
                }
            }
            seen
        };
        if !stream {
            let message: Value = serde_json::from_str(body).unwrap();
            let mut seen = blocks_of(message["content"].as_array().unwrap());
            seen.stop = message["stop_reason"].as_str().unwrap().to_owned();
            seen.usage = message["usage"].clone();
            return seen;
        }
        let frames: Vec<Value> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let mut content: Vec<Value> = Vec::new();
        let mut partial: Vec<String> = Vec::new();
        let mut seen = Seen::default();
        for frame in &frames {
            match frame["type"].as_str() {
                Some("content_block_start") => {
                    content.push(frame["content_block"].clone());
                    partial.push(String::new());
                }
                Some("content_block_delta") => {
                    let i = usize::try_from(frame["index"].as_u64().unwrap()).unwrap();
                    let delta = &frame["delta"];
                    if let Some(text) = delta["text"].as_str() {
                        let joined = format!("{}{text}", content[i]["text"].as_str().unwrap());
                        content[i]["text"] = json!(joined);
                    }
                    if let Some(json) = delta["partial_json"].as_str() {
                        partial[i].push_str(json);
                    }
                }
                Some("message_delta") => {
                    seen.stop = frame["delta"]["stop_reason"].as_str().unwrap().to_owned();
                    seen.usage = frame["usage"].clone();
                }
                _ => {}
            }
        }
        for (block, json) in content.iter_mut().zip(&partial) {
            if block["type"] == "tool_use" && !json.is_empty() {
                block["input"] = serde_json::from_str(json).unwrap();
            }
        }
        let blocks = blocks_of(&content);
        seen.text = blocks.text;
        seen.calls = blocks.calls;
        seen
    }

    /// The parts Gemini answered with, as the next request must send them back; the
    /// signature is checked apart (the fake issues it).
    fn answered_parts(script: &Script) -> Vec<Value> {
        let mut parts: Vec<Value> = script.text.iter().map(|t| json!({ "text": t })).collect();
        parts.extend(
            script
                .calls
                .iter()
                .map(|(name, args)| json!({"functionCall": {"name": name, "args": args}})),
        );
        parts
    }

    async fn one_case(
        up: &FakeUpstream,
        gw: &TestGateway,
        key: &str,
        (script, anthropic, stream, gemini_3): (Script, bool, bool, bool),
    ) -> Result<(), TestCaseError> {
        let model = if gemini_3 { "g3" } else { "g20" };
        let names = script.names();
        let (path, mut request) = if anthropic {
            let tools: Vec<Value> = names
                .iter()
                .map(|n| json!({"name": n, "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}}}))
                .collect();
            let mut r = json!({"model": model, "max_tokens": 100, "stream": stream,
                "messages": [{"role": "user", "content": script.prompt_text()}]});
            if !tools.is_empty() {
                r["tools"] = json!(tools);
            }
            ("/v1/messages", r)
        } else {
            let tools: Vec<Value> = names
                .iter()
                .map(|n| json!({"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}))
                .collect();
            let mut r = json!({"model": model, "stream": stream,
                "messages": [{"role": "user", "content": script.prompt_text()}]});
            if stream {
                r["stream_options"] = json!({"include_usage": true});
            }
            if !tools.is_empty() {
                r["tools"] = json!(tools);
            }
            ("/v1/chat/completions", r)
        };
        let r = gw.post(path, key, &request).await;
        prop_assert_eq!(r.status().as_u16(), 200);
        let body = r.text().await.unwrap();
        let seen = if anthropic {
            anthropic_seen(&body, stream)
        } else {
            openai_seen(&body, stream)
        };
        check(&script, &seen, anthropic)?;
        if script.calls.is_empty() {
            return Ok(());
        }

        // The calls go back by id, as clients send them, with one result each.
        let messages = request["messages"].as_array_mut().unwrap();
        if anthropic {
            let mut content: Vec<Value> = script
                .text
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            content.extend(seen.calls.iter().map(
                |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
            ));
            messages.push(json!({"role": "assistant", "content": content}));
            let results: Vec<Value> = seen
                .calls
                .iter()
                .enumerate()
                .map(|(i, (id, _, _))| json!({"type": "tool_result", "tool_use_id": id, "content": format!("r{i}")}))
                .collect();
            messages.push(json!({"role": "user", "content": results}));
        } else {
            let calls: Vec<Value> = seen
                .calls
                .iter()
                .map(|(id, name, args)| {
                    json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}})
                })
                .collect();
            messages
                .push(json!({"role": "assistant", "content": script.text, "tool_calls": calls}));
            for (i, (id, _, _)) in seen.calls.iter().enumerate() {
                messages
                    .push(json!({"role": "tool", "tool_call_id": id, "content": format!("r{i}")}));
            }
        }
        request["stream"] = json!(false);
        let r = gw.post(path, key, &request).await;
        let status = r.status().as_u16();
        prop_assert_eq!(status, 200, "{}", r.text().await.unwrap());
        let sent = up.last().body;
        let contents = sent["contents"].as_array().unwrap();
        prop_assert_eq!(contents.len(), 3);
        let mut parts = contents[1]["parts"].as_array().unwrap().clone();
        let first_call = parts
            .iter()
            .position(|p| p.get("functionCall").is_some())
            .unwrap();
        // Gemini 3 signs the first call of a step; the signature came back on it (the fake
        // refuses one missing or moved).
        for (i, part) in parts.iter_mut().enumerate() {
            let signed = part
                .as_object_mut()
                .unwrap()
                .remove("thoughtSignature")
                .is_some();
            prop_assert_eq!(signed, gemini_3 && i == first_call, "part {}", i);
        }
        prop_assert_eq!(parts, answered_parts(&script));
        let responses: Vec<&Value> = contents[2]["parts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["functionResponse"]["name"])
            .collect();
        let names: Vec<Value> = script.calls.iter().map(|(n, _)| json!(n)).collect();
        prop_assert_eq!(responses, names.iter().collect::<Vec<_>>());
        Ok(())
    }

    #[test]
    fn any_gemini_answer_round_trips_through_both_ingress_formats() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (up, gw, key) = rt.block_on(async {
            let up = FakeUpstream::start().await;
            let gw = TestGateway::start(&config(&up)).await;
            let key = gw.create_key("roundtrip").await;
            (up, gw, key)
        });
        let cases = (script(), any::<bool>(), any::<bool>(), any::<bool>());
        let with_calls = std::cell::Cell::new(0);
        runner(96)
            .run(&cases, |case| {
                if !case.0.calls.is_empty() {
                    with_calls.set(with_calls.get() + 1);
                }
                rt.block_on(one_case(&up, &gw, &key, case))
            })
            .unwrap();
        // Not vacuous: most cases had calls to send back.
        assert!(with_calls.get() >= 40, "{}", with_calls.get());
    }
}
