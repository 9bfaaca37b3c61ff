//! The embedded store: one SQLite file (WAL), the default for `sluice serve` and tests.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. Writes go through one
//! writer connection behind a mutex: SQLite allows one writer at a time anyway, and queueing on
//! a mutex is far cheaper than SQLite's busy handler, which sleeps in millisecond steps. Reads
//! use a small pool of reader connections, which WAL lets run while a write commits.
//! `busy_timeout` still covers several processes sharing one file.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Applied, BatchEntry, BatchEntryKind, BatchStore, CacheKey, CacheStore, CachedResponse,
    CounterField, Flight, FlightBegin, FlightPoll, Hold, IdempotencyBegin, IdempotencyStore,
    Increment, JobStore, KeyStore, LimitStore, METRICS_MARKER_TTL_MS, MetricsStore, Settlement,
    StoreError, StoredResponse,
};
use crate::clock::Clock;
use crate::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use crate::keys::{BudgetPeriod, KeyHash, KeyLimits, KeyRecord};
use crate::metrics::{Rollup, RollupKey, RollupRow};
use crate::num::{to_i64, to_u16, to_u32, to_u64};
use crate::providers::Endpoint;

/// Schema version kept in `PRAGMA user_version`; bump with a migration step.
const SCHEMA_VERSION: i64 = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS gateway_keys (
    id            TEXT PRIMARY KEY,
    hash          TEXT NOT NULL UNIQUE,
    hint          TEXT NOT NULL,
    tenant        TEXT NOT NULL,
    name          TEXT,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER,
    rpm           INTEGER,
    tpm           INTEGER,
    budget_usd    REAL,
    budget_period TEXT
);
CREATE TABLE IF NOT EXISTS cache_entries (
    digest        BLOB PRIMARY KEY,
    tenant        TEXT NOT NULL,
    body          BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    purge_at_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_entries_purge ON cache_entries (purge_at_ms);
-- v8: in-flight markers of identical misses (gateway/coalesce.rs), one per cache key.
CREATE TABLE IF NOT EXISTS cache_flights (
    digest         BLOB PRIMARY KEY,
    token          TEXT NOT NULL,
    started_at_ms  INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    key_limits     TEXT,
    endpoint       TEXT NOT NULL,
    request        BLOB NOT NULL,
    cache_control  TEXT,
    callback_url   TEXT,
    completion_window_s INTEGER,
    status         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    result_status  INTEGER,
    result_body    BLOB,
    tokens_in      INTEGER,
    tokens_out     INTEGER,
    cost_nano_usd  INTEGER,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
-- Open jobs by their last change, for housekeeping (partial: final jobs are not in it).
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (updated_at_ms) WHERE status IN ('queued', 'running');
-- Provider Batch API bookkeeping: jobs waiting to be packed, upstream batches to poll.
CREATE TABLE IF NOT EXISTS batch_entries (
    kind          TEXT NOT NULL,
    id            TEXT NOT NULL,
    due_at_ms     INTEGER NOT NULL,
    body          BLOB NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS batch_entries_due ON batch_entries (kind, due_at_ms);
CREATE TABLE IF NOT EXISTS queue_messages (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT NOT NULL UNIQUE,
    body          TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (visible_at_ms);
CREATE INDEX IF NOT EXISTS queue_messages_receipt ON queue_messages (receipt);
CREATE TABLE IF NOT EXISTS limit_counters (
    counter       TEXT NOT NULL,
    field         TEXT NOT NULL,
    value         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    PRIMARY KEY (counter, field)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS limit_counters_expiry ON limit_counters (expires_at_ms);
CREATE TABLE IF NOT EXISTS limit_holds (
    id            TEXT PRIMARY KEY,
    undo          TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS limit_holds_expiry ON limit_holds (expires_at_ms);
CREATE TABLE IF NOT EXISTS limit_markers (
    marker        TEXT PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key            TEXT PRIMARY KEY,
    fingerprint    BLOB NOT NULL,
    done           INTEGER NOT NULL,
    status         INTEGER,
    body           BLOB,
    lease_until_ms INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    message_id    TEXT PRIMARY KEY,
    body          TEXT NOT NULL,
    receive_count INTEGER NOT NULL,
    moved_at_ms   INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL DEFAULT 0,
    receipt       TEXT
);
CREATE TABLE IF NOT EXISTS metrics_rollups (
    minute              INTEGER NOT NULL,
    tenant              TEXT NOT NULL,
    model               TEXT NOT NULL,
    provider            TEXT NOT NULL,
    requests            INTEGER NOT NULL,
    errors_client       INTEGER NOT NULL,
    errors_rate_limited INTEGER NOT NULL,
    errors_upstream     INTEGER NOT NULL,
    errors_server       INTEGER NOT NULL,
    cache_hits          INTEGER NOT NULL,
    fallbacks           INTEGER NOT NULL,
    tokens_in           INTEGER NOT NULL,
    tokens_out          INTEGER NOT NULL,
    cost_nano_usd       INTEGER NOT NULL,
    latency             TEXT NOT NULL,
    PRIMARY KEY (minute, tenant, model, provider)
);
CREATE TABLE IF NOT EXISTS metrics_batches (
    batch_id      TEXT PRIMARY KEY,
    expires_at_ms INTEGER NOT NULL
);
";

/// How often (in cache writes) expired entries are swept out.
const PURGE_EVERY_PUTS: usize = 512;

/// Most writes committed together in one transaction.
const MAX_GROUP_COMMIT: usize = 256;

/// The SQLite adapter for every store port.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

/// A write queued for the writer thread. It runs inside its own savepoint and returns the
/// function that delivers its result once the enclosing transaction has committed (or failed).
type WriteJob = Box<dyn FnOnce(&Connection) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce(Option<StoreError>) + Send>;

struct Inner {
    /// Queue to the writer thread, which owns the only writing connection.
    writer: mpsc::Sender<WriteJob>,
    /// Held only so that dropping the store stops the checkpointer.
    _stop: mpsc::Sender<()>,
    /// Reader connections (none for `:memory:`, where the writer's connection is the database).
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    puts: AtomicUsize,
}

fn connect(path: &str) -> Result<Connection, StoreError> {
    let memory = path == ":memory:";
    let conn = if memory {
        Connection::open_in_memory()
    } else {
        Connection::open_with_flags(
            Path::new(path),
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }
    .map_err(backend)?;
    conn.busy_timeout(Duration::from_secs(10))
        .map_err(backend)?;
    if !memory {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
    }
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` gives a private in-memory
    /// database for unit tests.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let writer_conn = connect(path)?;
        migrate(&writer_conn)?;
        // Dropping the store drops `_stop`, which ends the checkpointer thread.
        let (stop, stop_rx) = mpsc::channel::<()>();
        if path != ":memory:" {
            // Checkpoints copy the WAL back into the database and fsync; run at commit time they
            // stall the writer (and every request waiting on it) for milliseconds. A background
            // thread does them instead; PASSIVE never blocks writers or readers.
            writer_conn
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(backend)?;
            let checkpointer = connect(path)?;
            std::thread::Builder::new()
                .name("sluice-sqlite-checkpoint".into())
                .spawn(move || checkpoint_loop(checkpointer, stop_rx))
                .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
        }
        let readers = if path == ":memory:" {
            Vec::new()
        } else {
            (0..3)
                .map(|_| connect(path).map(Mutex::new))
                .collect::<Result<_, _>>()?
        };
        let (writer, jobs) = mpsc::channel::<WriteJob>();
        std::thread::Builder::new()
            .name("sluice-sqlite-writer".into())
            .spawn(move || writer_loop(writer_conn, jobs))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                writer,
                _stop: stop,
                readers,
                next: AtomicUsize::new(0),
                puts: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs a read on a reader connection on tokio's blocking pool.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.readers.is_empty() {
            return self.write(f).await;
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let i = inner.next.fetch_add(1, Ordering::Relaxed) % inner.readers.len();
            // A poisoned lock only means another call panicked mid-use; SQLite itself rolled
            // back any open statement, so the connection is still usable.
            let conn = inner.readers[i]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    /// Runs a write atomically on the writer thread; resolves once it is committed.
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
            let result = in_savepoint(conn, f);
            Box::new(move |commit_error| {
                let result = match commit_error {
                    Some(e) => Err(e),
                    None => result,
                };
                let _ = tx.send(result);
            })
        });
        self.inner
            .writer
            .send(job)
            .map_err(|_| StoreError::Backend("the SQLite writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the SQLite writer dropped a write".into()))?
    }
}

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL frames (one page each, 4 KiB) past which the checkpointer also resets the WAL.
const WAL_RESET_FRAMES: i64 = 4096;

/// Checkpoints the WAL in the background until the store is dropped.
fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = checkpoint(&conn, WAL_RESET_FRAMES) {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

/// One checkpoint: PASSIVE (never blocks anyone), then, when the WAL has grown past
/// `reset_frames`, TRUNCATE. A PASSIVE checkpoint copies frames back but cannot restart the
/// WAL while readers keep using it, and under steady load some reader always is: the WAL then
/// grows without bound (11 GB in a 10-minute soak, with the wal-index mapped into memory
/// growing alongside). TRUNCATE waits (busy handler) for the readers of the moment, holds off
/// writers for that instant, and empties the file. Returns the WAL's frames before.
fn checkpoint(conn: &Connection, reset_frames: i64) -> Result<i64, StoreError> {
    let frames: i64 = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
        .map_err(backend)?;
    if frames >= reset_frames {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(backend)?;
    }
    Ok(frames)
}

/// Runs `f` inside a savepoint: its writes are kept if it succeeds and undone if it fails,
/// without disturbing the other writes of the same group commit.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job").map_err(backend)?;
    let result = f(conn);
    let end = if result.is_ok() {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    conn.execute_batch(end).map_err(backend)?;
    result
}

/// The writer thread: takes every queued write, runs them in one transaction (group commit),
/// commits, then tells each caller. One commit per batch instead of one per write is what
/// keeps the cache-miss path fast: each SQLite commit appends whole pages to the WAL.
fn writer_loop(conn: Connection, jobs: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::warn!(error = %e, writes = batch.len(), "SQLite write transaction could not start");
            // Dropping the jobs closes their reply channels: each caller gets a backend error.
            drop(batch);
            continue;
        }
        let delivers: Vec<Deliver> = batch.into_iter().map(|job| job(&conn)).collect();
        let commit_error = conn.execute_batch("COMMIT").err().map(backend);
        if commit_error.is_some() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for deliver in delivers {
            deliver(commit_error.clone());
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this build ({SCHEMA_VERSION})"
        )));
    }
    if version == 2 {
        // v3 added the submitting key's limits to jobs.
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN key_limits TEXT")
            .map_err(backend)?;
    }
    if (1..6).contains(&version)
        && has_table(conn, "dead_letters")?
        && !has_column(conn, "dead_letters", "receipt")?
    {
        // v6: housekeeping reads dead letters the way a queue is read.
        conn.execute_batch(
            "ALTER TABLE dead_letters ADD COLUMN visible_at_ms INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE dead_letters ADD COLUMN receipt TEXT;",
        )
        .map_err(backend)?;
    }
    if (1..7).contains(&version)
        && has_table(conn, "jobs")?
        && !has_column(conn, "jobs", "completion_window_s")?
    {
        // v7: jobs that can wait for a provider Batch API.
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN completion_window_s INTEGER")
            .map_err(backend)?;
    }
    conn.execute_batch(SCHEMA).map_err(backend)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    Ok(())
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(backend)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .map_err(backend)?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>("name"))
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    Ok(names.iter().any(|n| n == column))
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<KeyRecord, StoreError>> {
    let hash: String = row.get("hash")?;
    let period: Option<String> = row.get("budget_period")?;
    let Some(hash) = KeyHash::from_hex(&hash) else {
        return Ok(Err(StoreError::Corrupt(
            "key hash is not 64 hex digits".into(),
        )));
    };
    let budget_period = match period.as_deref().map(BudgetPeriod::parse) {
        Some(None) => return Ok(Err(StoreError::Corrupt("unknown budget period".into()))),
        Some(p) => p,
        None => None,
    };
    Ok(Ok(KeyRecord {
        id: row.get("id")?,
        hash,
        hint: row.get("hint")?,
        tenant: row.get("tenant")?,
        name: row.get("name")?,
        created_at_ms: to_u64(row.get::<_, i64>("created_at_ms")?),
        revoked_at_ms: row.get::<_, Option<i64>>("revoked_at_ms")?.map(to_u64),
        limits: KeyLimits {
            rpm: row.get("rpm")?,
            tpm: row.get("tpm")?,
            budget_usd: row.get("budget_usd")?,
            budget_period,
        },
    }))
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let key = key.clone();
        self.write(move |c| {
            let res = c.execute(
                "INSERT INTO gateway_keys (id, hash, hint, tenant, name, created_at_ms,
                     revoked_at_ms, rpm, tpm, budget_usd, budget_period)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    key.id,
                    key.hash.to_hex(),
                    key.hint,
                    key.tenant,
                    key.name,
                    to_i64(key.created_at_ms),
                    key.revoked_at_ms.map(to_i64),
                    key.limits.rpm,
                    key.limits.tpm,
                    key.limits.budget_usd,
                    key.limits.budget_period.map(BudgetPeriod::as_str),
                ],
            );
            match res {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists(key.id.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        let hash = hash.to_hex();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM gateway_keys WHERE hash = ?1")
                .map_err(backend)?
                .query_row([hash], key_from_row)
                .optional()
                .map_err(backend)?
                .transpose()
        })
        .await
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| {
            c.prepare_cached("SELECT * FROM gateway_keys WHERE id = ?1")
                .map_err(backend)?
                .query_row([id], key_from_row)
                .optional()
                .map_err(backend)?
                .transpose()
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.read(|c| {
            let mut stmt = c
                .prepare_cached("SELECT * FROM gateway_keys ORDER BY created_at_ms, id")
                .map_err(backend)?;
            let rows = stmt.query_map([], key_from_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend)?).collect()
        })
        .await
    }

    async fn revoke_key(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE gateway_keys SET revoked_at_ms = ?2
                     WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, to_i64(now_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl CacheStore for SqliteStore {
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        let digest = key.digest;
        self.read(move |c| {
            c.prepare_cached(
                "SELECT body, created_at_ms, expires_at_ms, purge_at_ms FROM cache_entries
                 WHERE digest = ?1 AND purge_at_ms > ?2",
            )
            .map_err(backend)?
            .query_row(params![&digest[..], to_i64(now_ms)], |row| {
                Ok(CachedResponse {
                    body: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                    created_at_ms: to_u64(row.get::<_, i64>(1)?),
                    expires_at_ms: to_u64(row.get::<_, i64>(2)?),
                    purge_at_ms: to_u64(row.get::<_, i64>(3)?),
                })
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn cache_put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        let key = key.clone();
        let entry = entry.clone();
        // Expired rows are deleted lazily: reads ignore them, and every so often a put sweeps.
        let sweep = self
            .inner
            .puts
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PURGE_EVERY_PUTS);
        self.write(move |c| {
            c.prepare_cached(
                "INSERT OR REPLACE INTO cache_entries
                     (digest, tenant, body, created_at_ms, expires_at_ms, purge_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(backend)?
            .execute(params![
                &key.digest[..],
                key.tenant,
                &entry.body[..],
                to_i64(entry.created_at_ms),
                to_i64(entry.expires_at_ms),
                to_i64(entry.purge_at_ms),
            ])
            .map_err(backend)?;
            if sweep {
                c.execute(
                    "DELETE FROM cache_entries WHERE purge_at_ms <= ?1",
                    [to_i64(entry.created_at_ms)],
                )
                .map_err(backend)?;
                c.execute(
                    "DELETE FROM cache_flights WHERE lease_until_ms <= ?1",
                    [to_i64(entry.created_at_ms)],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
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
        let digest = key.digest;
        let token = token.to_owned();
        // One write transaction on the single writer (`BEGIN IMMEDIATE` against other
        // processes): the read and the insert cannot interleave with another begin.
        self.write(move |c| {
            if let Some(held) = flight_row(c, &digest)?
                && held.lease_until_ms > now_ms
                && held.started_at_ms > landed_ms
            {
                return Ok(FlightBegin::Following(held));
            }
            c.prepare_cached(
                "INSERT OR REPLACE INTO cache_flights (digest, token, started_at_ms, lease_until_ms)
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(backend)?
            .execute(params![
                &digest[..],
                token,
                to_i64(now_ms),
                to_i64(now_ms.saturating_add(lease_ms))
            ])
            .map_err(backend)?;
            Ok(FlightBegin::Leading)
        })
        .await
    }

    async fn flight_renew(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let digest = key.digest;
        let token = token.to_owned();
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE cache_flights SET lease_until_ms = ?3 WHERE digest = ?1 AND token = ?2",
                )
                .map_err(backend)?
                .execute(params![
                    &digest[..],
                    token,
                    to_i64(now_ms.saturating_add(lease_ms))
                ])
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn flight_poll(&self, key: &CacheKey, now_ms: u64) -> Result<FlightPoll, StoreError> {
        let entry = self.cache_get(key, now_ms).await?;
        let digest = key.digest;
        let flight = self
            .read(move |c| flight_row(c, &digest))
            .await?
            .filter(|f| f.lease_until_ms > now_ms);
        Ok(FlightPoll { entry, flight })
    }

    async fn flight_end(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        let digest = key.digest;
        let token = token.to_owned();
        self.write(move |c| {
            c.prepare_cached("DELETE FROM cache_flights WHERE digest = ?1 AND token = ?2")
                .map_err(backend)?
                .execute(params![&digest[..], token])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

fn flight_row(c: &Connection, digest: &[u8; 32]) -> Result<Option<Flight>, StoreError> {
    c.prepare_cached(
        "SELECT token, started_at_ms, lease_until_ms FROM cache_flights WHERE digest = ?1",
    )
    .map_err(backend)?
    .query_row([&digest[..]], |row| {
        Ok(Flight {
            token: row.get(0)?,
            started_at_ms: to_u64(row.get::<_, i64>(1)?),
            lease_until_ms: to_u64(row.get::<_, i64>(2)?),
        })
    })
    .optional()
    .map_err(backend)
}

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job, StoreError>> {
    let endpoint: String = row.get("endpoint")?;
    let status: String = row.get("status")?;
    let (Some(endpoint), Some(status)) = (Endpoint::parse(&endpoint), JobStatus::parse(&status))
    else {
        return Ok(Err(StoreError::Corrupt(
            "unknown job endpoint or status".into(),
        )));
    };
    let result = match row.get::<_, Option<i64>>("result_status")? {
        Some(http_status) => Some(JobResult {
            http_status: to_u16(http_status),
            body: Bytes::from(
                row.get::<_, Option<Vec<u8>>>("result_body")?
                    .unwrap_or_default(),
            ),
            tokens_in: to_u64(row.get::<_, Option<i64>>("tokens_in")?.unwrap_or(0)),
            tokens_out: to_u64(row.get::<_, Option<i64>>("tokens_out")?.unwrap_or(0)),
            cost_nano_usd: to_u64(row.get::<_, Option<i64>>("cost_nano_usd")?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(Ok(Job {
        id: row.get("id")?,
        tenant: row.get("tenant")?,
        key_id: row.get("key_id")?,
        key_limits: row
            .get::<_, Option<String>>("key_limits")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        endpoint,
        request: Bytes::from(row.get::<_, Vec<u8>>("request")?),
        cache_control: row.get("cache_control")?,
        callback_url: row.get("callback_url")?,
        completion_window_s: row
            .get::<_, Option<i64>>("completion_window_s")?
            .map(to_u64),
        status,
        attempts: to_u32(row.get::<_, i64>("attempts")?),
        lease_until_ms: to_u64(row.get::<_, i64>("lease_until_ms")?),
        result,
        created_at_ms: to_u64(row.get::<_, i64>("created_at_ms")?),
        updated_at_ms: to_u64(row.get::<_, i64>("updated_at_ms")?),
        expires_at_ms: to_u64(row.get::<_, i64>("expires_at_ms")?),
    }))
}

fn job_by_id(c: &Connection, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
    c.prepare_cached("SELECT * FROM jobs WHERE id = ?1 AND expires_at_ms > ?2")
        .map_err(backend)?
        .query_row(params![id, to_i64(now_ms)], job_from_row)
        .optional()
        .map_err(backend)?
        .transpose()
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |c| {
            let res = c.execute(
                "INSERT INTO jobs (id, tenant, key_id, endpoint, request, cache_control,
                     callback_url, status, attempts, lease_until_ms, created_at_ms,
                     updated_at_ms, expires_at_ms, key_limits, completion_window_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    job.id,
                    job.tenant,
                    job.key_id,
                    job.endpoint.as_str(),
                    &job.request[..],
                    job.cache_control,
                    job.callback_url,
                    job.status.as_str(),
                    job.attempts,
                    to_i64(job.lease_until_ms),
                    to_i64(job.created_at_ms),
                    to_i64(job.updated_at_ms),
                    to_i64(job.expires_at_ms),
                    serde_json::to_string(&job.key_limits).ok(),
                    job.completion_window_s.map(to_i64),
                ],
            );
            match res {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists(job.id.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn get_job(&self, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| job_by_id(c, &id, now_ms)).await
    }

    async fn claim_job(&self, id: &str, now_ms: u64, lease_ms: u64) -> Result<Claim, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let claimed = c
                .prepare_cached(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                         lease_until_ms = ?2 + ?3, updated_at_ms = ?2
                     WHERE id = ?1 AND expires_at_ms > ?2
                       AND (status = 'queued' OR (status = 'running' AND lease_until_ms <= ?2))
                     RETURNING *",
                )
                .map_err(backend)?
                .query_row(params![id, to_i64(now_ms), to_i64(lease_ms)], job_from_row)
                .optional()
                .map_err(backend)?
                .transpose()?;
            if let Some(job) = claimed {
                return Ok(Claim::Claimed(job));
            }
            Ok(match job_by_id(c, &id, now_ms)? {
                None => Claim::Missing,
                Some(job) if job.status.is_final() => Claim::Finished(job),
                Some(job) => Claim::Leased {
                    until_ms: job.lease_until_ms,
                },
            })
        })
        .await
    }

    async fn release_job(&self, id: &str, attempt: u32, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'queued', lease_until_ms = 0, updated_at_ms = ?3
                     WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                    params![id, attempt, to_i64(now_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
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
        let id = id.to_owned();
        let result = result.clone();
        let settle = settle.cloned();
        // One transaction on the single writer: the result and the spend land together.
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = ?3, result_status = ?4, result_body = ?5,
                         tokens_in = ?6, tokens_out = ?7, cost_nano_usd = ?8,
                         lease_until_ms = 0, updated_at_ms = ?9
                     WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                    params![
                        id,
                        attempt,
                        status.as_str(),
                        result.http_status,
                        &result.body[..],
                        to_i64(result.tokens_in),
                        to_i64(result.tokens_out),
                        to_i64(result.cost_nano_usd),
                        to_i64(now_ms),
                    ],
                )
                .map_err(backend)?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(settle) = &settle {
                settle_in(c, settle)?;
            }
            Ok(true)
        })
        .await
    }

    async fn stale_jobs(
        &self,
        changed_before_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<StaleJob>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, status, attempts, lease_until_ms, updated_at_ms FROM jobs
                     WHERE status IN ('queued', 'running') AND updated_at_ms <= ?1
                       AND expires_at_ms > ?2
                     ORDER BY updated_at_ms LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        to_i64(changed_before_ms),
                        to_i64(now_ms),
                        i64::try_from(max).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, status, attempts, lease, updated) = row.map_err(backend)?;
                let status = JobStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt("unknown job status".into()))?;
                out.push(StaleJob {
                    id,
                    status,
                    attempts: to_u32(attempts),
                    lease_until_ms: to_u64(lease),
                    updated_at_ms: to_u64(updated),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn requeue_job(
        &self,
        id: &str,
        changed_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'queued', lease_until_ms = 0, updated_at_ms = ?3
                     WHERE id = ?1 AND updated_at_ms = ?2 AND expires_at_ms > ?3
                       AND (status = 'queued' OR (status = 'running' AND lease_until_ms <= ?3))",
                    params![id, to_i64(changed_at_ms), to_i64(now_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn put_batch_entry(&self, entry: &BatchEntry) -> Result<(), StoreError> {
        let e = entry.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO batch_entries (kind, id, due_at_ms, body, expires_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (kind, id) DO UPDATE SET due_at_ms = excluded.due_at_ms,
                     body = excluded.body, expires_at_ms = excluded.expires_at_ms",
                params![
                    e.kind.as_str(),
                    e.id,
                    to_i64(e.due_at_ms),
                    &e.body[..],
                    to_i64(e.expires_at_ms)
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn due_batch_entries(
        &self,
        kind: BatchEntryKind,
        due_by_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<BatchEntry>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, due_at_ms, body, expires_at_ms FROM batch_entries
                     WHERE kind = ?1 AND due_at_ms <= ?2 AND expires_at_ms > ?3
                     ORDER BY due_at_ms LIMIT ?4",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        kind.as_str(),
                        to_i64(due_by_ms),
                        to_i64(now_ms),
                        i64::try_from(max).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok(BatchEntry {
                            kind,
                            id: r.get(0)?,
                            due_at_ms: to_u64(r.get(1)?),
                            body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                            expires_at_ms: to_u64(r.get(3)?),
                        })
                    },
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn delete_batch_entry(&self, kind: BatchEntryKind, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            c.execute(
                "DELETE FROM batch_entries WHERE kind = ?1 AND id = ?2",
                params![kind.as_str(), id],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

/// Settles a hold inside the caller's transaction: deleted with its increments applied, or,
/// when it is already gone, the real usage on its own.
fn settle_in(c: &Connection, settle: &Settlement) -> Result<(), StoreError> {
    let deleted = c
        .execute("DELETE FROM limit_holds WHERE id = ?1", [&settle.hold_id])
        .map_err(backend)?;
    let increments = if deleted == 1 {
        &settle.increments
    } else {
        &settle.unheld
    };
    for inc in increments {
        add_to_counter(c, inc)?;
    }
    Ok(())
}

fn counter_value(c: &Connection, counter: &str, field: CounterField) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT value FROM limit_counters WHERE counter = ?1 AND field = ?2")
        .map_err(backend)?
        .query_row(params![counter, field.as_str()], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(backend)
        .map(|v| v.unwrap_or(0))
}

fn add_to_counter(c: &Connection, inc: &Increment) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO limit_counters (counter, field, value, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (counter, field) DO UPDATE SET value = value + excluded.value,
             expires_at_ms = MAX(expires_at_ms, excluded.expires_at_ms)",
    )
    .map_err(backend)?
    .execute(params![
        inc.counter,
        inc.field.as_str(),
        inc.delta,
        to_i64(inc.expires_at_ms)
    ])
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn apply(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
    ) -> Result<Applied, StoreError> {
        let increments = increments.to_vec();
        let hold = hold.cloned();
        // One write job: checks and changes run in the same transaction on the single writer
        // (BEGIN IMMEDIATE also locks out other processes sharing the file), so they are atomic.
        self.write(move |c| {
            for (index, inc) in increments.iter().enumerate() {
                if let Some(g) = &inc.guard
                    && counter_value(c, &g.counter, g.field)? > g.at_most
                {
                    return Ok(Applied::Stale { index });
                }
            }
            for (index, inc) in increments.iter().enumerate() {
                if let Some(at_most) = inc.at_most {
                    let current = counter_value(c, &inc.counter, inc.field)?;
                    if current.saturating_add(inc.delta) > at_most {
                        return Ok(Applied::Refused {
                            index,
                            current: Some(current),
                        });
                    }
                }
            }
            for inc in &increments {
                add_to_counter(c, inc)?;
            }
            if let Some(hold) = &hold {
                let undo = serde_json::to_string(&hold.undo)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                c.execute(
                    "INSERT INTO limit_holds (id, undo, expires_at_ms) VALUES (?1, ?2, ?3)",
                    params![hold.id, undo, to_i64(hold.expires_at_ms)],
                )
                .map_err(backend)?;
            }
            Ok(Applied::Granted)
        })
        .await
    }

    async fn settle(&self, hold_id: &str, increments: &[Increment]) -> Result<bool, StoreError> {
        let hold_id = hold_id.to_owned();
        let increments = increments.to_vec();
        self.write(move |c| {
            let deleted = c
                .execute("DELETE FROM limit_holds WHERE id = ?1", [hold_id])
                .map_err(backend)?;
            if deleted == 0 {
                return Ok(false);
            }
            for inc in &increments {
                add_to_counter(c, inc)?;
            }
            Ok(true)
        })
        .await
    }

    async fn read_counters(
        &self,
        counters: &[(String, CounterField)],
    ) -> Result<Vec<i64>, StoreError> {
        let counters = counters.to_vec();
        self.read(move |c| {
            counters
                .iter()
                .map(|(counter, field)| counter_value(c, counter, *field))
                .collect()
        })
        .await
    }

    async fn expired_holds(&self, now_ms: u64, max: usize) -> Result<Vec<Hold>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, undo, expires_at_ms FROM limit_holds
                     WHERE expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![to_i64(now_ms), i64::try_from(max).unwrap_or(i64::MAX)],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter()
                .map(|(id, undo, expires)| {
                    Ok(Hold {
                        id,
                        undo: serde_json::from_str(&undo)
                            .map_err(|_| StoreError::Corrupt("hold undo list".into()))?,
                        expires_at_ms: to_u64(expires),
                    })
                })
                .collect()
        })
        .await
    }

    async fn mark_once(&self, marker: &str, expires_at_ms: u64) -> Result<bool, StoreError> {
        let marker = marker.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO limit_markers (marker, expires_at_ms) VALUES (?1, ?2)",
                    params![marker, to_i64(expires_at_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn idempotency_begin(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyBegin, StoreError> {
        let key = key.to_owned();
        let fingerprint = *fingerprint;
        self.write(move |c| {
            let existing = c
                .prepare_cached(
                    "SELECT fingerprint, done, status, body, lease_until_ms, expires_at_ms
                     FROM idempotency WHERE key = ?1",
                )
                .map_err(backend)?
                .query_row([&key], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)? != 0,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        to_u64(r.get::<_, i64>(4)?),
                        to_u64(r.get::<_, i64>(5)?),
                    ))
                })
                .optional()
                .map_err(backend)?;
            if let Some((fp, done, status, body, lease, expires)) = existing {
                let live = expires > now_ms && (done || lease > now_ms);
                if live {
                    return Ok(if fp != fingerprint {
                        IdempotencyBegin::Mismatch
                    } else if done {
                        IdempotencyBegin::Replay(StoredResponse {
                            status: to_u16(status.unwrap_or(200)),
                            body: Bytes::from(body.unwrap_or_default()),
                        })
                    } else {
                        IdempotencyBegin::InProgress
                    });
                }
            }
            c.execute(
                "INSERT OR REPLACE INTO idempotency
                     (key, fingerprint, done, status, body, lease_until_ms, expires_at_ms)
                 VALUES (?1, ?2, 0, NULL, NULL, ?3, ?3)",
                params![
                    key,
                    &fingerprint[..],
                    to_i64(now_ms.saturating_add(lease_ms))
                ],
            )
            .map_err(backend)?;
            Ok(IdempotencyBegin::Started)
        })
        .await
    }

    async fn idempotency_finish(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        let fingerprint = *fingerprint;
        let response = response.clone();
        self.write(move |c| {
            c.execute(
                "INSERT OR REPLACE INTO idempotency
                     (key, fingerprint, done, status, body, lease_until_ms, expires_at_ms)
                 VALUES (?1, ?2, 1, ?3, ?4, 0, ?5)",
                params![
                    key,
                    &fingerprint[..],
                    response.status,
                    &response.body[..],
                    to_i64(expires_at_ms)
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.write(move |c| {
            c.execute("DELETE FROM idempotency WHERE key = ?1 AND done = 0", [key])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }
}

const ROLLUP_COLUMNS: &str = "minute, tenant, model, provider, requests, errors_client, \
    errors_rate_limited, errors_upstream, errors_server, cache_hits, fallbacks, tokens_in, \
    tokens_out, cost_nano_usd, latency";

fn rollup_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RollupRow, StoreError>> {
    let key = RollupKey {
        minute: to_u64(row.get::<_, i64>(0)?),
        tenant: row.get(1)?,
        model: row.get(2)?,
        provider: row.get(3)?,
    };
    let mut rollup = Rollup::default();
    let names = rollup.counters().map(|(n, _)| n);
    for (i, name) in names.iter().enumerate() {
        rollup.set_counter(name, to_u64(row.get::<_, i64>(4 + i)?));
    }
    let latency: String = row.get(14)?;
    Ok(match serde_json::from_str(&latency) {
        Ok(h) => {
            rollup.latency = h;
            Ok(RollupRow { key, rollup })
        }
        Err(e) => Err(StoreError::Corrupt(format!("rollup histogram: {e}"))),
    })
}

#[async_trait]
impl MetricsStore for SqliteStore {
    async fn add_rollups(&self, batch_id: &str, rows: &[RollupRow]) -> Result<bool, StoreError> {
        let batch_id = batch_id.to_owned();
        let rows = rows.to_vec();
        let now = crate::clock::SystemClock.now_ms();
        self.write(move |c| {
            let fresh = c
                .execute(
                    "INSERT OR IGNORE INTO metrics_batches (batch_id, expires_at_ms) VALUES (?1, ?2)",
                    params![batch_id, to_i64(now.saturating_add(METRICS_MARKER_TTL_MS))],
                )
                .map_err(backend)?
                == 1;
            if !fresh {
                return Ok(false);
            }
            for row in rows {
                let k = &row.key;
                let existing = c
                    .query_row(
                        &format!(
                            "SELECT {ROLLUP_COLUMNS} FROM metrics_rollups \
                             WHERE minute = ?1 AND tenant = ?2 AND model = ?3 AND provider = ?4"
                        ),
                        params![to_i64(k.minute), k.tenant, k.model, k.provider],
                        rollup_from_row,
                    )
                    .optional()
                    .map_err(backend)?
                    .transpose()?;
                let mut total = existing.map(|r| r.rollup).unwrap_or_default();
                total.merge(&row.rollup);
                let latency = serde_json::to_string(&total.latency)
                    .map_err(|e| StoreError::Backend(e.to_string()))?;
                let counters = total.counters().map(|(_, v)| to_i64(v));
                c.execute(
                    &format!(
                        "INSERT OR REPLACE INTO metrics_rollups ({ROLLUP_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    ),
                    params![
                        to_i64(k.minute),
                        k.tenant,
                        k.model,
                        k.provider,
                        counters[0],
                        counters[1],
                        counters[2],
                        counters[3],
                        counters[4],
                        counters[5],
                        counters[6],
                        counters[7],
                        counters[8],
                        counters[9],
                        latency
                    ],
                )
                .map_err(backend)?;
            }
            c.execute(
                "DELETE FROM metrics_batches WHERE expires_at_ms < ?1",
                params![to_i64(now)],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn rollups(
        &self,
        tenant: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ROLLUP_COLUMNS} FROM metrics_rollups \
                     WHERE minute >= ?1 AND minute < ?2 AND (?3 IS NULL OR tenant = ?3) \
                     ORDER BY minute, tenant, model, provider"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![to_i64(from_s), to_i64(to_s), tenant],
                    rollup_from_row,
                )
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(backend)??);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grown_wal_is_emptied_by_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let path = path.to_str().unwrap();
        let conn = connect(path).unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        for _ in 0..64 {
            conn.execute("INSERT INTO t (v) VALUES (zeroblob(8192))", [])
                .unwrap();
        }
        let wal = || std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len());
        let checkpointer = connect(path).unwrap();
        // Below the threshold: copied back, the file kept for reuse.
        let frames = checkpoint(&checkpointer, i64::MAX).unwrap();
        assert!(frames >= 128, "{frames} frames");
        assert!(wal() > 0);
        // Past it: the WAL is emptied.
        checkpoint(&checkpointer, 64).unwrap();
        assert_eq!(wal(), 0);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 64);
    }
    use crate::keys;

    #[tokio::test]
    async fn keys_round_trip_and_revoke_once() {
        let store = SqliteStore::open(":memory:").unwrap();
        let limits = KeyLimits {
            rpm: Some(10),
            tpm: None,
            budget_usd: Some(0.5),
            budget_period: Some(BudgetPeriod::Day),
        };
        let k = keys::generate("t1", Some("ci".into()), limits, 42).unwrap();
        store.insert_key(&k.record).await.unwrap();
        assert!(matches!(
            store.insert_key(&k.record).await,
            Err(StoreError::AlreadyExists(_))
        ));
        let found = store.key_by_hash(&k.record.hash).await.unwrap().unwrap();
        assert_eq!(found, k.record);
        assert!(store.revoke_key(&k.record.id, 50).await.unwrap());
        assert!(!store.revoke_key(&k.record.id, 51).await.unwrap());
        assert!(!store.revoke_key("key_nope", 51).await.unwrap());
        let listed = store.list_keys().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].revoked_at_ms, Some(50));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_write_in_a_group_commit_does_not_undo_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("g.db").to_str().unwrap()).unwrap();
        let existing = keys::generate("t", None, KeyLimits::default(), 1).unwrap();
        store.insert_key(&existing.record).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = store.clone();
            let record = if i == 100 {
                existing.record.clone()
            } else {
                keys::generate("t", None, KeyLimits::default(), 2)
                    .unwrap()
                    .record
            };
            tasks.push(tokio::spawn(async move { store.insert_key(&record).await }));
        }
        let mut failures = 0;
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                assert!(matches!(e, StoreError::AlreadyExists(_)), "{e}");
                failures += 1;
            }
        }
        assert_eq!(failures, 1);
        // Read through a reader connection: every committed write is visible.
        assert_eq!(store.list_keys().await.unwrap().len(), 200);
        let reopened = SqliteStore::open(dir.path().join("g.db").to_str().unwrap()).unwrap();
        assert_eq!(reopened.list_keys().await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn cache_entries_disappear_at_purge_time() {
        let store = SqliteStore::open(":memory:").unwrap();
        let key = CacheKey {
            digest: [7; 32],
            tenant: "t".into(),
        };
        let entry = CachedResponse {
            body: Bytes::from_static(b"{}"),
            created_at_ms: 1_000,
            expires_at_ms: 2_000,
            purge_at_ms: 3_000,
        };
        store.cache_put(&key, &entry).await.unwrap();
        assert_eq!(store.cache_get(&key, 2_500).await.unwrap(), Some(entry));
        assert_eq!(store.cache_get(&key, 3_000).await.unwrap(), None);
    }
}
