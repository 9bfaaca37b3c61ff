//! The embedded store: one SQLite file (WAL), the default for `sluice serve` and tests.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool over a small pool of
//! connections. WAL lets readers proceed while one writer commits, and `busy_timeout` makes
//! several processes sharing one file wait for each other instead of failing.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{CacheKey, CacheStore, CachedResponse, KeyStore, StoreError};
use crate::keys::{BudgetPeriod, KeyHash, KeyLimits, KeyRecord};

/// Schema version kept in `PRAGMA user_version`; bump with a migration step.
const SCHEMA_VERSION: i64 = 1;

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
";

/// How often (in cache writes) expired entries are swept out.
const PURGE_EVERY_PUTS: usize = 512;

/// The SQLite adapter for every store port.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    puts: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; `:memory:` gives a private in-memory
    /// database for unit tests.
    pub fn open(path: &str) -> Result<Self, StoreError> {
        let memory = path == ":memory:";
        let pool = if memory { 1 } else { 4 };
        let mut conns = Vec::with_capacity(pool);
        for i in 0..pool {
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
            if i == 0 {
                migrate(&conn)?;
            }
            conns.push(Mutex::new(conn));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                conns,
                next: AtomicUsize::new(0),
                puts: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs `f` with a pooled connection on the blocking thread pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let i = inner.next.fetch_add(1, Ordering::Relaxed) % inner.conns.len();
            // A poisoned lock only means another call panicked mid-use; SQLite itself rolled
            // back any open statement, so the connection is still usable.
            let mut conn = inner.conns[i]
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
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
    conn.execute_batch(SCHEMA).map_err(backend)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(backend)?;
    Ok(())
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
        created_at_ms: row.get::<_, i64>("created_at_ms")? as u64,
        revoked_at_ms: row
            .get::<_, Option<i64>>("revoked_at_ms")?
            .map(|v| v as u64),
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
        self.with_conn(move |c| {
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
                    key.created_at_ms as i64,
                    key.revoked_at_ms.map(|v| v as i64),
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
        self.with_conn(move |c| {
            c.prepare_cached("SELECT * FROM gateway_keys WHERE hash = ?1")
                .map_err(backend)?
                .query_row([hash], key_from_row)
                .optional()
                .map_err(backend)?
                .transpose()
        })
        .await
    }

    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        self.with_conn(|c| {
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
        self.with_conn(move |c| {
            let n = c
                .execute(
                    "UPDATE gateway_keys SET revoked_at_ms = ?2
                     WHERE id = ?1 AND revoked_at_ms IS NULL",
                    params![id, now_ms as i64],
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
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT body, created_at_ms, expires_at_ms, purge_at_ms FROM cache_entries
                 WHERE digest = ?1 AND purge_at_ms > ?2",
            )
            .map_err(backend)?
            .query_row(params![&digest[..], now_ms as i64], |row| {
                Ok(CachedResponse {
                    body: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                    created_at_ms: row.get::<_, i64>(1)? as u64,
                    expires_at_ms: row.get::<_, i64>(2)? as u64,
                    purge_at_ms: row.get::<_, i64>(3)? as u64,
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
        self.with_conn(move |c| {
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
                entry.created_at_ms as i64,
                entry.expires_at_ms as i64,
                entry.purge_at_ms as i64,
            ])
            .map_err(backend)?;
            if sweep {
                c.execute(
                    "DELETE FROM cache_entries WHERE purge_at_ms <= ?1",
                    [entry.created_at_ms as i64],
                )
                .map_err(backend)?;
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
