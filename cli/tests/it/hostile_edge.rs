//! The server's edge against a hostile client, on the real `sluice serve` process (issue 13,
//! items 8 and 11): what needs a process of its own — a file-descriptor limit, a flood of
//! half-sent requests larger than that limit, proxy environment variables.
//!
//! Each test prints what it tried and measured (`hostile-edge:` lines) for RELIABILITY.md:
//! `cargo test -p sluice-cli --test it hostile_edge:: -- --nocapture`. The same limits in process
//! (deadlines, the cap's eviction order, 408, shutdown) are in
//! `tests/tests/it/e2e/hostile/edge.rs`.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{BIN, Served, create_key};
use serde_json::{Value, json};
use sluice_tests::CallbackReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The descriptor limit the flood test gives `sluice serve`.
const FD_LIMIT: u64 = 256;
/// Half-sent requests the flood test opens: four times that limit, or
/// `SLUICE_HOSTILE_FLOOD` (the 20,000 needs this process to have that many
/// descriptors itself: `ulimit -n`).
fn flood_size() -> usize {
    std::env::var("SLUICE_HOSTILE_FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_024)
}
/// The header deadline of the flood test, seconds.
const HEADER_TIMEOUT_S: u64 = 2;

/// A config with the offline mock provider, plus `extra` TOML before it.
fn write_config(dir: &Path, extra: &str) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(
        &path,
        format!(
            "{extra}\n\
             [[providers]]\nname = \"mock\"\nkind = \"mock\"\n\n\
             [[models]]\nname = \"gpt-4o-mini\"\n\
             deployments = [{{ provider = \"mock\", model = \"mock-chat\" }}]\n\
             price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// `sluice serve ARGS` under `sh -c '<limit>; exec sluice …'`: the limit applies to the
/// server alone, with nothing unsafe in this process.
fn serve_limited(limit: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("{limit} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args);
    Served::spawn_command(cmd, env)
}

/// Descriptors `pid` has open now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `GET /health` on a new connection: the status and how long the answer took.
async fn health(addr: &str) -> (u16, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nhost: sluice\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, started.elapsed())
}

/// 1,024 half-sent requests (a head without its end) against a server limited to 256
/// descriptors, held open by the client (`SLUICE_HOSTILE_FLOOD` for more). While they are held, `/health` and a chat completion
/// on new connections are answered at once; the server never holds more descriptors than
/// its limit nor logs an accept failure; every half-sent request is closed by the server
/// (evicted for room, or at the 2 s header deadline); and the process is still alive.
#[tokio::test]
async fn a_flood_of_half_sent_requests_past_the_fd_limit_never_stops_health() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flood.db");
    let key = create_key(&db, "flood");
    let config = write_config(
        dir.path(),
        &format!("[server]\nheader_read_timeout_s = {HEADER_TIMEOUT_S}\n"),
    );
    let mut served = serve_limited(
        &format!("ulimit -n {FD_LIMIT}"),
        &["--db", db.to_str().unwrap(), "--config", &config],
        &[],
    );
    let limits = served.wait_log(|v| v["message"] == "connection limits");
    assert_eq!(limits["fd_limit"], FD_LIMIT, "{limits}");
    let cap = limits["max_connections"].as_u64().unwrap();
    assert_eq!(cap, (FD_LIMIT - 64) / 2);
    let pid = served.child.id();
    let addr = served.url.trim_start_matches("http://").to_owned();

    // Descriptors of the server, sampled every 10 ms from before the flood to the end.
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicUsize::new(open_fds(pid)));
    let sampler = {
        let (sampling, peak) = (Arc::clone(&sampling), Arc::clone(&peak));
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let flood = flood_size();
    let flood_started = Instant::now();
    let mut held = Vec::with_capacity(flood);
    let mut slowest_connect = Duration::ZERO;
    for _ in 0..flood {
        let connecting = Instant::now();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        slowest_connect = slowest_connect.max(connecting.elapsed());
        // Writing may fail once the server has already closed this one for room.
        let _ = s
            .write_all(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: sluice\r\ncontent-length: 64\r\n",
            )
            .await;
        held.push(s);
    }
    let flood_took = flood_started.elapsed();

    let mut health_times = Vec::new();
    for _ in 0..5 {
        let (status, took) = health(&addr).await;
        assert_eq!(status, 200, "/health during the flood");
        health_times.push(took);
    }
    let started = Instant::now();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "still there?"}]}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let chat_took = started.elapsed();

    // Every half-sent request is closed by the server by the header deadline (+1 s).
    let deadline = Instant::now() + Duration::from_secs(HEADER_TIMEOUT_S + 1);
    let mut closed = 0;
    let mut buf = [0u8; 256];
    for s in &mut held {
        let left = deadline.saturating_duration_since(Instant::now());
        // The end, or a reset (the server closed with our bytes unread): closed either way.
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(left, s.read(&mut buf)).await {
            closed += 1;
        }
    }
    let all_closed_after = flood_started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);

    assert_eq!(
        closed, flood,
        "half-sent requests left open past the header deadline"
    );
    let slowest = health_times.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_secs(HEADER_TIMEOUT_S),
        "/health took {slowest:?}"
    );
    assert!(
        peak < FD_LIMIT as usize,
        "the server held {peak} descriptors"
    );
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    let (status, _) = health(&addr).await;
    assert_eq!(status, 200, "not alive after the flood");
    let stdout = served.stdout.lock().unwrap().join("\n");
    assert!(!stdout.contains("cannot accept connections"), "{stdout}");
    let stderr = served.stderr.lock().unwrap().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    println!(
        "hostile-edge: {flood} half-sent requests in {flood_took:?} (slowest connect \
         {slowest_connect:?}) against `sluice serve` with \
         {FD_LIMIT} descriptors (cap {cap} connections, header deadline {HEADER_TIMEOUT_S} s): \
         /health answered in {:?} (5 probes, slowest {slowest:?}), a chat completion in \
         {chat_took:?}; server descriptors peaked at {peak}; all {closed} closed by the server \
         {all_closed_after:?} after the flood began; no accept error",
        health_times.iter().min().unwrap()
    );
}

/// Started with a soft limit of 256 descriptors below a higher hard limit, `sluice serve`
/// raises the soft limit to the hard one and sizes its connection cap from that.
#[tokio::test]
async fn the_soft_fd_limit_is_raised_to_the_hard_limit() {
    let hard = Command::new("sh")
        .args(["-c", "ulimit -H -n"])
        .output()
        .unwrap();
    let hard = String::from_utf8(hard.stdout).unwrap();
    let hard: u64 = match hard.trim() {
        "unlimited" => u64::MAX,
        n => n.parse().unwrap(),
    };
    assert!(
        hard > FD_LIMIT,
        "the hard limit here is {hard}: nothing to raise"
    );
    let dir = tempfile::tempdir().unwrap();
    let served = serve_limited(
        &format!("ulimit -S -n {FD_LIMIT}"),
        &["--db", dir.path().join("raise.db").to_str().unwrap()],
        &[],
    );
    let limits = served.wait_log(|v| v["message"] == "connection limits");
    assert_eq!(limits["fd_limit"].as_u64(), Some(hard), "{limits}");
    let proc_limits =
        std::fs::read_to_string(format!("/proc/{}/limits", served.child.id())).unwrap();
    let line = proc_limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft and hard differ: {line}");
    println!(
        "hostile-edge: started with a soft limit of {FD_LIMIT} under a hard limit of {hard}: \
         raised to {}, connection cap {}",
        fields[3], limits["max_connections"]
    );
}

/// A loopback listener that counts the connections it is offered and answers none.
async fn counting_listener() -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            open.push(socket);
        }
    });
    (url, count, task)
}

/// With `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` (and their lower-case forms) pointing at a
/// loopback listener, a job's callback still goes straight to its receiver: the proxy is
/// offered no connection. (A proxy would connect in Sluice's place, past the public-only
/// resolver.) The variables are set on the server process only.
#[tokio::test]
async fn callbacks_ignore_proxy_environment_variables() {
    let (proxy, offered, proxy_task) = counting_listener().await;
    let receiver = CallbackReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("proxy.db");
    let key = create_key(&db, "proxied");
    let config = write_config(
        dir.path(),
        "[jobs]\nworkers = 1\ncallback_secret = \"whsec-edge\"\nallow_private_callbacks = true\n",
    );
    let proxy_env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|name| (name, proxy.as_str()))
    .collect();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
    ])
    .args(["--config", &config])
    .env_remove("NO_PROXY")
    .env_remove("no_proxy");
    let served = Served::spawn_command(cmd, &proxy_env);

    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("{}/v1/jobs", served.url))
        .bearer_auth(&key)
        .json(
            &json!({"endpoint": "/v1/chat/completions", "callback_url": receiver.url,
                      "request": {"model": "gpt-4o-mini",
                                  "messages": [{"role": "user", "content": "call me back"}]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let got = receiver.wait_for(1).await;
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["id"], job["id"]);
    assert_eq!(
        offered.load(Ordering::SeqCst),
        0,
        "the callback went to the proxy"
    );

    // The listener does count what a client that uses the proxy sends it.
    let proxied = reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(&proxy).unwrap())
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let _ = proxied.post(&receiver.url).body("{}").send().await;
    assert_eq!(offered.load(Ordering::SeqCst), 1);
    proxy_task.abort();
    println!(
        "hostile-edge: proxy variables set to a loopback listener: the job's callback reached \
         its receiver directly, the proxy was offered 0 connections"
    );
}
