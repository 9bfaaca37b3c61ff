//! Anthropic's Messages API format, from its public reference: `message` objects with content
//! blocks, the named SSE events of a stream, `{"type":"error","error":{…}}` bodies, and the
//! checks the real API makes on a request (required `max_tokens`, alternating roles, no
//! `system` role inside `messages`).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Behaviour;

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (
        StatusCode::from_u16(status).unwrap(),
        [("request-id", "req_fake")],
        axum::Json(body),
    )
        .into_response()
}

fn error_kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// What the real API refuses before generating anything.
fn invalid(body: &Value) -> Option<&'static str> {
    if !body["max_tokens"].is_u64() {
        return Some("max_tokens: Field required");
    }
    let messages = body["messages"].as_array()?;
    let mut previous = "";
    for m in messages {
        let role = m["role"].as_str().unwrap_or("");
        if role != "user" && role != "assistant" {
            return Some("messages: roles must be \"user\" or \"assistant\"");
        }
        if role == previous {
            return Some("messages: roles must alternate between \"user\" and \"assistant\"");
        }
        previous = role;
    }
    None
}

/// The last user turn's text, and its tool result if it carries one.
fn last_user(body: &Value) -> (String, Option<String>) {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return (String::new(), None);
    };
    match &last["content"] {
        Value::String(s) => (s.clone(), None),
        Value::Array(blocks) => {
            let text = blocks
                .iter()
                .filter_map(|b| b["text"].as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let result =
                blocks
                    .iter()
                    .find(|b| b["type"] == "tool_result")
                    .map(|b| match &b["content"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    });
            (text, result)
        }
        _ => (String::new(), None),
    }
}

/// Answers one Messages API request (`Slow` has already waited).
pub(super) fn answer(behaviour: &Behaviour, n: usize, body: &Value) -> Response {
    match *behaviour {
        // `EchoKey` is answered before the format is chosen.
        Behaviour::Ok
        | Behaviour::Slow(_)
        | Behaviour::EchoKey(_)
        | Behaviour::CutOff
        | Behaviour::Truncated
        | Behaviour::Drip(_) => {}
        Behaviour::Status(status, retry_after) => {
            let mut r = error(
                status,
                error_kind(status),
                &format!("fake upstream error {status}"),
            );
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, s.to_string().parse().unwrap());
            }
            return r;
        }
        Behaviour::Garbage => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "<html>oops</html>",
            )
                .into_response();
        }
        Behaviour::ErrorIn200 => {
            return axum::Json(
                json!({"type": "error", "error": {"type": "api_error", "message": "fake error in 200"}}),
            )
            .into_response();
        }
    }
    if let Some(reason) = invalid(body) {
        return error(400, "invalid_request_error", reason);
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    let (user_text, tool_result) = last_user(body);
    let tool = body["tools"][0]["name"]
        .as_str()
        .filter(|_| tool_result.is_none());
    let (content, stop_reason) = match (tool, tool_result) {
        (Some(name), _) => (
            json!([{"type": "tool_use", "id": format!("toolu_fake{n}"), "name": name,
                    "input": {"query": user_text}}]),
            "tool_use",
        ),
        (None, Some(result)) => (
            json!([{"type": "text", "text": format!("tool said: {result}")}]),
            "end_turn",
        ),
        (None, None) => (
            json!([{"type": "text", "text": format!("fake answer #{n}")}]),
            "end_turn",
        ),
    };
    let id = format!("msg_fake{n}");
    if body["stream"] == json!(true) {
        return stream(&id, &model, &content, stop_reason);
    }
    axum::Json(json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 10, "output_tokens": 5,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    }))
    .into_response()
}

/// The event sequence of a streamed message; text and tool input arrive in two pieces each.
fn stream(id: &str, model: &str, content: &Value, stop_reason: &str) -> Response {
    let mut events = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": id, "type": "message", "role": "assistant",
            "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 1}}}),
    )];
    for (index, block) in content.as_array().unwrap().iter().enumerate() {
        let (start, pieces): (Value, Vec<Value>) = if block["type"] == "tool_use" {
            let input = block["input"].to_string();
            let (a, b) = super::halves(&input);
            (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                [a, b]
                    .iter()
                    .map(|p| json!({"type": "input_json_delta", "partial_json": p}))
                    .collect(),
            )
        } else {
            let text = block["text"].as_str().unwrap();
            let cut = text.find(' ').unwrap_or(text.len());
            let (a, b) = text.split_at(cut);
            (
                json!({"type": "text", "text": ""}),
                [a, b]
                    .iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect(),
            )
        };
        events.push((
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        events.push(("ping", json!({"type": "ping"})));
        for delta in pieces {
            events.push((
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": 5}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let sse: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(sse),
    )
        .into_response()
}
