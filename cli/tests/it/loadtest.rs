//! `sluice loadtest` against a real `sluice serve` on the built-in mock provider: the
//! closed model with repeated prompts, the open model, streams, and `--fail-on-error`.
//! Only counts are checked, never timing.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const ADMIN: &str = "sk-sluice-admin-loadtest";

/// A `sluice serve` on 127.0.0.1:0 with a temporary database and a known admin key.
struct Served {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(dir.path().join("s.db"))
            .env("SLUICE_ADMIN_KEY", ADMIN)
            .env("SLUICE_LOG", "warn")
            .env_remove("SLUICE_CONFIG")
            .env_remove("SLUICE_LISTEN")
            .env_remove("SLUICE_DB")
            .env_remove("SLUICE_LOG_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Sluice listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("sluice serve did not start");
        Self {
            child,
            url,
            _dir: dir,
        }
    }

    async fn create_key(&self) -> String {
        let created: Value = reqwest::Client::new()
            .post(format!("{}/admin/keys", self.url))
            .bearer_auth(ADMIN)
            .json(&json!({"tenant": "load"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        created["key"].as_str().unwrap().to_owned()
    }
}

/// Runs `sluice loadtest ARGS --json`; the exit status and the summary.
fn loadtest(url: &str, key: &str, args: &[&str]) -> (std::process::ExitStatus, Value) {
    let out = Command::new(BIN)
        .args(["loadtest", "--url", url, "--key", key, "--json"])
        .args(args)
        .env_remove("SLUICE_URL")
        .env_remove("SLUICE_KEY")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status, summary)
}

fn assert_clean(s: &Value) {
    assert!(s["ok"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["errors"], 0, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["sent"], s["ok"], "{s}");
    assert_eq!(s["errors_by_status"], json!({}), "{s}");
    let l = &s["latency_ms"];
    let ms = |k: &str| l[k].as_f64().unwrap();
    assert!(ms("min") <= ms("p50") && ms("p50") <= ms("p95"), "{s}");
    assert!(ms("p95") <= ms("p99") && ms("p99") <= ms("max"), "{s}");
}

#[tokio::test]
async fn closed_model_with_repeated_prompts_gets_cache_hits() {
    let served = Served::start();
    let key = served.create_key().await;
    // The command as written, plus --repeat and --json.
    let (status, s) = loadtest(
        &served.url,
        &key,
        &[
            "--model",
            "gpt-4o-mini",
            "--concurrency",
            "4",
            "--duration",
            "2s",
            "--repeat",
            "0.5",
            "--fail-on-error",
        ],
    );
    assert!(status.success(), "{s}");
    assert_clean(&s);
    assert_eq!(s["load"], "closed");
    assert_eq!(s["concurrency"], 4);
    assert_eq!(s["model"], "gpt-4o-mini");
    assert_eq!(s["ttfb_ms"], Value::Null);
    // Half the prompts come from a pool of ten: all but their first uses can be hits.
    let (ok, hits) = (s["ok"].as_u64().unwrap(), s["cache_hits"].as_u64().unwrap());
    assert!(hits > 0, "{s}");
    assert!(hits <= ok / 2, "{s}");
    // Two workers may send a pooled prompt's first use at once: one answer, coalesced.
    let coalesced = s["cache"]["coalesced"].as_u64().unwrap_or(0);
    assert_eq!(
        s["cache"]["hit"].as_u64().unwrap() + s["cache"]["miss"].as_u64().unwrap() + coalesced,
        ok
    );
}

#[tokio::test]
async fn open_model_sends_every_slot_of_the_duration() {
    let served = Served::start();
    let key = served.create_key().await;
    let (status, s) = loadtest(
        &served.url,
        &key,
        &["--rate", "50", "--duration", "2s", "--fail-on-error"],
    );
    assert!(status.success(), "{s}");
    assert_clean(&s);
    assert_eq!(s["load"], "open");
    assert_eq!(s["rate"], 50.0);
    // 50/s for 2 s is 100 slots, each sent or (with the in-flight cap full) dropped.
    assert_eq!(
        s["sent"].as_u64().unwrap() + s["dropped"].as_u64().unwrap(),
        100,
        "{s}"
    );
    // No repeated prompts: no hits.
    assert_eq!(s["cache_hits"], 0, "{s}");
}

#[tokio::test]
async fn streams_are_read_to_done_with_time_to_first_byte() {
    let served = Served::start();
    let key = served.create_key().await;
    let (status, s) = loadtest(
        &served.url,
        &key,
        &[
            "--stream",
            "--concurrency",
            "2",
            "--duration",
            "2s",
            "--repeat",
            "0.5",
            "--max-tokens",
            "8",
            "--fail-on-error",
        ],
    );
    assert!(status.success(), "{s}");
    assert_clean(&s);
    assert_eq!(s["stream"], true);
    // Every stream's first byte comes before its last, so each percentile does too.
    for k in ["p50", "p95", "p99", "max"] {
        let ttfb = s["ttfb_ms"][k].as_f64().unwrap();
        assert!(ttfb <= s["latency_ms"][k].as_f64().unwrap(), "{k}: {s}");
    }
    // A hit on a streamed request is replayed as a stream, also ending with [DONE].
    assert!(s["cache_hits"].as_u64().unwrap() > 0, "{s}");
}

#[tokio::test]
async fn failures_are_counted_by_status_and_fail_the_run_when_asked() {
    let served = Served::start();
    let (status, s) = loadtest(
        &served.url,
        "sk-sluice-not-a-key",
        &["--duration", "500ms", "--fail-on-error"],
    );
    assert!(!status.success(), "{s}");
    assert_eq!(s["ok"], 0, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert!(s["errors_by_status"]["401"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["errors"], s["sent"], "{s}");

    // Without --fail-on-error the run still reports, and exits 0.
    let (status, s) = loadtest(&served.url, "sk-sluice-not-a-key", &["--duration", "200ms"]);
    assert!(status.success(), "{s}");
    // An unknown model is a 404, also by status.
    let key = served.create_key().await;
    let (_, s) = loadtest(
        &served.url,
        &key,
        &["--duration", "200ms", "--model", "no-such-model"],
    );
    assert!(s["errors_by_status"]["404"].as_u64().unwrap() > 0, "{s}");
}

/// A one-trick server: answers every request 200 with an event stream that stops before
/// `data: [DONE]` (closing the connection), as a gateway that broke mid-stream would.
fn serve_cut_streams() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                // Read the head, then the body by its Content-Length, so closing is clean.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if conn.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                let _ = conn.read_exact(&mut body);
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n\
                      data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                );
            });
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_stream_without_done_is_an_error() {
    let url = serve_cut_streams();
    let (status, s) = loadtest(
        &url,
        "sk-any",
        &["--stream", "--duration", "300ms", "--fail-on-error"],
    );
    assert!(!status.success(), "{s}");
    assert_eq!(s["ok"], 0, "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["errors_by_status"]["truncated"], s["sent"], "{s}");
}
