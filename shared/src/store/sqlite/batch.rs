//! Provider-batch bookkeeping (`BatchStore`).

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::params;

use super::SqliteStore;
use super::error::backend;
use crate::num::{to_i64, to_u64};
use crate::store::{BatchEntry, BatchEntryKind, BatchStore, StoreError};

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
