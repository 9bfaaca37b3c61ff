//! Gateway keys (`KeyStore`): the `hash#` and `id#` items of the keys table and the
//! admin list over the sparse index `keys-by-creation`.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::codec::{Item, corrupt, get_n, get_s, n, opt_n, opt_s, s};
use super::error::{build, is_condition_failure, sdk};
use super::{DynamoStore, INDEX_SHARDS, KEYS_INDEX, index_shard};
use crate::keys::{BudgetPeriod, KeyHash, KeyLimits, KeyRecord};
use crate::store::{KeyStore, StoreError};

impl DynamoStore {
    /// The key item of a secret's hash, read strongly or eventually consistently.
    async fn read_key(
        &self,
        hash: &KeyHash,
        consistent: bool,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.count();
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("hash#{}", hash.to_hex())))
            .consistent_read(consistent)
            .send()
            .await
            .map_err(sdk)?;
        out.item().map(key_from_item).transpose()
    }
}

fn key_item(k: &KeyRecord) -> Item {
    let mut item = Item::new();
    item.insert("pk".into(), s(format!("hash#{}", k.hash.to_hex())));
    item.insert("id".into(), s(&k.id));
    item.insert("hint".into(), s(&k.hint));
    item.insert("tenant".into(), s(&k.tenant));
    if let Some(name) = &k.name {
        item.insert("name".into(), s(name));
    }
    item.insert("created_at_ms".into(), n(k.created_at_ms));
    item.insert("list_shard".into(), s(index_shard(&k.id)));
    if let Some(t) = k.revoked_at_ms {
        item.insert("revoked_at_ms".into(), n(t));
    }
    if let Some(v) = k.limits.rpm {
        item.insert("rpm".into(), n(v));
    }
    if let Some(v) = k.limits.tpm {
        item.insert("tpm".into(), n(v));
    }
    if let Some(v) = k.limits.budget_usd {
        item.insert("budget_usd".into(), n(v));
    }
    if let Some(p) = k.limits.budget_period {
        item.insert("budget_period".into(), s(p.as_str()));
    }
    item
}

fn key_from_item(item: &Item) -> Result<KeyRecord, StoreError> {
    let pk = get_s(item, "pk")?;
    let hash = pk
        .strip_prefix("hash#")
        .and_then(KeyHash::from_hex)
        .ok_or_else(|| corrupt("key pk"))?;
    let budget_period = match opt_s(item, "budget_period") {
        Some(p) => Some(BudgetPeriod::parse(&p).ok_or_else(|| corrupt("budget period"))?),
        None => None,
    };
    Ok(KeyRecord {
        id: get_s(item, "id")?,
        hash,
        hint: get_s(item, "hint")?,
        tenant: get_s(item, "tenant")?,
        name: opt_s(item, "name"),
        created_at_ms: get_n(item, "created_at_ms")?,
        revoked_at_ms: opt_n(item, "revoked_at_ms")?,
        limits: KeyLimits {
            rpm: opt_n(item, "rpm")?,
            tpm: opt_n(item, "tpm")?,
            budget_usd: opt_n(item, "budget_usd")?,
            budget_period,
        },
    })
}

#[async_trait]
impl KeyStore for DynamoStore {
    async fn insert_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let mut id_item = Item::new();
        id_item.insert("pk".into(), s(format!("id#{}", key.id)));
        id_item.insert("hash".into(), s(key.hash.to_hex()));
        let put = |item: Item| -> Result<TransactWriteItem, StoreError> {
            Ok(TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.tables.keys)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build)?,
                )
                .build())
        };
        self.count();
        // Both items or neither: the id and the hash are each unique.
        let res = self
            .client
            .transact_write_items()
            .transact_items(put(key_item(key))?)
            .transact_items(put(id_item)?)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_transaction_canceled_exception()) =>
            {
                Err(StoreError::AlreadyExists(key.id.clone()))
            }
            Err(e) => Err(sdk(e)),
        }
    }

    /// Authentication's lookup: an eventually consistent read (half the read units of a
    /// strongly consistent one), which may return an item up to about a second old. A key not
    /// found is read again strongly, so a key is usable the moment it is created; a revoked
    /// key may still pass for that second, on top of the gateway's 5 s in-memory key cache.
    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<KeyRecord>, StoreError> {
        match self.read_key(hash, false).await? {
            Some(key) => Ok(Some(key)),
            None => self.read_key(hash, true).await,
        }
    }

    async fn key_by_id(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some(hash) = self.key_hash_of(id).await? else {
            return Ok(None);
        };
        let Some(hash) = KeyHash::from_hex(&hash) else {
            return Err(corrupt("key hash"));
        };
        // The processor asks whether a job's key was revoked: strongly consistent.
        self.read_key(&hash, true).await
    }

    /// Every key, oldest first: one `Query` (or more, a page per 1 MB) of each partition of
    /// the sparse index `keys-by-creation`, never a `Scan`, and never reading the `id#` items.
    async fn list_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = Vec::new();
        for shard in 0..INDEX_SHARDS {
            let items = self
                .query_index(
                    &self.tables.keys,
                    KEYS_INDEX,
                    ("list_shard", &format!("s{shard}")),
                    ("created_at_ms", u64::MAX),
                    None,
                    usize::MAX,
                )
                .await?;
            for item in &items {
                keys.push(key_from_item(item)?);
            }
        }
        keys.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &str, now_ms: u64) -> Result<bool, StoreError> {
        let Some(hash) = self.key_hash_of(id).await? else {
            return Ok(false);
        };
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("hash#{hash}")))
            .update_expression("SET revoked_at_ms = :t")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(revoked_at_ms)")
            .expression_attribute_values(":t", n(now_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }
}

impl DynamoStore {
    /// The hash (hex) of the key with this id, from its `id#` item.
    async fn key_hash_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        self.count();
        let found = self
            .client
            .get_item()
            .table_name(&self.tables.keys)
            .key("pk", s(format!("id#{id}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        Ok(found.item().and_then(|i| opt_s(i, "hash")))
    }
}
