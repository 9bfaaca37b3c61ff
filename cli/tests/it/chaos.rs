//! Chaos runs (issue 8, item 4): under a steady stream of async jobs, the process that runs
//! them is killed with SIGKILL and restarted several times, mid-batch.
//!
//! - On moto: an ingest process (`sluice serve --store dynamodb --queue sqs`, no workers)
//!   accepts the jobs, and a processor process (the same, with workers: the `Processor` the
//!   processor Lambda runs) is killed and restarted.
//! - Locally: the one `sluice serve` on SQLite, which accepts and runs jobs, is killed and
//!   restarted; clients retry the submissions that found it down.
//!
//! Kills come 1.6-2.4 s apart, often enough that a message caught by kill after kill uses up
//! its receives and reaches the dead-letter queue with its job unfinished. Before the load the
//! test also leaves behind what a kill can leave: a job stored but never queued (ingest killed
//! between its two writes) and an unfinished job whose message is already dead-lettered.
//! Housekeeping (every second in these processes) must bring all of them home.
//!
//! At the end every job in the store — accepted by a client or not — has succeeded or failed
//! with a reason, the spend on the key's ledger equals the sum of the finished jobs' costs (a
//! run cut off by a kill is not billed; a job that ran twice is billed once), no reservation
//! is left, and the dead-letter queue holds exactly the poison messages the test sent. Each
//! test prints a `chaos:` line, with what housekeeping did.

// Tests may cast freely (the workspace denies lossy casts in the code they test).
#![allow(
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss,
    clippy::cast_possible_truncation
)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Served, sluice};
use serde_json::{Value, json};
use sluice::queue::JobQueue;
use sluice_tests::{Behaviour, FakeUpstream};

/// The fake provider answers 10 prompt and 5 completion tokens: at $1 and $2 per million,
/// 20,000 nano-USD a call.
const COST_PER_CALL: u64 = 20_000;
const KILLS: usize = 5;
const POISON: usize = 3;
const VISIBILITY_S: u64 = 2;
/// The default: a worker killed during its long poll may still be handed messages (the poll
/// completes for a client that is gone), so each kill can cost a message a receive.
const MAX_RECEIVES: u32 = 5;

fn config(dir: &Path, upstream: &str, workers: usize) -> String {
    let path = dir.join(format!("chaos-{workers}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[server]
upstream_timeout_s = 10
# Housekeeping every second (the default is a minute).
housekeeping_every_s = 1

[[providers]]
name = "fake"
kind = "openai"
base_url = "{upstream}"
api_keys = ["sk-provider-chaos"]

[[models]]
name = "chaos"
deployments = [{{ provider = "fake", model = "gpt-4o-mini" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
# Every job calls the provider: a job run twice would be paid twice.
cache_ttl_s = 0

[limits]
# Reservations of runs cut off by a kill come back within seconds.
reservation_ttl_s = 3

[jobs]
workers = {workers}
visibility_timeout_s = {VISIBILITY_S}
lease_s = 1
max_receive_count = {MAX_RECEIVES}
batch_window_ms = 50
# Jobs left behind are queued again after 4 s unchanged (the default is 10 minutes).
requeue_after_s = 4
"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

fn create_key(store_args: &[&str]) -> String {
    let mut args = vec![
        "keys",
        "create",
        "--tenant",
        "chaos",
        "--budget-usd",
        "100",
        "--period",
        "day",
    ];
    args.extend_from_slice(store_args);
    let out = sluice(&args, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Job submissions at a steady ~25 per second, in the background, to whatever URL the
/// target holds; a submission that finds the server down is retried (with a new prompt) as
/// a client would.
struct Load {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<String>, usize)>,
}

impl Load {
    fn start(http: &reqwest::Client, key: &str, target: Arc<Mutex<String>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(steady_load(
            http.clone(),
            key.to_owned(),
            target,
            Arc::clone(&stop),
        ));
        Self { stop, task }
    }

    /// Stops it half a second from now; returns the accepted job ids and how many
    /// submissions found the server down.
    async fn stop(self) -> (Vec<String>, usize) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::SeqCst);
        let (accepted, unreachable) = self.task.await.unwrap();
        assert!(
            accepted.len() > 50,
            "the load must be steady: {}",
            accepted.len()
        );
        (accepted, unreachable)
    }
}

async fn steady_load(
    http: reqwest::Client,
    key: String,
    target: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
) -> (Vec<String>, usize) {
    let mut accepted = Vec::new();
    let mut unreachable = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(40));
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        n += 1;
        let url = target.lock().unwrap().clone();
        let r = http
            .post(format!("{url}/v1/jobs"))
            .bearer_auth(&key)
            .json(&json!({"endpoint": "/v1/chat/completions",
                          "request": {"model": "chaos", "max_tokens": 20,
                                      "messages": [{"role": "user", "content": format!("chaos {n}")}]}}))
            .send()
            .await;
        match r {
            Ok(r) if r.status() == 202 => {
                accepted.push(
                    r.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
            // 503, or connection refused or cut: the server is down, nothing was accepted.
            Ok(r) if r.status() == 503 => unreachable += 1,
            Ok(r) => panic!("submission answered {}: {:?}", r.status(), r.text().await),
            Err(_) => unreachable += 1,
        }
    }
    (accepted, unreachable)
}

/// A client with a timeout, so a killed server cannot hang the load.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Poison: messages no job stands behind (one not JSON, the others naming jobs that do not
/// exist), which must end in the dead-letter queue.
async fn send_poison(queue: &dyn JobQueue) {
    for i in 0..POISON {
        let body = if i == 0 {
            "not json".to_owned()
        } else {
            json!({"job_id": format!("job_none{i}")}).to_string()
        };
        queue.send(&body).await.unwrap();
    }
}

async fn get(http: &reqwest::Client, url: &str, key: &str) -> Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// What a chaos run found.
struct Outcome {
    succeeded: usize,
    failed: usize,
    job_costs: u64,
}

/// Waits until every accepted job is final; every one must be succeeded or failed with an
/// error object.
async fn settle_jobs(http: &reqwest::Client, url: &str, key: &str, ids: &[String]) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        succeeded: 0,
        failed: 0,
        job_costs: 0,
    };
    for id in ids {
        loop {
            let job = get(http, &format!("{url}/v1/jobs/{id}"), key).await;
            match job["status"].as_str() {
                Some("succeeded") => {
                    outcome.succeeded += 1;
                    outcome.job_costs += (job["cost_usd"].as_f64().unwrap() * 1e9).round() as u64;
                    break;
                }
                Some("failed") => {
                    assert!(
                        job["error"]["message"].is_string(),
                        "failed without a reason: {job}"
                    );
                    outcome.failed += 1;
                    break;
                }
                Some("queued" | "running") => {}
                _ => panic!("accepted job {id} is lost: {job}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "job {id} never finished: {job}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    outcome
}

/// Every job the store holds, accepted by a client or not (a server killed after storing a
/// job but before its 202 reached the client still runs it and bills it).
#[derive(Debug, Default)]
struct Stored {
    unfinished: usize,
    succeeded: usize,
    failed: usize,
    costs: u64,
}

impl Stored {
    fn add(&mut self, status: &str, cost: u64) {
        match status {
            "succeeded" => self.succeeded += 1,
            "failed" => self.failed += 1,
            _ => self.unfinished += 1,
        }
        self.costs += cost;
    }

    fn total(&self) -> usize {
        self.unfinished + self.succeeded + self.failed
    }
}

fn stored_sqlite(db: &Path) -> Stored {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare("SELECT status, COALESCE(cost_nano_usd, 0) FROM jobs")
        .unwrap();
    let mut stored = Stored::default();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    for row in rows {
        let (status, cost) = row.unwrap();
        stored.add(&status, cost as u64);
    }
    stored
}

async fn stored_dynamodb(sdk: &aws_config::SdkConfig, prefix: &str) -> Stored {
    let client = aws_sdk_dynamodb::Client::new(sdk);
    let table = sluice::store::dynamodb::Tables::with_prefix(prefix).jobs;
    let mut stored = Stored::default();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(&table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .unwrap();
        for item in page.items() {
            let status = item["status"].as_s().unwrap();
            let cost = item
                .get("cost_nano_usd")
                .map_or(0, |v| v.as_n().unwrap().parse::<u64>().unwrap());
            stored.add(status, cost);
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return stored;
        }
    }
}

/// The key's budget: (spent, reserved) in nano-USD.
async fn ledger(http: &reqwest::Client, url: &str, key: &str) -> (u64, u64) {
    let usage = get(http, &format!("{url}/v1/usage"), key).await;
    let budget = &usage["limits"]["key"]["budget"];
    let n = |v: &Value| (v.as_f64().unwrap() * 1e9).round() as u64;
    (n(&budget["spent_usd"]), n(&budget["reserved_usd"]))
}

/// The end-of-run checks: nothing lost, nothing billed twice.
fn check(stored: &Stored, accepted: &Outcome, n_accepted: usize, spent: u64, sweep_cost: u64) {
    assert_eq!(
        accepted.succeeded + accepted.failed,
        n_accepted,
        "an accepted job is lost"
    );
    // Every accepted job finished (above), and so did every job the store holds: one stored
    // by a server killed before its 202 left, one stored but never queued (found by
    // housekeeping and queued again), one whose message was dead-lettered unfinished (sent
    // again by housekeeping).
    assert!(stored.total() >= n_accepted, "{stored:?}");
    assert_eq!(stored.unfinished, 0, "a job was left behind: {stored:?}");
    assert_eq!(
        spent,
        stored.costs + sweep_cost,
        "the ledger must equal the costs of the recorded results, each job billed once"
    );
    assert_eq!(
        stored.costs,
        stored.succeeded as u64 * COST_PER_CALL,
        "{stored:?}"
    );
    assert_eq!(
        accepted.job_costs,
        accepted.succeeded as u64 * COST_PER_CALL
    );
}

/// One more provider call through a freshly started process: its first admitted request
/// runs the limiter's housekeeping, which gives back reservations of killed runs. Returns
/// what that call cost, once no reservation is left.
async fn sweep(http: &reqwest::Client, url: &str, key: &str) -> u64 {
    let r = http
        .post(format!("{url}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "chaos", "max_tokens": 20, "messages": [{"role": "user", "content": "sweep"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cost = r.headers()["x-sluice-cost-usd"]
        .to_str()
        .unwrap()
        .parse::<f64>()
        .unwrap();
    let started = Instant::now();
    while ledger(http, url, key).await.1 != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a reservation was never given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (cost * 1e9).round() as u64
}

/// Waits until the dead-letter queue holds the poison messages, and checks it holds no more.
async fn dead_letters(queue: &dyn JobQueue) -> u64 {
    let started = Instant::now();
    loop {
        let count = queue.dead_letter_count().await.unwrap();
        if count >= POISON as u64 || started.elapsed() > Duration::from_secs(30) {
            assert_eq!(
                count, POISON as u64,
                "only the poison messages are dead letters"
            );
            return count;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills `victim` with SIGKILL mid-batch and restarts it, `KILLS` times, while the load
/// runs; `restart` starts the new process (and may point the load at it). The output of every
/// process killed is kept in `logs`.
async fn kill_and_restart(
    mut victim: Served,
    restart: impl Fn() -> Served,
    logs: &mut Logs,
) -> Served {
    for round in 0..KILLS {
        // 1.6-2.4 s of work between kills: each kill lands with batches in flight (the
        // provider takes 150 ms a call and jobs arrive every 40 ms), and a message left
        // invisible by one kill (2 s) may be caught by the next: kill after kill can use up
        // its `max_receive_count` deliveries, and it reaches the dead-letter queue with its
        // job unfinished. Housekeeping sends it back (RELIABILITY.md, section 4).
        tokio::time::sleep(Duration::from_millis(1_600 + 200 * (round as u64 % 5))).await;
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        logs.push(Arc::clone(&victim.stdout));
        drop(victim);
        victim = restart();
    }
    victim
}

/// The output lines of the processes of a run.
type Logs = Vec<Arc<Mutex<Vec<String>>>>;

/// What housekeeping did over a run, summed from every process's `housekeeping` lines.
#[derive(Debug, Default)]
struct Housekept {
    dead_letters_redriven: u64,
    dead_letters_cleared: u64,
    jobs_requeued: u64,
    jobs_failed: u64,
    holds_released: u64,
}

fn housekept(logs: &Logs) -> Housekept {
    let mut h = Housekept::default();
    for lines in logs {
        for line in lines.lock().unwrap().iter() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["message"] != "housekeeping" {
                continue;
            }
            let n = |f: &str| v[f].as_u64().unwrap_or(0);
            h.dead_letters_redriven += n("dead_letters_redriven");
            h.dead_letters_cleared += n("dead_letters_cleared");
            h.jobs_requeued += n("jobs_requeued");
            h.jobs_failed += n("jobs_failed");
            h.holds_released += n("holds_released");
        }
    }
    h
}

/// What a kill can leave behind, left on purpose before the load: a job stored 10 s ago and
/// never queued, and an unfinished job whose message is in the dead-letter queue (the caller
/// puts it there, by the backend's own means; it is stored as changed just now, so that only
/// the dead letter can bring it back before `requeue_after_s`). Both are the key's; returns
/// (never queued, dead-lettered).
async fn leave_behind(store: &dyn sluice::store::Store, key: &str) -> (String, String) {
    let record = store
        .key_by_hash(&sluice::keys::KeyHash::of(key))
        .await
        .unwrap()
        .unwrap();
    let now = sluice::clock::Clock::now_ms(&sluice::clock::SystemClock);
    let job = |id: &str, prompt: &str, ago: u64| sluice::jobs::model::Job {
        id: id.to_owned(),
        tenant: record.tenant.clone(),
        key_id: record.id.clone(),
        key_limits: record.limits.clone(),
        endpoint: sluice::providers::Endpoint::ChatCompletions,
        request: bytes::Bytes::from(
            json!({"model": "chaos", "max_tokens": 20,
                   "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
        ),
        cache_control: None,
        callback_url: None,
        completion_window_s: None,
        status: sluice::jobs::model::JobStatus::Queued,
        attempts: 0,
        lease_until_ms: 0,
        result: None,
        created_at_ms: now - ago,
        updated_at_ms: now - ago,
        expires_at_ms: now + 86_400_000,
    };
    let never_queued = job(
        "job_chaosnevrqueued0000000000",
        "stored, never queued",
        10_000,
    );
    let dead_lettered = job(
        "job_chaosdeadletter000000000",
        "dead-lettered unfinished",
        0,
    );
    store.insert_job(&never_queued).await.unwrap();
    store.insert_job(&dead_lettered).await.unwrap();
    (never_queued.id, dead_lettered.id)
}

fn job_message(id: &str) -> String {
    json!({ "job_id": id }).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_the_processor_on_moto_loses_and_double_bills_nothing() {
    let sdk = sluice_tests::aws::sdk_config().await;
    let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
    up.set(Behaviour::Slow(Duration::from_millis(150)));
    let dir = tempfile::tempdir().unwrap();
    let prefix = sluice_tests::aws::unique_prefix();
    let store_args = [
        "--store",
        "dynamodb",
        "--table-prefix",
        prefix.as_str(),
        "--create-aws-resources",
    ];
    let key = create_key(&store_args);
    let ingest_config = config(dir.path(), &up.base_url, 0);
    let processor_config = config(dir.path(), &up.base_url, 2);
    let args = |config: &str| -> Vec<String> {
        let mut a: Vec<String> = store_args.iter().map(|s| (*s).to_owned()).collect();
        a.extend(["--queue", "sqs", "--config", config].map(str::to_owned));
        a
    };
    let spawn = |config: &str| {
        let a = args(config);
        Served::spawn(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[])
    };
    let ingest = spawn(&ingest_config);
    let processor = spawn(&processor_config);

    let queue = sluice::queue::sqs::SqsQueue::create(
        aws_sdk_sqs::Client::new(&sdk),
        &format!("{prefix}-jobs"),
        Duration::from_secs(VISIBILITY_S),
        MAX_RECEIVES,
    )
    .await
    .unwrap();
    send_poison(&queue).await;
    let store = sluice::store::dynamodb::DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        sluice::store::dynamodb::Tables::with_prefix(&prefix),
    );
    let (never_queued, dead_lettered) = leave_behind(&store, &key).await;
    aws_sdk_sqs::Client::new(&sdk)
        .send_message()
        .queue_url(queue.dead_letter_url().unwrap())
        .message_body(job_message(&dead_lettered))
        .send()
        .await
        .unwrap();

    let http = client();
    let mut logs = vec![Arc::clone(&ingest.stdout)];
    let load = Load::start(&http, &key, Arc::new(Mutex::new(ingest.url.clone())));
    let processor = kill_and_restart(processor, || spawn(&processor_config), &mut logs).await;
    let (accepted, unreachable) = load.stop().await;

    let mut all = accepted.clone();
    all.extend([never_queued, dead_lettered]);
    let outcome = settle_jobs(&http, &ingest.url, &key, &all).await;
    // A fresh processor process sweeps the reservations of the killed runs.
    tokio::time::sleep(Duration::from_secs(4)).await;
    logs.push(Arc::clone(&processor.stdout));
    drop(processor);
    let sweeper = spawn(&processor_config);
    let sweep_cost = sweep(&http, &sweeper.url, &key).await;
    logs.push(Arc::clone(&sweeper.stdout));
    let (spent, reserved) = ledger(&http, &ingest.url, &key).await;
    assert_eq!(reserved, 0);
    let stored = stored_dynamodb(&sdk, &prefix).await;
    check(&stored, &outcome, all.len(), spent, sweep_cost);
    let dlq = dead_letters(&queue).await;
    let h = housekept(&logs);
    assert!(
        h.jobs_requeued >= 1,
        "the job never queued was found: {h:?}"
    );
    assert!(
        h.dead_letters_redriven >= 1,
        "the dead letter was sent again: {h:?}"
    );
    println!(
        "chaos: moto, processor killed {KILLS}x mid-batch; jobs accepted {} (+2 left behind on purpose), \
         succeeded {}, failed {}, submissions refused {}; provider calls {} (runs cut off by kills and run again: {}); \
         housekeeping: dead letters sent again {} (cleared, job already final: {}), jobs queued again {}, \
         failed job_abandoned {}, holds released {}; every stored job final ({}); \
         ledger {spent} nano-USD = job costs + sweep; 0 reserved; dead letters {dlq} = poison {POISON}",
        accepted.len(),
        outcome.succeeded,
        outcome.failed,
        unreachable,
        up.calls(),
        up.calls().saturating_sub(stored.succeeded + 1),
        h.dead_letters_redriven,
        h.dead_letters_cleared,
        h.jobs_requeued,
        h.jobs_failed,
        h.holds_released,
        stored.total(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_sluice_serve_on_sqlite_loses_and_double_bills_nothing() {
    let up = FakeUpstream::start_for_load("127.0.0.1:0").await;
    up.set(Behaviour::Slow(Duration::from_millis(150)));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chaos.db");
    let db_arg = db.to_str().unwrap().to_owned();
    let key = create_key(&["--db", &db_arg]);
    let config = config(dir.path(), &up.base_url, 2);
    let spawn = || Served::start(&db, &["--config", &config], &[]);
    let served = spawn();

    let queue = sluice::queue::sqlite::SqliteQueue::new(
        sluice::store::sqlite::SqliteStore::open(&db_arg).unwrap(),
        Arc::new(sluice::clock::SystemClock),
        Duration::from_secs(VISIBILITY_S),
        MAX_RECEIVES,
    );
    send_poison(&queue).await;
    let store = sluice::store::sqlite::SqliteStore::open(&db_arg).unwrap();
    let (never_queued, dead_lettered) = leave_behind(&store, &key).await;
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO dead_letters (message_id, body, receive_count, moved_at_ms)
             VALUES ('msg_chaos_dead_lettered', ?1, 5, 0)",
            [job_message(&dead_lettered)],
        )
        .unwrap();

    let http = client();
    let target = Arc::new(Mutex::new(served.url.clone()));
    let mut logs = Logs::new();
    let load = Load::start(&http, &key, Arc::clone(&target));
    let served = kill_and_restart(
        served,
        || {
            let s = spawn();
            *target.lock().unwrap() = s.url.clone();
            s
        },
        &mut logs,
    )
    .await;
    let (accepted, unreachable) = load.stop().await;

    let mut all = accepted.clone();
    all.extend([never_queued, dead_lettered]);
    let outcome = settle_jobs(&http, &served.url, &key, &all).await;
    // Jobs a kill left stored but never queued, unknown to the client, are queued again
    // by housekeeping once they have been unchanged for `requeue_after_s`.
    let started = Instant::now();
    while stored_sqlite(&db).unfinished > 0 && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    logs.push(Arc::clone(&served.stdout));
    drop(served);
    let served = spawn();
    let sweep_cost = sweep(&http, &served.url, &key).await;
    logs.push(Arc::clone(&served.stdout));
    let (spent, reserved) = ledger(&http, &served.url, &key).await;
    assert_eq!(reserved, 0);
    let stored = stored_sqlite(&db);
    check(&stored, &outcome, all.len(), spent, sweep_cost);
    let dlq = dead_letters(&queue).await;
    let h = housekept(&logs);
    assert!(
        h.jobs_requeued >= 1,
        "the job never queued was found: {h:?}"
    );
    assert!(
        h.dead_letters_redriven >= 1,
        "the dead letter was sent again: {h:?}"
    );
    println!(
        "chaos: sqlite, sluice serve killed {KILLS}x mid-batch; jobs accepted {} (+2 left behind on purpose), \
         succeeded {}, failed {}, stored but never acknowledged to the client {}, submissions that found it down {}; \
         provider calls {} (runs cut off by kills and run again: {}); \
         housekeeping: dead letters sent again {} (cleared, job already final: {}), jobs queued again {}, \
         failed job_abandoned {}, holds released {}; every stored job final ({}); \
         ledger {spent} nano-USD = job costs + sweep; 0 reserved; dead letters {dlq} = poison {POISON}",
        accepted.len(),
        outcome.succeeded,
        outcome.failed,
        stored.total() - all.len(),
        unreachable,
        up.calls(),
        up.calls().saturating_sub(stored.succeeded + 1),
        h.dead_letters_redriven,
        h.dead_letters_cleared,
        h.jobs_requeued,
        h.jobs_failed,
        h.holds_released,
        stored.total(),
    );
}
