//! The fake upstream's batch APIs against their references: what they accept, what they
//! refuse, partial failures, expiry, cancellation, and results that arrive only after a delay.

use std::time::Duration;

use serde_json::{Value, json};
use sluice_tests::{BatchFate, FakeUpstream};

/// A multipart/form-data body with a `purpose` field and a `file` part.
fn multipart(purpose: &str, filename: &str, content: &str) -> (String, Vec<u8>) {
    let boundary = "sluice-test-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n{purpose}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/jsonl\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

fn line(custom_id: &str, body: Value) -> String {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})
        .to_string()
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

async fn upload(
    up: &FakeUpstream,
    purpose: &str,
    filename: &str,
    content: &str,
) -> reqwest::Response {
    let (ct, body) = multipart(purpose, filename, content);
    reqwest::Client::new()
        .post(format!("{}/files", up.base_url))
        .bearer_auth("sk-test")
        .header("content-type", ct)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn openai(
    up: &FakeUpstream,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", up.base_url))
        .bearer_auth("sk-test");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn text(up: &FakeUpstream, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("{}{path}", up.base_url))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn create(up: &FakeUpstream, file_id: &str) -> (u16, Value) {
    openai(
        up,
        reqwest::Method::POST,
        "/batches",
        Some(
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        ),
    )
    .await
}

#[tokio::test]
async fn openai_batches_run_after_a_delay_and_fail_line_by_line() {
    let up = FakeUpstream::start().await;
    up.set_batch_delay(Duration::from_millis(300));
    let content = [
        line("a", chat("gpt-4o-mini", "one")),
        // Refused on its own line: temperature is 0..=2.
        line(
            "b",
            json!({"model": "gpt-4o-mini", "temperature": 5,
            "messages": [{"role": "user", "content": "two"}]}),
        ),
        line("c", chat("gpt-4o-mini", "three")),
    ]
    .join("\n");
    let file: Value = upload(&up, "batch", "in.jsonl", &content)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    let (status, batch) = create(&up, file["id"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{batch}");
    assert_eq!(batch["status"], "validating");
    let id = batch["id"].as_str().unwrap().to_owned();
    let (_, polled) = openai(&up, reqwest::Method::GET, &format!("/batches/{id}"), None).await;
    assert_eq!(polled["status"], "in_progress");
    assert!(polled["output_file_id"].is_null());
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, done) = openai(&up, reqwest::Method::GET, &format!("/batches/{id}"), None).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );
    let output = text(
        &up,
        &format!(
            "/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ),
    )
    .await;
    let lines: Vec<Value> = output
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custom_id"], "a");
    assert_eq!(lines[0]["response"]["status_code"], 200);
    assert_eq!(lines[0]["response"]["body"]["object"], "chat.completion");
    assert!(lines[0]["response"]["body"]["usage"]["prompt_tokens"].is_u64());
    let errors = text(
        &up,
        &format!("/files/{}/content", done["error_file_id"].as_str().unwrap()),
    )
    .await;
    let failed: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(failed["custom_id"], "b");
    assert_eq!(failed["response"]["status_code"], 400);
    assert!(failed["response"]["body"]["error"]["message"].is_string());
    // An ended batch cannot be cancelled.
    let (status, _) = openai(
        &up,
        reqwest::Method::POST,
        &format!("/batches/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 409);
}

#[tokio::test]
async fn openai_refuses_what_the_reference_refuses() {
    let up = FakeUpstream::start().await;
    let ok = line("a", chat("gpt-4o-mini", "x"));
    // Upload: purpose is checked, batch files must be JSONL, a file part is required.
    assert_eq!(upload(&up, "nonsense", "in.jsonl", &ok).await.status(), 400);
    assert_eq!(upload(&up, "batch", "in.csv", &ok).await.status(), 400);
    let r = reqwest::Client::new()
        .post(format!("{}/files", up.base_url))
        .bearer_auth("sk-test")
        .json(&json!({"purpose": "batch"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let file: Value = upload(&up, "batch", "in.jsonl", &ok)
        .await
        .json()
        .await
        .unwrap();
    let file_id = file["id"].as_str().unwrap();
    // Create: only 24h, a known endpoint, an existing file.
    for (body, param) in [
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "1h"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": file_id, "endpoint": "/v1/messages", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
        (
            json!({"endpoint": "/v1/chat/completions", "completion_window": "24h"}),
            "input_file_id",
        ),
    ] {
        let (status, error) = openai(&up, reqwest::Method::POST, "/batches", Some(body)).await;
        assert_eq!(status, 400, "{error}");
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    // No key: 401.
    let r = reqwest::Client::new()
        .get(format!("{}/batches/x", up.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Validation: one model per file, unique custom_ids, the batch's url on every line.
    for (content, code) in [
        (
            format!("{ok}\n{}", line("b", chat("gpt-4o", "y"))),
            "mismatched_model",
        ),
        (format!("{ok}\n{ok}"), "duplicate_custom_id"),
        (
            ok.replace("/v1/chat/completions", "/v1/embeddings"),
            "mismatched_endpoint",
        ),
        ("not json".to_owned(), "invalid_json_line"),
    ] {
        let file: Value = upload(&up, "batch", "in.jsonl", &content)
            .await
            .json()
            .await
            .unwrap();
        let (_, batch) = create(&up, file["id"].as_str().unwrap()).await;
        let id = batch["id"].as_str().unwrap();
        let (_, failed) = openai(&up, reqwest::Method::GET, &format!("/batches/{id}"), None).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["errors"]["data"][0]["code"], code, "{failed}");
    }
}

#[tokio::test]
async fn openai_batches_expire_fail_and_cancel_when_told() {
    let up = FakeUpstream::start().await;
    let ok = line("a", chat("gpt-4o-mini", "x"));
    let file: Value = upload(&up, "batch", "in.jsonl", &ok)
        .await
        .json()
        .await
        .unwrap();
    let file_id = file["id"].as_str().unwrap();
    up.set_batch_fate(BatchFate::Expire);
    let (_, batch) = create(&up, file_id).await;
    let (_, expired) = openai(
        &up,
        reqwest::Method::GET,
        &format!("/batches/{}", batch["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(expired["status"], "expired");
    assert!(expired["output_file_id"].is_null());
    let errors = text(
        &up,
        &format!(
            "/files/{}/content",
            expired["error_file_id"].as_str().unwrap()
        ),
    )
    .await;
    let line: Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(line["error"]["code"], "batch_expired");
    assert_eq!(line["custom_id"], "a");
    up.set_batch_fate(BatchFate::Fail);
    let (_, batch) = create(&up, file_id).await;
    let (_, failed) = openai(
        &up,
        reqwest::Method::GET,
        &format!("/batches/{}", batch["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(failed["status"], "failed");
    up.set_batch_fate(BatchFate::Complete);
    up.set_batch_delay(Duration::from_secs(60));
    let (_, batch) = create(&up, file_id).await;
    let id = batch["id"].as_str().unwrap();
    let (status, cancelling) = openai(
        &up,
        reqwest::Method::POST,
        &format!("/batches/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(cancelling["status"], "cancelling");
    let (_, cancelled) = openai(&up, reqwest::Method::GET, &format!("/batches/{id}"), None).await;
    assert_eq!(cancelled["status"], "cancelled");
}

async fn anthropic(
    up: &FakeUpstream,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, String) {
    let mut r = reqwest::Client::new()
        .request(method, format!("{}{path}", up.base_url))
        .header("x-api-key", "sk-ant-test")
        .header("anthropic-version", "2023-06-01");
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn message(prompt: &str) -> Value {
    json!({"model": "claude-haiku-4-5", "max_tokens": 100,
        "messages": [{"role": "user", "content": prompt}]})
}

#[tokio::test]
async fn anthropic_message_batches_end_after_a_delay_with_results_by_custom_id() {
    let up = FakeUpstream::start().await;
    up.set_batch_delay(Duration::from_millis(300));
    let requests = json!({"requests": [
        {"custom_id": "first", "params": message("one")},
        // Refused on its own: max_tokens is required.
        {"custom_id": "second", "params": {"model": "claude-haiku-4-5",
            "messages": [{"role": "user", "content": "two"}]}},
        {"custom_id": "third", "params": message("three")},
    ]});
    let (status, body) = anthropic(
        &up,
        reqwest::Method::POST,
        "/messages/batches",
        Some(requests),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let batch: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["request_counts"]["processing"], 3);
    let id = batch["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("msgbatch_"));
    let (status, _) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}/results"),
        None,
    )
    .await;
    assert_eq!(status, 400, "results before the end");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (_, body) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}"),
        None,
    )
    .await;
    let ended: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 2, "errored": 1, "canceled": 0, "expired": 0})
    );
    let url = ended["results_url"].as_str().unwrap();
    assert!(url.ends_with(&format!("/v1/messages/batches/{id}/results")));
    let (_, results) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}/results"),
        None,
    )
    .await;
    let results: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3);
    let by_id = |id: &str| {
        results
            .iter()
            .find(|r| r["custom_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("first")["result"]["type"], "succeeded");
    assert_eq!(by_id("first")["result"]["message"]["type"], "message");
    assert_eq!(by_id("second")["result"]["type"], "errored");
    assert_eq!(
        by_id("second")["result"]["error"]["error"]["type"],
        "invalid_request_error"
    );
    // Not in submission order: a client must match by custom_id.
    assert_ne!(results[0]["custom_id"], "first");
}

#[tokio::test]
async fn anthropic_refuses_what_the_reference_refuses_and_expires_and_cancels() {
    let up = FakeUpstream::start().await;
    for requests in [
        json!([]),
        json!([{"custom_id": "a", "params": message("x")}, {"custom_id": "a", "params": message("y")}]),
        json!([{"custom_id": "not ok!", "params": message("x")}]),
        json!([{"custom_id": "a"}]),
    ] {
        let (status, body) = anthropic(
            &up,
            reqwest::Method::POST,
            "/messages/batches",
            Some(json!({"requests": requests})),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"]["type"],
            "invalid_request_error"
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/messages/batches", up.base_url))
        .header("x-api-key", "k")
        .json(&json!({"requests": [{"custom_id": "a", "params": message("x")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "anthropic-version is required");
    up.set_batch_fate(BatchFate::Expire);
    let one = json!({"requests": [{"custom_id": "a", "params": message("x")}]});
    let (_, body) = anthropic(
        &up,
        reqwest::Method::POST,
        "/messages/batches",
        Some(one.clone()),
    )
    .await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}"),
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["request_counts"]["expired"],
        1
    );
    let (_, results) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}/results"),
        None,
    )
    .await;
    assert!(results.contains(r#""type":"expired""#), "{results}");
    up.set_batch_fate(BatchFate::Complete);
    up.set_batch_delay(Duration::from_secs(60));
    let (_, body) = anthropic(&up, reqwest::Method::POST, "/messages/batches", Some(one)).await;
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, body) = anthropic(
        &up,
        reqwest::Method::POST,
        &format!("/messages/batches/{id}/cancel"),
        None,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["processing_status"],
        "canceling"
    );
    let (_, body) = anthropic(
        &up,
        reqwest::Method::GET,
        &format!("/messages/batches/{id}"),
        None,
    )
    .await;
    let ended: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ended["processing_status"], "ended");
    assert_eq!(ended["request_counts"]["canceled"], 1);
}
