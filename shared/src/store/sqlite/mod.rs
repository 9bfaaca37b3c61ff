//! The embedded store: one SQLite file (WAL), the default for `sluice serve` and tests.
//!
//! rusqlite is synchronous, so calls run on tokio's blocking pool (point reads by key on the
//! caller's thread when a reader is free: [`SqliteStore::read_point`]). Writes go through one
//! writer connection behind a mutex: SQLite allows one writer at a time anyway, and queueing on
//! a mutex is far cheaper than SQLite's busy handler, which sleeps in millisecond steps. Reads
//! use a small pool of reader connections, which WAL lets run while a write commits.
//! A busy handler ([`busy_wait`]) still covers several processes sharing one file.
//!
//! Layout: this module opens the database and holds the reader pool and the door to the
//! writer; `writer` is the writer thread (group commit), `checkpoint` the background WAL
//! checkpointer, `migrations` the schema and its versions, `error` the mapping of rusqlite
//! failures; then one file per port (`keys`, `cache`, `batch`, `jobs`, `limits`, `metrics`,
//! `idempotency`).

mod batch;
mod cache;
mod checkpoint;
mod error;
mod idempotency;
mod jobs;
mod keys;
mod limits;
mod metrics;
mod migrations;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

use checkpoint::checkpoint_loop;
pub(crate) use error::backend;
use migrations::migrate;
use writer::{WriteJob, in_savepoint, writer_loop};

use crate::store::StoreError;

/// The SQLite adapter for every store port.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

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
    let mut conn = if memory {
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
    conn.busy_handler(Some(busy_wait)).map_err(backend)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    if !memory {
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(backend)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEEP_BYTES)
            .map_err(backend)?;
    }
    Ok(conn)
}

/// Prepared statements kept per connection. rusqlite keeps 16 by default, fewer than the
/// writer runs (every port's writes plus the savepoint and transaction statements): its
/// cache turned over and statements were parsed again and again (3% of the full miss path's
/// CPU in `sqlite3_prepare_v3`, BENCHMARKS.md, issue 18).
const STATEMENT_CACHE: usize = 128;

/// What a restarted WAL is cut back to (`journal_size_limit`): the file is reused in place up
/// to this size rather than emptied (see `checkpoint`).
const WAL_KEEP_BYTES: i64 = 64 << 20;

/// Retries of a locked database every 100 µs for the first 10 ms.
const BUSY_FAST_TRIES: i32 = 100;
/// Then every millisecond, up to about 10 s in all; then the caller gets `SQLITE_BUSY`.
const BUSY_TRIES: i32 = BUSY_FAST_TRIES + 9_990;

/// The busy handler of every connection: how long to wait when another connection holds the
/// lock (the checkpointer's RESTART, or another process on the same file). SQLite's own
/// (`busy_timeout`) sleeps 1, 2, 5, 10, … up to 100 ms between tries, so a writer that meets a
/// lock held for a millisecond sleeps far past its release, and every request queued behind
/// the writer waits with it: those sleeps were the full-miss path's p99 (BENCHMARKS.md, issue
/// 18). Retrying every 100 µs resumes within that of the release; after 10 ms the lock is held
/// by something slow and a millisecond step costs nothing that matters.
fn busy_wait(retries: i32) -> bool {
    let pause = match retries {
        r if r < BUSY_FAST_TRIES => Duration::from_micros(100),
        r if r < BUSY_TRIES => Duration::from_millis(1),
        _ => return false,
    };
    std::thread::sleep(pause);
    true
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
                .map_err(|e| StoreError::backend(format!("cannot start the checkpointer: {e}")))?;
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
            .map_err(|e| StoreError::backend(format!("cannot start the writer thread: {e}")))?;
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
        .map_err(|e| StoreError::backend(format!("store task failed: {e}")))?
    }

    /// Runs a point read (one lookup by primary key: microseconds, its pages in the page
    /// cache) on the calling task's own thread when a reader connection is free, and on the
    /// blocking pool (as [`Self::read`]) when none is. A hop to the blocking pool and back
    /// costs two thread wake-ups, more than the read itself: on the cache-miss path that hop
    /// was a tenth of the latency at concurrency 1 (BENCHMARKS.md, issue 18). Only for reads
    /// that cannot take long — never scans: the read holds the task's worker thread.
    pub(crate) async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let n = self.inner.readers.len();
        let first = self.inner.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(conn) = self.inner.readers[(first + i) % n].try_lock() {
                return f(&conn);
            }
        }
        self.read(f).await
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
            .map_err(|_| StoreError::backend("the SQLite writer thread has stopped"))?;
        rx.await
            .map_err(|_| StoreError::backend("the SQLite writer dropped a write"))?
    }
}
