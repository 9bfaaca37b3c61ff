//! A fake OpenAI-compatible provider on 127.0.0.1:0.
//!
//! It answers `/v1/chat/completions` and `/v1/embeddings` in OpenAI's documented format
//! (including SSE streams and the base64 embedding encoding the Python SDK asks for), counts
//! calls and TCP connections, records every request, and can be told to fail in each way a
//! real provider fails.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use serde_json::{Value, json};

/// How the fake answers the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// A normal answer.
    Ok,
    /// An OpenAI-style error with this status (and `Retry-After` seconds, if given).
    Status(u16, Option<u64>),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with an `error` object instead of a completion.
    ErrorIn200,
    /// A normal answer after this delay.
    Slow(Duration),
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The parsed JSON body.
    pub body: Value,
}

#[derive(Default)]
struct Shared {
    /// Whether to keep every request and peer (off for long benchmark runs).
    record: bool,
    calls: AtomicUsize,
    peers: Mutex<HashSet<SocketAddr>>,
    requests: Mutex<Vec<Recorded>>,
    behaviour: Mutex<Option<Behaviour>>,
    /// The next this-many requests fail with `failure`, then `behaviour` applies again.
    failures_left: AtomicUsize,
    failure: Mutex<Option<Behaviour>>,
    /// Extra headers on every answer (e.g. `x-ratelimit-remaining-requests`).
    headers: Mutex<Vec<(String, String)>>,
}

/// A running fake provider. Dropping it stops the server.
pub struct FakeUpstream {
    /// Base URL including `/v1`, as a provider's `base_url`.
    pub base_url: String,
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeUpstream {
    /// Starts on a free port.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Starts on a given address (e.g. the `127.0.0.1:9999` of the example config).
    pub async fn start_on(addr: &str) -> Self {
        Self::start_with(addr, true).await
    }

    /// Starts without recording requests, so memory stays flat under long load.
    pub async fn start_for_load(addr: &str) -> Self {
        Self::start_with(addr, false).await
    }

    async fn start_with(addr: &str, record: bool) -> Self {
        let shared = Arc::new(Shared {
            record,
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/embeddings", post(handle))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            addr,
            shared,
            task,
        }
    }

    /// Sets how the following requests are answered.
    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = Some(behaviour);
    }

    /// The next `n` requests fail with `failure`; after them, the usual behaviour again.
    pub fn fail_next(&self, n: usize, failure: Behaviour) {
        *self.shared.failure.lock().unwrap() = Some(failure);
        self.shared.failures_left.store(n, Ordering::SeqCst);
    }

    /// Adds headers (e.g. rate-limit headers) to every answer from now on.
    pub fn set_headers(&self, headers: &[(&str, &str)]) {
        *self.shared.headers.lock().unwrap() = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Distinct TCP connections (client address:port pairs) seen so far.
    pub fn connections(&self) -> usize {
        self.shared.peers.lock().unwrap().len()
    }

    /// Every request received, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The newest request.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the fake upstream has received no request")
    }
}

fn error_body(status: u16) -> Value {
    let (kind, code) = match status {
        400 => ("invalid_request_error", "invalid_value"),
        401 => ("invalid_request_error", "invalid_api_key"),
        429 => ("requests", "rate_limit_exceeded"),
        _ => ("server_error", "server_error"),
    };
    json!({"error": {"message": format!("fake upstream error {status}"), "type": kind, "param": null, "code": code}})
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = shared.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if shared.record {
        shared.peers.lock().unwrap().insert(peer);
        shared.requests.lock().unwrap().push(Recorded {
            path: uri.path().to_owned(),
            headers: headers.clone(),
            body: body.clone(),
        });
    }
    let failing = shared
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let behaviour = if failing {
        shared
            .failure
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Behaviour::Ok)
    } else {
        shared
            .behaviour
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(Behaviour::Ok)
    };
    let extra = shared.headers.lock().unwrap().clone();
    let mut response = answer(behaviour, n, uri, body).await;
    for (k, v) in extra {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(k.as_bytes()),
            axum::http::HeaderValue::from_str(&v),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

async fn answer(behaviour: Behaviour, n: usize, uri: Uri, body: Value) -> Response {
    match behaviour {
        Behaviour::Ok => {}
        Behaviour::Slow(d) => tokio::time::sleep(d).await,
        Behaviour::Status(status, retry_after) => {
            let mut r = (
                StatusCode::from_u16(status).unwrap(),
                axum::Json(error_body(status)),
            )
                .into_response();
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
        Behaviour::ErrorIn200 => return axum::Json(error_body(500)).into_response(),
    }
    let model = body["model"].as_str().unwrap_or("unknown").to_owned();
    if uri.path().ends_with("/embeddings") {
        return axum::Json(embeddings(&body, &model)).into_response();
    }
    let content = format!("fake answer #{n}");
    if body["stream"] == json!(true) {
        let chunk = |delta: Value, finish: Value| {
            json!({"id": format!("chatcmpl-fake{n}"), "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut sse = String::new();
        let mut events = vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": content}), Value::Null),
            chunk(json!({}), json!("stop")),
        ];
        if body["stream_options"]["include_usage"] == json!(true) {
            events.push(
                json!({"id": format!("chatcmpl-fake{n}"), "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": model, "choices": [],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
            );
        }
        for event in events {
            sse.push_str(&format!("data: {event}\n\n"));
        }
        sse.push_str("data: [DONE]\n\n");
        return (
            [(header::CONTENT_TYPE, "text/event-stream")],
            Body::from(sse),
        )
            .into_response();
    }
    axum::Json(json!({
        "id": format!("chatcmpl-fake{n}"),
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

fn embeddings(body: &Value, model: &str) -> Value {
    let inputs = match &body["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let base64 = body["encoding_format"] == json!("base64");
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let v = [0.25f32, -0.5, i as f32];
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({"object": "list", "data": data, "model": model,
           "usage": {"prompt_tokens": 4 * inputs, "total_tokens": 4 * inputs}})
}
