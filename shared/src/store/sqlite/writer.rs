//! The writer thread: the only writing connection, running queued writes in savepoints
//! of one transaction per group commit.

use std::sync::mpsc;

use rusqlite::Connection;

use super::error::backend;
use crate::store::StoreError;

/// Most writes committed together in one transaction.
const MAX_GROUP_COMMIT: usize = 256;

/// A write queued for the writer thread. It runs inside its own savepoint and returns the
/// function that delivers its result once the enclosing transaction has committed (or failed).
pub(super) type WriteJob = Box<dyn FnOnce(&Connection) -> Deliver + Send>;
type Deliver = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Runs `f` inside a savepoint: its writes are kept if it succeeds and undone if it fails,
/// without disturbing the other writes of the same group commit.
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    run(conn, "SAVEPOINT job")?;
    let result = f(conn);
    if result.is_err() {
        run(conn, "ROLLBACK TO job")?;
    }
    run(conn, "RELEASE job")?;
    result
}

/// Runs one statement without parameters, prepared once per connection (the savepoint and
/// transaction statements run for every write; parsing them each time showed in profiles).
fn run(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut statement| statement.execute([]))
        .map(drop)
        .map_err(backend)
}

/// The writer thread: takes every queued write, runs them in one transaction (group commit),
/// commits, then tells each caller. One commit per batch instead of one per write is what
/// keeps the cache-miss path fast: each SQLite commit appends whole pages to the WAL.
pub(super) fn writer_loop(conn: Connection, jobs: mpsc::Receiver<WriteJob>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_GROUP_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = run(&conn, "BEGIN IMMEDIATE") {
            tracing::warn!(error = %e, writes = batch.len(), "SQLite write transaction could not start");
            // Dropping the jobs closes their reply channels: each caller gets a backend error.
            drop(batch);
            continue;
        }
        let delivers: Vec<Deliver> = batch.into_iter().map(|job| job(&conn)).collect();
        let commit_error = run(&conn, "COMMIT").err();
        if commit_error.is_some() {
            let _ = run(&conn, "ROLLBACK");
        }
        for deliver in delivers {
            deliver(commit_error.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::keys::KeyLimits;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{KeyStore, StoreError};

    use crate::keys;

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
}
