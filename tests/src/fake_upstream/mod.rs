//! A fake provider on 127.0.0.1:0 that speaks three wire formats on one port:
//! OpenAI (`/v1/chat/completions`, `/v1/embeddings`), Anthropic (`/v1/messages`) and Google
//! Gemini (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent`,
//! `:batchEmbedContents`).
//!
//! Both batch APIs are served too (see [`batches`]): OpenAI's Files + Batches and Anthropic's
//! Message Batches.
//!
//! Each format is answered as its public API reference documents it (including SSE streams,
//! error bodies and rate-limit headers). The fake counts calls and TCP connections, records
//! every request, and can be told to fail in each way a real provider fails.

mod anthropic;
pub mod batches;
pub mod billing;
mod gemini;
mod openai;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt as _;
use serde_json::Value;

/// How the fake answers the next requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// A normal answer.
    Ok,
    /// The format's own error body with this status (and `Retry-After` seconds, if given).
    Status(u16, Option<u64>),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with an error object instead of an answer.
    ErrorIn200,
    /// A normal answer after this delay.
    Slow(Duration),
    /// An error with this status whose message repeats the API key the fake was sent, as
    /// some OpenAI-compatible servers do ("Incorrect API key provided: sk-…").
    EchoKey(u16),
    /// 200 and the first half of a normal answer's body, then the connection is dropped
    /// mid-body (for a stream: a disconnect mid-stream, half the events delivered).
    CutOff,
    /// 200 and the first half of a normal answer's body, delivered cleanly as if whole: JSON
    /// that ends mid-object, or a stream that stops mid-event without `[DONE]`.
    Truncated,
    /// A normal answer whose stream events arrive one at a time, this long apart (a stream
    /// that stays open for a while).
    Drip(Duration),
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
    /// Report the most usage each request allows ([`billing`]) instead of a fixed amount.
    bill_max: AtomicBool,
    /// Prompt prefixes seen, per model: OpenAI's prompt cache.
    prompt_cache: Mutex<HashSet<String>>,
    /// Anthropic's prompt cache: the prefixes written so far (see `anthropic::cache_usage`).
    anthropic_cache: Mutex<HashSet<u64>>,
    /// Uploaded files and batches of both batch APIs.
    batches: Mutex<batches::Batches>,
}

/// A running fake provider. Dropping it stops the server.
pub struct FakeUpstream {
    /// Base URL including `/v1`, as an `openai` or `anthropic` provider's `base_url`.
    pub base_url: String,
    /// Base URL including `/v1beta`, as a `gemini` provider's `base_url`.
    pub gemini_url: String,
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
            .route("/v1/messages", post(handle))
            .route("/v1beta/models/{*call}", post(handle))
            .route("/v1/files", post(batches::upload))
            .route("/v1/files/{id}/content", get(batches::file_content))
            .route("/v1/batches", post(batches::create_openai))
            .route("/v1/batches/{id}", get(batches::get_openai))
            .route("/v1/batches/{id}/cancel", post(batches::cancel_openai))
            .route("/v1/messages/batches", post(batches::create_anthropic))
            .route("/v1/messages/batches/{id}", get(batches::get_anthropic))
            .route(
                "/v1/messages/batches/{id}/results",
                get(batches::results_anthropic),
            )
            .route(
                "/v1/messages/batches/{id}/cancel",
                post(batches::cancel_anthropic),
            )
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
            gemini_url: format!("http://{addr}/v1beta"),
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

    /// From now on, every answer reports the most usage its request allows (see
    /// [`billing`]): a provider as expensive as its rules let it be.
    pub fn bill_max(&self, on: bool) {
        self.shared.bill_max.store(on, Ordering::SeqCst);
    }

    /// Batches created from now on end only once this long has passed since their creation
    /// (until then they report `in_progress`), so that a client must poll.
    pub fn set_batch_delay(&self, delay: Duration) {
        self.shared.batches.lock().unwrap().delay = delay;
    }

    /// How batches created from now on end.
    pub fn set_batch_fate(&self, fate: batches::BatchFate) {
        self.shared.batches.lock().unwrap().fate = fate;
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
    if let Behaviour::Slow(d) = behaviour {
        tokio::time::sleep(d).await;
    }
    if let Behaviour::EchoKey(status) = behaviour {
        return echo_key(status, &headers);
    }
    let path = uri.path();
    let usage = shared
        .bill_max
        .load(Ordering::SeqCst)
        .then(|| max_usage(path, &body));
    let format = if matches!(
        behaviour,
        Behaviour::CutOff | Behaviour::Truncated | Behaviour::Drip(_)
    ) {
        Behaviour::Ok
    } else {
        behaviour.clone()
    };
    let mut response = if path.starts_with("/v1beta/") {
        gemini::answer(&format, n, &uri, &body)
    } else if path == "/v1/messages" {
        anthropic::answer(&format, n, &body, &shared.anthropic_cache)
    } else {
        // A long prompt whose prefix was seen before is partly read from the prompt cache.
        let cached = openai::cache_prefix(&body).map_or(0, |(key, tokens)| {
            let mut seen = shared.prompt_cache.lock().unwrap();
            if seen.insert(key) { 0 } else { tokens }
        });
        openai::answer(&format, n, path, &body, cached)
    };
    if let Some((format, usage)) = usage {
        response = rebill(response, format, usage).await;
    }
    if matches!(behaviour, Behaviour::CutOff | Behaviour::Truncated) {
        response = cut(response, behaviour == Behaviour::CutOff).await;
    }
    if let Behaviour::Drip(pause) = behaviour {
        response = drip(response, pause).await;
    }
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

/// `text` cut in two near its middle, on a character boundary.
pub(crate) fn halves(text: &str) -> (&str, &str) {
    let mid = (0..=text.len() / 2)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    text.split_at(mid)
}

/// The format of a request by its path, and the most usage it allows.
fn max_usage(path: &str, body: &Value) -> (billing::Format, (u64, u64)) {
    if path.starts_with("/v1beta/") {
        (billing::Format::Gemini, billing::gemini(body))
    } else if path == "/v1/messages" {
        (billing::Format::Anthropic, billing::anthropic(body))
    } else if path.ends_with("/embeddings") {
        (
            billing::Format::OpenAi,
            (billing::openai_embeddings(body), 0),
        )
    } else {
        (billing::Format::OpenAi, billing::openai_chat(body))
    }
}

/// The same answer with its usage (every stream event's too) set to `usage`.
async fn rebill(response: Response, format: billing::Format, usage: (u64, u64)) -> Response {
    let (mut parts, body) = response.into_parts();
    let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let text = String::from_utf8_lossy(&whole);
    let rewrite = |json: &str| -> Option<String> {
        let mut v: Value = serde_json::from_str(json).ok()?;
        billing::set_usage(format, &mut v, usage);
        Some(v.to_string())
    };
    let out = if text.trim_start().starts_with('{') {
        rewrite(&text).unwrap_or_else(|| text.into_owned())
    } else {
        text.lines()
            .map(|line| match line.strip_prefix("data: ").and_then(rewrite) {
                Some(event) => format!("data: {event}"),
                None => line.to_owned(),
            })
            .map(|line| line + "\n")
            .collect()
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(out))
}

/// The first half of `response`'s body; with `reset`, the connection then fails mid-body
/// (a body stream error makes hyper abort the connection without ending the chunked body).
async fn cut(response: Response, reset: bool) -> Response {
    let (mut parts, body) = response.into_parts();
    let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let half = whole.slice(..whole.len() / 2);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if !reset {
        return Response::from_parts(parts, axum::body::Body::from(half));
    }
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(half),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "fake upstream: connection cut mid-body",
        )),
    ];
    let stream = futures_util::stream::iter(chunks).then(|chunk| async move {
        // Let the first half reach the client before the connection goes.
        if chunk.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// `response` with its body sent one event (`\n\n`-terminated piece) at a time, `pause`
/// apart.
async fn drip(response: Response, pause: Duration) -> Response {
    let (mut parts, body) = response.into_parts();
    let whole = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let mut pieces = Vec::new();
    let mut start = 0;
    for end in whole
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\n\n")
        .map(|(i, _)| i + 2)
    {
        pieces.push(whole.slice(start..end));
        start = end;
    }
    if start < whole.len() {
        pieces.push(whole.slice(start..));
    }
    let stream = futures_util::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece)
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// An error body (`error.message`, which all three formats share) naming the key received.
fn echo_key(status: u16, headers: &HeaderMap) -> Response {
    let key = ["authorization", "x-api-key", "x-goog-api-key"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .trim_start_matches("Bearer ");
    let body = serde_json::json!({"error": {
        "message": format!("Incorrect API key provided: {key}."),
        "type": "invalid_request_error", "code": "invalid_api_key", "param": null}});
    (
        axum::http::StatusCode::from_u16(status).unwrap(),
        axum::Json(body),
    )
        .into_response()
}
