//! One suite, two backends. Store times are passed in, so expiry is exercised with made-up
//! clocks on both; queue timing is real (SQS has no other), with a 1 s visibility timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use sluice::clock::SystemClock;
use sluice::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use sluice::keys::{self, BudgetPeriod, KeyLimits};
use sluice::metrics::{Rollup, RollupKey, RollupRow};
use sluice::providers::Endpoint;
use sluice::queue::JobQueue;
use sluice::queue::sqlite::SqliteQueue;
use sluice::store::sqlite::SqliteStore;
use sluice::store::{
    Applied, BatchEntry, BatchEntryKind, CacheKey, CachedResponse, CounterField, Flight,
    FlightBegin, FlightClaim, FlightPoll, Hold, IdempotencyBegin, Increment, Settlement,
    SharedStore, StoreError, StoredResponse,
};

const VISIBILITY: Duration = Duration::from_secs(1);
const MAX_RECEIVES: u32 = 2;

struct Backend {
    store: SharedStore,
    queue: Arc<dyn JobQueue>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("c.db").to_str().unwrap()).unwrap();
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

macro_rules! conformance {
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

conformance!(
    keys_are_unique_found_by_hash_listed_and_revoked_once,
    keys_are_found_by_id_and_a_revocation_is_seen_at_once,
    cache_entries_round_trip_and_vanish_at_purge_time,
    large_cache_entries_never_fail,
    in_flight_markers_have_one_holder_and_end_by_token_lease_or_landing,
    concurrent_flight_begins_have_one_leader,
    reservations_take_the_in_flight_marker_in_the_same_write,
    jobs_move_through_their_lifecycle_by_conditional_writes,
    concurrent_claims_of_one_job_have_one_winner,
    expired_jobs_are_gone,
    queue_delivers_hides_redelivers_and_deletes,
    queue_moves_a_message_to_the_dead_letter_queue_after_max_receives,
    dead_letters_are_read_hidden_and_deleted_for_housekeeping,
    jobs_left_behind_are_found_by_age_and_queued_again_once,
    batch_entries_are_found_when_due_by_kind_replaced_and_deleted,
    limit_increments_apply_all_or_nothing,
    concurrent_conditional_increments_never_pass_the_limit,
    holds_settle_once_and_expired_holds_are_listed,
    a_job_result_and_its_spend_are_written_together,
    markers_are_set_once,
    idempotency_claims_replays_and_mismatches,
    guards_refuse_when_another_counter_grew,
    rollups_add_up_once_per_batch_and_read_back_by_tenant_and_window,
    concurrent_rollup_batches_all_count,
);

async fn keys_are_unique_found_by_hash_listed_and_revoked_once(b: Backend) {
    let limits = KeyLimits {
        rpm: Some(10),
        tpm: Some(1000),
        budget_usd: Some(0.5),
        budget_period: Some(BudgetPeriod::Month),
    };
    let a = keys::generate("t1", Some("first".into()), limits, 1_000).unwrap();
    let c = keys::generate("t2", None, KeyLimits::default(), 2_000).unwrap();
    b.store.insert_key(&a.record).await.unwrap();
    b.store.insert_key(&c.record).await.unwrap();
    assert!(matches!(
        b.store.insert_key(&a.record).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        b.store.key_by_hash(&a.record.hash).await.unwrap(),
        Some(a.record.clone())
    );
    let unknown = keys::KeyHash::of("sk-sluice-unknown");
    assert_eq!(b.store.key_by_hash(&unknown).await.unwrap(), None);
    let listed = b.store.list_keys().await.unwrap();
    assert_eq!(listed, vec![a.record.clone(), c.record.clone()]);
    assert!(b.store.revoke_key(&a.record.id, 5_000).await.unwrap());
    assert!(!b.store.revoke_key(&a.record.id, 6_000).await.unwrap());
    assert!(!b.store.revoke_key("key_missing", 6_000).await.unwrap());
    let revoked = b.store.key_by_hash(&a.record.hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
}

/// Job workers look keys up by id to refuse a revoked key's queued jobs: the read must see a
/// revocation the moment `revoke_key` has returned, on both backends.
async fn keys_are_found_by_id_and_a_revocation_is_seen_at_once(b: Backend) {
    let a = keys::generate("t1", None, KeyLimits::default(), 1_000).unwrap();
    let c = keys::generate("t2", Some("other".into()), KeyLimits::default(), 2_000).unwrap();
    b.store.insert_key(&a.record).await.unwrap();
    b.store.insert_key(&c.record).await.unwrap();
    assert_eq!(
        b.store.key_by_id(&a.record.id).await.unwrap(),
        Some(a.record.clone())
    );
    assert_eq!(
        b.store.key_by_id(&c.record.id).await.unwrap(),
        Some(c.record.clone())
    );
    assert_eq!(b.store.key_by_id("key_missing").await.unwrap(), None);
    // An id is not a hash and a hash is not an id.
    assert_eq!(
        b.store.key_by_id(&a.record.hash.to_hex()).await.unwrap(),
        None
    );
    assert!(b.store.revoke_key(&a.record.id, 5_000).await.unwrap());
    let revoked = b.store.key_by_id(&a.record.id).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
    assert_eq!(
        b.store
            .key_by_id(&c.record.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms,
        None,
        "revoking one key leaves the others alone"
    );
}

fn cache_key(tenant: &str, n: u8) -> CacheKey {
    CacheKey {
        digest: [n; 32],
        tenant: tenant.into(),
    }
}

async fn cache_entries_round_trip_and_vanish_at_purge_time(b: Backend) {
    let key = cache_key("t1", 1);
    assert_eq!(b.store.cache_get(&key, 0).await.unwrap(), None);
    let entry = CachedResponse {
        body: Bytes::from_static(br#"{"answer":42}"#),
        created_at_ms: 1_000,
        expires_at_ms: 2_000,
        purge_at_ms: 3_000,
    };
    b.store.cache_put(&key, &entry).await.unwrap();
    assert_eq!(
        b.store.cache_get(&key, 1_500).await.unwrap(),
        Some(entry.clone())
    );
    // Expired but not purged: still returned (the gateway decides fresh or stale).
    assert_eq!(
        b.store.cache_get(&key, 2_500).await.unwrap(),
        Some(entry.clone())
    );
    assert_eq!(b.store.cache_get(&key, 3_000).await.unwrap(), None);
    let newer = CachedResponse {
        body: Bytes::from_static(b"{}"),
        created_at_ms: 4_000,
        expires_at_ms: 5_000,
        purge_at_ms: 6_000,
    };
    b.store.cache_put(&key, &newer).await.unwrap();
    assert_eq!(b.store.cache_get(&key, 4_500).await.unwrap(), Some(newer));
    assert_eq!(
        b.store.cache_get(&cache_key("t1", 2), 4_500).await.unwrap(),
        None
    );
}

async fn large_cache_entries_never_fail(b: Backend) {
    // 1 MB of JSON compresses far below DynamoDB's 400 KB item limit: stored on both.
    let compressible = Bytes::from(format!(
        "{{\"data\":[{}]}}",
        vec!["{\"embedding\":[0.1,0.2,0.3]}"; 35_000].join(",")
    ));
    assert!(compressible.len() > 900_000);
    let key = cache_key("t1", 3);
    let entry = CachedResponse {
        body: compressible.clone(),
        created_at_ms: 1,
        expires_at_ms: 10,
        purge_at_ms: 20,
    };
    b.store.cache_put(&key, &entry).await.unwrap();
    assert_eq!(
        b.store.cache_get(&key, 5).await.unwrap().unwrap().body,
        compressible
    );
    // 600 KB that does not compress: stored where it fits, skipped where it cannot — never
    // an error, and never a corrupted answer.
    let mut noise = Vec::with_capacity(600_000);
    let mut x: u32 = 2_463_534_242;
    while noise.len() < 600_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let key = cache_key("t1", 4);
    let entry = CachedResponse {
        body: Bytes::from(noise),
        created_at_ms: 1,
        expires_at_ms: 10,
        purge_at_ms: 20,
    };
    b.store.cache_put(&key, &entry).await.unwrap();
    match b.store.cache_get(&key, 5).await.unwrap() {
        None => {}
        Some(got) => assert_eq!(got, entry),
    }
}

fn job(id: &str, now: u64, request: Bytes) -> Job {
    Job {
        id: id.into(),
        tenant: "t1".into(),
        key_id: "key_1".into(),
        key_limits: KeyLimits {
            rpm: Some(5),
            ..KeyLimits::default()
        },
        endpoint: Endpoint::ChatCompletions,
        request,
        cache_control: Some("no-store".into()),
        callback_url: Some("https://example.com/hook".into()),
        // Round-trips on both adapters (a job that may wait for a provider Batch API).
        completion_window_s: Some(86_400),
        status: JobStatus::Queued,
        attempts: 0,
        lease_until_ms: 0,
        result: None,
        created_at_ms: now,
        updated_at_ms: now,
        expires_at_ms: now + 1_000_000,
    }
}

async fn jobs_move_through_their_lifecycle_by_conditional_writes(b: Backend) {
    let big = Bytes::from(format!(
        "{{\"model\":\"m\",\"messages\":[{}]}}",
        vec!["{\"role\":\"user\",\"content\":\"hello hello hello\"}"; 20_000].join(",")
    ));
    assert!(big.len() > 800_000);
    let j = job("job_a", 10_000, big.clone());
    b.store.insert_job(&j).await.unwrap();
    assert!(matches!(
        b.store.insert_job(&j).await,
        Err(StoreError::AlreadyExists(_))
    ));
    assert_eq!(
        b.store.get_job("job_a", 10_000).await.unwrap(),
        Some(j.clone())
    );

    let Claim::Claimed(claimed) = b.store.claim_job("job_a", 11_000, 500).await.unwrap() else {
        panic!("first claim must win");
    };
    assert_eq!(
        (claimed.status, claimed.attempts, claimed.lease_until_ms),
        (JobStatus::Running, 1, 11_500)
    );
    assert_eq!(claimed.request, big);
    assert_eq!(
        b.store.claim_job("job_a", 11_100, 500).await.unwrap(),
        Claim::Leased { until_ms: 11_500 }
    );
    // The lease ran out: a redelivery takes over with attempt 2.
    let Claim::Claimed(again) = b.store.claim_job("job_a", 11_600, 500).await.unwrap() else {
        panic!("an expired lease must be claimable");
    };
    assert_eq!(again.attempts, 2);
    let result = JobResult {
        http_status: 200,
        body: Bytes::from_static(br#"{"choices":[]}"#),
        tokens_in: 10,
        tokens_out: 5,
        cost_nano_usd: 4_500,
    };
    // The first worker's attempt no longer holds the job.
    assert!(
        !b.store
            .finish_job("job_a", 1, JobStatus::Succeeded, &result, 11_700, None)
            .await
            .unwrap()
    );
    assert!(
        b.store
            .finish_job("job_a", 2, JobStatus::Succeeded, &result, 11_800, None)
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .finish_job("job_a", 2, JobStatus::Failed, &result, 11_900, None)
            .await
            .unwrap()
    );
    let done = b.store.get_job("job_a", 12_000).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.result, Some(result));
    assert_eq!(done.updated_at_ms, 11_800);
    assert!(matches!(
        b.store.claim_job("job_a", 12_000, 500).await.unwrap(),
        Claim::Finished(_)
    ));
    assert_eq!(
        b.store.claim_job("job_missing", 12_000, 500).await.unwrap(),
        Claim::Missing
    );

    // Release gives a claimed job back for immediate redelivery.
    b.store
        .insert_job(&job("job_b", 10_000, Bytes::from_static(b"{}")))
        .await
        .unwrap();
    let Claim::Claimed(c) = b.store.claim_job("job_b", 10_000, 60_000).await.unwrap() else {
        panic!("claim");
    };
    assert!(
        !b.store
            .release_job("job_b", c.attempts + 1, 10_100)
            .await
            .unwrap()
    );
    assert!(
        b.store
            .release_job("job_b", c.attempts, 10_100)
            .await
            .unwrap()
    );
    assert!(
        matches!(b.store.claim_job("job_b", 10_200, 100).await.unwrap(), Claim::Claimed(j) if j.attempts == 2)
    );
}

async fn concurrent_claims_of_one_job_have_one_winner(b: Backend) {
    b.store
        .insert_job(&job("job_c", 1_000, Bytes::from_static(b"{}")))
        .await
        .unwrap();
    let claims = join_all((0..20).map(|_| b.store.claim_job("job_c", 2_000, 10_000))).await;
    let winners = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Claimed(_))))
        .count();
    let leased = claims
        .iter()
        .filter(|c| matches!(c, Ok(Claim::Leased { .. })))
        .count();
    assert_eq!((winners, leased), (1, 19), "{claims:?}");
}

async fn expired_jobs_are_gone(b: Backend) {
    let j = job("job_d", 1_000, Bytes::from_static(b"{}"));
    b.store.insert_job(&j).await.unwrap();
    let past = j.expires_at_ms;
    assert_eq!(b.store.get_job("job_d", past).await.unwrap(), None);
    assert_eq!(
        b.store.claim_job("job_d", past, 10).await.unwrap(),
        Claim::Missing
    );
}

/// Receives until `n` messages arrived or 5 s passed (SQS may answer with fewer than asked).
async fn receive_n(q: &dyn JobQueue, n: usize) -> Vec<sluice::queue::Delivery> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < n && std::time::Instant::now() < deadline {
        got.extend(q.receive(10, Duration::from_secs(1)).await.unwrap());
    }
    got
}

async fn queue_delivers_hides_redelivers_and_deletes(b: Backend) {
    for body in ["one", "two", "three"] {
        b.queue.send(body).await.unwrap();
    }
    let first = receive_n(b.queue.as_ref(), 3).await;
    let mut bodies: Vec<&str> = first.iter().map(|d| d.body.as_str()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["one", "three", "two"]);
    assert!(first.iter().all(|d| d.receive_count == 1));
    // In flight: invisible until the visibility timeout runs out.
    assert!(
        b.queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    for d in first.iter().filter(|d| d.body != "two") {
        b.queue.delete(&d.receipt).await.unwrap();
    }
    tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    let again = receive_n(b.queue.as_ref(), 1).await;
    assert_eq!(again.len(), 1, "only the undeleted message comes back");
    assert_eq!(again[0].body, "two");
    assert_eq!(again[0].receive_count, 2);
    assert_eq!(
        again[0].message_id,
        first.iter().find(|d| d.body == "two").unwrap().message_id
    );
    // A stale receipt is not an error.
    b.queue.delete(&first[0].receipt).await.unwrap();
    b.queue.delete(&again[0].receipt).await.unwrap();
    tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    assert!(
        b.queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 0);
}

async fn queue_moves_a_message_to_the_dead_letter_queue_after_max_receives(b: Backend) {
    b.queue.send("poison").await.unwrap();
    for attempt in 1..=MAX_RECEIVES {
        let got = receive_n(b.queue.as_ref(), 1).await;
        assert_eq!(got.len(), 1, "delivery {attempt}");
        assert_eq!(got[0].receive_count, attempt);
        tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    }
    // The next receive finds it past max_receive_count: it goes to the DLQ instead.
    assert!(
        b.queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 1);
}

/// Housekeeping reads the dead-letter queue like a queue: what it takes is hidden for the
/// visibility timeout and stays a dead letter (counted) until deleted.
async fn dead_letters_are_read_hidden_and_deleted_for_housekeeping(b: Backend) {
    assert_eq!(b.queue.visibility_timeout().await.unwrap(), VISIBILITY);
    assert!(b.queue.receive_dead_letters(10).await.unwrap().is_empty());
    let job_message = r#"{"job_id":"job_x"}"#;
    b.queue.send(job_message).await.unwrap();
    b.queue.send("poison").await.unwrap();
    for attempt in 1..=MAX_RECEIVES {
        let got = receive_n(b.queue.as_ref(), 2).await;
        assert_eq!(got.len(), 2, "delivery {attempt}");
        tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    }
    assert!(
        b.queue
            .receive(10, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 2);
    let mut letters = Vec::new();
    for _ in 0..10 {
        letters.extend(b.queue.receive_dead_letters(10).await.unwrap());
        if letters.len() >= 2 {
            break;
        }
    }
    let mut bodies: Vec<&str> = letters.iter().map(|d| d.body.as_str()).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, vec!["poison", job_message]);
    // Hidden while being looked at, and still dead letters.
    assert!(b.queue.receive_dead_letters(10).await.unwrap().is_empty());
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 2);
    let of_job = letters.iter().find(|d| d.body == job_message).unwrap();
    b.queue.delete_dead_letter(&of_job.receipt).await.unwrap();
    assert_eq!(b.queue.dead_letter_count().await.unwrap(), 1);
    // A stale receipt is not an error.
    b.queue.delete_dead_letter(&of_job.receipt).await.unwrap();
    // The one not deleted comes back after the visibility timeout, still a dead letter.
    tokio::time::sleep(VISIBILITY + Duration::from_millis(200)).await;
    let again = b.queue.receive_dead_letters(10).await.unwrap();
    assert_eq!(
        again.iter().map(|d| d.body.as_str()).collect::<Vec<_>>(),
        vec!["poison"]
    );
    assert!(
        b.queue
            .receive(10, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Housekeeping finds jobs that are not final and have not changed for a while through an
/// index (never a scan), and queues each one again at most once per look: the write is
/// conditional on the change it saw, and refused for a job a worker holds or that ended.
async fn batch_entries_are_found_when_due_by_kind_replaced_and_deleted(b: Backend) {
    use BatchEntryKind::{Open, Waiting};
    let entry = |kind, id: &str, due: u64, body: &str| BatchEntry {
        kind,
        id: id.into(),
        due_at_ms: due,
        body: Bytes::from(body.to_owned()),
        expires_at_ms: 10_000,
    };
    // A body past the deflate threshold round-trips too.
    let big = "x".repeat(5000);
    for e in [
        entry(Waiting, "job_a", 100, "{\"attempt\":1}"),
        entry(Waiting, "job_b", 300, "{\"attempt\":2}"),
        entry(Open, "batch_1", 200, &big),
    ] {
        b.store.put_batch_entry(&e).await.unwrap();
    }
    let due = b
        .store
        .due_batch_entries(Waiting, 250, 50, 10)
        .await
        .unwrap();
    assert_eq!(due, vec![entry(Waiting, "job_a", 100, "{\"attempt\":1}")]);
    let all = b
        .store
        .due_batch_entries(Waiting, 1000, 50, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].id, "job_a");
    let open = b.store.due_batch_entries(Open, 1000, 50, 10).await.unwrap();
    assert_eq!(open, vec![entry(Open, "batch_1", 200, &big)]);
    // Replaced: a new due time and body.
    b.store
        .put_batch_entry(&entry(Open, "batch_1", 900, "{}"))
        .await
        .unwrap();
    assert!(
        b.store
            .due_batch_entries(Open, 800, 50, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        b.store.due_batch_entries(Open, 900, 50, 10).await.unwrap(),
        vec![entry(Open, "batch_1", 900, "{}")]
    );
    // Past its expiry it is gone for every purpose.
    assert!(
        b.store
            .due_batch_entries(Waiting, 1000, 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Deleted once; deleting again is not an error.
    b.store.delete_batch_entry(Waiting, "job_a").await.unwrap();
    b.store.delete_batch_entry(Waiting, "job_a").await.unwrap();
    let left = b
        .store
        .due_batch_entries(Waiting, 1000, 50, 10)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["job_b"]
    );
    // Housekeeping's view of jobs left behind never meets them (DynamoDB shares the index).
    assert!(
        b.store
            .stale_jobs(u64::MAX / 2, 0, 100)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn jobs_left_behind_are_found_by_age_and_queued_again_once(b: Backend) {
    let small = || Bytes::from_static(br#"{"model":"m"}"#);
    // Stored at 1 s and never queued (ingest died between its two writes).
    b.store
        .insert_job(&job("job_orphan", 1_000, small()))
        .await
        .unwrap();
    // Claimed at 2 s with a lease of 0.5 s, then its worker died.
    b.store
        .insert_job(&job("job_dead_worker", 1_500, small()))
        .await
        .unwrap();
    assert!(matches!(
        b.store
            .claim_job("job_dead_worker", 2_000, 500)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    // Claimed at 2 s with a lease until 100 s: a worker holds it.
    b.store
        .insert_job(&job("job_leased", 1_500, small()))
        .await
        .unwrap();
    assert!(matches!(
        b.store
            .claim_job("job_leased", 2_000, 98_000)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    // Finished: never listed.
    b.store
        .insert_job(&job("job_done", 1_000, small()))
        .await
        .unwrap();
    let Claim::Claimed(done) = b.store.claim_job("job_done", 1_500, 1_000).await.unwrap() else {
        panic!("not claimed");
    };
    let result = JobResult {
        http_status: 200,
        body: Bytes::from_static(b"{}"),
        tokens_in: 1,
        tokens_out: 1,
        cost_nano_usd: 1,
    };
    assert!(
        b.store
            .finish_job(
                "job_done",
                done.attempts,
                JobStatus::Succeeded,
                &result,
                1_600,
                None
            )
            .await
            .unwrap()
    );
    // Changed after the cut.
    b.store
        .insert_job(&job("job_recent", 9_000, small()))
        .await
        .unwrap();
    // Past its retention.
    let mut expired = job("job_expired", 100, small());
    expired.expires_at_ms = 4_000;
    b.store.insert_job(&expired).await.unwrap();

    let mut stale = b.store.stale_jobs(5_000, 5_000, 100).await.unwrap();
    stale.sort_by(|a, c| a.id.cmp(&c.id));
    assert_eq!(
        stale,
        vec![
            StaleJob {
                id: "job_dead_worker".into(),
                status: JobStatus::Running,
                attempts: 1,
                lease_until_ms: 2_500,
                updated_at_ms: 2_000,
            },
            StaleJob {
                id: "job_leased".into(),
                status: JobStatus::Running,
                attempts: 1,
                lease_until_ms: 100_000,
                updated_at_ms: 2_000,
            },
            StaleJob {
                id: "job_orphan".into(),
                status: JobStatus::Queued,
                attempts: 0,
                lease_until_ms: 0,
                updated_at_ms: 1_000,
            },
        ]
    );
    assert_eq!(b.store.stale_jobs(5_000, 5_000, 2).await.unwrap().len(), 2);

    // Queued again once: a second look with the same view is refused.
    assert!(
        b.store
            .requeue_job("job_orphan", 1_000, 5_000)
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .requeue_job("job_orphan", 1_000, 5_000)
            .await
            .unwrap()
    );
    // A dead worker's job becomes claimable at once, its attempts kept.
    assert!(
        b.store
            .requeue_job("job_dead_worker", 2_000, 5_000)
            .await
            .unwrap()
    );
    let requeued = b
        .store
        .get_job("job_dead_worker", 5_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            requeued.status,
            requeued.attempts,
            requeued.lease_until_ms,
            requeued.updated_at_ms
        ),
        (JobStatus::Queued, 1, 0, 5_000)
    );
    // Refused for a job a worker holds, and for one that ended.
    assert!(
        !b.store
            .requeue_job("job_leased", 2_000, 5_000)
            .await
            .unwrap()
    );
    assert!(!b.store.requeue_job("job_done", 1_600, 5_000).await.unwrap());
    // Queued again, they are no longer behind.
    let ids: Vec<String> = b
        .store
        .stale_jobs(4_999, 5_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(ids, vec!["job_leased".to_owned()]);
    let Claim::Claimed(claimed) = b.store.claim_job("job_orphan", 6_000, 1_000).await.unwrap()
    else {
        panic!("a job queued again can be claimed");
    };
    assert_eq!(claimed.attempts, 1);
}

fn inc(counter: &str, field: CounterField, delta: i64, at_most: Option<i64>) -> Increment {
    Increment {
        counter: counter.into(),
        field,
        delta,
        at_most,
        expires_at_ms: 4_000_000_000_000,
        guard: None,
    }
}

async fn limit_increments_apply_all_or_nothing(b: Backend) {
    let a = inc("c:a", CounterField::Count, 1, Some(5));
    let c = inc("c:b", CounterField::Committed, 10, Some(10));
    assert_eq!(
        b.store.apply(&[a.clone(), c.clone()], None).await.unwrap(),
        Applied::Granted
    );
    assert_eq!(
        b.store.apply(std::slice::from_ref(&a), None).await.unwrap(),
        Applied::Granted
    );
    assert_eq!(
        b.store.apply(std::slice::from_ref(&a), None).await.unwrap(),
        Applied::Granted
    );
    // The second increment no longer fits: neither is applied, and the refusal says why.
    assert_eq!(
        b.store
            .apply(
                &[a.clone(), inc("c:b", CounterField::Committed, 1, Some(10))],
                None
            )
            .await
            .unwrap(),
        Applied::Refused {
            index: 1,
            current: Some(10)
        }
    );
    let values = b
        .store
        .read_counters(&[
            ("c:a".into(), CounterField::Count),
            ("c:b".into(), CounterField::Committed),
            ("c:b".into(), CounterField::Spent),
            ("c:none".into(), CounterField::Count),
        ])
        .await
        .unwrap();
    assert_eq!(values, vec![3, 10, 0, 0]);
    // Two fields of one counter in one call, negative deltas, no condition.
    let both = [
        inc("c:b", CounterField::Committed, -4, None),
        inc("c:b", CounterField::Spent, 6, None),
    ];
    assert_eq!(b.store.apply(&both, None).await.unwrap(), Applied::Granted);
    let values = b
        .store
        .read_counters(&[
            ("c:b".into(), CounterField::Committed),
            ("c:b".into(), CounterField::Spent),
        ])
        .await
        .unwrap();
    assert_eq!(values, vec![6, 6]);
    // An increment that cannot fit even an empty counter is refused.
    let too_big = inc("c:new", CounterField::Count, 7, Some(5));
    assert!(matches!(
        b.store.apply(&[too_big], None).await.unwrap(),
        Applied::Refused { index: 0, .. }
    ));
}

async fn concurrent_conditional_increments_never_pass_the_limit(b: Backend) {
    let tries = (0..40).map(|_| {
        let store = Arc::clone(&b.store);
        async move {
            store
                .apply(&[inc("c:hot", CounterField::Count, 1, Some(15))], None)
                .await
                .unwrap()
        }
    });
    let granted = join_all(tries)
        .await
        .into_iter()
        .filter(|a| *a == Applied::Granted)
        .count();
    assert_eq!(granted, 15);
    let v = b
        .store
        .read_counters(&[("c:hot".into(), CounterField::Count)])
        .await
        .unwrap();
    assert_eq!(v, vec![15]);
}

async fn holds_settle_once_and_expired_holds_are_listed(b: Backend) {
    let reserve = inc("c:budget", CounterField::Committed, 100, Some(1000));
    let hold = Hold {
        id: "hold_1".into(),
        undo: vec![inc("c:budget", CounterField::Committed, -100, None)],
        expires_at_ms: 5_000,
    };
    assert_eq!(
        b.store
            .apply(std::slice::from_ref(&reserve), Some(&hold))
            .await
            .unwrap(),
        Applied::Granted
    );
    let other = Hold {
        id: "hold_2".into(),
        expires_at_ms: 9_000,
        ..hold.clone()
    };
    assert_eq!(
        b.store.apply(&[reserve], Some(&other)).await.unwrap(),
        Applied::Granted
    );
    assert!(b.store.expired_holds(4_999, 10).await.unwrap().is_empty());
    assert_eq!(
        b.store.expired_holds(5_000, 10).await.unwrap(),
        vec![hold.clone()]
    );
    // Settling moves committed to the real cost and records it as spent, exactly once.
    let settle = [
        inc("c:budget", CounterField::Committed, -60, None),
        inc("c:budget", CounterField::Spent, 40, None),
    ];
    assert!(b.store.settle("hold_1", &settle).await.unwrap());
    assert!(!b.store.settle("hold_1", &settle).await.unwrap());
    assert!(!b.store.settle("hold_missing", &settle).await.unwrap());
    let v = b
        .store
        .read_counters(&[
            ("c:budget".into(), CounterField::Committed),
            ("c:budget".into(), CounterField::Spent),
        ])
        .await
        .unwrap();
    assert_eq!(v, vec![140, 40]);
    assert!(b.store.expired_holds(6_000, 10).await.unwrap().is_empty());
    assert_eq!(
        b.store.expired_holds(10_000, 10).await.unwrap(),
        vec![other]
    );
}

async fn a_job_result_and_its_spend_are_written_together(b: Backend) {
    let counters = [
        ("c:job".to_owned(), CounterField::Committed),
        ("c:job".to_owned(), CounterField::Spent),
    ];
    let reserve = |hold: &str| {
        let hold = Hold {
            id: hold.into(),
            undo: vec![inc("c:job", CounterField::Committed, -100, None)],
            expires_at_ms: 50_000,
        };
        let store = &b.store;
        async move {
            store
                .apply(
                    &[inc("c:job", CounterField::Committed, 100, None)],
                    Some(&hold),
                )
                .await
                .unwrap()
        }
    };
    let settlement = |hold: &str| Settlement {
        hold_id: hold.into(),
        increments: vec![
            inc("c:job", CounterField::Committed, -60, None),
            inc("c:job", CounterField::Spent, 40, None),
        ],
        unheld: vec![
            inc("c:job", CounterField::Committed, 40, None),
            inc("c:job", CounterField::Spent, 40, None),
        ],
    };
    let result = JobResult {
        http_status: 200,
        body: Bytes::from_static(br#"{"choices":[]}"#),
        tokens_in: 10,
        tokens_out: 5,
        cost_nano_usd: 40,
    };
    let finish = |id: &'static str, attempt: u32, now: u64, hold: &'static str| {
        let (store, result) = (&b.store, &result);
        async move {
            store
                .finish_job(
                    id,
                    attempt,
                    JobStatus::Succeeded,
                    result,
                    now,
                    Some(&settlement(hold)),
                )
                .await
                .unwrap()
        }
    };
    let read = || async { b.store.read_counters(&counters).await.unwrap() };
    b.store
        .insert_job(&job("job_s", 10_000, Bytes::from_static(b"{}")))
        .await
        .unwrap();
    let Claim::Claimed(first) = b.store.claim_job("job_s", 10_000, 500).await.unwrap() else {
        panic!("claim");
    };
    assert_eq!(reserve("hold_j1").await, Applied::Granted);
    // Taken over after its lease: the first attempt writes neither result nor spend, and
    // its reservation stays held (until it expires and is given back).
    let Claim::Claimed(second) = b.store.claim_job("job_s", 10_600, 500).await.unwrap() else {
        panic!("takeover");
    };
    assert!(!finish("job_s", first.attempts, 10_700, "hold_j1").await);
    assert_eq!(read().await, vec![100, 0]);
    assert_eq!(b.store.expired_holds(50_000, 10).await.unwrap().len(), 1);
    // The second attempt's result lands with its spend, the hold deleted.
    assert_eq!(reserve("hold_j2").await, Applied::Granted);
    assert!(finish("job_s", second.attempts, 10_800, "hold_j2").await);
    assert_eq!(read().await, vec![140, 40]);
    // Written again (an answer lost, retried): refused, nothing applied twice.
    assert!(!finish("job_s", second.attempts, 10_900, "hold_j2").await);
    assert_eq!(read().await, vec![140, 40]);
    let done = b.store.get_job("job_s", 11_000).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.result),
        (JobStatus::Succeeded, Some(result.clone()))
    );

    // A hold already released as abandoned: the result lands with the real usage alone.
    b.store
        .insert_job(&job("job_t", 10_000, Bytes::from_static(b"{}")))
        .await
        .unwrap();
    let Claim::Claimed(t) = b.store.claim_job("job_t", 10_000, 500).await.unwrap() else {
        panic!("claim");
    };
    assert!(finish("job_t", t.attempts, 10_100, "hold_gone").await);
    assert_eq!(read().await, vec![180, 80]);
}

async fn markers_are_set_once(b: Backend) {
    let flags = join_all((0..10).map(|_| b.store.mark_once("soft:x", 4_000_000_000_000))).await;
    assert_eq!(
        flags.into_iter().filter(|f| *f.as_ref().unwrap()).count(),
        1
    );
    assert!(
        b.store
            .mark_once("soft:y", 4_000_000_000_000)
            .await
            .unwrap()
    );
}

async fn idempotency_claims_replays_and_mismatches(b: Backend) {
    let fp = [1u8; 32];
    let other_fp = [2u8; 32];
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &fp, 1_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &fp, 1_100, 500)
            .await
            .unwrap(),
        IdempotencyBegin::InProgress
    );
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &other_fp, 1_100, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Mismatch
    );
    let response = StoredResponse {
        status: 200,
        body: Bytes::from_static(br#"{"ok":true}"#),
    };
    b.store
        .idempotency_finish("t#k", &fp, &response, 100_000)
        .await
        .unwrap();
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &fp, 2_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Replay(response.clone())
    );
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &other_fp, 2_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Mismatch
    );
    // Releasing never forgets a finished response; it expires with its TTL.
    b.store.idempotency_release("t#k").await.unwrap();
    assert!(matches!(
        b.store
            .idempotency_begin("t#k", &fp, 3_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Replay(_)
    ));
    assert_eq!(
        b.store
            .idempotency_begin("t#k", &other_fp, 100_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    // An abandoned claim can be taken over after its lease; a released one at once.
    assert_eq!(
        b.store
            .idempotency_begin("t#x", &fp, 1_000, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    assert_eq!(
        b.store
            .idempotency_begin("t#x", &fp, 1_600, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    b.store.idempotency_release("t#x").await.unwrap();
    assert_eq!(
        b.store
            .idempotency_begin("t#x", &fp, 1_700, 500)
            .await
            .unwrap(),
        IdempotencyBegin::Started
    );
    let claims =
        join_all((0..10).map(|_| b.store.idempotency_begin("t#race", &fp, 5_000, 500))).await;
    let started = claims
        .iter()
        .filter(|c| matches!(c, Ok(IdempotencyBegin::Started)))
        .count();
    assert_eq!(started, 1);
}

async fn guards_refuse_when_another_counter_grew(b: Backend) {
    let prev = inc("c:prev", CounterField::Count, 4, None);
    assert_eq!(
        b.store.apply(&[prev], None).await.unwrap(),
        Applied::Granted
    );
    let mut guarded = inc("c:now", CounterField::Count, 1, Some(10));
    guarded.guard = Some(sluice::store::Guard {
        counter: "c:prev".into(),
        field: CounterField::Count,
        at_most: 3,
    });
    // The previous counter holds 4, more than the 3 the check assumed: nothing applied.
    let other = inc("c:other", CounterField::Count, 1, None);
    assert_eq!(
        b.store
            .apply(&[other, guarded.clone()], None)
            .await
            .unwrap(),
        Applied::Stale { index: 1 }
    );
    let v = b
        .store
        .read_counters(&[
            ("c:now".into(), CounterField::Count),
            ("c:other".into(), CounterField::Count),
        ])
        .await
        .unwrap();
    assert_eq!(v, vec![0, 0]);
    guarded.guard.as_mut().unwrap().at_most = 4;
    assert_eq!(
        b.store.apply(&[guarded.clone()], None).await.unwrap(),
        Applied::Granted
    );
    // A guard on a counter that does not exist yet holds (it is 0).
    guarded.guard.as_mut().unwrap().counter = "c:absent".into();
    guarded.guard.as_mut().unwrap().at_most = 0;
    assert_eq!(
        b.store.apply(&[guarded], None).await.unwrap(),
        Applied::Granted
    );
}

fn rollup_row(minute: u64, tenant: &str, model: &str, requests: u64, micros: &[u64]) -> RollupRow {
    let mut rollup = Rollup {
        requests,
        errors_rate_limited: 1,
        cache_hits: requests / 2,
        tokens_in: 10 * requests,
        cost_nano_usd: 1_000 * requests,
        ..Rollup::default()
    };
    for &us in micros {
        rollup.latency.record(us);
    }
    RollupRow {
        key: RollupKey {
            minute,
            tenant: tenant.into(),
            model: model.into(),
            provider: "openai".into(),
        },
        rollup,
    }
}

async fn rollups_add_up_once_per_batch_and_read_back_by_tenant_and_window(b: Backend) {
    // Minutes on two UTC days, two tenants, two models.
    let day = 86_400 * 20_000;
    let a = rollup_row(day - 60, "t1", "m1", 4, &[900, 1_200, 50_000]);
    let b1 = rollup_row(day, "t1", "m1", 2, &[2_000_000]);
    let c = rollup_row(day, "t2", "m2", 3, &[10]);
    let batch = [a.clone(), b1.clone(), c.clone()];
    assert!(b.store.add_rollups("batch-1", &batch).await.unwrap());
    // A redelivered batch adds nothing.
    assert!(!b.store.add_rollups("batch-1", &batch).await.unwrap());
    // Another batch adds to the same rows.
    assert!(
        b.store
            .add_rollups("batch-2", std::slice::from_ref(&a))
            .await
            .unwrap()
    );

    let all = b.store.rollups(None, day - 120, day + 60).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let found = |rows: &[RollupRow], minute: u64, tenant: &str| {
        rows.iter()
            .find(|r| r.key.minute == minute && r.key.tenant == tenant)
            .cloned()
            .unwrap()
    };
    let doubled = found(&all, day - 60, "t1");
    let mut expected = a.rollup.clone();
    expected.merge(&a.rollup);
    assert_eq!(doubled.rollup, expected);
    assert_eq!(doubled.rollup.latency.count(), 6);
    assert_eq!(found(&all, day, "t2").rollup, c.rollup);
    assert_eq!(found(&all, day, "t2").key, c.key);

    let t1 = b
        .store
        .rollups(Some("t1"), day - 120, day + 60)
        .await
        .unwrap();
    assert_eq!(t1.len(), 2);
    assert!(t1.iter().all(|r| r.key.tenant == "t1"));
    // The window is [from, to): the minute at `to` is out, the one at `from` in.
    let window = b.store.rollups(None, day, day + 60).await.unwrap();
    assert_eq!(window.len(), 2);
    assert!(
        b.store
            .rollups(None, day - 59, day)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.store
            .rollups(Some("t3"), day - 120, day + 60)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn concurrent_rollup_batches_all_count(b: Backend) {
    let minute = 86_400 * 20_001;
    let batches: Vec<Vec<RollupRow>> = (0..8)
        .map(|i| vec![rollup_row(minute, "t1", "m1", 1, &[100 * (i + 1)])])
        .collect();
    let results = join_all(batches.iter().enumerate().map(|(i, rows)| {
        let store = Arc::clone(&b.store);
        async move { store.add_rollups(&format!("c{i}"), rows).await }
    }))
    .await;
    assert!(results.into_iter().all(|r| r.unwrap()));
    let rows = b
        .store
        .rollups(Some("t1"), minute, minute + 60)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].rollup.requests, 8);
    assert_eq!(rows[0].rollup.latency.count(), 8);
    assert_eq!(rows[0].rollup.errors_rate_limited, 8);
}

/// The single-flight marker of identical misses (`gateway/coalesce.rs`): one holder at a time,
/// refused with the holder; ended only by its own token; taken over once its lease runs out or
/// once an entry newer than it is stored (the leader landed); polled with its entry in one read.
async fn in_flight_markers_have_one_holder_and_end_by_token_lease_or_landing(b: Backend) {
    let key = cache_key("t1", 21);
    let begin = |token: &'static str, now: u64, landed: u64| {
        let (store, key) = (b.store.clone(), key.clone());
        async move {
            store
                .flight_begin(&key, token, now, 1_000, landed)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        b.store.flight_poll(&key, 10_000).await.unwrap(),
        FlightPoll::default()
    );
    assert_eq!(begin("a", 10_000, 0).await, FlightBegin::Leading);
    let held = FlightBegin::Following(sluice::store::Flight {
        token: "a".into(),
        started_at_ms: 10_000,
        lease_until_ms: 11_000,
    });
    assert_eq!(begin("b", 10_500, 0).await, held);
    // Its lease is still on at 10 999, by an entry stored before it began too.
    assert_eq!(begin("b", 10_999, 9_000).await, held);
    let polled = b.store.flight_poll(&key, 10_999).await.unwrap();
    assert_eq!(polled.entry, None);
    assert_eq!(polled.flight.unwrap().token, "a");
    // Another token cannot end it; its own can.
    b.store.flight_end(&key, "b").await.unwrap();
    assert_eq!(begin("c", 10_600, 0).await, held);
    b.store.flight_end(&key, "a").await.unwrap();
    assert_eq!(
        b.store.flight_poll(&key, 10_600).await.unwrap().flight,
        None
    );
    assert_eq!(begin("c", 10_700, 0).await, FlightBegin::Leading);
    // Its holder renews the lease; another token cannot.
    assert!(
        b.store
            .flight_renew(&key, "c", 11_500, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !b.store
            .flight_renew(&key, "b", 11_500, 5_000)
            .await
            .unwrap()
    );
    let renewed = b
        .store
        .flight_poll(&key, 12_000)
        .await
        .unwrap()
        .flight
        .unwrap();
    assert_eq!(
        (
            renewed.token.as_str(),
            renewed.started_at_ms,
            renewed.lease_until_ms
        ),
        ("c", 10_700, 12_500)
    );
    assert!(matches!(
        begin("d", 12_000, 0).await,
        FlightBegin::Following(_)
    ));
    // A lease that ran out is taken over; the poll no longer reports it.
    assert_eq!(
        b.store.flight_poll(&key, 12_500).await.unwrap().flight,
        None
    );
    assert_eq!(begin("d", 12_500, 0).await, FlightBegin::Leading);
    // An ended or taken-over marker is not its old holder's to renew.
    assert!(
        !b.store
            .flight_renew(&key, "c", 12_600, 1_000)
            .await
            .unwrap()
    );
    // The leader stores its answer and leaves its marker: the entry, created after the
    // marker began, makes it spent for whoever saw that entry (once it is stale).
    let entry = CachedResponse {
        body: Bytes::from_static(br#"{"answer":"landed"}"#),
        created_at_ms: 13_000,
        expires_at_ms: 13_100,
        purge_at_ms: 50_000,
    };
    b.store.cache_put(&key, &entry).await.unwrap();
    let polled = b.store.flight_poll(&key, 13_050).await.unwrap();
    assert_eq!(polled.entry, Some(entry.clone()));
    assert_eq!(polled.flight.as_ref().map(|f| f.token.as_str()), Some("d"));
    // Not spent for one who saw no entry (or an older one): its lease still holds.
    assert!(matches!(
        begin("e", 13_200, 12_000).await,
        FlightBegin::Following(_)
    ));
    assert_eq!(begin("e", 13_200, 13_000).await, FlightBegin::Leading);
    // Markers are per key: another key's flight is its own.
    let other = cache_key("t1", 23);
    assert_eq!(
        b.store.flight_poll(&other, 13_200).await.unwrap(),
        FlightPoll::default()
    );
    assert_eq!(
        b.store
            .flight_begin(&other, "f", 13_200, 1_000, 0)
            .await
            .unwrap(),
        FlightBegin::Leading
    );
}

/// Fifty processes' first requests of one key begin at once: exactly one leads, and the
/// others are told who does.
async fn concurrent_flight_begins_have_one_leader(b: Backend) {
    let key = cache_key("t1", 22);
    let results = join_all((0..50).map(|i| {
        let (store, key) = (b.store.clone(), key.clone());
        async move {
            store
                .flight_begin(&key, &format!("token{i}"), 20_000, 5_000, 0)
                .await
                .unwrap()
        }
    }))
    .await;
    let leaders = results
        .iter()
        .filter(|r| **r == FlightBegin::Leading)
        .count();
    assert_eq!(leaders, 1, "{results:?}");
    let holder = b
        .store
        .flight_poll(&key, 20_001)
        .await
        .unwrap()
        .flight
        .unwrap();
    for r in &results {
        if let FlightBegin::Following(f) = r {
            assert_eq!(f, &holder);
        }
    }
}

/// A reservation that takes the in-flight marker in the same write (`apply_leading`, the admit
/// stage of a request that leads identical ones): the marker only with a grant; nothing
/// applied (no counter, no hold) while another flight holds it, even when a limit would also
/// refuse; taken over once spent or run out; and of concurrent ones exactly one leads.
async fn reservations_take_the_in_flight_marker_in_the_same_write(b: Backend) {
    let key = cache_key("t1", 31);
    let claim = |key: &CacheKey, token: &str, now_ms: u64, landed_ms: u64| FlightClaim {
        key: key.clone(),
        token: token.into(),
        now_ms,
        lease_ms: 1_000,
        landed_ms,
    };
    let rpm = inc("c:lead:rpm", CounterField::Count, 1, Some(3));
    let hold = |id: &str| Hold {
        id: id.into(),
        undo: vec![inc("c:lead:rpm", CounterField::Count, -1, None)],
        expires_at_ms: 50_000,
    };
    let lead = |inc: Increment, hold: Option<Hold>, claim: FlightClaim| {
        let store = b.store.clone();
        async move {
            store
                .apply_leading(&[inc], hold.as_ref(), &claim)
                .await
                .unwrap()
        }
    };
    let count = |counter: &'static str| {
        let store = b.store.clone();
        async move {
            store
                .read_counters(&[(counter.into(), CounterField::Count)])
                .await
                .unwrap()[0]
        }
    };
    assert_eq!(
        lead(
            rpm.clone(),
            Some(hold("hold_lead_a")),
            claim(&key, "a", 10_000, 0)
        )
        .await,
        Applied::Granted
    );
    let held = Flight {
        token: "a".into(),
        started_at_ms: 10_000,
        lease_until_ms: 11_000,
    };
    assert_eq!(
        b.store.flight_poll(&key, 10_000).await.unwrap().flight,
        Some(held.clone())
    );
    // Another request's reservation meets the marker: nothing of it is written.
    assert_eq!(
        lead(
            rpm.clone(),
            Some(hold("hold_lead_b")),
            claim(&key, "b", 10_500, 0)
        )
        .await,
        Applied::InFlight(held.clone())
    );
    let refusing = inc("c:lead:rpm", CounterField::Count, 3, Some(3));
    assert_eq!(
        lead(refusing.clone(), None, claim(&key, "b", 10_500, 0)).await,
        Applied::InFlight(held),
        "a held marker is followed, whatever the limits say"
    );
    assert_eq!(count("c:lead:rpm").await, 1);
    assert!(
        !b.store.settle("hold_lead_b", &[]).await.unwrap(),
        "the follower's hold was not stored"
    );
    // A refused reservation takes no marker.
    let other = cache_key("t1", 32);
    assert!(matches!(
        lead(refusing, None, claim(&other, "r", 10_500, 0)).await,
        Applied::Refused { index: 0, .. }
    ));
    assert_eq!(
        b.store.flight_poll(&other, 10_500).await.unwrap().flight,
        None
    );
    // Spent by an entry newer than it (its leader landed), or run out: taken over.
    assert_eq!(
        lead(rpm.clone(), None, claim(&key, "c", 10_600, 10_200)).await,
        Applied::Granted
    );
    assert_eq!(
        lead(rpm.clone(), None, claim(&key, "d", 11_700, 0)).await,
        Applied::Granted
    );
    let taken = b.store.flight_poll(&key, 11_700).await.unwrap().flight;
    assert_eq!(taken.map(|f| f.token), Some("d".to_owned()));
    assert_eq!(count("c:lead:rpm").await, 3);
    // Twenty processes' identical misses at once: one leads, only its reservation counts.
    let many = cache_key("t1", 33);
    let results = join_all((0..20).map(|i| {
        lead(
            inc("c:lead:many", CounterField::Count, 1, Some(100)),
            None,
            claim(&many, &format!("t{i}"), 20_000, 0),
        )
    }))
    .await;
    let leaders = results.iter().filter(|r| **r == Applied::Granted).count();
    assert_eq!(leaders, 1, "{results:?}");
    let holder = b
        .store
        .flight_poll(&many, 20_001)
        .await
        .unwrap()
        .flight
        .unwrap();
    for r in &results {
        assert!(
            *r == Applied::Granted || *r == Applied::InFlight(holder.clone()),
            "{r:?}"
        );
    }
    assert_eq!(count("c:lead:many").await, 1);
}
