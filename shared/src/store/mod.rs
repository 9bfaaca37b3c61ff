//! Storage ports: the traits the gateway needs from a store, and their adapters.
//!
//! Domain code takes the narrowest trait it needs (`&dyn KeyStore`, `&dyn CacheStore`).
//! Each port has two adapters that must behave identically: the embedded SQLite store
//! (`sqlite`, the local default) and DynamoDB (on AWS). Times are passed in by the caller so
//! expiry follows the injectable [`crate::clock::Clock`].

#[cfg(feature = "aws")]
pub mod dynamodb;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use crate::keys::{KeyHash, KeyRecord};

/// The backend's own error behind a [`StoreError`], kept for `Error::source` chains (shared, so
/// that one failed group commit can be reported to every write in it).
pub type BackendSource = Arc<dyn std::error::Error + Send + Sync>;

/// A store operation failed for a reason the caller cannot fix by changing its input.
///
/// The three backend variants display alike (`store backend error: …`, the message the adapter
/// wrote, never a secret); they differ in what a caller may do: a throttled call may succeed if
/// tried later, a failed condition will not succeed as it is, and any other backend failure may
/// or may not have been applied.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The backend is over its request rate or busy: DynamoDB's
    /// `ProvisionedThroughputExceededException`, `ThrottlingException` or
    /// `RequestLimitExceeded`, SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED`.
    Throttled {
        /// What failed, for logs.
        message: String,
        /// The backend's error.
        source: Option<BackendSource>,
    },
    /// A conditional write's condition did not hold where the adapter has no answer of the port
    /// for it (DynamoDB's `ConditionalCheckFailedException`, an SQLite constraint).
    ConditionFailed {
        /// What failed, for logs.
        message: String,
        /// The backend's error.
        source: Option<BackendSource>,
    },
    /// The backend refused or failed the call for another reason (I/O, a lost connection, a
    /// stopped writer, …).
    Backend {
        /// What failed, for logs.
        message: String,
        /// The backend's error, when there is one.
        source: Option<BackendSource>,
    },
    /// A stored item could not be decoded.
    Corrupt(String),
    /// An item with the same identity already exists.
    AlreadyExists(String),
    /// The item is too large for the backend even compressed.
    TooLarge(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Throttled { message, .. }
            | Self::ConditionFailed { message, .. }
            | Self::Backend { message, .. } => write!(f, "store backend error: {message}"),
            Self::Corrupt(what) => write!(f, "stored item is corrupt: {what}"),
            Self::AlreadyExists(what) => write!(f, "item already exists: {what}"),
            Self::TooLarge(what) => write!(f, "item too large to store: {what}"),
        }
    }
}

/// Written out rather than derived: the source is shared (an `Arc`), and the chain should lead
/// to the backend's error itself (a `rusqlite::Error`, a DynamoDB operation error), not to the
/// `Arc` around it.
impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Throttled { source, .. }
            | Self::ConditionFailed { source, .. }
            | Self::Backend { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            Self::Corrupt(_) | Self::AlreadyExists(_) | Self::TooLarge(_) => None,
        }
    }
}

impl StoreError {
    /// A backend failure without an underlying error (a broken invariant, a stopped thread).
    pub fn backend(message: impl Into<String>) -> Self {
        Self::Backend {
            message: message.into(),
            source: None,
        }
    }

    /// A backend failure caused by `source`.
    pub fn backend_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// A throttled call, caused by `source` when there is one.
    pub fn throttled(message: impl Into<String>, source: Option<BackendSource>) -> Self {
        Self::Throttled {
            message: message.into(),
            source,
        }
    }

    /// True when the backend refused the call for its rate or for a busy lock: the same call
    /// may succeed later.
    pub fn is_throttled(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// True when a conditional write failed without a port-level answer.
    pub fn is_condition_failed(&self) -> bool {
        matches!(self, Self::ConditionFailed { .. })
    }

    /// True for every failure of the backend itself (throttled, a failed condition, other), as
    /// opposed to corrupt, duplicate or oversized items.
    pub fn is_backend_failure(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::ConditionFailed { .. } | Self::Backend { .. }
        )
    }
}

/// Gateway keys, found by the hash of their secret.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key; fails with [`StoreError::AlreadyExists`] on a duplicate id or hash.
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError>;
    /// The key whose secret hashes to `hash`, revoked or not.
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError>;
    /// The key with this public id, revoked or not (a strongly consistent read: a revocation
    /// that has returned is seen). Job workers use it to refuse a revoked key's queued jobs.
    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Every key, oldest first.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError>;
    /// Marks a key revoked; `false` if there is no such key or it was already revoked.
    async fn revoke_key(&self, id: &str, now_ms: u64) -> Result<bool, StoreError>;
}

/// Identity of a cached answer: a SHA-256 over tenant, endpoint, model and canonical request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// The digest that identifies the entry.
    pub digest: [u8; 32],
    /// The tenant it belongs to (also inside the digest); kept for housekeeping.
    pub tenant: String,
}

impl CacheKey {
    /// Lower-case hex of the digest.
    pub fn to_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

/// A stored answer and its lifetimes.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedResponse {
    /// The response body exactly as first returned to a client.
    pub body: Bytes,
    /// When it was stored.
    pub created_at_ms: u64,
    /// Until when it is fresh.
    pub expires_at_ms: u64,
    /// After this it is gone for every purpose, including stale fallbacks.
    pub purge_at_ms: u64,
}

/// An identical request's provider call in progress: the single-flight marker of
/// [`crate::gateway::coalesce`], one per cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flight {
    /// Who holds it (random per leader), so only its holder ends it.
    pub token: String,
    /// When the leader took it.
    pub started_at_ms: u64,
    /// After this the leader is presumed dead and another request may take over.
    pub lease_until_ms: u64,
}

/// What [`CacheStore::flight_begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlightBegin {
    /// The caller holds the marker now: it calls the provider.
    Leading,
    /// Another request's flight holds it (returned with the refusal, no second read).
    Following(Flight),
}

/// What one [`CacheStore::flight_poll`] read found under a key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlightPoll {
    /// The cached entry, unless past its purge time.
    pub entry: Option<CachedResponse>,
    /// The in-flight marker, unless its lease has run out.
    pub flight: Option<Flight>,
}

/// Exact-match response cache, and the in-flight markers that let identical misses share one
/// provider call across processes.
#[async_trait]
pub trait CacheStore: Send + Sync {
    /// The entry under `key` unless it is past its purge time at `now_ms` (expired but not yet
    /// purged entries are returned; the caller decides between fresh and stale).
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError>;
    /// Stores or replaces the entry under `key`.
    async fn cache_put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError>;
    /// Marks `key` in flight for `token` until `now_ms + lease_ms` with one conditional write,
    /// unless another flight holds it: one whose lease has not run out at `now_ms` and that
    /// started after `landed_ms` (the creation time of the entry the caller saw, 0 if none: a
    /// flight that started before that entry was stored has landed, and its marker is spent —
    /// so a leader that stored its answer need not delete its marker).
    async fn flight_begin(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
        landed_ms: u64,
    ) -> Result<FlightBegin, StoreError>;
    /// Extends the marker under `key` to `now_ms + lease_ms` if `token` still holds it (a
    /// leader still working renews its short lease); `false` if it no longer does.
    async fn flight_renew(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError>;
    /// The entry and the in-flight marker under `key`, in one read (a follower's poll).
    async fn flight_poll(&self, key: &CacheKey, now_ms: u64) -> Result<FlightPoll, StoreError>;
    /// Deletes the marker under `key` if `token` still holds it (the leader failed, or its
    /// answer was not stored), so a waiting request can take over at once.
    async fn flight_end(&self, key: &CacheKey, token: &str) -> Result<(), StoreError>;
}

/// Async jobs and their lifecycle; every state change is a conditional write.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new `queued` job; [`StoreError::AlreadyExists`] if the id is taken.
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError>;
    /// The job, unless it does not exist or is past its retention at `now_ms`.
    async fn get_job(&self, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError>;
    /// Takes the job for a worker: `queued`, or `running` with an expired lease, becomes
    /// `running` with a lease until `now_ms + lease_ms` and one more attempt.
    async fn claim_job(&self, id: &str, now_ms: u64, lease_ms: u64) -> Result<Claim, StoreError>;
    /// Gives a claimed job back (`running` → `queued`) so a redelivery can take it at once;
    /// `false` if `attempt` no longer holds it.
    async fn release_job(&self, id: &str, attempt: u32, now_ms: u64) -> Result<bool, StoreError>;
    /// Records the final state, and with it settles the job's reservation when `settle` is
    /// given (one atomic write: a job's spend is recorded exactly when its result is).
    /// `false` if `attempt` no longer holds the job (another worker took it over or finished
    /// it), in which case nothing is written and the reservation stays held until it expires.
    async fn finish_job(
        &self,
        id: &str,
        attempt: u32,
        status: JobStatus,
        result: &JobResult,
        now_ms: u64,
        settle: Option<&Settlement>,
    ) -> Result<bool, StoreError>;
    /// Jobs not final and not past their retention at `now_ms` whose last state change was
    /// at or before `changed_before_ms`, up to `max` (for housekeeping: an index of open jobs
    /// by time on both adapters, never a scan of the table).
    async fn stale_jobs(
        &self,
        changed_before_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<StaleJob>, StoreError>;
    /// Puts a job left behind back in line: one still last changed at `changed_at_ms` that is
    /// `queued`, or `running` with its lease run out at `now_ms`, becomes `queued` as of
    /// `now_ms`. `false` if it moved in between (another housekeeper, or a worker, got to it).
    async fn requeue_job(
        &self,
        id: &str,
        changed_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError>;
}

/// Which kind of provider-batch bookkeeping an entry is (see [`BatchStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchEntryKind {
    /// A claimed job with a `completion_window`, waiting to be packed into an upstream batch.
    Waiting,
    /// An upstream batch submitted and not yet ended, to poll.
    Open,
}

impl BatchEntryKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Open => "open",
        }
    }
}

/// One entry of provider-batch bookkeeping: its content is the jobs module's own JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchEntry {
    /// Which list it is on.
    pub kind: BatchEntryKind,
    /// Unique within its kind (a job id, or a batch id).
    pub id: String,
    /// When it next needs attention (waiting: when it was pooled; open: the next poll).
    pub due_at_ms: u64,
    /// What the jobs module stored (JSON).
    pub body: Bytes,
    /// Gone after this, whatever happened.
    pub expires_at_ms: u64,
}

/// Bookkeeping of jobs sent through providers' Batch APIs: the jobs waiting to be packed and
/// the upstream batches to poll, each found by when it is due (SQLite: an index; DynamoDB: the
/// jobs table's sparse index, under partitions of its own), never by a scan.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Stores the entry, replacing one of the same kind and id.
    async fn put_batch_entry(&self, entry: &BatchEntry) -> Result<(), StoreError>;
    /// Entries of `kind` due at or before `due_by_ms` and not past their expiry at `now_ms`,
    /// up to `max`, earliest due first within each index partition.
    async fn due_batch_entries(
        &self,
        kind: BatchEntryKind,
        due_by_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<BatchEntry>, StoreError>;
    /// Deletes the entry (nothing happens if it is gone).
    async fn delete_batch_entry(&self, kind: BatchEntryKind, id: &str) -> Result<(), StoreError>;
}

/// Which number of a limit counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CounterField {
    /// Requests or tokens in a rate window.
    Count,
    /// Spend plus outstanding reservations in a budget period (what caps are checked against).
    Committed,
    /// Settled spend in a budget period.
    Spent,
}

impl CounterField {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Committed => "committed",
            Self::Spent => "spent",
        }
    }
}

/// One change to a limit counter, conditional on where it ends up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Increment {
    /// The counter's id, e.g. `rate:key:key_x:rpm:29930400`.
    pub counter: String,
    /// Which of its numbers.
    pub field: CounterField,
    /// How much to add (negative to give back).
    pub delta: i64,
    /// Applied only if the value afterwards is at most this; a missing counter is 0.
    pub at_most: Option<i64>,
    /// The counter may be deleted after this time.
    pub expires_at_ms: u64,
    /// Applied only if another counter has not grown past a value (the sliding window's
    /// previous window, read earlier: if a late write from another process grew it since,
    /// the check must be redone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
}

/// A condition on another counter than the one incremented.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The other counter.
    pub counter: String,
    /// Which of its numbers.
    pub field: CounterField,
    /// Its value must still be at most this.
    pub at_most: i64,
}

/// A reservation taken with [`LimitStore::apply`]: what to undo if it is never settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Unique id.
    pub id: String,
    /// Increments that give the reservation back.
    pub undo: Vec<Increment>,
    /// After this the reservation counts as abandoned (a crashed request).
    pub expires_at_ms: u64,
}

/// The settlement of a reservation, to be written together with something else (a job's
/// result): if the hold still exists, it is deleted and `increments` applied; if it was
/// already released as abandoned, `unheld` is applied instead (the real usage on its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The hold to settle.
    pub hold_id: String,
    /// Applied with the hold's deletion.
    pub increments: Vec<Increment>,
    /// Applied when the hold is gone.
    pub unheld: Vec<Increment>,
}

/// What [`LimitStore::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Every increment was applied (and the hold stored).
    Granted,
    /// Nothing was applied: increment `index` would have passed its `at_most`.
    Refused {
        /// The refused increment's index.
        index: usize,
        /// Its counter's value, when the store reported it.
        current: Option<i64>,
    },
    /// Nothing was applied: increment `index`'s guard no longer holds (re-read and retry).
    Stale {
        /// The increment whose guard failed.
        index: usize,
    },
    /// Nothing was applied: another request's flight holds the in-flight marker the write
    /// was to take ([`LimitStore::apply_leading`] only).
    InFlight(Flight),
}

/// An in-flight marker to take in the same atomic write as a reservation
/// ([`LimitStore::apply_leading`]), by the rule of [`CacheStore::flight_begin`]: so a miss that
/// leads its identical requests costs no write of its own for the marker, and a refused one
/// leaves none behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlightClaim {
    /// The cache key the flight is for.
    pub key: CacheKey,
    /// The would-be leader's token.
    pub token: String,
    /// Now, as the gateway's clock says.
    pub now_ms: u64,
    /// How long the marker holds without renewal.
    pub lease_ms: u64,
    /// The creation time of the entry the caller saw, 0 if none (a flight older is spent).
    pub landed_ms: u64,
}

/// Counters for rate limits and spending caps, changed atomically.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Applies all the increments and stores `hold`, or nothing at all if any increment's
    /// condition fails: one atomic write across every level.
    async fn apply(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
    ) -> Result<Applied, StoreError>;
    /// [`LimitStore::apply`] that also takes `claim`'s in-flight marker in the same atomic
    /// write: [`Applied::InFlight`] with the holder, and nothing written, when another flight
    /// holds it (checked first); no marker when the increments are refused.
    async fn apply_leading(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
        claim: &FlightClaim,
    ) -> Result<Applied, StoreError>;
    /// Settles a hold: deletes it and applies `increments` (unconditionally) atomically.
    /// `false`, with nothing applied, if the hold no longer exists.
    async fn settle(&self, hold_id: &str, increments: &[Increment]) -> Result<bool, StoreError>;
    /// Current values (a missing counter is 0), in order.
    async fn read_counters(
        &self,
        counters: &[(String, CounterField)],
    ) -> Result<Vec<i64>, StoreError>;
    /// Holds past their expiry at `now_ms`, up to `max`.
    async fn expired_holds(&self, now_ms: u64, max: usize) -> Result<Vec<Hold>, StoreError>;
    /// Sets a marker if it is not set yet; `true` only for the call that set it.
    async fn mark_once(&self, marker: &str, expires_at_ms: u64) -> Result<bool, StoreError>;
    /// Shards of a tenant's or the gateway's spending-cap counter when the config does not
    /// say (`limits.budget_shards`): where one item's write rate is limited (a DynamoDB
    /// partition takes about 1,000 writes a second), more than one.
    fn default_budget_shards(&self) -> u32 {
        1
    }
}

/// A response kept for `Idempotency-Key` replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Bytes,
}

/// What beginning an idempotent request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyBegin {
    /// First use of the key (or its earlier attempt was abandoned): go ahead.
    Started,
    /// The same request already finished: answer with this.
    Replay(StoredResponse),
    /// The key was used with a different request.
    Mismatch,
    /// The same request is running right now.
    InProgress,
}

/// `Idempotency-Key` records: one per tenant and key, kept `ttl` after they finish.
#[async_trait]
pub trait IdempotencyStore: Send + Sync {
    /// Claims `key` for a request with this `fingerprint` (a digest of endpoint and body), or
    /// reports what is already there. A claim left `lease_ms` unfinished can be taken over.
    async fn idempotency_begin(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyBegin, StoreError>;
    /// Records the finished response, kept until `expires_at_ms`.
    async fn idempotency_finish(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), StoreError>;
    /// Forgets a claim (the request failed in a way worth retrying).
    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError>;
}

/// Per-minute usage rollups (see [`crate::metrics`]).
#[async_trait]
pub trait MetricsStore: Send + Sync {
    /// Adds `rows` to the stored rollups (field by field, histograms bucket by bucket),
    /// exactly once per `batch_id`: a batch id seen before adds nothing and returns `false`.
    /// Markers of applied batches are kept for [`METRICS_MARKER_TTL_MS`].
    async fn add_rollups(
        &self,
        batch_id: &str,
        rows: &[crate::metrics::RollupRow],
    ) -> Result<bool, StoreError>;
    /// The rollups of minutes in `[from_s, to_s)` (Unix seconds), of one tenant or of all.
    async fn rollups(
        &self,
        tenant: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<crate::metrics::RollupRow>, StoreError>;
}

/// How long a batch id is remembered (queues redeliver within their retention, 4 days for
/// the usage queue at most; a redelivery later than this would be counted twice).
pub const METRICS_MARKER_TTL_MS: u64 = 14 * 24 * 3600 * 1000;

/// Tries of a write that must not be dropped on a transient failure (throttling, a lost
/// answer), by [`retrying`].
pub const WRITE_ATTEMPTS: u32 = 4;

/// Runs a store write until it succeeds, fails for a reason other than the backend, or
/// [`WRITE_ATTEMPTS`] tries have failed, waiting 50 ms before the second try and twice as long
/// before each later one. `write` gets the number of failed tries so far: after a failure, an
/// earlier try may have landed with its answer lost, and the write must then recognise its
/// own effect instead of applying it twice.
pub async fn retrying<T, F, Fut>(what: &'static str, mut write: F) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut failures = 0;
    loop {
        match write(failures).await {
            Ok(v) => return Ok(v),
            // Only backend failures may pass: a corrupt or oversized item stays so.
            Err(e) if e.is_backend_failure() && failures + 1 < WRITE_ATTEMPTS => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "{what} failed; retrying");
                let wait = std::time::Duration::from_millis(50) * 2u32.pow(failures - 1);
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Everything the gateway needs from a store.
pub trait Store:
    KeyStore + CacheStore + JobStore + BatchStore + LimitStore + IdempotencyStore + MetricsStore
{
}

impl<
    T: KeyStore + CacheStore + JobStore + BatchStore + LimitStore + IdempotencyStore + MetricsStore,
> Store for T
{
}

/// A shared handle to whichever store this process uses.
pub type SharedStore = Arc<dyn Store>;
