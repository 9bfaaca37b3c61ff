//! Security checks on `sluice serve` as a process: keys are stored only as hashes (the SQLite
//! file read directly), no key or provider secret reaches any log line, metric, error body,
//! job result or callback, and bodies over the limit are refused without being read whole.
//!
//! Each test prints what it tried (`security:` lines) for RELIABILITY.md:
//! `cargo test -p sluice-cli --test it security:: -- --nocapture`.
//! Tenant isolation, the admin API and callback addresses are in `tests/tests/it/e2e/security.rs`.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::{Duration, Instant};

use common::{Served, sluice};
use serde_json::{Value, json};
use sluice_tests::{Behaviour, CallbackReceiver, FakeUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Length of the windows of a secret that must appear nowhere: longer than the four
/// characters `hint` keeps for key lists, so any longer piece of a secret counts as a leak.
const WINDOW: usize = 8;

/// Random letters and digits, distinct for every secret of a run.
fn random(n: usize) -> String {
    sluice::keys::random_alnum(n)
}

/// Every `WINDOW`-long piece of `secret` after its fixed prefix.
fn windows(secret: &str, prefix: &str) -> Vec<String> {
    let body = secret.strip_prefix(prefix).unwrap_or(secret);
    let chars: Vec<char> = body.chars().collect();
    chars.windows(WINDOW).map(|w| w.iter().collect()).collect()
}

/// The first piece of any secret in `secrets` found in `haystack`, as (secret, piece).
fn find_leak<'a>(
    haystack: &[u8],
    secrets: &'a [(String, Vec<String>)],
) -> Option<(&'a str, &'a str)> {
    let text = String::from_utf8_lossy(haystack);
    secrets.iter().find_map(|(secret, pieces)| {
        if text.contains(secret.as_str()) {
            return Some((secret.as_str(), secret.as_str()));
        }
        pieces
            .iter()
            .find(|p| text.contains(p.as_str()))
            .map(|p| (secret.as_str(), p.as_str()))
    })
}

#[tokio::test]
async fn keys_are_stored_only_as_hashes_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("keys.db");
    let admin = format!("sk-sluice-admin-{}", random(32));
    let mut keys = Vec::new();
    // Through the command line, before and while the server runs.
    let cli_create = |tenant: &str, extra: &[&str]| {
        let mut args = vec![
            "keys",
            "create",
            "--tenant",
            tenant,
            "--db",
            db.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = sluice(&args, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    keys.push(cli_create("cli-1", &[]));
    let served = Served::start(&db, &[], &[("SLUICE_ADMIN_KEY", &admin)]);
    keys.push(cli_create(
        "cli-2",
        &[
            "--rpm",
            "60",
            "--budget-usd",
            "1",
            "--period",
            "day",
            "--name",
            "ci",
        ],
    ));
    // Through the admin API.
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for spec in [
        json!({"tenant": "api-1"}),
        json!({"tenant": "api-2", "name": "with limits", "rpm": 10,
               "budget_usd": 0.5, "period": "month"}),
        json!({"tenant": "api-3"}),
    ] {
        let created: Value = http
            .post(format!("{}/admin/keys", served.url))
            .bearer_auth(&admin)
            .json(&spec)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        keys.push(created["key"].as_str().unwrap().to_owned());
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    // Every key is used once (lookups, counters, cache entries, usage) and one is revoked.
    for key in &keys {
        let r = http
            .post(format!("{}/v1/chat/completions", served.url))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = http
        .delete(format!("{}/admin/keys/{}", served.url, ids[2]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for key in &keys {
        assert!(key.starts_with("sk-sluice-") && key.len() == 50, "{key}");
    }
    let secrets: Vec<(String, Vec<String>)> = keys
        .iter()
        .map(|k| (k.clone(), windows(k, "sk-sluice-")))
        .collect();

    // Read every cell of every table while the server still holds the file open.
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let (mut columns, mut rows, mut cells) = (0, 0, 0);
    let mut all_text = String::new();
    for table in &tables {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{}\"", table.replace('"', "\"\"")))
            .unwrap();
        let n = stmt.column_count();
        columns += n;
        let mut result = stmt.query([]).unwrap();
        while let Some(row) = result.next().unwrap() {
            rows += 1;
            for i in 0..n {
                cells += 1;
                let bytes: Vec<u8> = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                        t.to_vec()
                    }
                    other => format!("{other:?}").into_bytes(),
                };
                if let Some((secret, piece)) = find_leak(&bytes, &secrets) {
                    panic!("{table} column {i} holds `{piece}` of key {secret}");
                }
                all_text.push_str(&String::from_utf8_lossy(&bytes));
                all_text.push('\n');
            }
        }
    }
    // The scan saw the keys: each one's SHA-256 is there, and nothing more of it than the hint.
    for key in &keys {
        let hash = sluice::keys::KeyHash::of(key).to_hex();
        assert!(all_text.contains(&hash), "no stored hash for a created key");
    }
    drop(conn);
    drop(served); // kill -9: the WAL keeps whatever was written

    // And the raw bytes of the database, its WAL and shared memory (free pages included).
    let mut files = 0;
    let mut bytes_scanned = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        if let Some((secret, piece)) = find_leak(&raw, &secrets) {
            panic!("{} holds `{piece}` of key {secret}", path.display());
        }
        files += 1;
        bytes_scanned += raw.len();
    }
    println!(
        "security: keys as hashes (SQLite): {} keys (2 via `sluice keys create`, 3 via \
         POST /admin/keys), {} tables / {columns} columns / {rows} rows / {cells} cells and \
         {files} files / {bytes_scanned} raw bytes scanned for each key and its {} {WINDOW}-char \
         pieces: none found",
        keys.len(),
        tables.len(),
        secrets[0].1.len()
    );
}

/// Everything a client, operator or receiver could see, gathered for the scan.
#[derive(Default)]
struct Seen {
    /// (what, text) pairs.
    items: Vec<(String, String)>,
    requests: usize,
}

impl Seen {
    fn add(&mut self, what: impl Into<String>, text: impl Into<String>) {
        self.items.push((what.into(), text.into()));
    }

    /// Sends a request and keeps its status line, headers and body.
    async fn send(&mut self, what: &str, req: reqwest::RequestBuilder) -> (u16, String) {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let mut text = format!("{status}\n");
        for (k, v) in r.headers() {
            text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        let body = r.text().await.unwrap();
        text.push_str(&body);
        self.add(what, text);
        self.requests += 1;
        (status, body)
    }
}

#[tokio::test]
async fn no_key_or_provider_secret_in_any_log_metric_error_or_job_result() {
    let up = FakeUpstream::start().await;
    let hook = CallbackReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let log = dir.path().join("logs/sluice.log");
    let admin = format!("sk-sluice-admin-{}", random(32));
    let openai_key = format!("sk-proj-{}", random(40));
    let anthropic_key = format!("sk-ant-api03-{}", random(40));
    let gemini_key = format!("AIza{}", random(35));
    let callback_secret = format!("whsec_{}", random(32));
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
upstream_timeout_s = 1
max_body_bytes = 65536

[routing]
attempts_per_deployment = 1
circuit_failures = 1000000
backoff_base_ms = 1
backoff_max_ms = 5

[[providers]]
name = "oa"
kind = "openai"
base_url = "{base}"
api_keys = ["${{SEC_OPENAI_KEY}}"]

[[providers]]
name = "an"
kind = "anthropic"
base_url = "{base}"
api_keys = ["${{SEC_ANTHROPIC_KEY}}"]

[[providers]]
name = "gm"
kind = "gemini"
base_url = "{gemini}"
api_keys = ["${{SEC_GEMINI_KEY}}"]

[[models]]
name = "gpt-test"
deployments = [{{ provider = "oa", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
stale_fallback = false

[[models]]
name = "claude"
deployments = [{{ provider = "an", model = "claude-sonnet-4-5" }}]
price = {{ input_per_mtok = 3.0, output_per_mtok = 15.0 }}
stale_fallback = false

[[models]]
name = "gem"
deployments = [{{ provider = "gm", model = "gemini-2.0-flash" }}]
price = {{ input_per_mtok = 0.10, output_per_mtok = 0.40 }}
stale_fallback = false

[[models]]
name = "embed-test"
deployments = [{{ provider = "oa", model = "text-embedding-3-small" }}]

[jobs]
workers = 1
batch_window_ms = 20
callback_secret = "${{SEC_CALLBACK_SECRET}}"
allow_private_callbacks = true

[metrics]
flush_every_ms = 50

[logging]
bodies = true
"#,
            base = up.base_url,
            gemini = up.gemini_url
        ),
    )
    .unwrap();
    let served = Served::start(
        &db,
        &[
            "--config",
            config.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        &[
            ("SLUICE_ADMIN_KEY", &admin),
            ("SEC_OPENAI_KEY", &openai_key),
            ("SEC_ANTHROPIC_KEY", &anthropic_key),
            ("SEC_GEMINI_KEY", &gemini_key),
            ("SEC_CALLBACK_SECRET", &callback_secret),
        ],
    );
    let url = served.url.clone();
    let http = reqwest::Client::new();
    let mut seen = Seen::default();

    // Keys: the creation answers are the one place a key is shown, so they are not scanned.
    let create = async |tenant: &str| -> (String, String) {
        let created: Value = http
            .post(format!("{url}/admin/keys"))
            .bearer_auth(&admin)
            .json(&json!({"tenant": tenant}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            created["key"].as_str().unwrap().to_owned(),
            created["id"].as_str().unwrap().to_owned(),
        )
    };
    let (key, _) = create("acme").await;
    let (other, _) = create("other").await;
    let (revoked, revoked_id) = create("acme").await;
    seen.send(
        "revoke",
        http.delete(format!("{url}/admin/keys/{revoked_id}"))
            .bearer_auth(&admin),
    )
    .await;
    let wrong = format!("sk-sluice-{}", random(40));
    let chat = |model: &str, prompt: &str| json!({"model": model, "messages": [{"role": "user", "content": prompt}]});
    let post = |path: &str, k: &str, body: &Value| {
        http.post(format!("{url}{path}")).bearer_auth(k).json(body)
    };

    // Good requests on every provider, format and mode.
    for model in ["gpt-test", "claude", "gem"] {
        let (status, _) = seen
            .send(
                "chat",
                post("/v1/chat/completions", &key, &chat(model, "hello")),
            )
            .await;
        assert_eq!(status, 200, "{model}");
        seen.send(
            "cache hit",
            post("/v1/chat/completions", &key, &chat(model, "hello")),
        )
        .await;
        let mut streamed = chat(model, "stream it");
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        let (status, _) = seen
            .send("stream", post("/v1/chat/completions", &other, &streamed))
            .await;
        assert_eq!(status, 200, "{model} stream");
        let messages = json!({"model": model, "max_tokens": 20,
            "messages": [{"role": "user", "content": "via messages"}]});
        seen.send("messages", post("/v1/messages", &key, &messages))
            .await;
        let mut messages = messages;
        messages["stream"] = json!(true);
        seen.send("messages stream", post("/v1/messages", &key, &messages))
            .await;
    }
    let embed = json!({"model": "embed-test", "input": ["a", "b"]});
    seen.send("embeddings", post("/v1/embeddings", &key, &embed))
        .await;
    for _ in 0..2 {
        seen.send(
            "idempotent",
            post("/v1/chat/completions", &key, &chat("gpt-test", "once"))
                .header("idempotency-key", "k1"),
        )
        .await;
    }

    // Bad credentials of every kind, on model and admin routes.
    let body = chat("gpt-test", "who am I");
    for (what, req) in [
        ("wrong key", post("/v1/chat/completions", &wrong, &body)),
        ("revoked key", post("/v1/chat/completions", &revoked, &body)),
        (
            "admin key as gateway key",
            post("/v1/chat/completions", &admin, &body),
        ),
        (
            "wrong x-api-key",
            http.post(format!("{url}/v1/messages"))
                .header("x-api-key", &wrong)
                .json(&body),
        ),
        (
            "no key",
            http.post(format!("{url}/v1/chat/completions")).json(&body),
        ),
        (
            "basic auth",
            http.post(format!("{url}/v1/chat/completions"))
                .header("authorization", format!("Basic {wrong}"))
                .json(&body),
        ),
        (
            "tenant key on admin",
            http.get(format!("{url}/admin/keys")).bearer_auth(&key),
        ),
        (
            "wrong key on admin",
            http.get(format!("{url}/admin/keys")).bearer_auth(&wrong),
        ),
        (
            "wrong key on usage",
            http.get(format!("{url}/v1/usage")).bearer_auth(&wrong),
        ),
        (
            "wrong key on metrics",
            http.get(format!("{url}/v1/metrics")).bearer_auth(&wrong),
        ),
    ] {
        let (status, _) = seen.send(what, req).await;
        assert!(matches!(status, 401 | 403), "{what}: {status}");
    }

    // Bad requests.
    for (what, req) in [
        (
            "malformed json",
            http.post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{\"model\": "),
        ),
        (
            "unknown model",
            post("/v1/chat/completions", &key, &chat("nope", "x")),
        ),
        (
            "bad field",
            post(
                "/v1/chat/completions",
                &key,
                &json!({"model": "gpt-test", "messages": 7}),
            ),
        ),
        (
            "too large",
            post(
                "/v1/chat/completions",
                &key,
                &chat("gpt-test", &"x".repeat(70_000)),
            ),
        ),
        (
            "bad callback",
            post(
                "/v1/jobs",
                &key,
                &json!({"endpoint": "/v1/chat/completions", "request": body,
                        "callback_url": "ftp://example.com/x"}),
            ),
        ),
    ] {
        let (status, _) = seen.send(what, req).await;
        assert!((400..500).contains(&status), "{what}: {status}");
    }

    // Upstream failures of every kind, on every provider, sync and streamed; among them
    // providers whose error message repeats the key they were sent.
    let failures = [
        Behaviour::Status(500, None),
        Behaviour::Status(401, None),
        Behaviour::Status(403, None),
        Behaviour::Status(429, Some(1)),
        Behaviour::Status(400, None),
        Behaviour::Garbage,
        Behaviour::ErrorIn200,
        Behaviour::EchoKey(400),
        Behaviour::EchoKey(401),
        Behaviour::EchoKey(404),
        Behaviour::EchoKey(422),
        Behaviour::EchoKey(500),
        Behaviour::Slow(Duration::from_millis(1500)), // past the 1 s upstream timeout
    ];
    let mut upstream_errors = 0;
    for (i, failure) in failures.iter().enumerate() {
        up.set(failure.clone());
        for model in ["gpt-test", "claude", "gem"] {
            let prompt = format!("fail {i} {model}");
            let (status, _) = seen
                .send(
                    "upstream error",
                    post("/v1/chat/completions", &key, &chat(model, &prompt)),
                )
                .await;
            assert!(status >= 400, "{failure:?} on {model}: {status}");
            let mut streamed = chat(model, &format!("stream {prompt}"));
            streamed["stream"] = json!(true);
            seen.send(
                "upstream error stream",
                post("/v1/chat/completions", &key, &streamed),
            )
            .await;
            upstream_errors += 2;
        }
    }

    // Jobs: one that succeeds and one per echoing failure, all with signed callbacks.
    let mut job_ids = Vec::new();
    up.set(Behaviour::Ok);
    for (i, behaviour) in [
        Behaviour::Ok,
        Behaviour::EchoKey(400),
        Behaviour::EchoKey(401),
    ]
    .into_iter()
    .enumerate()
    {
        up.set(behaviour);
        let (status, body) = seen
            .send(
                "job submit",
                post(
                    "/v1/jobs",
                    &key,
                    &json!({"endpoint": "/v1/chat/completions",
                            "request": chat("gpt-test", &format!("job {i}")),
                            "callback_url": hook.url}),
                ),
            )
            .await;
        assert_eq!(status, 202);
        let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let started = Instant::now();
        loop {
            let (_, job) = seen
                .send(
                    "job",
                    http.get(format!("{url}/v1/jobs/{id}")).bearer_auth(&key),
                )
                .await;
            let job: Value = serde_json::from_str(&job).unwrap();
            if job["status"] == "succeeded" || job["status"] == "failed" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{job}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        job_ids.push(id);
    }
    up.set(Behaviour::Ok);
    let callbacks = hook.wait_for(job_ids.len()).await;
    for c in &callbacks {
        let mut text = String::new();
        for (k, v) in &c.headers {
            text.push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        text.push_str(&String::from_utf8_lossy(&c.body));
        seen.add("callback", text);
    }

    // Metrics and usage, once the aggregator has caught up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, req) in [
        ("prometheus", http.get(format!("{url}/metrics"))),
        (
            "metrics",
            http.get(format!("{url}/v1/metrics")).bearer_auth(&key),
        ),
        (
            "metrics by provider",
            http.get(format!("{url}/v1/metrics?group_by=provider"))
                .bearer_auth(&key),
        ),
        (
            "metrics by tenant",
            http.get(format!("{url}/v1/metrics?group_by=tenant"))
                .bearer_auth(&admin),
        ),
        (
            "usage",
            http.get(format!("{url}/v1/usage")).bearer_auth(&key),
        ),
        (
            "admin usage",
            http.get(format!("{url}/admin/usage?tenant=acme"))
                .bearer_auth(&admin),
        ),
        (
            "key list",
            http.get(format!("{url}/admin/keys")).bearer_auth(&admin),
        ),
        (
            "models",
            http.get(format!("{url}/v1/models")).bearer_auth(&key),
        ),
    ] {
        let (status, _) = seen.send(what, req).await;
        assert_eq!(status, 200, "{what}");
    }
    let prometheus = &seen
        .items
        .iter()
        .find(|(w, _)| w == "prometheus")
        .unwrap()
        .1;
    assert!(prometheus.contains("sluice_requests_total"), "{prometheus}");

    // The logs: stdout, stderr, the log file, and `sluice logs` for some requests.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = std::fs::read_to_string(&log).unwrap();
    let mut request_ids: Vec<String> = file
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["request_id"].as_str().map(str::to_owned))
        .collect();
    request_ids.dedup();
    for id in request_ids.iter().step_by(10) {
        let out = sluice(
            &[
                "logs",
                "--request-id",
                id,
                "--log-file",
                log.to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success());
        seen.add("sluice logs", String::from_utf8_lossy(&out.stdout));
    }
    let stdout = served.stdout.lock().unwrap().clone();
    let stderr = served.stderr.lock().unwrap().clone();
    let mut log_lines = 0;
    for (what, lines) in [("stdout", &stdout), ("stderr", &stderr)] {
        for l in lines {
            seen.add(what, l.clone());
            log_lines += 1;
        }
    }
    for l in file.lines() {
        seen.add("log file", l);
        log_lines += 1;
    }
    // The logs hold the failures (so the scan reads what it should).
    assert!(
        file.contains("provider call failed"),
        "no upstream failure was logged"
    );
    assert!(file.contains("request_body"), "bodies were not logged");

    let mut secrets: Vec<(String, Vec<String>)> = Vec::new();
    for (secret, prefix) in [
        (&key, "sk-sluice-"),
        (&other, "sk-sluice-"),
        (&revoked, "sk-sluice-"),
        (&wrong, "sk-sluice-"),
        (&admin, "sk-sluice-admin-"),
        (&openai_key, "sk-proj-"),
        (&anthropic_key, "sk-ant-api03-"),
        (&gemini_key, "AIza"),
        (&callback_secret, "whsec_"),
    ] {
        secrets.push((secret.clone(), windows(secret, prefix)));
    }
    // And what the gateway stored: database, WAL (job results, cache entries, counters).
    drop(served);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let raw = std::fs::read(&path).unwrap();
            seen.add(
                format!("file {}", path.display()),
                String::from_utf8_lossy(&raw),
            );
        }
    }
    let mut bytes = 0;
    for (what, text) in &seen.items {
        if let Some((secret, piece)) = find_leak(text.as_bytes(), &secrets) {
            panic!("`{piece}` of secret {secret} appears in {what}: {text}");
        }
        bytes += text.len();
    }
    // The provider did get its keys (so the scan looks for strings that were in play).
    let sent: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| {
            ["authorization", "x-api-key", "x-goog-api-key"]
                .iter()
                .find_map(|h| r.headers.get(*h))
                .map(|v| v.to_str().unwrap().trim_start_matches("Bearer ").to_owned())
        })
        .collect();
    for k in [&openai_key, &anthropic_key, &gemini_key] {
        assert!(sent.contains(k), "the provider never saw {k}");
    }
    println!(
        "security: secrets: {} requests ({upstream_errors} upstream failures over 3 providers, \
         {} jobs, {} callbacks), {log_lines} log lines, the database files; {} items / {bytes} bytes scanned for {} \
         secrets (4 gateway keys, admin key, 3 provider keys, callback secret) and their \
         {WINDOW}-char pieces: none found",
        seen.requests,
        job_ids.len(),
        callbacks.len(),
        seen.items.len(),
        secrets.len()
    );
}

/// Peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// What one oversized upload saw.
struct Upload {
    status: u16,
    body: Value,
    /// Body bytes written before the answer arrived.
    sent_before_answer: u64,
    /// Body bytes written before the server closed the connection (or we gave up).
    sent_total: u64,
    closed: bool,
}

/// Declared size of the oversized bodies: 100 MB.
const HUGE: u64 = 100 * 1024 * 1024;

/// POSTs a body of [`HUGE`] bytes over a raw socket, 8 KiB every 5 ms until the answer
/// comes, then as fast as the socket takes it, and records how much was written before the
/// answer and before the server hung up. `chunked` sends it without a length.
async fn upload(addr: &str, path: &str, key: &str, chunked: bool) -> Upload {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let framing = if chunked {
        "transfer-encoding: chunked".to_owned()
    } else {
        format!("content-length: {HUGE}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\n\
         x-api-key: {key}\r\ncontent-type: application/json\r\n{framing}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if response_complete(&got) {
                break;
            }
        }
        got
    });
    let prefix = br#"{"model":"gpt-test","input":"#;
    let chunk = [b'x'; 8 * 1024];
    let mut sent = 0u64;
    let mut sent_before_answer = None;
    let mut closed = false;
    let started = Instant::now();
    while sent < HUGE {
        if sent_before_answer.is_none() && reader.is_finished() {
            sent_before_answer = Some(sent);
        }
        // Past the answer, keep pushing for a while to see whether the server stops reading.
        if sent_before_answer.is_some_and(|b| sent > b + 32 * 1024 * 1024)
            || started.elapsed() > Duration::from_secs(20)
        {
            break;
        }
        let data: &[u8] = if sent == 0 { prefix } else { &chunk };
        let result = if chunked {
            let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
            framed.extend_from_slice(data);
            framed.extend_from_slice(b"\r\n");
            wr.write_all(&framed).await
        } else {
            wr.write_all(data).await
        };
        if result.is_err() {
            closed = true;
            break;
        }
        sent += data.len() as u64;
        if sent_before_answer.is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("no answer to an oversized body")
        .unwrap();
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    Upload {
        status,
        body,
        sent_before_answer: sent_before_answer.unwrap_or(sent),
        sent_total: sent,
        closed,
    }
}

/// Whether `got` holds a whole HTTP response with a `content-length` body.
fn response_complete(got: &[u8]) -> bool {
    let text = String::from_utf8_lossy(got);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .is_some_and(|n| body.len() >= n)
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_without_being_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let limit = 65_536u64;
    let config = dir.path().join("limit.toml");
    // Bodies are logged too, so the copy taken for the log is under test as well.
    std::fs::write(
        &config,
        format!(
            "[server]\nmax_body_bytes = {limit}\n\n[logging]\nbodies = true\n\n\
             [[providers]]\nname = \"mock\"\nkind = \"mock\"\n\n\
             [[models]]\nname = \"gpt-4o-mini\"\n\
             deployments = [{{ provider = \"mock\", model = \"mock-chat\" }}]\n"
        ),
    )
    .unwrap();
    let admin = format!("sk-sluice-admin-{}", random(32));
    let served = Served::start(
        &db,
        &["--config", config.to_str().unwrap()],
        &[("SLUICE_ADMIN_KEY", &admin)],
    );
    let key = common::create_key(&db, "t1");
    let addr = served.url.trim_start_matches("http://").to_owned();
    let pid = served.child.id();
    // Warm up: one ordinary request of each kind.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rss_before = peak_rss_kib(pid);

    let routes = [
        ("/v1/chat/completions", key.as_str()),
        ("/v1/embeddings", key.as_str()),
        ("/v1/messages", key.as_str()),
        ("/v1/jobs", key.as_str()),
        ("/admin/keys", admin.as_str()),
    ];
    let mut uploads = 0;
    let mut max_before_answer = 0;
    let mut max_total = 0;
    for (path, k) in routes {
        for chunked in [false, true] {
            let u = upload(&addr, path, k, chunked).await;
            let what = format!("{path} chunked={chunked}");
            println!(
                "  {what}: {} -> {} bytes before the answer, {} before close (closed: {})",
                u.status, u.sent_before_answer, u.sent_total, u.closed
            );
            assert_eq!(u.status, 413, "{what}: {}", u.body);
            if path == "/v1/messages" {
                assert_eq!(u.body["type"], "error", "{what}: {}", u.body);
                assert_eq!(u.body["error"]["type"], "request_too_large", "{}", u.body);
            } else {
                assert_eq!(
                    u.body["error"]["code"], "request_too_large",
                    "{what}: {}",
                    u.body
                );
                assert_eq!(
                    u.body["error"]["type"], "invalid_request_error",
                    "{}",
                    u.body
                );
            }
            // The answer came once the limit was passed, not at the end of the body (the
            // margin is what the client writes while the answer is on its way).
            assert!(
                u.sent_before_answer <= limit + 512 * 1024,
                "{what}: {} bytes sent before the 413",
                u.sent_before_answer
            );
            // And the server stopped taking the rest.
            assert!(
                u.closed && u.sent_total < HUGE / 4,
                "{what}: the server kept reading ({} bytes, closed: {})",
                u.sent_total,
                u.closed
            );
            max_before_answer = max_before_answer.max(u.sent_before_answer);
            max_total = max_total.max(u.sent_total);
            uploads += 1;
        }
    }
    let rss_after = peak_rss_kib(pid);
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(
        growth_kib < 32 * 1024,
        "peak memory grew by {growth_kib} KiB over {uploads} uploads of {HUGE} bytes"
    );
    // Still serving.
    let r = reqwest::Client::new()
        .get(format!("{}/health", served.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    println!(
        "security: body limit: {uploads} uploads declaring {HUGE} bytes ({} routes, with \
         content-length and chunked) against max_body_bytes = {limit}: all 413; at most \
         {max_before_answer} body bytes sent before the answer, at most {max_total} before the \
         server closed; peak RSS {rss_before} KiB -> {rss_after} KiB (+{growth_kib} KiB)",
        routes.len()
    );
}
