//! A store that fails on command: it wraps a real store (SQLite or DynamoDB) and makes chosen
//! operations fail the way a real backend does.
//!
//! Two kinds of failure matter for a gateway that reserves budget and runs jobs:
//! - [`Fault::Throttled`]: the call is refused before anything is written, as DynamoDB answers
//!   a throttled call (`ProvisionedThroughputExceededException`, `ThrottlingException`) once
//!   the SDK's own retries are spent;
//! - [`Fault::LostAnswer`]: the write lands but its answer never comes back (a timeout or a
//!   dropped connection after the backend applied it), so the caller cannot tell whether it
//!   happened.
//!
//! It can also hold an operation back ([`FaultyStore::hold`]) until released, to look at what
//! happens while a write is on its way.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sluice::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use sluice::keys::{KeyHash, KeyRecord};
use sluice::metrics::RollupRow;
use sluice::store::{
    Applied, BatchEntry, BatchEntryKind, BatchStore, CacheKey, CacheStore, CachedResponse,
    CounterField, FlightBegin, FlightClaim, FlightPoll, Hold, IdempotencyBegin, IdempotencyStore,
    Increment, JobStore, KeyStore, LimitStore, MetricsStore, Settlement, SharedStore, StoreError,
    StoredResponse,
};

/// A store operation, by the name of its trait method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    InsertKey,
    KeyByHash,
    KeyById,
    ListKeys,
    RevokeKey,
    CacheGet,
    CachePut,
    FlightBegin,
    FlightRenew,
    FlightPoll,
    FlightEnd,
    InsertJob,
    GetJob,
    ClaimJob,
    ReleaseJob,
    FinishJob,
    Apply,
    Settle,
    ReadCounters,
    ExpiredHolds,
    MarkOnce,
    IdempotencyBegin,
    IdempotencyFinish,
    IdempotencyRelease,
    AddRollups,
    Rollups,
}

impl Op {
    /// Every operation that writes, in the order a request or job meets them.
    pub const WRITES: [Op; 17] = [
        Op::IdempotencyBegin,
        Op::FlightBegin,
        Op::FlightRenew,
        Op::Apply,
        Op::CachePut,
        Op::FlightEnd,
        Op::Settle,
        Op::IdempotencyFinish,
        Op::IdempotencyRelease,
        Op::InsertJob,
        Op::ClaimJob,
        Op::ReleaseJob,
        Op::FinishJob,
        Op::MarkOnce,
        Op::AddRollups,
        Op::InsertKey,
        Op::RevokeKey,
    ];

    fn writes(self) -> bool {
        Self::WRITES.contains(&self)
    }
}

/// How an operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Refused before anything is written, with DynamoDB's throttling error.
    Throttled,
    /// Also refused before anything is written, with DynamoDB's other throttling error.
    ThrottledRequests,
    /// Written, then reported as failed (the answer was lost). Reads fail like `Throttled`.
    LostAnswer,
}

impl Fault {
    fn error(self, op: Op) -> StoreError {
        let name = match self {
            Fault::Throttled | Fault::LostAnswer => "ProvisionedThroughputExceededException",
            Fault::ThrottledRequests => "ThrottlingException",
        };
        StoreError::throttled(
            format!("DynamoDB: {name}: injected fault on {op:?} (the request rate is too high)"),
            None,
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    fault: Fault,
    /// Calls to let through before failing.
    skip: usize,
    /// Calls left to fail (`usize::MAX`: until cleared).
    times: usize,
}

/// The wrapper. Build it with [`FaultyStore::wrap`], then [`FaultyStore::fail`].
pub struct FaultyStore {
    inner: SharedStore,
    rules: Mutex<HashMap<Op, Rule>>,
    injected: Mutex<HashMap<(Op, Fault), usize>>,
    calls: Mutex<HashMap<Op, usize>>,
    /// Operations held back: their calls wait until released.
    held: tokio::sync::watch::Sender<HashSet<Op>>,
}

impl FaultyStore {
    /// Wraps `inner`; nothing fails until told to.
    pub fn wrap(inner: SharedStore) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rules: Mutex::new(HashMap::new()),
            injected: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            held: tokio::sync::watch::Sender::new(HashSet::new()),
        })
    }

    /// Calls of `op` from now on wait, before they reach the store, until
    /// [`FaultyStore::release`].
    pub fn hold(&self, op: Op) {
        self.held.send_modify(|held| {
            held.insert(op);
        });
    }

    /// Lets the held calls of `op` go on, and the later ones through.
    pub fn release(&self, op: Op) {
        self.held.send_modify(|held| {
            held.remove(&op);
        });
    }

    /// From the `skip+1`-th call of `op` on, the next `times` calls fail with `fault`.
    pub fn fail(&self, op: Op, fault: Fault, skip: usize, times: usize) {
        self.rules
            .lock()
            .unwrap()
            .insert(op, Rule { fault, skip, times });
    }

    /// Every call of `op` fails with `fault` until [`FaultyStore::heal`].
    pub fn fail_always(&self, op: Op, fault: Fault) {
        self.fail(op, fault, 0, usize::MAX);
    }

    /// No more faults.
    pub fn heal(&self) {
        self.rules.lock().unwrap().clear();
    }

    /// Faults injected so far, all kinds.
    pub fn injected(&self) -> usize {
        self.injected.lock().unwrap().values().sum()
    }

    /// Faults injected so far into `op`.
    pub fn injected_into(&self, op: Op) -> usize {
        self.injected
            .lock()
            .unwrap()
            .iter()
            .filter(|((o, _), _)| *o == op)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls of `op` so far (failed or not).
    pub fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    /// The fault this call gets, if any.
    fn next_fault(&self, op: Op) -> Option<Fault> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        let mut rules = self.rules.lock().unwrap();
        let rule = rules.get_mut(&op)?;
        if rule.skip > 0 {
            rule.skip -= 1;
            return None;
        }
        if rule.times == 0 {
            return None;
        }
        rule.times = rule
            .times
            .saturating_sub(usize::from(rule.times != usize::MAX));
        let fault = rule.fault;
        drop(rules);
        *self
            .injected
            .lock()
            .unwrap()
            .entry((op, fault))
            .or_default() += 1;
        Some(fault)
    }

    /// Runs `call` under `op`'s rule: refused before it runs, or run and its answer replaced.
    async fn guard<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut held = self.held.subscribe();
        // The sender lives as long as `self`.
        let _ = held.wait_for(|held| !held.contains(&op)).await;
        match self.next_fault(op) {
            None => call.await,
            Some(Fault::LostAnswer) if op.writes() => {
                let _ = call.await;
                Err(Fault::LostAnswer.error(op))
            }
            Some(fault) => Err(fault.error(op)),
        }
    }
}

#[async_trait]
impl KeyStore for FaultyStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.guard(Op::InsertKey, self.inner.insert_key(key)).await
    }
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        self.guard(Op::KeyByHash, self.inner.key_by_hash(hash))
            .await
    }
    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.guard(Op::KeyById, self.inner.key_by_id(id)).await
    }
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.guard(Op::ListKeys, self.inner.list_keys()).await
    }
    async fn revoke_key(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.guard(Op::RevokeKey, self.inner.revoke_key(id, now_ms))
            .await
    }
}

#[async_trait]
impl CacheStore for FaultyStore {
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        self.guard(Op::CacheGet, self.inner.cache_get(key, now_ms))
            .await
    }
    async fn cache_put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        self.guard(Op::CachePut, self.inner.cache_put(key, entry))
            .await
    }
    async fn flight_begin(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
        landed_ms: u64,
    ) -> Result<FlightBegin, StoreError> {
        self.guard(
            Op::FlightBegin,
            self.inner
                .flight_begin(key, token, now_ms, lease_ms, landed_ms),
        )
        .await
    }
    async fn flight_renew(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        self.guard(
            Op::FlightRenew,
            self.inner.flight_renew(key, token, now_ms, lease_ms),
        )
        .await
    }
    async fn flight_poll(&self, key: &CacheKey, now_ms: u64) -> Result<FlightPoll, StoreError> {
        self.guard(Op::FlightPoll, self.inner.flight_poll(key, now_ms))
            .await
    }
    async fn flight_end(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        self.guard(Op::FlightEnd, self.inner.flight_end(key, token))
            .await
    }
}

#[async_trait]
impl JobStore for FaultyStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        self.guard(Op::InsertJob, self.inner.insert_job(job)).await
    }
    async fn get_job(&self, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
        self.guard(Op::GetJob, self.inner.get_job(id, now_ms)).await
    }
    async fn claim_job(&self, id: &str, now_ms: u64, lease_ms: u64) -> Result<Claim, StoreError> {
        self.guard(Op::ClaimJob, self.inner.claim_job(id, now_ms, lease_ms))
            .await
    }
    async fn release_job(&self, id: &str, attempt: u32, now_ms: u64) -> Result<bool, StoreError> {
        self.guard(Op::ReleaseJob, self.inner.release_job(id, attempt, now_ms))
            .await
    }
    async fn finish_job(
        &self,
        id: &str,
        attempt: u32,
        status: JobStatus,
        result: &JobResult,
        now_ms: u64,
        settle: Option<&Settlement>,
    ) -> Result<bool, StoreError> {
        self.guard(
            Op::FinishJob,
            self.inner
                .finish_job(id, attempt, status, result, now_ms, settle),
        )
        .await
    }
    async fn stale_jobs(
        &self,
        changed_before_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<StaleJob>, StoreError> {
        self.inner.stale_jobs(changed_before_ms, now_ms, max).await
    }
    async fn requeue_job(
        &self,
        id: &str,
        changed_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.inner.requeue_job(id, changed_at_ms, now_ms).await
    }
}

/// Provider-batch bookkeeping passes through (no faults are injected into it yet).
#[async_trait]
impl BatchStore for FaultyStore {
    async fn put_batch_entry(&self, entry: &BatchEntry) -> Result<(), StoreError> {
        self.inner.put_batch_entry(entry).await
    }
    async fn due_batch_entries(
        &self,
        kind: BatchEntryKind,
        due_by_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<BatchEntry>, StoreError> {
        self.inner
            .due_batch_entries(kind, due_by_ms, now_ms, max)
            .await
    }
    async fn delete_batch_entry(&self, kind: BatchEntryKind, id: &str) -> Result<(), StoreError> {
        self.inner.delete_batch_entry(kind, id).await
    }
}

#[async_trait]
impl LimitStore for FaultyStore {
    async fn apply(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
    ) -> Result<Applied, StoreError> {
        self.guard(Op::Apply, self.inner.apply(increments, hold))
            .await
    }
    async fn apply_leading(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
        claim: &FlightClaim,
    ) -> Result<Applied, StoreError> {
        // The reservation's write, which takes the marker too: its faults are `Apply`'s.
        self.guard(Op::Apply, self.inner.apply_leading(increments, hold, claim))
            .await
    }
    async fn settle(&self, hold_id: &str, increments: &[Increment]) -> Result<bool, StoreError> {
        self.guard(Op::Settle, self.inner.settle(hold_id, increments))
            .await
    }
    async fn read_counters(
        &self,
        counters: &[(String, CounterField)],
    ) -> Result<Vec<i64>, StoreError> {
        self.guard(Op::ReadCounters, self.inner.read_counters(counters))
            .await
    }
    async fn expired_holds(&self, now_ms: u64, max: usize) -> Result<Vec<Hold>, StoreError> {
        self.guard(Op::ExpiredHolds, self.inner.expired_holds(now_ms, max))
            .await
    }
    async fn mark_once(&self, marker: &str, expires_at_ms: u64) -> Result<bool, StoreError> {
        self.guard(Op::MarkOnce, self.inner.mark_once(marker, expires_at_ms))
            .await
    }

    fn default_budget_shards(&self) -> u32 {
        self.inner.default_budget_shards()
    }
}

#[async_trait]
impl IdempotencyStore for FaultyStore {
    async fn idempotency_begin(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.guard(
            Op::IdempotencyBegin,
            self.inner
                .idempotency_begin(key, fingerprint, now_ms, lease_ms),
        )
        .await
    }
    async fn idempotency_finish(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.guard(
            Op::IdempotencyFinish,
            self.inner
                .idempotency_finish(key, fingerprint, response, expires_at_ms),
        )
        .await
    }
    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        self.guard(Op::IdempotencyRelease, self.inner.idempotency_release(key))
            .await
    }
}

#[async_trait]
impl MetricsStore for FaultyStore {
    async fn add_rollups(&self, batch_id: &str, rows: &[RollupRow]) -> Result<bool, StoreError> {
        self.guard(Op::AddRollups, self.inner.add_rollups(batch_id, rows))
            .await
    }
    async fn rollups(
        &self,
        tenant: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        self.guard(Op::Rollups, self.inner.rollups(tenant, from_s, to_s))
            .await
    }
}
