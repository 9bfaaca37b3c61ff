//! Google Gemini's format, from its public API reference: `GenerateContentResponse` bodies
//! (candidates, `model`-role content parts, `finishReason`, `usageMetadata`, `modelVersion`,
//! `responseId`), `streamGenerateContent` as SSE events (`?alt=sse`) or a JSON array,
//! `batchEmbedContents`, `google.rpc.Status` error bodies with `RetryInfo`, and the checks the
//! real API makes on a request (non-empty `contents`, roles `user`/`model`, non-empty parts,
//! each embedding request's `model` matching the URL).
//!
//! One check is the fake's own: an API key in the query string (`?key=…`, which the real API
//! accepts) is refused, because Sluice must send it only in the `x-goog-api-key` header.

use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Behaviour;

/// The canonical `google.rpc.Code` name Google's APIs use for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

/// Google's message for each status, prefixed so tests can tell it came from the fake.
fn status_message(status: u16) -> String {
    let reason = match status {
        400 => "Request contains an invalid argument.",
        401 => "Request had invalid authentication credentials.",
        403 => "Method doesn't allow unregistered callers.",
        404 => "models/unknown is not found for API version v1beta.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => "An internal error has occurred.",
        503 => "The model is overloaded. Please try again later.",
        _ => "Unknown error.",
    };
    format!("fake gemini error {status}: {reason}")
}

/// A `google.rpc.Status` error body; with a wait, a `QuotaFailure` and a `RetryInfo` detail
/// as a real 429 carries them.
fn error_body(status: u16, message: &str, retry_after: Option<u64>) -> Value {
    let mut error = json!({"code": status, "message": message, "status": status_name(status)});
    if let Some(seconds) = retry_after {
        error["details"] = json!([
            {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
             "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                             "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{seconds}s")}
        ]);
    }
    json!({ "error": error })
}

fn error(status: u16, message: &str, retry_after: Option<u64>) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(error_body(status, message, retry_after)),
    )
        .into_response()
}

/// Answers one Gemini request (`Slow` has already waited).
pub(super) fn answer(behaviour: &Behaviour, n: usize, uri: &Uri, body: &Value) -> Response {
    match *behaviour {
        // `EchoKey` is answered before the format is chosen.
        Behaviour::Ok
        | Behaviour::Slow(_)
        | Behaviour::EchoKey(_)
        | Behaviour::CutOff
        | Behaviour::Truncated
        | Behaviour::Drip(_) => {}
        Behaviour::Status(status, retry_after) => {
            return error(status, &status_message(status), retry_after);
        }
        Behaviour::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Behaviour::ErrorIn200 => {
            return axum::Json(error_body(500, &status_message(500), None)).into_response();
        }
    }
    let query = uri.query().unwrap_or("");
    if query.split('&').any(|p| p.starts_with("key=")) {
        return error(400, "the fake refuses API keys in the URL", None);
    }
    let Some((model, method)) = uri
        .path()
        .strip_prefix("/v1beta/models/")
        .and_then(|rest| rest.split_once(':'))
    else {
        return error(404, "no such method", None);
    };
    let checked = match method {
        "batchEmbedContents" => invalid_embedding(model, body),
        _ => invalid_generation(body),
    };
    if let Some(message) = checked {
        return error(400, &message, None);
    }
    match method {
        "generateContent" => axum::Json(generated(n, model, body)).into_response(),
        "streamGenerateContent" => streamed(n, model, body, query.contains("alt=sse")),
        "batchEmbedContents" => axum::Json(embeddings(body)).into_response(),
        other => error(
            404,
            &format!("Method {other} is not found for models/{model}."),
            None,
        ),
    }
}

/// What the real API refuses in a `GenerateContentRequest` before generating anything.
fn invalid_generation(body: &Value) -> Option<String> {
    let Some(contents) = body["contents"].as_array().filter(|c| !c.is_empty()) else {
        return Some("* GenerateContentRequest.contents: contents is not specified".into());
    };
    for (i, content) in contents.iter().enumerate() {
        let role = content["role"].as_str().unwrap_or("");
        if role != "user" && role != "model" {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].role: Please use a valid role: user, model."
            ));
        }
        if content["parts"].as_array().is_none_or(Vec::is_empty) {
            return Some(format!(
                "* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
            ));
        }
    }
    None
}

/// Each `EmbedContentRequest` must name the model of the URL.
fn invalid_embedding(model: &str, body: &Value) -> Option<String> {
    let Some(requests) = body["requests"].as_array().filter(|r| !r.is_empty()) else {
        return Some("* BatchEmbedContentsRequest.requests: requests is not specified".into());
    };
    let expected = format!("models/{model}");
    requests
        .iter()
        .position(|r| r["model"].as_str() != Some(expected.as_str()))
        .map(|i| {
            format!(
                "* BatchEmbedContentsRequest.requests[{i}].model: does not match the model in the URL"
            )
        })
}

/// What the fake says: a call to the first declared function when tools are offered and the
/// last turn carries no function result, `tool said: …` when it does, else `fake answer #n`.
enum Reply {
    Text(String),
    Call { name: String, args: Value },
}

fn reply(n: usize, body: &Value) -> Reply {
    let last_parts = body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .cloned()
        .unwrap_or_default();
    if let Some(result) = last_parts.iter().find_map(|p| p.get("functionResponse")) {
        return Reply::Text(format!("tool said: {}", result["response"]));
    }
    let first_function = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["functionDeclarations"].as_array())
        .flatten()
        .find_map(|f| f["name"].as_str());
    match first_function {
        Some(name) => Reply::Call {
            name: name.to_owned(),
            args: json!({ "query": last_user_text(body) }),
        },
        None => Reply::Text(format!("fake answer #{n}")),
    }
}

/// The text of the last `user` content.
fn last_user_text(body: &Value) -> String {
    body["contents"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|c| c["role"] == "user")
        .and_then(|c| c["parts"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

fn usage(prompt: u64, candidates: Option<u64>) -> Value {
    match candidates {
        Some(c) => json!({"promptTokenCount": prompt, "candidatesTokenCount": c,
                          "totalTokenCount": prompt + c,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}),
        None => json!({"promptTokenCount": prompt, "totalTokenCount": prompt}),
    }
}

/// One `GenerateContentResponse` with `candidateCount` candidates of these parts.
fn response(n: usize, model: &str, body: &Value, parts: &Value, finish: Option<&str>) -> Value {
    let count = body["generationConfig"]["candidateCount"]
        .as_u64()
        .unwrap_or(1);
    let candidates: Vec<Value> = (0..count)
        .map(|index| {
            let mut c = json!({"content": {"role": "model", "parts": parts}, "index": index});
            if let Some(reason) = finish {
                c["finishReason"] = json!(reason);
            }
            c
        })
        .collect();
    json!({
        "candidates": candidates,
        "modelVersion": model,
        "responseId": format!("gfake{n}"),
    })
}

fn reply_parts(reply: &Reply) -> Value {
    match reply {
        Reply::Text(text) => json!([{ "text": text }]),
        Reply::Call { name, args } => json!([{"functionCall": {"name": name, "args": args}}]),
    }
}

fn generated(n: usize, model: &str, body: &Value) -> Value {
    let mut answer = response(n, model, body, &reply_parts(&reply(n, body)), Some("STOP"));
    answer["usageMetadata"] = usage(10, Some(5));
    answer
}

/// The events of a streamed answer: text a word at a time (a function call whole), the
/// finish reason and full usage in the last event, the prompt's usage in the others.
fn stream_events(n: usize, model: &str, body: &Value) -> Vec<Value> {
    let pieces: Vec<Value> = match reply(n, body) {
        Reply::Text(text) => text
            .split_inclusive(' ')
            .map(|word| json!([{ "text": word }]))
            .collect(),
        call => vec![reply_parts(&call)],
    };
    let last = pieces.len().saturating_sub(1);
    pieces
        .iter()
        .enumerate()
        .map(|(i, parts)| {
            let finish = (i == last).then_some("STOP");
            let mut event = response(n, model, body, parts, finish);
            event["usageMetadata"] = usage(10, finish.map(|_| 5));
            event
        })
        .collect()
}

/// `streamGenerateContent`: SSE with `?alt=sse`, otherwise one JSON array of the responses.
fn streamed(n: usize, model: &str, body: &Value, sse: bool) -> Response {
    let events = stream_events(n, model, body);
    if !sse {
        return axum::Json(Value::Array(events)).into_response();
    }
    let text: String = events
        .iter()
        .map(|e| format!("data: {e}\r\n\r\n"))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(text),
    )
        .into_response()
}

/// One `ContentEmbedding` per request, like the OpenAI fake's vectors.
fn embeddings(body: &Value) -> Value {
    let count = body["requests"].as_array().map_or(0, Vec::len);
    let embeddings: Vec<Value> = (0..count)
        .map(|i| json!({ "values": [0.25, -0.5, i as f64] }))
        .collect();
    json!({ "embeddings": embeddings })
}
