//! Issue 14, Anthropic's parts, against the strict fake (`tests/src/fake_upstream/anthropic.rs`
//! refuses what the real API refuses): sampling ranges, tool calls without input in streams,
//! prompt caching from both ingresses and billed by component, content Anthropic can or
//! cannot read, thinking with its signatures, and `/v1/messages` answering in Anthropic's own
//! usage shape whatever provider answered.

use serde_json::{Value, json};
use sluice_tests::{FakeUpstream, TestGateway};

use crate::e2e::{assert_error, events, header, json, nanos};

/// Model `claude` on Anthropic priced with Anthropic's cache multipliers (reads 0.1×, writes
/// 1.25× for 5 minutes and 2× for an hour); `gpt` on the fake's OpenAI routes; `gemini` on
/// its Gemini routes. No response cache: every request reaches the fake.
fn config(up: &FakeUpstream) -> String {
    format!(
        r#"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{url}"
api_keys = ["ak-1"]

[[providers]]
name = "openai"
kind = "openai"
base_url = "{url}"
api_keys = ["sk-up"]

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{gemini}"
api_keys = ["gk-up"]

[[models]]
name = "claude"
cache_ttl_s = 0
deployments = [{{ provider = "anthropic", model = "claude-sonnet-4-5" }}]
price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0, cached_input_per_mtok = 0.3, cache_write_per_mtok = 3.75, cache_write_1h_per_mtok = 6.0 }}

[[models]]
name = "gpt"
cache_ttl_s = 0
deployments = [{{ provider = "openai", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.6 }}

[[models]]
name = "gemini"
cache_ttl_s = 0
deployments = [{{ provider = "gemini", model = "gemini-2.0-flash" }}]
price = {{ input_per_mtok = 0.1, output_per_mtok = 0.4 }}
"#,
        url = up.base_url,
        gemini = up.gemini_url,
    )
}

async fn start() -> (FakeUpstream, TestGateway, String) {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&config(&up)).await;
    let key = gw.create_key("t").await;
    (up, gw, key)
}

/// `POST /v1/messages` with the key in `x-api-key`.
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

/// Anthropic's error shape with a 400; returns its message.
async fn anthropic_400(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 400);
    let body = json(r).await;
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// The named events of an Anthropic stream.
fn named_events(text: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(n) = line.strip_prefix("event: ") {
            name = n.to_owned();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((name.clone(), serde_json::from_str(d).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn sampling_outside_anthropics_rules_is_refused_before_the_call() {
    let (up, gw, key) = start().await;
    let ask = |extra: Value| {
        let mut body = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, field) in [
        // OpenAI's temperature goes to 2, Anthropic's to 1: no meaning-preserving clamp.
        (json!({"temperature": 1.5}), "`temperature`"),
        // Claude Sonnet 4.5 refuses both samplers at once.
        (json!({"temperature": 0.5, "top_p": 0.9}), "`top_p`"),
    ] {
        let before = up.calls();
        let r = gw.post("/v1/chat/completions", &key, &ask(extra)).await;
        let error = assert_error(r, 400, "upstream_rejected_request").await;
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
        assert_eq!(up.calls(), before, "refused by Sluice, not sent");
    }
    // A sampler at its default is left out: OpenAI clients that always send `top_p: 1` work.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &ask(json!({"temperature": 0.5, "top_p": 1})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = up.last().body;
    assert_eq!(sent["temperature"], 0.5);
    assert!(sent.get("top_p").is_none(), "{sent}");
    // `top_k` from an OpenAI-format client reaches Anthropic.
    let r = gw
        .post("/v1/chat/completions", &key, &ask(json!({"top_k": 40})))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().body["top_k"], 40);
}

#[tokio::test]
async fn a_streamed_tool_call_without_input_has_json_arguments_and_replays_so() {
    let up = FakeUpstream::start().await;
    // With the response cache on: the assembled answer is stored and replayed.
    let gw =
        TestGateway::start(&config(&up).replacen("cache_ttl_s = 0", "cache_ttl_s = 600", 1)).await;
    let key = gw.create_key("t").await;
    let request = json!({"model": "claude", "stream": true,
        "tools": [{"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}],
        "messages": [{"role": "user", "content": "what time is it?"}]});
    for cache in ["miss", "hit"] {
        let r = gw.post("/v1/chat/completions", &key, &request).await;
        assert_eq!(header(&r, "x-sluice-cache"), cache);
        let chunks = events(&r.text().await.unwrap());
        let arguments: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(arguments, "{}", "{cache}: clients json.loads it");
    }
    assert_eq!(up.calls(), 1);
    // The same answer unstreamed.
    let mut plain = request.clone();
    plain["stream"] = json!(false);
    plain["messages"][0]["content"] = json!("and now?");
    let body = json(gw.post("/v1/chat/completions", &key, &plain).await).await;
    assert_eq!(
        body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        "{}"
    );
}

#[tokio::test]
async fn openai_cache_control_reaches_anthropic_and_cache_reads_are_billed_cheaper() {
    let (up, gw, key) = start().await;
    let ask = |question: &str, cached: bool| {
        let mut rules = json!({"type": "text", "text": "Long house rules."});
        if cached {
            rules["cache_control"] = json!({"type": "ephemeral"});
        }
        json!({"model": "claude", "max_tokens": 100, "messages": [
            {"role": "system", "content": [rules]},
            {"role": "user", "content": question}]})
    };
    // First call: the prefix is written to Anthropic's cache (1,000 tokens at 1.25×).
    let r = gw
        .post("/v1/chat/completions", &key, &ask("first?", true))
        .await;
    assert_eq!(r.status(), 200);
    // 10 × $3 + 1,000 × $3.75 + 5 × $15 per million.
    assert_eq!(nanos(header(&r, "x-sluice-cost-usd")), 3_855_000);
    let body = json(r).await;
    assert_eq!(body["usage"]["prompt_tokens"], 1010);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cache_write_tokens"],
        1000
    );
    assert_eq!(
        up.last().body["system"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    // Another question on the same prefix: read from the cache at 0.1×.
    let r = gw
        .post("/v1/chat/completions", &key, &ask("second?", true))
        .await;
    // 10 × $3 + 1,000 × $0.30 + 5 × $15 per million.
    assert_eq!(nanos(header(&r, "x-sluice-cost-usd")), 405_000);
    let body = json(r).await;
    assert_eq!(body["usage"]["prompt_tokens"], 1010);
    assert_eq!(
        body["usage"]["prompt_tokens_details"]["cached_tokens"],
        1000
    );

    // `cache_control` is part of Sluice's own cache key: the same request without it is
    // another request (the response cache is on for this part).
    let gw =
        TestGateway::start(&config(&up).replacen("cache_ttl_s = 0", "cache_ttl_s = 600", 1)).await;
    let key = gw.create_key("t").await;
    let r = gw
        .post("/v1/chat/completions", &key, &ask("third?", true))
        .await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let r = gw
        .post("/v1/chat/completions", &key, &ask("third?", false))
        .await;
    assert_eq!(header(&r, "x-sluice-cache"), "miss");
    let r = gw
        .post("/v1/chat/completions", &key, &ask("third?", true))
        .await;
    assert_eq!(header(&r, "x-sluice-cache"), "hit");
}

#[tokio::test]
async fn the_messages_ingress_passes_cache_control_and_reports_anthropics_usage() {
    let (up, gw, key) = start().await;
    let hour = json!({"type": "ephemeral", "ttl": "1h"});
    let ask = |question: &str, stream: bool| {
        json!({"model": "claude", "max_tokens": 100, "stream": stream,
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
            "tool_choice": {"type": "none"},
            "system": [{"type": "text", "text": "Long house rules.", "cache_control": hour}],
            "messages": [{"role": "user", "content": question}]})
    };
    let r = messages(&gw, &key, &ask("first?", false)).await;
    assert_eq!(r.status(), 200);
    // 10 × $3 + 1,000 × $3.75 (5 minutes) + 1,000 × $6 (1 hour) + 5 × $15 per million.
    assert_eq!(nanos(header(&r, "x-sluice-cost-usd")), 9_855_000);
    let message = json(r).await;
    // Anthropic's shape: `input_tokens` without the cached tokens, which are apart.
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 10, "cache_creation_input_tokens": 2000, "cache_read_input_tokens": 0,
               "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 1000},
               "output_tokens": 5})
    );
    let sent = up.last().body;
    assert_eq!(sent["system"][0]["cache_control"], hour);
    assert_eq!(
        sent["tools"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );

    // Streamed, the same prefix: `message_start` has the prompt's usage, `message_delta` the
    // totals, as Anthropic sends them.
    let r = messages(&gw, &key, &ask("second?", true)).await;
    assert_eq!(r.status(), 200);
    let events = named_events(&r.text().await.unwrap());
    let start = &events[0];
    assert_eq!(start.0, "message_start");
    assert_eq!(
        start.1["message"]["usage"],
        json!({"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2000,
               "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
               "output_tokens": 1})
    );
    let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 10, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2000, "output_tokens": 5})
    );
    // The provider was asked for the early usage, nothing else changed on the wire.
    assert!(up.last().body.get("stream_options").is_none());

    // Another provider's answer in the same shape (the OpenAI fake reports no cache).
    let mut to_gpt = ask("third?", false);
    to_gpt["model"] = json!("gpt");
    let r = messages(&gw, &key, &to_gpt).await;
    assert_eq!(r.status(), 200);
    let message = json(r).await;
    assert_eq!(message["usage"]["input_tokens"], 10);
    assert_eq!(message["usage"]["cache_read_input_tokens"], 0);
    assert_eq!(
        message["usage"]["cache_creation"]["ephemeral_1h_input_tokens"],
        0
    );
    // A hint OpenAI has no field for is not sent there.
    assert!(!up.last().body.to_string().contains("cache_control"));
}

#[tokio::test]
async fn files_reach_anthropic_as_documents_and_what_it_cannot_read_is_a_400() {
    let (up, gw, key) = start().await;
    let with = |part: Value| {
        json!({"model": "claude", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Summarise this."}, part]}]})
    };
    let pdf = json!({"type": "file", "file": {"filename": "q3.pdf", "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}});
    let r = gw.post("/v1/chat/completions", &key, &with(pdf)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().body["messages"][0]["content"][1],
        json!({"type": "document", "title": "q3.pdf",
               "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}})
    );
    for part in [
        json!({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}),
        json!({"type": "file", "file": {"file_id": "file-abc123"}}),
    ] {
        let before = up.calls();
        let r = gw.post("/v1/chat/completions", &key, &with(part)).await;
        let error = assert_error(r, 400, "upstream_rejected_request").await;
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("messages[0].content[1]: "),
            "{error}"
        );
        assert_eq!(up.calls(), before);
    }
}

#[tokio::test]
async fn the_messages_ingress_keeps_documents_tool_result_images_errors_top_k_and_effort() {
    let (up, gw, key) = start().await;
    let pdf = json!({"type": "document", "title": "Q3", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}});
    let notes = json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "Revenue up."}});
    let image = json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}});
    let request = json!({"model": "claude", "max_tokens": 200, "top_k": 5, "output_config": {"effort": "low"},
    "tools": [{"name": "chart", "input_schema": {"type": "object"}}],
    "messages": [
        {"role": "user", "content": [pdf, notes, {"type": "text", "text": "Chart it."}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01", "name": "chart", "input": {"q": 3}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "is_error": true,
            "content": [{"type": "text", "text": "rendering failed at:"}, image]}]}
    ]});
    let r = messages(&gw, &key, &request).await;
    assert_eq!(r.status(), 200);
    let sent = up.last().body;
    assert_eq!(sent["top_k"], 5);
    assert_eq!(sent["output_config"], json!({"effort": "low"}));
    // What the client sent is what Anthropic got.
    assert_eq!(sent["messages"], request["messages"]);

    // The same request to Gemini, which has no `output_config`: a 400 naming it, never an
    // answer without it.
    let mut to_gemini = request.clone();
    to_gemini["model"] = json!("gemini");
    let before = up.calls();
    let message = anthropic_400(messages(&gw, &key, &to_gemini).await).await;
    assert!(message.contains("`output_config`"), "{message}");
    assert_eq!(up.calls(), before);
    // `top_k` Gemini takes, as `topK`.
    let topk = json!({"model": "gemini", "max_tokens": 200, "top_k": 5,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(messages(&gw, &key, &topk).await.status(), 200);
    assert_eq!(up.last().body["generationConfig"]["topK"], 5);
}

#[tokio::test]
async fn thinking_and_its_signatures_survive_a_tool_use_cycle() {
    let (up, gw, key) = start().await;
    let mut conversation = vec![json!({"role": "user", "content": "weather in Oslo?"})];
    let request = |conversation: &Vec<Value>, stream: bool| {
        json!({"model": "claude", "max_tokens": 4000, "stream": stream,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "tools": [{"name": "weather", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}],
            "messages": conversation})
    };
    let r = messages(&gw, &key, &request(&conversation, false)).await;
    assert_eq!(r.status(), 200);
    let first = json(r).await;
    assert_eq!(
        up.last().body["thinking"],
        json!({"type": "enabled", "budget_tokens": 2000})
    );
    let content = first["content"].as_array().unwrap();
    assert_eq!(content[0]["type"], "thinking");
    assert!(
        content[0]["signature"]
            .as_str()
            .unwrap()
            .starts_with("fakesig")
    );
    assert_eq!(content[1]["type"], "tool_use");
    // The client sends the turn back as it came (the fake checks the signature and that the
    // turn starts with its thinking block).
    conversation.push(json!({"role": "assistant", "content": content}));
    conversation.push(json!({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": content[1]["id"], "content": "-3C"}]}));
    let r = messages(&gw, &key, &request(&conversation, false)).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(up.last().body["messages"][1]["content"], json!(content));
    // A changed thinking block is Anthropic's 400, passed on.
    let mut tampered = conversation.clone();
    tampered[1]["content"][0]["thinking"] = json!("Something else.");
    let message = anthropic_400(messages(&gw, &key, &request(&tampered, false)).await).await;
    assert!(message.contains("signature"), "{message}");

    // Streamed: the thinking block arrives as Anthropic streams it, signature included.
    let r = messages(&gw, &key, &request(&conversation[..1].to_vec(), true)).await;
    let events = named_events(&r.text().await.unwrap());
    let starts: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| &d["content_block"])
        .collect();
    assert_eq!(
        starts[0],
        &json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    assert_eq!(starts[1]["type"], "tool_use");
    let thinking: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thinking, "The user said: weather in Oslo?");
    assert!(events.iter().any(|(_, d)| {
        d["delta"]["type"] == "signature_delta"
            && d["delta"]["signature"]
                .as_str()
                .is_some_and(|s| s.starts_with("fakesig"))
    }));
}

#[tokio::test]
async fn reasoning_effort_is_a_thinking_budget_and_comes_back_as_thinking_blocks() {
    let (up, gw, key) = start().await;
    let tools = json!([{"type": "function", "function": {"name": "weather",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]);
    let mut messages = vec![json!({"role": "user", "content": "weather in Oslo?"})];
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "reasoning_effort": "low", "max_tokens": 3000, "tools": tools, "messages": messages}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().body["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    let first = json(r).await;
    let message = first["choices"][0]["message"].clone();
    assert_eq!(
        message["reasoning_content"],
        "The user said: weather in Oslo?"
    );
    assert_eq!(message["thinking_blocks"][0]["type"], "thinking");
    // An OpenAI client sends the message back whole; its thinking goes back first.
    let call = message["tool_calls"][0].clone();
    messages.push(message);
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "-3C"}));
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "reasoning_effort": "low", "max_tokens": 3000, "tools": tools, "messages": messages}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        up.last().body["messages"][1]["content"][0]["type"],
        "thinking"
    );
    // A budget that does not fit under `max_tokens`: a 400 before the call.
    let before = up.calls();
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "reasoning_effort": "high", "max_tokens": 1000,
                "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    let error = assert_error(r, 400, "upstream_rejected_request").await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("`reasoning_effort`"),
        "{error}"
    );
    assert_eq!(up.calls(), before);
}

#[tokio::test]
async fn a_matched_stop_sequence_is_reported_as_anthropic_reports_it() {
    let (_up, gw, key) = start().await;
    let request = |stream: bool| {
        json!({"model": "claude", "max_tokens": 50, "stream": stream, "stop_sequences": ["answer"],
            "messages": [{"role": "user", "content": "go"}]})
    };
    let message = json(messages(&gw, &key, &request(false)).await).await;
    assert_eq!(message["stop_reason"], "stop_sequence");
    assert_eq!(message["stop_sequence"], "answer");
    assert_eq!(message["content"][0]["text"], "fake ");
    let r = messages(&gw, &key, &request(true)).await;
    let events = named_events(&r.text().await.unwrap());
    let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
    assert_eq!(
        delta["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "answer"})
    );
}

#[tokio::test]
async fn tool_ids_anthropic_refuses_are_mapped_not_sent() {
    let (up, gw, key) = start().await;
    // A conversation begun on another provider, whose ids Anthropic's pattern refuses.
    let r = gw
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "claude", "messages": [
                {"role": "user", "content": "list files"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "functions.Bash:0", "type": "function", "function": {"name": "bash", "arguments": "{\"cmd\":\"ls\"}"}}]},
                {"role": "tool", "tool_call_id": "functions.Bash:0", "content": "a.txt"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sent = up.last().body;
    let id = sent["messages"][1]["content"][0]["id"].as_str().unwrap();
    assert!(id.starts_with("toolu_sluice_"), "{id}");
    assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], id);
}

/// OpenAI fields that change the answer and that the Messages API cannot express are a 400
/// naming the field, before any call; the same fields at their defaults pass, and so do the
/// hints that change nothing the model says.
#[tokio::test]
async fn openai_fields_anthropic_cannot_honour_are_refused_not_dropped() {
    let (up, gw, key) = start().await;
    let ask = |extra: Value| {
        let mut body = json!({"model": "claude", "messages": [{"role": "user", "content": "hi"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, param) in [
        (
            json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"logprobs": true, "top_logprobs": 3}), "top_logprobs"),
        (json!({"presence_penalty": 0.5}), "presence_penalty"),
        (json!({"frequency_penalty": -1}), "frequency_penalty"),
        (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
        (
            json!({"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
            "functions",
        ),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
    ] {
        let r = gw
            .post("/v1/chat/completions", &key, &ask(extra.clone()))
            .await;
        let error = assert_error(r, 400, "unsupported_parameter").await;
        assert_eq!(error["param"], param, "{extra}: {error}");
        assert!(
            error["message"].as_str().unwrap().contains("Anthropic"),
            "{error}"
        );
    }
    assert_eq!(up.calls(), 0, "refused by Sluice, never sent");
    let defaults = json!({"response_format": {"type": "text"}, "logprobs": false,
        "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "seed": 7});
    let r = gw.post("/v1/chat/completions", &key, &ask(defaults)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls(), 1);
}

/// Answers Sluice translates (Anthropic's, Gemini's) are stamped by the gateway's clock, the
/// same one that dates cache entries and limit windows, streamed or not.
#[tokio::test]
async fn translated_answers_are_created_at_the_gateways_time() {
    let (_up, gw, key) = start().await;
    gw.clock.advance_ms(123_000);
    let now_s = 1_800_000_123;
    for model in ["claude", "gemini"] {
        let body = json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "when?"}]});
        let r = gw.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(r.status(), 200, "{model}");
        assert_eq!(json(r).await["created"], now_s, "{model}");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let r = gw.post("/v1/chat/completions", &key, &streamed).await;
        assert_eq!(r.status(), 200, "{model}");
        let chunks = events(&r.text().await.unwrap());
        assert!(!chunks.is_empty(), "{model}");
        for chunk in chunks {
            assert_eq!(chunk["created"], now_s, "{model}: {chunk}");
        }
    }
}
