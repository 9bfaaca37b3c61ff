//! Housekeeping on both backends (SQLite with its local queue and dead-letter table; DynamoDB
//! and SQS on moto): no job is left behind. A job stored but never queued is queued again and
//! runs; a job whose message reached the dead-letter queue unfinished is sent again and runs;
//! a job started `jobs.max_attempts` times is failed with a reason; the dead letter of a
//! finished job is cleared; poison stays. Everything is found through an index.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sluice::clock::{Clock, SystemClock};
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::gateway::Caller;
use sluice::housekeeping::Report;
use sluice::jobs::Submission;
use sluice::jobs::model::{Job, JobStatus};
use sluice::keys::{self, KeyLimits};
use sluice::providers::Endpoint;
use sluice::queue::sqlite::SqliteQueue;
use sluice::queue::{Delivery, JobQueue, QueueError};
use sluice::store::SharedStore;
use sluice::store::sqlite::SqliteStore;

const VISIBILITY: Duration = Duration::from_secs(1);
const MAX_RECEIVES: u32 = 2;

struct Backend {
    store: SharedStore,
    queue: Arc<dyn JobQueue>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("h.db").to_str().unwrap()).unwrap();
    let queue = SqliteQueue::new(
        store.clone(),
        Arc::new(SystemClock),
        VISIBILITY,
        MAX_RECEIVES,
    );
    Backend {
        store: Arc::new(store),
        queue: Arc::new(queue),
        _dir: Some(dir),
    }
}

async fn aws() -> Backend {
    Backend {
        store: Arc::new(sluice_tests::aws::dynamo_store().await),
        queue: Arc::new(sluice_tests::aws::sqs_queue(VISIBILITY, MAX_RECEIVES).await),
        _dir: None,
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::sqlite().await).await;
                }
            )*
        }
        mod dynamodb_sqs {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::aws().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    no_job_is_left_behind,
    a_kept_dead_letter_seen_again_in_the_same_pass_counts_once
);

fn chat(prompt: &str) -> Bytes {
    Bytes::from(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
            .to_string(),
    )
}

/// A job as `Jobs::submit` stores it, last changed 10 s ago, never queued.
fn stored_job(id: &str, caller: &Caller, prompt: &str, attempts: u32) -> Job {
    let ago = SystemClock.now_ms() - 10_000;
    Job {
        id: id.into(),
        tenant: caller.tenant.clone(),
        key_id: caller.key_id.clone(),
        key_limits: KeyLimits::default(),
        endpoint: Endpoint::ChatCompletions,
        request: chat(prompt),
        cache_control: None,
        callback_url: None,
        completion_window_s: None,
        status: JobStatus::Queued,
        attempts,
        lease_until_ms: 0,
        result: None,
        created_at_ms: ago,
        updated_at_ms: ago,
        expires_at_ms: ago + 86_400_000,
    }
}

/// Receives (and does not delete) until every message sent so far has used up its receives:
/// the next receive moves them to the dead-letter queue, as kill after kill does.
async fn wear_out_receives(queue: &dyn JobQueue, messages: usize) {
    for _ in 0..MAX_RECEIVES {
        let mut got = 0;
        for _ in 0..20 {
            got += queue.receive(10, Duration::ZERO).await.unwrap().len();
            if got >= messages {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got, messages);
        tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    }
    assert!(queue.receive(10, Duration::ZERO).await.unwrap().is_empty());
    assert_eq!(queue.dead_letter_count().await.unwrap(), messages as u64);
}

async fn status(b: &Backend, id: &str) -> (JobStatus, Value) {
    let job = b
        .store
        .get_job(id, SystemClock.now_ms())
        .await
        .unwrap()
        .unwrap();
    let body = job
        .result
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .unwrap_or(Value::Null);
    (job.status, body)
}

async fn no_job_is_left_behind(b: Backend) {
    let mut config = Config::builtin();
    config.jobs.requeue_after_s = 1;
    config.jobs.max_attempts = 3;
    config.jobs.lease_s = 5;
    let deps = Deps::new(
        Arc::clone(&b.store),
        Arc::clone(&b.queue),
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(SystemClock),
    );
    let services = Services::build(&config, &deps).unwrap();
    let key = keys::generate("t1", None, KeyLimits::default(), 0).unwrap();
    b.store.insert_key(&key.record).await.unwrap();
    let caller = Caller {
        key_id: key.record.id.clone(),
        tenant: "t1".into(),
        limits: KeyLimits::default(),
    };
    let submit = |prompt: &'static str| {
        let (services, caller) = (&services, &caller);
        async move {
            let submission = Submission {
                endpoint: Endpoint::ChatCompletions,
                body: chat(prompt),
                cache_control: None,
                callback_url: None,
                completion_window_s: None,
            };
            services
                .jobs
                .submit(&services.gateway, caller, submission)
                .await
                .unwrap()
                .id
        }
    };

    // A job that ran and whose (duplicate) message is dead-lettered afterwards, one whose
    // message is dead-lettered before any worker finished it, and poison.
    let finished = submit("ran, then a duplicate was dead-lettered").await;
    let mut deliveries = Vec::new();
    for _ in 0..20 {
        deliveries.extend(b.queue.receive(10, Duration::ZERO).await.unwrap());
        if !deliveries.is_empty() {
            break;
        }
    }
    assert_eq!(deliveries.len(), 1);
    sluice::jobs::worker::process_deliveries(&services.processor, &*b.queue, &deliveries).await;
    assert_eq!(status(&b, &finished).await.0, JobStatus::Succeeded);
    let unfinished = submit("dead-lettered before it ran").await;
    b.queue.send(&deliveries[0].body).await.unwrap();
    b.queue.send("poison").await.unwrap();
    wear_out_receives(&*b.queue, 3).await;
    // Stored, never queued (ingest died between its two writes); and one started as often
    // as allowed, its worker dying each time.
    let orphan = "job_orphan000000000000000000";
    let worn = "job_worn00000000000000000000";
    b.store
        .insert_job(&stored_job(orphan, &caller, "never queued", 0))
        .await
        .unwrap();
    b.store
        .insert_job(&stored_job(worn, &caller, "started too often", 3))
        .await
        .unwrap();

    let report = services.housekeeper.run_once().await.unwrap();
    assert_eq!(
        report,
        Report {
            holds_released: 0,
            dead_letters_redriven: 1,
            dead_letters_cleared: 1,
            dead_letters_kept: 1,
            jobs_requeued: 1,
            jobs_failed: 1,
        }
    );
    let (worn_status, worn_body) = status(&b, worn).await;
    assert_eq!(worn_status, JobStatus::Failed);
    assert_eq!(worn_body["error"]["code"], "job_abandoned", "{worn_body}");
    assert!(
        worn_body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("started 3 times"),
        "{worn_body}"
    );
    // The jobs sent again run like any other.
    let mut ran = 0;
    for _ in 0..20 {
        let got = b.queue.receive(10, Duration::ZERO).await.unwrap();
        ran += got.len();
        sluice::jobs::worker::process_deliveries(&services.processor, &*b.queue, &got).await;
        if ran >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ran, 2);
    for id in [&unfinished, &finished, &orphan.to_owned()] {
        assert_eq!(status(&b, id).await.0, JobStatus::Succeeded, "{id}");
    }
    // Only the poison is left, and a second pass changes nothing.
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 1);
    tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    let again = services.housekeeper.run_once().await.unwrap();
    assert_eq!(
        again,
        Report {
            dead_letters_kept: 1,
            ..Report::default()
        }
    );
    assert!(
        b.store
            .stale_jobs(SystemClock.now_ms(), SystemClock.now_ms(), 10)
            .await
            .unwrap()
            .is_empty(),
        "every job is final"
    );
}

/// The backend's queue, except that every look into the dead-letter queue takes longer than
/// the visibility timeout (a slow store, a loaded machine): a letter kept in that look is
/// visible again at the next.
struct SlowDeadLetters(Arc<dyn JobQueue>);

#[async_trait::async_trait]
impl JobQueue for SlowDeadLetters {
    async fn send(&self, body: &str) -> Result<(), QueueError> {
        self.0.send(body).await
    }
    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.0.receive(max, wait).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.0.delete(receipt).await
    }
    async fn visibility_timeout(&self) -> Result<Duration, QueueError> {
        self.0.visibility_timeout().await
    }
    async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        self.0.dead_letter_count().await
    }
    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        let letters = self.0.receive_dead_letters(max).await?;
        tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
        Ok(letters)
    }
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        self.0.delete_dead_letter(receipt).await
    }
}

/// Seen in a clean-clone run on moto: a pass slower than the visibility timeout received the
/// poison it had kept a second time and reported two kept letters for one (and could go round
/// up to its per-pass limit).
async fn a_kept_dead_letter_seen_again_in_the_same_pass_counts_once(b: Backend) {
    b.queue.send("poison").await.unwrap();
    wear_out_receives(&*b.queue, 1).await;
    let queue: Arc<dyn JobQueue> = Arc::new(SlowDeadLetters(Arc::clone(&b.queue)));
    let deps = Deps::new(
        Arc::clone(&b.store),
        queue,
        sluice::providers::HttpClient::new().unwrap(),
        Arc::new(SystemClock),
    );
    let services = Services::build(&Config::builtin(), &deps).unwrap();
    let report = services.housekeeper.run_once().await.unwrap();
    assert_eq!(
        report,
        Report {
            dead_letters_kept: 1,
            ..Report::default()
        }
    );
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 1);
}
