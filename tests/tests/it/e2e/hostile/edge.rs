//! The server's edge against a hostile client (issue 13, items 8, 10, 11, 12), in process:
//!
//! - connection limits of [`sluice::server`] (what `sluice serve` runs): half-sent heads,
//!   silent and trickling sockets, idle keep-alives, a body trickled past its deadline (408),
//!   the connection cap evicting the longest-waiting connection but never a busy one, and a
//!   graceful shutdown that still lets requests in flight finish — over raw TCP, each bounded
//!   to a few hundred milliseconds of deadlines;
//! - logs: key-shaped strings in a path, a query, a request id header or a model name never
//!   reach a log line (fixed cases, and a property test over generated keys and placements);
//! - callback URLs in every special range and IPv4-in-IPv6 form are refused at submission;
//! - what a key may see: `/v1/usage` without the gateway level, a gateway-cap 429 without the
//!   cap's amount, and `/metrics` behind `server.metrics_token` when one is set.
//!
//! The same limits on the real binary (descriptor limit, a flood of half-open sockets, proxy
//! environment variables) are in `cli/tests/it/hostile_edge.rs`. Each test prints what it tried
//! and measured (`hostile-edge:` lines) for RELIABILITY.md:
//! `cargo test -p sluice-tests --test it e2e::hostile::edge -- --nocapture`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use sluice::api::{self, AppState};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::server::Limits;
use sluice_tests::gateway::ADMIN_KEY;
use sluice_tests::logs::Captured;
use sluice_tests::{Behaviour, FakeUpstream, TestGateway, fake_config, fake_config_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::e2e::{assert_error, json};

// ---- An in-process `sluice serve` ----------------------------------------------------------

/// Sluice behind [`sluice::server::serve`] (not `axum::serve`, as `TestGateway` is), with
/// the given limits, on 127.0.0.1:0.
struct Edge {
    addr: SocketAddr,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Edge {
    async fn start(config_toml: &str, limits: Limits) -> Self {
        let config = Config::parse(config_toml, "edge config", &|_| None).unwrap();
        let clock = ManualClock::new(1_800_000_000_000);
        let deps = Deps::sqlite(":memory:", &config, Arc::new(clock))
            .unwrap()
            .with_local_metrics(&config.metrics);
        let services = Services::build(&config, &deps).unwrap();
        let state = AppState::new(&config, &deps, &services, ADMIN_KEY);
        let app = api::router(Arc::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(sluice::server::serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop),
            server,
        }
    }

    async fn create_key(&self, tenant: &str) -> String {
        let r = reqwest::Client::new()
            .post(format!("{}/admin/keys", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "tenant": tenant }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        json(r).await["key"].as_str().unwrap().to_owned()
    }
}

fn limits(header_ms: u64, body_ms: u64, idle_ms: u64, max_connections: usize) -> Limits {
    Limits {
        header_read: Duration::from_millis(header_ms),
        body_read: Duration::from_millis(body_ms),
        idle: Duration::from_millis(idle_ms),
        max_connections,
    }
}

// ---- Raw HTTP/1.1 over TCP: what a hostile client writes, byte by byte --------------------

/// One answer read off a connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header lines, lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one answer with a `content-length` (every non-stream answer of Sluice has one).
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap();
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Answer {
        status,
        headers,
        body,
    }
}

/// Waits up to `within` for the server to close `stream`; returns how long that took.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // Bytes of an answer: keep reading until the end.
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether `stream` is still open after `wait` (nothing to read, no end).
async fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(wait, stream.read(&mut buf))
        .await
        .is_err()
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: sluice\r\n\r\n")
}

fn chat_request(key: &str, prompt: &str) -> String {
    let body =
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}).to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

async fn connect(edge: &Edge) -> TcpStream {
    TcpStream::connect(edge.addr).await.unwrap()
}

// ---- Connection limits ---------------------------------------------------------------------

/// A half-sent head, a silent socket and a head trickled a byte every 50 ms are all closed
/// once the header deadline (300 ms from the accept) passes, and never before it.
#[tokio::test]
async fn half_sent_heads_and_silent_sockets_are_closed_at_the_header_deadline() {
    let edge = Edge::start(
        &fake_config("http://127.0.0.1:9/v1"),
        limits(300, 5_000, 5_000, 64),
    )
    .await;
    let mut silent = connect(&edge).await;
    let mut half = connect(&edge).await;
    half.write_all(b"GET /health HTTP/1.1\r\nhost: sluice\r\n")
        .await
        .unwrap();
    let mut trickle = connect(&edge).await;
    let trickler = tokio::spawn(async move {
        let head = get("/health");
        for byte in head.as_bytes()[..head.len() - 2].iter() {
            if trickle.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trickle
    });
    let limit = Duration::from_millis(1_500);
    let (silent_at, half_at) = tokio::join!(
        closed_within(&mut silent, limit),
        closed_within(&mut half, limit)
    );
    let silent_at = silent_at.expect("silent socket kept open");
    let half_at = half_at.expect("half-sent head kept open");
    let mut trickle = trickler.await.unwrap();
    assert!(
        closed_within(&mut trickle, Duration::from_millis(100))
            .await
            .is_some()
    );
    for at in [silent_at, half_at] {
        assert!(at >= Duration::from_millis(250), "closed early: {at:?}");
    }
    // A whole request on a new connection is still answered.
    let mut fresh = connect(&edge).await;
    fresh.write_all(get("/health").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut fresh).await.status, 200);
    println!(
        "hostile-edge: header deadline 300 ms: silent socket closed after {silent_at:?}, \
         half-sent head after {half_at:?}, a head trickled at 20 B/s closed too"
    );
}

/// A kept-alive connection answers request after request, then is closed once it has been
/// idle for 300 ms; a request that runs longer than every deadline (a slow provider) is not
/// cut off.
#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let up = FakeUpstream::start().await;
    let edge = Edge::start(&fake_config(&up.base_url), limits(300, 300, 300, 64)).await;
    let key = edge.create_key("idle").await;
    let mut kept = connect(&edge).await;
    let mut last_answer = Instant::now();
    // Three requests 150 ms apart: each within the idle time of the one before.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        kept.write_all(get("/health").as_bytes()).await.unwrap();
        assert_eq!(read_answer(&mut kept).await.status, 200);
        last_answer = Instant::now();
    }
    closed_within(&mut kept, Duration::from_millis(1_000))
        .await
        .expect("idle connection kept open");
    let idle_at = last_answer.elapsed();
    assert!(
        idle_at >= Duration::from_millis(250),
        "closed early: {idle_at:?}"
    );

    up.set(Behaviour::Slow(Duration::from_millis(700)));
    let mut busy = connect(&edge).await;
    let started = Instant::now();
    busy.write_all(chat_request(&key, "slow").as_bytes())
        .await
        .unwrap();
    let answer = read_answer(&mut busy).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
    println!(
        "hostile-edge: idle deadline 300 ms: kept-alive connection closed {idle_at:?} after its \
         last answer; a 700 ms request on a 300 ms-deadline server answered 200 in {:?}",
        started.elapsed()
    );
}

/// Headers, then a body trickled a byte every 100 ms against a 400 ms body deadline: 408
/// (OpenAI's shape on OpenAI routes, Anthropic's on `/v1/messages`), `connection: close`,
/// and the connection ends.
#[tokio::test]
async fn a_body_trickled_past_its_deadline_gets_408_and_the_connection_closes() {
    let up = FakeUpstream::start().await;
    let edge = Edge::start(&fake_config(&up.base_url), limits(2_000, 400, 5_000, 64)).await;
    let key = edge.create_key("trickle").await;
    for (path, anthropic) in [("/v1/chat/completions", false), ("/v1/messages", true)] {
        let stream = connect(&edge).await;
        let (mut reader, mut writer) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: sluice\r\nauthorization: Bearer {key}\r\n\
             content-type: application/json\r\ncontent-length: 400\r\n\r\n"
        );
        let started = Instant::now();
        writer.write_all(head.as_bytes()).await.unwrap();
        let trickler = tokio::spawn(async move {
            for _ in 0..40 {
                if writer.write_all(b" ").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Read to the end; a reset after the answer also ends it (the server closed with
        // trickled bytes unread).
        let mut raw = Vec::new();
        let read_all = async {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut chunk).await {
                raw.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(3), read_all)
            .await
            .expect("the connection was not closed");
        let took = started.elapsed();
        trickler.abort();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{text}"
        );
        let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        if anthropic {
            assert_eq!(body["type"], "error", "{body}");
            assert_eq!(body["error"]["type"], "timeout_error", "{body}");
        } else {
            assert_eq!(body["error"]["code"], "request_timeout", "{body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
            assert!(body["error"].get("param").is_some(), "{body}");
        }
        assert!(took >= Duration::from_millis(400) && took < Duration::from_millis(1_500));
        println!("hostile-edge: body trickled at 10 B/s on {path}: 408 and closed after {took:?}");
    }
    assert_eq!(up.calls(), 0, "a timed-out body reached the provider");
}

/// With room for 3 connections, 3 half-sent heads, then a whole request: it is answered at
/// once, and the half-sent head that waited longest is the one closed. A connection with a
/// request in flight is never closed for room: with room for 1, a second client waits until
/// the first one's slow request is answered.
#[tokio::test]
async fn at_the_cap_the_longest_waiting_connection_makes_room_never_a_busy_one() {
    let up = FakeUpstream::start().await;
    let edge = Edge::start(&fake_config(&up.base_url), limits(5_000, 5_000, 5_000, 3)).await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&edge).await;
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        stalled.push(s);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let started = Instant::now();
    let mut fresh = connect(&edge).await;
    fresh.write_all(get("/health").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut fresh).await.status, 200);
    let answered = started.elapsed();
    assert!(answered < Duration::from_millis(1_000), "{answered:?}");
    assert!(
        closed_within(&mut stalled[0], Duration::from_millis(500))
            .await
            .is_some(),
        "the oldest stalled connection is still open"
    );
    assert!(still_open(&mut stalled[1], Duration::from_millis(100)).await);
    assert!(still_open(&mut stalled[2], Duration::from_millis(100)).await);
    drop(stalled);
    drop(fresh);

    let edge = Edge::start(&fake_config(&up.base_url), limits(5_000, 5_000, 5_000, 1)).await;
    let key = edge.create_key("cap").await;
    // The key creation's connection must be gone before the cap is tried.
    tokio::time::sleep(Duration::from_millis(50)).await;
    up.set(Behaviour::Slow(Duration::from_millis(600)));
    let mut busy = connect(&edge).await;
    let started = Instant::now();
    busy.write_all(chat_request(&key, "hold the only place").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut waiting = connect(&edge).await;
    waiting.write_all(get("/health").as_bytes()).await.unwrap();
    let busy_answer = read_answer(&mut busy).await;
    assert_eq!(busy_answer.status, 200, "the busy connection was cut");
    assert_eq!(read_answer(&mut waiting).await.status, 200);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
    println!(
        "hostile-edge: cap 3 with 3 stalled heads: a new /health answered in {answered:?}, the \
         oldest stalled one closed; cap 1 with a 600 ms request in flight: it finished, the \
         next client was served after {waited:?}"
    );
}

/// Shutdown while a slow request runs: the request is answered, new connections are
/// refused, and the server returns.
#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let up = FakeUpstream::start().await;
    let mut edge = Edge::start(&fake_config(&up.base_url), limits(2_000, 2_000, 2_000, 64)).await;
    let key = edge.create_key("drain").await;
    up.set(Behaviour::Slow(Duration::from_millis(500)));
    let mut busy = connect(&edge).await;
    busy.write_all(chat_request(&key, "finish me").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = edge.stop.take().unwrap().send(());
    assert_eq!(read_answer(&mut busy).await.status, 200);
    drop(busy);
    let server = &mut edge.server;
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("the server did not return after its last request")
        .unwrap();
    assert!(TcpStream::connect(edge.addr).await.is_err());
}

// ---- Logs ------------------------------------------------------------------------------------

/// Sluice's log subscriber, writing to `captured`, as this thread's default.
fn install(captured: &Captured) -> tracing::subscriber::DefaultGuard {
    let sink = captured.clone();
    Captured::set_default(sluice::logging::subscriber(move || sink.clone()))
}

/// The access-log lines `captured` holds.
fn access_lines(captured: &Captured) -> Vec<Value> {
    captured
        .text()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["target"] == "sluice::access")
        .collect()
}

/// Sends `GET <target>` as written (no client-side normalisation) and reads the answer.
async fn raw_get(addr: SocketAddr, target: &str, extra_headers: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nhost: sluice\r\n{extra_headers}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut stream).await
}

/// The random part of a key: what must not reach a log.
fn secret_part(key: &str) -> &str {
    match key.split_once("%20") {
        Some((_, token)) => token,
        None => &key[12.min(key.len())..],
    }
}

/// Keys in a job path, an unknown path, a query, a `x-request-id` header and a model name:
/// no log line holds one, the access lines show `[REDACTED]` where a path held one, and the
/// client's request id is neither echoed nor logged.
#[tokio::test]
async fn keys_in_paths_queries_request_ids_and_model_names_never_reach_the_log() {
    let captured = Captured::default();
    let _guard = install(&captured);
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config(&up.base_url)).await;
    let key = gw.create_key("logs").await;
    let gateway_key = format!("sk-sluice-{}", sluice::keys::random_alnum(32));
    let openai_key = format!("sk-proj-{}", sluice::keys::random_alnum(40));
    let google_key = format!("AIza{}", sluice::keys::random_alnum(35));
    let auth = format!("authorization: Bearer {key}\r\n");
    let cases = [
        (format!("/v1/jobs/{gateway_key}"), auth.clone(), 404),
        (format!("/nope?key={openai_key}"), String::new(), 404),
        (format!("/v1/jobs/{google_key}"), auth.clone(), 404),
        (format!("/v1/models/{openai_key}/x"), auth.clone(), 404),
        (
            format!("/v1/jobs/{}", gateway_key.replace('-', "%2D")),
            auth.clone(),
            404,
        ),
        (
            "/health".to_owned(),
            format!("x-request-id: {gateway_key}\r\n"),
            200,
        ),
    ];
    for (target, headers, status) in &cases {
        Captured::refresh();
        let answer = raw_get(gw.addr, target, headers).await;
        assert_eq!(answer.status, *status, "{target}");
        let id = answer.header("x-request-id").unwrap();
        assert!(id.starts_with("req_") && !id.contains("sk-"), "{id}");
    }
    Captured::refresh();
    let r = gw.chat(&key, &openai_key, "a key as the model name").await;
    assert_error(r, 404, "model_not_found").await;

    let text = captured.text();
    for secret in [&gateway_key, &openai_key, &google_key] {
        assert!(
            !text.contains(secret_part(secret)),
            "{secret} in the log:\n{text}"
        );
    }
    let access = access_lines(&captured);
    assert_eq!(access.len(), cases.len() + 2, "{text}");
    let paths: Vec<&str> = access.iter().filter_map(|l| l["path"].as_str()).collect();
    for expected in [
        "/v1/jobs/[REDACTED]",
        "/nope",
        "/v1/models/[REDACTED]/x",
        "/health",
    ] {
        assert!(paths.contains(&expected), "{expected} not in {paths:?}");
    }
    println!(
        "hostile-edge: keys in {} paths/queries/headers and a model name: {} log lines, no key \
         in any; logged paths {paths:?}",
        cases.len(),
        text.lines().count()
    );
}

/// A key-shaped string as a client might paste it into a URL (`Bearer%20…` for a bearer
/// token: a space cannot be sent raw).
fn url_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "sk-sluice-[A-Za-z0-9]{32}",
        "sk-sluice-admin-[A-Za-z0-9]{32}",
        "sk-(proj-|ant-api03-)?[A-Za-z0-9_-]{20,48}",
        "AIza[0-9A-Za-z_-]{35}",
        "eyJ[A-Za-z0-9_-]{8,24}\\.eyJ[A-Za-z0-9_-]{8,24}\\.[A-Za-z0-9_-]{8,24}",
        "(Bearer|bearer)%20[A-Za-z0-9_~+-]{16,40}",
    ]
}

/// A request target with `key` somewhere in its path or query, after a character that
/// cannot be part of a word.
fn target_with_key() -> impl Strategy<Value = (String, String)> {
    let segment = "[a-z0-9_~.-]{1,10}";
    (url_key(), segment, segment, 0..7usize).prop_map(|(key, a, b, at)| {
        let target = match at {
            0 => format!("/v1/jobs/{key}"),
            1 => format!("/{a}/{key}/{b}"),
            2 => format!("/v1/{a}-{key}"),
            3 => format!("/v1/models?{a}={key}"),
            4 => format!("/{a}?{b}&api_key={key}&x=1"),
            5 => format!("/{key}.json?{a}={b}"),
            _ => format!("/v1/usage/{key}?{a}={key}"),
        };
        (target, key)
    })
}

/// Property: a generated key-shaped string placed anywhere in a path or query never appears
/// in the log, and every request still yields its access line.
#[test]
fn fuzz_a_key_anywhere_in_a_path_or_query_never_reaches_the_log() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let captured = Captured::default();
    let _guard = install(&captured);
    let gw = runtime.block_on(TestGateway::start_builtin());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let requests = std::cell::Cell::new(0);
    let result = runner.run(&target_with_key(), |(target, key)| {
        let before = access_lines(&captured).len();
        Captured::refresh();
        runtime.block_on(raw_get(gw.addr, &target, ""));
        requests.set(requests.get() + 1);
        let text = captured.text();
        prop_assert_eq!(
            access_lines(&captured).len(),
            before + 1,
            "no access line: {}",
            target
        );
        if let Some(line) = text.lines().find(|l| l.contains(secret_part(&key))) {
            return Err(TestCaseError::fail(format!(
                "{target}: key in the log: {line}"
            )));
        }
        Ok(())
    });
    drop(gw);
    result.unwrap();
    println!(
        "hostile-edge: {} generated keys in paths and queries: none in the log",
        requests.get()
    );
}

// ---- Callback SSRF forms ---------------------------------------------------------------------

/// Every special range and IPv4-in-IPv6 form, as a `callback_url` on `POST /v1/jobs`: 400
/// `invalid_callback_url`, no job. (Nothing is connected to: refusals come from the address.)
#[tokio::test]
async fn callback_urls_in_special_ranges_and_ipv4_in_ipv6_forms_are_refused() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[jobs]\nworkers = 0\ncallback_secret = \"whsec-edge\"\n",
    ))
    .await;
    let key = gw.create_key("ssrf").await;
    let urls = [
        "http://192.0.0.170/hook",
        "http://192.88.99.1/hook",
        "http://[fec0::1]/hook",
        "http://[::127.0.0.1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:a9fe:a9fe]/hook",
        "http://[2002:7f00:1::1]/hook",
        "http://[2002:a9fe:a9fe::]/hook",
        "http://[64:ff9b::7f00:1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[64:ff9b:1::a00:1]/hook",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook",
        "http://[2001::80ff:fefe]/hook",
    ];
    for url in urls {
        let r = gw
            .post(
                "/v1/jobs",
                &key,
                &json!({"endpoint": "/v1/chat/completions", "callback_url": url,
                        "request": {"model": "gpt-test", "messages": [{"role": "user", "content": "x"}]}}),
            )
            .await;
        let error = assert_error(r, 400, "invalid_callback_url").await;
        assert_eq!(error["param"], "callback_url", "{url}");
    }
    assert_eq!(up.calls(), 0);
    println!(
        "hostile-edge: {} callback URLs in special ranges and IPv4-in-IPv6 forms: all 400",
        urls.len()
    );
}

// ---- What a key may see ----------------------------------------------------------------------

/// `/v1/usage` shows a key its key and tenant levels, never the gateway's; `/admin/usage`
/// shows the gateway level. A request refused by the gateway-wide cap learns that, not the
/// cap's amount (no figure in the message, no `RateLimit-Limit`/`-Remaining`).
#[tokio::test]
async fn a_key_never_sees_the_gateway_wide_budget() {
    let up = FakeUpstream::start().await;
    let gw = TestGateway::start(&fake_config_with(
        &up.base_url,
        "[limits]\nglobal_budget_usd = 0.000123\nglobal_period = \"day\"\n\
         [[tenants]]\nname = \"seen\"\nrpm = 100\nbudget_usd = 5.0\nperiod = \"day\"\n",
    ))
    .await;
    let key = gw
        .admin_create(json!({"tenant": "seen", "rpm": 100, "budget_usd": 1.0, "period": "day"}))
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = gw.usage(&key).await;
    let levels: Vec<&String> = mine["limits"].as_object().unwrap().keys().collect();
    assert_eq!(levels, ["key", "tenant"], "{mine}");
    assert!(!mine.to_string().contains("0.000123"), "{mine}");
    let admin = json(
        gw.http
            .get(format!("{}/admin/usage?tenant=seen", gw.url))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        admin["limits"]["gateway"]["budget"]["cap_usd"], 0.000123,
        "{admin}"
    );

    // A request the gateway cap could never hold: 400, and still no figure of the cap.
    let huge = json!({"model": "gpt-test", "max_tokens": 1_000_000,
        "messages": [{"role": "user", "content": "beyond the gateway cap"}]});
    let r = gw.post("/v1/chat/completions", &key, &huge).await;
    let error = assert_error(r, 400, "request_exceeds_budget").await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("gateway") && !message.contains("0.000123"),
        "{message}"
    );

    // A request the cap holds, refused because the cap is spent for now: 429 with when it
    // resets, but not the cap's amount or what is left of it.
    let small = |text: &str| {
        json!({"model": "gpt-test", "max_tokens": 5,
               "messages": [{"role": "user", "content": text}]})
    };
    // The fake bills 10 + 5 tokens, $0.0000045 a call: after a few dozen the cap has no
    // room for another one's worst case.
    let mut answered = 0;
    loop {
        let text = format!("spend {answered}");
        let r = gw.post("/v1/chat/completions", &key, &small(&text)).await;
        if r.status() != 200 {
            break;
        }
        answered += 1;
        assert!(answered < 100, "the gateway cap never filled");
    }
    let r = gw
        .post("/v1/chat/completions", &key, &small("over the gateway cap"))
        .await;
    assert!(r.headers().get("ratelimit-limit").is_none());
    assert!(r.headers().get("ratelimit-remaining").is_none());
    assert!(r.headers().get("retry-after").is_some());
    let error = assert_error(r, 429, "budget_exceeded").await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("gateway") && !message.contains('$') && !message.contains("0.000123"));
    assert_eq!(up.calls(), answered, "only the requests that fit were sent");
}

/// With `server.metrics_token` set, `/metrics` answers 401 (OpenAI's shape, with
/// `WWW-Authenticate: Bearer`) to no token, a wrong one, a gateway key and the admin key, and
/// Prometheus text to the token; without one it is open. The OpenAPI document says both.
#[tokio::test]
async fn metrics_need_the_configured_token_when_one_is_set() {
    let up = FakeUpstream::start().await;
    let token = format!("scrape-{}", sluice::keys::random_alnum(24));
    let config = fake_config(&up.base_url).replacen(
        "[server]\n",
        &format!("[server]\nmetrics_token = \"{token}\"\n"),
        1,
    );
    let gw = TestGateway::start(&config).await;
    let _ = gw
        .chat(&gw.create_key("m").await, "gpt-test", "count me")
        .await;
    let key = gw.create_key("metrics").await;
    let metrics = || gw.http.get(format!("{}/metrics", gw.url));
    for presented in [
        None,
        Some("wrong-token"),
        Some(key.as_str()),
        Some(ADMIN_KEY),
    ] {
        let request = match presented {
            Some(t) => metrics().bearer_auth(t),
            None => metrics(),
        };
        let r = request.send().await.unwrap();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_error(r, 401, "invalid_metrics_token").await;
    }
    let r = metrics().bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("sluice_requests_total"));
    let r = metrics().header("x-api-key", &token).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let open = TestGateway::start(&fake_config(&up.base_url)).await;
    let r = open
        .http
        .get(format!("{}/metrics", open.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let doc = json(
        open.http
            .get(format!("{}/openapi.json", open.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let op = &doc["paths"]["/metrics"]["get"];
    assert_eq!(op["security"], json!([{}, {"metrics_token": []}]), "{op}");
    assert!(op["responses"].get("401").is_some(), "{op}");
    assert_eq!(
        doc["components"]["securitySchemes"]["metrics_token"]["scheme"],
        "bearer"
    );
}
