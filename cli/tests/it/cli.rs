//! The `sluice` binary as users run it: `serve` as a real process (JSON logs on stdout and in
//! `--log-file`, the generated admin key on stderr, state kept across a `kill -9`), `keys`,
//! `config check`, `prices` and `logs`.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
// Test helpers outside #[test] functions fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_tests::FakeUpstream;

use crate::common;

use common::{BIN, Served, create_key, sluice};

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/sluice.example.toml")
}

#[tokio::test]
async fn serve_prints_an_admin_key_and_logs_one_json_line_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let served = Served::start(&dir.path().join("s.db"), &[], &[]);
    let admin = served.admin_key();
    assert!(admin.starts_with("sk-sluice-admin-"));
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{}/admin/keys", served.url))
        .bearer_auth(&admin)
        .json(&json!({"tenant": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let prompt = "a very private prompt 4711";
    let r = http
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();

    let line = served.wait_log(|v| v["request_id"] == request_id.as_str());
    assert_eq!(line["target"], "sluice::access");
    assert_eq!(line["status"], 200);
    assert_eq!(line["tenant"], "acme");
    assert_eq!(line["key_id"], created["id"]);
    assert_eq!(line["model"], "gpt-4o-mini");
    assert_eq!(line["deployment"], "mock/mock-chat");
    assert_eq!(line["cache"], "miss");
    assert!(line["latency_ms"].as_f64().unwrap() >= 0.0);
    assert!(line["tokens_in"].as_u64().unwrap() > 0);
    assert!(line["tokens_out"].as_u64().unwrap() > 0);
    assert!(line["cost_usd"].as_f64().unwrap() > 0.0);

    let log = served.stdout.lock().unwrap().join("\n");
    for secret in [key, admin.as_str(), prompt] {
        assert!(!log.contains(secret), "the log contains `{secret}`");
    }
    for l in served.stdout.lock().unwrap().iter() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"));
    }
}

#[tokio::test]
async fn keys_and_cache_survive_kill_dash_nine() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let key = create_key(&db, "t1");
    let body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "persist"}]});
    let http = reqwest::Client::new();
    let mut served = Served::start(&db, &[], &[]);
    let r = http
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-sluice-cache"], "miss");
    // The answer goes out first and its cache entry is written right after (a `kill -9` may
    // lose the last few milliseconds of entries, never a counter): kill once it is in the file.
    let stored = || {
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM cache_entries", [], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while stored() == 0 {
        assert!(Instant::now() < deadline, "the entry was never written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    served.child.kill().unwrap(); // SIGKILL: no graceful shutdown
    served.child.wait().unwrap();
    drop(served);

    let served = Served::start(&db, &[], &[]);
    let r = http
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-cache"], "hit");
}

#[test]
fn keys_create_list_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let db = db.to_str().unwrap();
    let out = sluice(
        &[
            "keys",
            "create",
            "--tenant",
            "t9",
            "--rpm",
            "10",
            "--tpm",
            "1000",
            "--budget-usd",
            "2.5",
            "--period",
            "month",
            "--json",
            "--db",
            db,
        ],
        &[],
    );
    assert!(out.status.success());
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let secret = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["rpm"], 10);
    assert_eq!(created["tpm"], 1000);
    assert_eq!(created["budget_usd"], 2.5);
    assert_eq!(created["period"], "month");

    let out = sluice(&["keys", "list", "--db", db], &[]);
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(listing.contains(id) && listing.contains("t9") && listing.contains("active"));
    assert!(!listing.contains(secret));

    let out = sluice(&["keys", "revoke", id, "--db", db], &[]);
    assert!(out.status.success());
    let out = sluice(&["keys", "list", "--json", "--db", db], &[]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed[0]["revoked_at"].is_u64());
    let out = sluice(&["keys", "revoke", id, "--db", db], &[]);
    assert!(!out.status.success(), "revoking twice must fail");

    let out = sluice(
        &[
            "keys",
            "create",
            "--tenant",
            "t",
            "--budget-usd",
            "1",
            "--db",
            db,
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("period"));
}

#[test]
fn config_check_accepts_the_example_and_names_bad_fields() {
    let example = example_config();
    let out = sluice(
        &["config", "check", example.to_str().unwrap()],
        &[("FAKE_KEY", "x")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .args(["config", "check", example.to_str().unwrap()])
        .env_remove("FAKE_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("providers[0].api_keys[0]") && err.contains("FAKE_KEY"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(&example)
        .unwrap()
        .replace("cache_ttl_s = 3600", "cache_ttl_s = -5");
    std::fs::write(&bad, text).unwrap();
    let out = sluice(
        &["config", "check", bad.to_str().unwrap()],
        &[("FAKE_KEY", "x")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("models[0].cache_ttl_s"), "{err}");
}

#[test]
fn prices_shows_each_component_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prices.toml");
    std::fs::write(
        &config,
        r#"
[[providers]]
name = "p"
kind = "mock"

[[models]]
name = "own"
deployments = [{ provider = "p", model = "my-finetune" }]
price = { input_per_mtok = 1.5, output_per_mtok = 6, cached_input_per_mtok = 0.5 }

[[models]]
name = "sonnet"
deployments = [{ provider = "p", model = "claude-sonnet-4-5-20250929" }]

[[models]]
name = "custom"
deployments = [{ provider = "p", model = "my-finetune" }]
"#,
    )
    .unwrap();
    let path = config.to_str().unwrap();
    let out = sluice(&["prices", "--config", path], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Each model's lines: its name, then its indented lines.
    let section = |name: &str| -> String {
        let mut lines = text.lines().skip_while(|l| *l != name);
        assert!(lines.next().is_some(), "no {name}: {text}");
        lines
            .take_while(|l| l.starts_with(' '))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let own = section("own");
    assert!(
        own.contains("price from: config (models[0].price)"),
        "{own}"
    );
    assert!(
        own.lines()
            .any(|l| l.contains("cached_input_per_mtok") && l.contains("0.5")),
        "{own}"
    );
    assert!(
        own.lines()
            .any(|l| l.contains("cache_write_per_mtok") && l.contains("billed as input")),
        "{own}"
    );
    let sonnet = section("sonnet");
    assert!(
        sonnet.contains("deployments' models (claude-sonnet-4-5-20250929 → `claude-sonnet-4-5` (anthropic, matched as a snapshot))"),
        "{sonnet}"
    );
    assert!(
        sonnet.contains("LiteLLM") && sonnet.contains("as of 20"),
        "{sonnet}"
    );
    for (component, usd) in [
        ("cache_write_per_mtok", "3.75"),
        ("cache_write_1h_per_mtok", "6"),
        ("cached_input_per_mtok", "0.3"),
    ] {
        assert!(
            sonnet
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == [component, usd]),
            "{component}: {sonnet}"
        );
    }
    assert!(
        section("custom").contains("no price: refused under a spending cap"),
        "{text}"
    );

    // Named models, as JSON: a configured one, and names only the table knows.
    let out = sluice(
        &[
            "prices",
            "--config",
            path,
            "--json",
            "own",
            "gpt-4o-mini-2024-07-18",
            "gemini-2.5-pro",
            "gpt-4o-realtime-preview",
        ],
        &[],
    );
    assert!(out.status.success());
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        all[0]["origin"],
        json!({"kind": "config", "field": "models[0].price"})
    );
    assert_eq!(all[0]["price"]["usd_per_mtok"]["output_per_mtok"], 6.0);
    let mini = &all[1];
    assert_eq!(mini["configured"], false);
    assert_eq!(
        mini["origin"]["listed"],
        json!({"entry": "gpt-4o-mini", "provider": "openai", "matched": "snapshot"})
    );
    assert!(
        mini["origin"]["table"]["date"]
            .as_str()
            .unwrap()
            .starts_with("20")
    );
    assert_eq!(
        mini["price"]["usd_per_mtok"]["cached_input_per_mtok"],
        0.075
    );
    let pro = &all[2]["price"]["usd_per_mtok"];
    assert_eq!(pro["long_context.above_prompt_tokens"], 200_000);
    assert_eq!(pro["long_context.input_per_mtok"], 2.5);
    assert_eq!(
        all[3]["origin"],
        json!({"kind": "none", "refused_under_cap": true})
    );
    assert_eq!(all[3]["price"], Value::Null);

    // Without a config: the built-in models, priced by the table.
    let out = Command::new(BIN)
        .args(["prices", "gpt-4o"])
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("built-in table, entry `gpt-4o` (openai, matched by name)"),
        "{text}"
    );
}

#[tokio::test]
async fn the_example_config_works_as_written() {
    // The example points its `fake` provider at 127.0.0.1:9999.
    let up = FakeUpstream::start_on("127.0.0.1:9999").await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("e.db");
    let key = create_key(&db, "t1");
    let config = example_config();
    let served = Served::start(
        &db,
        &["--config", config.to_str().unwrap()],
        &[("FAKE_KEY", "sk-fake-from-env")],
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-sluice-provider"], "fake/gpt-4o-mini");
    let seen = up.last();
    assert_eq!(seen.headers["authorization"], "Bearer sk-fake-from-env");
    assert_eq!(seen.body["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn a_job_accepted_before_kill_dash_nine_completes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("j.db");
    let config = dir.path().join("slow.toml");
    // A slow mock model keeps the job in flight when the server is killed; a short
    // visibility timeout brings the unfinished message back soon after the restart.
    std::fs::write(
        &config,
        r#"
[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "slow"
deployments = [{ provider = "mock", model = "mock-slow" }]

[jobs]
workers = 1
visibility_timeout_s = 2
lease_s = 1
"#,
    )
    .unwrap();
    let key = create_key(&db, "t1");
    let http = reqwest::Client::new();
    let config_arg = ["--config", config.to_str().unwrap()];
    let mut served = Served::start(&db, &config_arg, &[]);
    let r = http
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .header("prefer", "respond-async")
        .json(&json!({"model": "slow", "messages": [{"role": "user", "content": "survive"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Let the worker pick it up (the mock takes 1.5 s), then kill without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    drop(served);

    let served = Served::start(&db, &config_arg, &[]);
    let started = Instant::now();
    let job = loop {
        let job: Value = http
            .get(format!("{}/v1/jobs/{id}", served.url))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if job["status"] == "succeeded" || job["status"] == "failed" {
            break job;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "job never finished: {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        "Mock response to: survive"
    );
    assert!(job["attempts"].as_u64().unwrap() >= 1);
}

/// Sends `n` distinct chat requests at once, alternating between the given servers.
async fn split_burst(urls: &[&str], key: &str, n: usize) -> Vec<u16> {
    let http = reqwest::Client::new();
    let sends = (0..n).map(|i| {
        let http = http.clone();
        let url = format!("{}/v1/chat/completions", urls[i % urls.len()]);
        let key = key.to_owned();
        async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("p{i}")}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    futures_util::future::join_all(sends).await
}

#[tokio::test]
async fn two_servers_sharing_one_sqlite_file_hold_one_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let out = sluice(
        &[
            "keys",
            "create",
            "--tenant",
            "t1",
            "--rpm",
            "10",
            "--db",
            db.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let a = Served::start(&db, &[], &[]);
    let b = Served::start(&db, &[], &[]);
    let statuses = split_burst(&[&a.url, &b.url], &key, 50).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40);
}

/// `sluice logs --request-id ID --log-file PATH`: its exit status and stdout lines as JSON.
fn logs_of(log: &Path, request_id: &str) -> (std::process::Output, Vec<Value>) {
    let out = sluice(
        &[
            "logs",
            "--request-id",
            request_id,
            "--log-file",
            log.to_str().unwrap(),
        ],
        &[],
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    (out, lines)
}

/// Waits until the log file has a line with `request_id` and `message`.
fn wait_file_line(log: &Path, request_id: &str, message: &str) {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|v| v["request_id"] == request_id && v["message"] == message);
        if found {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no `{message}` line for {request_id} in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn chat(url: &str, key: &str, body: Value) -> (String, String) {
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    (id, r.text().await.unwrap())
}

#[tokio::test]
async fn log_file_gets_every_line_and_logs_finds_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    // Its directories do not exist yet.
    let log = dir.path().join("var/log/sluice/requests.log");
    let key = create_key(&db, "acme");
    let served = Served::start(&db, &["--log-file", log.to_str().unwrap()], &[]);
    let (plain, _) = chat(
        &served.url,
        &key,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "plain"}]}),
    )
    .await;
    let (streamed, events) = chat(
        &served.url,
        &key,
        json!({"model": "gpt-4o-mini", "stream": true,
               "messages": [{"role": "user", "content": "streamed"}]}),
    )
    .await;
    assert!(events.ends_with("data: [DONE]\n\n"), "{events}");
    wait_file_line(&log, &streamed, "stream finished");

    let (out, lines) = logs_of(&log, &plain);
    assert!(out.status.success());
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["target"], "sluice::access");
    assert_eq!(line["message"], "request");
    assert_eq!(line["request_id"], plain.as_str());
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["status"], 200);
    assert_eq!(line["tenant"], "acme");
    assert_eq!(line["model"], "gpt-4o-mini");
    assert!(
        line.get("request_body").is_none(),
        "bodies are off by default"
    );

    let (out, lines) = logs_of(&log, &streamed);
    assert!(out.status.success());
    let messages: Vec<&str> = lines
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages, ["request", "stream finished"], "{lines:?}");
    let finished = &lines[1];
    assert_eq!(finished["request_id"], streamed.as_str());
    assert_eq!(finished["stream"], "completed");
    assert!(finished["tokens_out"].as_u64().unwrap() > 0);

    // The default path is SLUICE_LOG_FILE.
    let out = sluice(
        &["logs", "--request-id", &plain],
        &[("SLUICE_LOG_FILE", log.to_str().unwrap())],
    );
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let (out, lines) = logs_of(&log, "req_nosuchrequest");
    assert_eq!(out.status.code(), Some(1));
    assert!(lines.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no log line has request_id req_nosuchrequest"),
        "{err}"
    );

    // The file holds what stdout shows, and lines outside requests carry no request id.
    let text = std::fs::read_to_string(&log).unwrap();
    let listening = served.wait_log(|v| v["message"] == "sluice listening");
    let in_file: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(in_file.contains(&listening));
    assert!(listening.get("request_id").is_none());
    for l in served.stdout.lock().unwrap().iter() {
        assert!(
            text.contains(l.as_str()),
            "stdout line missing from the file: {l}"
        );
    }
    assert!(!text.contains(&key));
}

#[tokio::test]
async fn log_file_is_appended_to_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let log = dir.path().join("sluice.log");
    std::fs::write(&log, "{\"message\":\"from an earlier run\"}\n").unwrap();
    let served = Served::start(&db, &[], &[("SLUICE_LOG_FILE", log.to_str().unwrap())]);
    served.wait_log(|v| v["message"] == "sluice listening");
    drop(served);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("{\"message\":\"from an earlier run\"}\n"),
        "{text}"
    );
    assert!(text.contains("sluice listening"), "{text}");

    // A file that cannot be opened stops `serve` with a message, before it listens.
    let blocked = log.join("inside.log"); // its "directory" is a file
    let out = sluice(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db.to_str().unwrap(),
            "--log-file",
            blocked.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open log file"), "{err}");
}

#[tokio::test]
async fn body_logging_redacts_patterns_and_never_logs_a_key() {
    let up = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("b.db");
    let log = dir.path().join("logs/sluice.log");
    let config = dir.path().join("bodies.toml");
    let provider_key = "prov-secret-7f3a9c";
    let admin = "admin-secret-b41d22";
    std::fs::write(
        &config,
        format!(
            r#"
[server]
max_body_bytes = 4000

[[providers]]
name = "fake"
kind = "openai"
base_url = "{}"
api_keys = ["${{TEST_PROVIDER_KEY}}"]

[[providers]]
name = "mock"
kind = "mock"

[[models]]
name = "gpt-test"
deployments = [{{ provider = "fake", model = "gpt-4o-mini" }}]

[[models]]
name = "echo"
deployments = [{{ provider = "mock", model = "mock-chat" }}]

[logging]
bodies = true
max_logged_body_bytes = 2000
redact = ["card-\\d{{4}}-\\d{{4}}"]
"#,
            up.base_url
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
            ("TEST_PROVIDER_KEY", provider_key),
            ("SLUICE_ADMIN_KEY", admin),
        ],
    );
    let http = reqwest::Client::new();
    // The answer holds the new key: its logged body must not.
    let created: Value = http
        .post(format!("{}/admin/keys", served.url))
        .bearer_auth(admin)
        .json(&json!({"tenant": "acme"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();

    // The mock echoes the prompt, so every secret is in both bodies.
    let prompt = format!(
        "pay with card-1234-5678 using {key}, admin {admin}, provider {provider_key}, \
         Authorization: Bearer tok_0123456789abcdef"
    );
    let (echoed, _) = chat(
        &served.url,
        &key,
        json!({"model": "echo", "messages": [{"role": "user", "content": prompt}]}),
    )
    .await;
    let (upstream, _) = chat(
        &served.url,
        &key,
        json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi upstream"}]}),
    )
    .await;
    assert_eq!(
        up.last().headers["authorization"].to_str().unwrap(),
        format!("Bearer {provider_key}")
    );
    let (streamed, _) = chat(
        &served.url,
        &key,
        json!({"model": "echo", "stream": true,
               "messages": [{"role": "user", "content": "stream card-9999-0000"}]}),
    )
    .await;
    wait_file_line(&log, &streamed, "stream finished");
    // The body limit (and its 413) still holds with bodies copied for the log.
    let r = http
        .post(format!("{}/v1/chat/completions", served.url))
        .bearer_auth(&key)
        .json(
            &json!({"model": "echo", "messages": [{"role": "user", "content": "x".repeat(5000)}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    let (out, lines) = logs_of(&log, &echoed);
    assert!(out.status.success());
    let line = &lines[0];
    let request_body = line["request_body"].as_str().unwrap();
    let response_body = line["response_body"].as_str().unwrap();
    let sent: Value = serde_json::from_str(request_body).unwrap();
    assert_eq!(sent["model"], "echo");
    let content = sent["messages"][0]["content"].as_str().unwrap();
    assert!(
        content.starts_with("pay with [REDACTED] using [REDACTED]"),
        "{content}"
    );
    let answered: Value = serde_json::from_str(response_body).unwrap();
    let reply = answered["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        reply.contains("[REDACTED]") && !reply.contains("card-"),
        "{reply}"
    );

    let (_, lines) = logs_of(&log, &upstream);
    assert!(
        lines[0]["request_body"]
            .as_str()
            .unwrap()
            .contains("hi upstream")
    );
    assert!(
        lines[0]["response_body"]
            .as_str()
            .unwrap()
            .contains("chat.completion")
    );

    // A stream's request is logged; the stream itself is not.
    let (_, lines) = logs_of(&log, &streamed);
    assert!(
        lines[0]["request_body"]
            .as_str()
            .unwrap()
            .contains("stream [REDACTED]")
    );
    assert!(lines[0].get("response_body").is_none());
    assert_eq!(lines[1]["message"], "stream finished");

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        key.as_str(),
        &key["sk-sluice-".len()..],
        admin,
        provider_key,
        "tok_0123456789abcdef",
        "card-1234-5678",
        "card-9999-0000",
    ] {
        assert!(!text.contains(secret), "the log file contains `{secret}`");
    }
    assert!(text.contains("[REDACTED]"));
}
