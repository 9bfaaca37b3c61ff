//! The SQLite schema and its migrations: `PRAGMA user_version` holds the schema version,
//! and opening a database of any older version brings it up to date.
//!
//! Hand-written rather than `rusqlite_migration`: its newest release (2.6) needs rusqlite 0.40,
//! and two `libsqlite3-sys` versions cannot link into one build (we are on rusqlite 0.43).
//! The steps also repair by what is there (a column added only if missing), which a list of
//! migrations indexed by `user_version` does not express.

use rusqlite::Connection;

use super::error::backend;
use crate::store::StoreError;

/// Schema version kept in `PRAGMA user_version`; bump with a migration step.
const SCHEMA_VERSION: i64 = 9;

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
-- v9: a rowid table (it was WITHOUT ROWID up to v8). An entry holds a whole answer, far above
-- the twentieth of a page that SQLite advises WITHOUT ROWID rows to stay under
-- (https://www.sqlite.org/withoutrowid.html, section 4): their B-tree's interior pages held
-- whole rows, a few per page, so every lookup walked a deep tree of big pages.
CREATE TABLE IF NOT EXISTS cache_entries (
    digest        BLOB NOT NULL UNIQUE,
    tenant        TEXT NOT NULL,
    body          BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    purge_at_ms   INTEGER NOT NULL
);
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

/// Brings the schema up to date in one write transaction: a process that opens the database
/// meanwhile waits for it and then finds it current, and a crash mid-way leaves it as it was.
pub(super) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
    let result = migrate_in_transaction(conn);
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    conn.execute_batch(end).map_err(backend)?;
    result
}

fn migrate_in_transaction(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::backend(format!(
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
    let rebuild_cache = (1..9).contains(&version) && without_rowid(conn, "cache_entries")?;
    if rebuild_cache {
        // v9: the entries move to a rowid table (see SCHEMA). The purge index goes first:
        // renamed along with its table, its name would keep SCHEMA from creating it anew.
        conn.execute_batch(
            "DROP INDEX IF EXISTS cache_entries_purge;
             ALTER TABLE cache_entries RENAME TO cache_entries_v8;",
        )
        .map_err(backend)?;
    }
    conn.execute_batch(SCHEMA).map_err(backend)?;
    if rebuild_cache {
        conn.execute_batch(
            "INSERT INTO cache_entries
                 (digest, tenant, body, created_at_ms, expires_at_ms, purge_at_ms)
             SELECT digest, tenant, body, created_at_ms, expires_at_ms, purge_at_ms
             FROM cache_entries_v8;
             DROP TABLE cache_entries_v8;",
        )
        .map_err(backend)?;
    }
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    Ok(())
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    any_row(
        conn,
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        name,
    )
}

fn without_rowid(conn: &Connection, table: &str) -> Result<bool, StoreError> {
    any_row(
        conn,
        "SELECT 1 FROM pragma_table_list WHERE schema = 'main' AND name = ?1 AND wr = 1",
        table,
    )
}

/// Whether the query, given `name` as its one parameter, returns a row.
fn any_row(conn: &Connection, sql: &str, name: &str) -> Result<bool, StoreError> {
    conn.prepare(sql)
        .and_then(|mut stmt| stmt.exists([name]))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn version(c: &Connection) -> i64 {
        c.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_v6_database_is_brought_to_the_current_version_and_reopens_unchanged() {
        let c = Connection::open_in_memory().unwrap();
        migrate(&c).unwrap();
        assert_eq!(version(&c), SCHEMA_VERSION);
        // What a v6 build left: no Batch API window on jobs.
        c.execute_batch(
            "INSERT INTO jobs (id, tenant, key_id, endpoint, request, status, attempts, \
             lease_until_ms, created_at_ms, updated_at_ms, expires_at_ms) \
             VALUES ('job_1', 't', 'key_1', 'chat', x'7b7d', 'queued', 0, 0, 1, 1, 2);
             ALTER TABLE jobs DROP COLUMN completion_window_s;
             PRAGMA user_version = 6;",
        )
        .unwrap();
        assert!(!has_column(&c, "jobs", "completion_window_s").unwrap());
        migrate(&c).unwrap();
        assert!(has_column(&c, "jobs", "completion_window_s").unwrap());
        assert_eq!(version(&c), SCHEMA_VERSION);
        migrate(&c).unwrap();
        assert_eq!(version(&c), SCHEMA_VERSION);
        let jobs: i64 = c
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 1);
    }

    #[test]
    fn a_v8_cache_moves_to_a_rowid_table_with_its_entries_and_purge_index() {
        let c = Connection::open_in_memory().unwrap();
        // What a v8 build left: the entries in a WITHOUT ROWID table.
        c.execute_batch(
            "CREATE TABLE cache_entries (
                 digest BLOB PRIMARY KEY, tenant TEXT NOT NULL, body BLOB NOT NULL,
                 created_at_ms INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL,
                 purge_at_ms INTEGER NOT NULL
             ) WITHOUT ROWID;
             CREATE INDEX cache_entries_purge ON cache_entries (purge_at_ms);
             INSERT INTO cache_entries VALUES (x'01', 'a', x'7b7d', 1, 2, 3), (x'02', 'b', x'5b5d', 4, 5, 6);
             PRAGMA user_version = 8;",
        )
        .unwrap();
        assert!(without_rowid(&c, "cache_entries").unwrap());
        migrate(&c).unwrap();
        assert_eq!(version(&c), SCHEMA_VERSION);
        assert!(!without_rowid(&c, "cache_entries").unwrap());
        assert!(!has_table(&c, "cache_entries_v8").unwrap());
        let rows: Vec<String> = c
            .prepare(
                "SELECT printf('%s %s %s %d %d %d', hex(digest), tenant, CAST(body AS TEXT),
                     created_at_ms, expires_at_ms, purge_at_ms)
                 FROM cache_entries ORDER BY digest",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, ["01 a {} 1 2 3", "02 b [] 4 5 6"]);
        let purge_index_on: String = c
            .query_row(
                "SELECT tbl_name FROM sqlite_master WHERE name = 'cache_entries_purge'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(purge_index_on, "cache_entries");
        // A digest is still one entry: a put replaces it.
        c.execute(
            "INSERT OR REPLACE INTO cache_entries VALUES (x'01', 'a', x'5b5d', 7, 8, 9)",
            [],
        )
        .unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM cache_entries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        migrate(&c).unwrap();
        assert_eq!(version(&c), SCHEMA_VERSION);
    }

    #[test]
    fn a_failed_migration_leaves_the_database_as_it_was() {
        let c = Connection::open_in_memory().unwrap();
        // A v8 cache table whose rows cannot be copied (a NULL body breaks NOT NULL).
        c.execute_batch(
            "CREATE TABLE cache_entries (
                 digest BLOB PRIMARY KEY, tenant TEXT, body BLOB,
                 created_at_ms INTEGER, expires_at_ms INTEGER, purge_at_ms INTEGER
             ) WITHOUT ROWID;
             INSERT INTO cache_entries VALUES (x'01', 'a', NULL, 1, 2, 3);
             PRAGMA user_version = 8;",
        )
        .unwrap();
        assert!(migrate(&c).is_err());
        assert_eq!(version(&c), 8);
        assert!(without_rowid(&c, "cache_entries").unwrap());
        assert!(!has_table(&c, "cache_entries_v8").unwrap());
        assert!(!has_table(&c, "jobs").unwrap());
    }

    #[test]
    fn a_database_of_a_newer_build_is_refused() {
        let c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let e = migrate(&c).unwrap_err();
        assert!(e.to_string().contains("is newer than this build"), "{e}");
    }
}
