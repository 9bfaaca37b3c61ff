//! The response cache and its single-flight markers (`CacheStore`): the `cache` and
//! `flights` tables.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::error::backend;
use crate::num::{to_i64, to_u64};
use crate::store::{
    CacheKey, CacheStore, CachedResponse, Flight, FlightBegin, FlightPoll, StoreError,
};

/// How often (in cache writes) expired entries are swept out.
const PURGE_EVERY_PUTS: usize = 512;

#[async_trait]
impl CacheStore for SqliteStore {
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        let digest = key.digest;
        self.read_point(move |c| {
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
            if let Some(held) = holder(c, &digest, now_ms, landed_ms)? {
                return Ok(FlightBegin::Following(held));
            }
            take_flight(c, &digest, &token, now_ms, lease_ms)?;
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
            .read_point(move |c| flight_row(c, &digest))
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

/// The flight that holds `digest`'s marker at `now_ms` for a caller that saw an entry created
/// at `landed_ms` (0 if none): one whose lease is on and that began after that entry.
pub(super) fn holder(
    c: &Connection,
    digest: &[u8; 32],
    now_ms: u64,
    landed_ms: u64,
) -> Result<Option<Flight>, StoreError> {
    Ok(flight_row(c, digest)?
        .filter(|held| held.lease_until_ms > now_ms && held.started_at_ms > landed_ms))
}

/// Writes `token`'s marker for `digest` over any other (the caller checked [`holder`] in the
/// same transaction).
pub(super) fn take_flight(
    c: &Connection,
    digest: &[u8; 32],
    token: &str,
    now_ms: u64,
    lease_ms: u64,
) -> Result<(), StoreError> {
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
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn digest(i: u32, tag: u8) -> [u8; 32] {
        let mut d = [tag; 32];
        d[..4].copy_from_slice(&i.to_be_bytes());
        d
    }

    /// Rows of `table` whose `column` is at most `ms` (run out by then) and after it (live).
    async fn rows(store: &SqliteStore, table: &'static str, column: &str, ms: i64) -> (i64, i64) {
        let sql = format!(
            "SELECT count(*) FILTER (WHERE {column} <= ?1), count(*) FILTER (WHERE {column} > ?1) \
             FROM {table}"
        );
        store
            .read(move |c| {
                c.query_row(&sql, [ms], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(backend)
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn puts_sweep_out_run_out_entries_and_markers_and_keep_live_ones() {
        let store = SqliteStore::open(":memory:").unwrap();
        // 600 entries past their purge time and 600 markers past their lease, beside 10 of
        // each that are still live.
        store
            .write(|c| {
                for i in 0..610u32 {
                    let end: i64 = if i < 600 { 500 } else { 1_000_000 };
                    c.execute(
                        "INSERT INTO cache_entries VALUES (?1, 't', x'7b7d', 0, ?2, ?2)",
                        params![&digest(i, 1)[..], end],
                    )
                    .map_err(backend)?;
                    c.execute(
                        "INSERT INTO cache_flights VALUES (?1, 'tok', 0, ?2)",
                        params![&digest(i, 2)[..], end],
                    )
                    .map_err(backend)?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let entry = CachedResponse {
            body: Bytes::from_static(b"{}"),
            created_at_ms: 1_000,
            expires_at_ms: 2_000_000,
            purge_at_ms: 2_000_000,
        };
        let puts = PURGE_EVERY_PUTS as u32 + 1;
        for i in 0..puts {
            let key = CacheKey {
                digest: digest(i, 3),
                tenant: "t".into(),
            };
            store.cache_put(&key, &entry).await.unwrap();
        }
        let entries = rows(&store, "cache_entries", "purge_at_ms", 500).await;
        assert_eq!(entries, (0, 10 + i64::from(puts)));
        let markers = rows(&store, "cache_flights", "lease_until_ms", 500).await;
        assert_eq!(markers, (0, 10));
    }
}
