//! The background checkpointer, which copies the WAL back into the database file.

use std::fs::File;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use super::error::backend;
use crate::store::StoreError;

/// How often the background checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// WAL frames (one page each, 4 KiB) past which the checkpointer also restarts the WAL.
const WAL_RESET_FRAMES: i64 = 4096;

/// Checkpoints the WAL in the background until the store is dropped.
pub(super) fn checkpoint_loop(conn: Connection, stop: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = checkpoint(&conn, WAL_RESET_FRAMES) {
            tracing::warn!(error = %e, "SQLite checkpoint failed");
        }
    }
}

/// One checkpoint: PASSIVE (never blocks anyone), then, when the WAL has grown past
/// `reset_frames`, RESTART. A PASSIVE checkpoint copies frames back but cannot restart the
/// WAL while readers keep using it, and under steady load some reader always is: the WAL then
/// grows without bound (11 GB in a 10-minute soak, with the wal-index mapped into memory
/// growing alongside). RESTART waits (busy handler) for the readers of the moment, holds off
/// writers for that instant, and makes the next write start the WAL over from its first frame.
/// It leaves the file in place (cut back to [`super::WAL_KEEP_BYTES`] by that write), where
/// TRUNCATE emptied it: on ext4 every write into an emptied WAL allocates blocks, which ties
/// the writer's next commits to the journal commit of the checkpoint's fsync — the stalls of
/// tens of milliseconds in the miss path's p99 (BENCHMARKS.md, issue 18).
///
/// RESTART holds the writer off while it finishes: it copies what the WAL gained since the
/// PASSIVE pass, syncs the WAL, and syncs the database file. A PASSIVE pass under load never
/// syncs the database file itself (SQLite does so only when the pass reached the WAL's end,
/// and under steady writes the WAL has always grown meanwhile), so every page it copied was
/// still dirty when RESTART's sync wrote them all back, writer held: 10–15 ms at each restart,
/// most of the full miss path's tail at concurrency 1 (BENCHMARKS.md, issue 18). So before
/// RESTART the checkpointer syncs the database file itself, no lock held, runs a second
/// PASSIVE pass for what arrived meanwhile, and syncs again: RESTART is left the few frames
/// written since and two small syncs. Returns the WAL's frames before.
fn checkpoint(conn: &Connection, reset_frames: i64) -> Result<i64, StoreError> {
    let passive = || -> Result<i64, StoreError> {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
            .map_err(backend)
    };
    let frames = passive()?;
    if frames >= reset_frames {
        // A descriptor of its own (SQLite's locks are not involved); none in memory.
        let file = conn
            .path()
            .filter(|p| !p.is_empty())
            .map(File::open)
            .transpose()
            .map_err(sync_failed)?;
        let sync = || {
            file.as_ref()
                .map_or(Ok(()), File::sync_data)
                .map_err(sync_failed)
        };
        sync()?;
        passive()?;
        sync()?;
        conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
            .map_err(backend)?;
    }
    Ok(frames)
}

fn sync_failed(e: std::io::Error) -> StoreError {
    StoreError::backend(format!("cannot sync the database file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::connect;

    /// A database at `dir` with automatic checkpoints off (as the store opens it) and one
    /// table of 8 KiB blobs; returns its path and connection.
    fn wal_db(dir: &tempfile::TempDir) -> (String, Connection) {
        let path = dir.path().join("w.db").to_str().unwrap().to_owned();
        let conn = connect(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (v BLOB); PRAGMA wal_autocheckpoint = 0;")
            .unwrap();
        (path, conn)
    }

    fn insert(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO t (v) VALUES (zeroblob(8192))", [])
                .unwrap();
        }
    }

    fn wal_len(path: &str) -> u64 {
        std::fs::metadata(format!("{path}-wal")).map_or(0, |m| m.len())
    }

    #[test]
    fn a_grown_wal_is_restarted_in_place_by_the_checkpointer() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_db(&dir);
        insert(&conn, 64);
        let grown = wal_len(&path);
        let checkpointer = connect(&path).unwrap();
        // Below the threshold: copied back, the file kept for reuse.
        let frames = checkpoint(&checkpointer, i64::MAX).unwrap();
        assert!(frames >= 128, "{frames} frames");
        assert_eq!(wal_len(&path), grown);
        // Past it: restarted. The file stays (its blocks reused, not allocated again) and the
        // next writes go to its start instead of growing it.
        checkpoint(&checkpointer, 64).unwrap();
        assert_eq!(wal_len(&path), grown);
        insert(&conn, 32);
        assert_eq!(
            wal_len(&path),
            grown,
            "the WAL grew instead of starting over"
        );
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 96);
    }

    #[test]
    fn a_restarted_wal_is_cut_back_to_its_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let (path, conn) = wal_db(&dir);
        conn.execute_batch("PRAGMA journal_size_limit = 65536;")
            .unwrap();
        insert(&conn, 64);
        assert!(wal_len(&path) > 65536);
        checkpoint(&connect(&path).unwrap(), 64).unwrap();
        conn.execute("INSERT INTO t (v) VALUES (1)", []).unwrap();
        assert!(wal_len(&path) <= 65536, "{} bytes", wal_len(&path));
    }
}
