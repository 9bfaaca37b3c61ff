//! Gateway keys (`KeyStore`): the `keys` table.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::error::backend;
use crate::keys::{BudgetPeriod, KeyHash, KeyLimits, KeyRecord};
use crate::num::{to_i64, to_u64};
use crate::store::{KeyStore, StoreError};

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
}
