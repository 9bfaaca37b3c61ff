//! No work after the response (issue 15, item 6): the real `ingest` binary runs under a Lambda
//! Runtime API emulator (`infra/aws/runtime_emulator.py freeze`) that stops the process with
//! SIGSTOP the moment its response has been received whole — as Lambda freezes an
//! environment once the response is sent. While it is frozen, everything the request owed must
//! already be done: the stream settled on the key's ledger (`/v1/usage`, read through the
//! store by another process), the assembled answer cached, and the usage event on the usage
//! queue, whose rollup (the aggregator's code) shows in `/v1/metrics`. Then SIGTERM: the
//! graceful-shutdown hook runs and the process exits 0.
//!
//! Both ways the function answers: buffered (API Gateway) and streamed (function URL). Needs
//! moto (`AWS_ENDPOINT_URL`, see `infra/aws/moto.sh`) and `python3`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::clock::{Clock, ManualClock, SystemClock};
use sluice::config::Config;
use sluice::deps::Deps;
use sluice::keys::{self, BudgetPeriod, KeyLimits};
use sluice::metrics::aggregator::{self, Message};
use sluice::queue::JobQueue;
use sluice_tests::{TestGateway, aws};

/// The emulator with the function frozen after its one response.
struct Frozen {
    emulator: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
    /// The response as the runtime posted it.
    response: Value,
}

impl Frozen {
    fn next_line(&self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the emulator said nothing");
        serde_json::from_str(&line).unwrap()
    }

    /// SIGTERM, as Lambda sends at shutdown: the function's exit code.
    fn terminate(mut self) -> Option<i64> {
        writeln!(self.stdin, "term").unwrap();
        let code = self.next_line()["exit_code"].as_i64();
        let _ = self.emulator.wait();
        code
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "kill");
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
    }
}

/// An API Gateway payload v2 event (function URLs send the same) for a streamed chat request.
fn event(key: &str, prompt: &str) -> tempfile::NamedTempFile {
    let path = format!(
        "{}/tests/fixtures/apigw-v2-chat.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut event: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let body = json!({"model": "gpt-4o-mini", "stream": true,
                      "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    event["headers"]["authorization"] = json!(format!("Bearer {key}"));
    event["headers"]["content-length"] = json!(body.len().to_string());
    event["body"] = json!(body);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), event.to_string()).unwrap();
    file
}

fn run_frozen(env: &[(String, String)], event: &std::path::Path) -> Frozen {
    let emulator = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../infra/aws/runtime_emulator.py"
    );
    let mut cmd = Command::new("python3");
    cmd.args([emulator, "freeze", env!("CARGO_BIN_EXE_ingest")])
        .arg(event)
        .env_remove("SLUICE_CONFIG_TOML")
        .env_remove("SLUICE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut emulator = cmd.spawn().unwrap();
    let stdin = emulator.stdin.take().unwrap();
    let stdout = emulator.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut frozen = Frozen {
        emulator,
        stdin,
        lines,
        response: Value::Null,
    };
    frozen.response = frozen.next_line();
    assert!(frozen.response["error"].is_null(), "{}", frozen.response);
    frozen
}

/// Status and body of the response, buffered (API Gateway's JSON) or streamed (a JSON
/// prelude, eight NUL bytes, then the body).
fn answer(frozen: &Frozen) -> (u64, String) {
    let text = frozen.response["response"].as_str().unwrap();
    if frozen.response["streamed"].as_bool().unwrap() {
        let (prelude, body) = text.split_once("\0\0\0\0\0\0\0\0").unwrap();
        let prelude: Value = serde_json::from_str(prelude).unwrap();
        (prelude["statusCode"].as_u64().unwrap(), body.to_owned())
    } else {
        let response: Value = serde_json::from_str(text).unwrap();
        (
            response["statusCode"].as_u64().unwrap(),
            response["body"].as_str().unwrap().to_owned(),
        )
    }
}

async fn nothing_is_left_after_the_response(mode: &str, function_timeout_s: &str) {
    let store = aws::dynamo_store().await;
    let jobs = aws::sqs_queue(Duration::from_secs(30), 5).await;
    let usage = aws::sqs_queue(Duration::from_secs(30), 5).await;
    let key = keys::generate(
        "frozen",
        None,
        KeyLimits {
            budget_usd: Some(5.0),
            budget_period: Some(BudgetPeriod::Day),
            ..KeyLimits::default()
        },
        SystemClock.now_ms(),
    )
    .unwrap();
    sluice::store::KeyStore::insert_key(&store, &key.record)
        .await
        .unwrap();
    let tables = store.tables().clone();
    let env: Vec<(String, String)> = [
        ("SLUICE_KEYS_TABLE", tables.keys.as_str()),
        ("SLUICE_CACHE_TABLE", &tables.cache),
        ("SLUICE_JOBS_TABLE", &tables.jobs),
        ("SLUICE_LIMITS_TABLE", &tables.limits),
        ("SLUICE_METRICS_TABLE", &tables.metrics),
        ("SLUICE_JOBS_QUEUE_URL", jobs.url()),
        ("SLUICE_USAGE_QUEUE_URL", usage.url()),
        ("SLUICE_LAMBDA_RESPONSE", mode),
        ("SLUICE_FUNCTION_TIMEOUT_S", function_timeout_s),
        ("SLUICE_ADMIN_KEY", "admin-frozen"),
        ("SLUICE_LOG", "warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let prompt = format!("frozen right after the response ({mode})");
    let event = event(&key.secret, &prompt);

    let frozen = run_frozen(&env, event.path());
    let (status, body) = answer(&frozen);
    assert_eq!(status, 200, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(
        frozen.response["streamed"].as_bool(),
        Some(mode == "stream")
    );

    // The function is frozen now. Another process reads what it left in the store.
    let config = Config::builtin();
    let deps = Deps::new(
        Arc::new(store.clone()),
        Arc::new(jobs),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(SystemClock),
    );
    let gw = TestGateway::start_deps(&config, deps, ManualClock::new(SystemClock.now_ms())).await;
    let get = |path: &'static str| {
        let (gw, key) = (&gw, &key.secret);
        async move {
            gw.http
                .get(format!("{}{path}", gw.url))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let ledger = get("/v1/usage").await;
    let budget = &ledger["limits"]["key"]["budget"];
    let spent = budget["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0, "the stream was settled: {ledger}");
    assert_eq!(budget["reserved_usd"], 0.0, "no reservation left: {ledger}");

    // The usage event left before the freeze; rolled up as the aggregator does.
    let mut messages = Vec::new();
    for _ in 0..5 {
        for d in usage.receive(10, Duration::from_secs(1)).await.unwrap() {
            messages.push(Message {
                id: d.message_id,
                body: d.body,
            });
        }
        if !messages.is_empty() {
            break;
        }
    }
    assert_eq!(messages.len(), 1, "one message with the request's event");
    let events: Value = serde_json::from_str(&messages[0].body).unwrap();
    let events = events["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["kind"], "stream");
    assert!(events[0]["tokens_out"].as_u64().unwrap() > 0, "{events:?}");
    let outcome = aggregator::handle(&store, &messages).await;
    assert!(outcome.retry.is_empty());
    let metrics = get("/v1/metrics").await;
    assert_eq!(metrics["totals"]["requests"], 1, "{metrics}");
    let cost = metrics["totals"]["cost_usd"].as_f64().unwrap();
    assert!(
        (cost - spent).abs() < 1e-12,
        "rollup {cost} = ledger {spent}"
    );

    // The assembled answer was cached before the freeze.
    let r = gw
        .http
        .post(format!("{}/v1/chat/completions", gw.url))
        .bearer_auth(&key.secret)
        .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-sluice-cache"], "hit");

    // Lambda's shutdown: SIGTERM reaches the graceful-shutdown hook, which sends what is
    // still buffered (nothing here: the invocation sent it) and exits cleanly.
    assert_eq!(frozen.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffered_invocation_owes_nothing_once_its_response_is_sent() {
    nothing_is_left_after_the_response("buffered", "28").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_invocation_owes_nothing_once_its_last_byte_is_sent() {
    nothing_is_left_after_the_response("stream", "300").await;
}
