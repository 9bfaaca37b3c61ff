//! `Idempotency-Key` claims and stored responses (`IdempotencyStore`).

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::error::backend;
use crate::num::{to_i64, to_u16, to_u64};
use crate::store::{IdempotencyBegin, IdempotencyStore, StoreError, StoredResponse};

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
