//! The DynamoDB adapter for every store port (on AWS, and for `serve --store dynamodb`).
//!
//! Table design (every table: partition key `pk` (S), no sort key, TTL attribute
//! `expires_at` in epoch seconds; see `docs/aws.md`):
//!
//! | table | `pk` | holds | access |
//! | --- | --- | --- | --- |
//! | keys | `hash#<sha256 hex>` | a gateway key, `list_shard` | GetItem on every uncached auth; the admin list queries the sparse index `keys-by-creation` (`list_shard`, `created_at_ms`) |
//! | keys | `id#<key id>` | `hash` of that key | GetItem on revoke, and then the `hash#` item per distinct key of a job batch |
//! | cache | digest hex | one answer (`body`, deflated when large) | GetItem / PutItem |
//! | cache | `flight#<digest hex>` | an in-flight marker of identical misses (`token`, `started_at_ms`, `lease_until_ms`) | conditional PutItem (old item returned on conflict); conditional UpdateItem (lease renewal); BatchGetItem with the entry (a follower's poll); conditional DeleteItem |
//! | cache | `idem#<tenant>#<key digest>` | an `Idempotency-Key` claim or its stored response | conditional PutItem (old item returned on conflict), PutItem, DeleteItem |
//! | jobs | job id | request, state, lease, result; `open_shard` while not final | PutItem, GetItem, conditional UpdateItem; housekeeping queries the sparse index `open-jobs` (`open_shard`, `updated_at_ms`) |
//! | jobs | `batch#<kind>#<id>` | provider-batch bookkeeping: a job waiting to be packed (`waiting`) or an upstream batch to poll (`open`); `open_shard` `w<n>` / `o<n>`, `updated_at_ms` = when due | PutItem, GetItem, DeleteItem; found by querying `open-jobs` under those partitions (never the `s<n>` of jobs) |
//! | limits | counter id (`rate:…`, `budget:…`) | `count`, or `committed` + `spent` | one `TransactWriteItems` per admit and per settle |
//! | limits | `hold#<id>` | a reservation's `undo` list and expiry, `hold_shard` | in the same transactions; housekeeping queries the sparse index `holds-by-expiry` (`hold_shard`, `expires_at_ms`) |
//! | limits | `mark#<marker>` | a once-only marker (soft-threshold warnings) | conditional PutItem |
//!
//! TTL deletion is lazy on AWS (up to 48 h late) and absent on moto, so every read also checks
//! the stored expiry itself. Reads are strongly consistent so the adapter behaves like SQLite (a
//! write is visible to the next read), except where staleness is harmless and the read is
//! frequent: cache entries and authentication's key lookups (see `key_by_hash`) are read
//! eventually consistently, for half the read units. Conditional-write failures return the old item
//! (`ReturnValuesOnConditionCheckFailure`) instead of costing a second read. Bodies larger than
//! 1 KiB are deflated; cache entries still over the item limit are skipped, never an error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConditionCheck, Delete, GlobalSecondaryIndex,
    KeySchemaElement, KeyType, KeysAndAttributes, Projection, ProjectionType, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TimeToLiveSpecification,
    TransactWriteItem, Update,
};
use bytes::Bytes;

use super::{
    Applied, BatchEntry, BatchEntryKind, BatchStore, CacheKey, CacheStore, CachedResponse,
    CounterField, Flight, FlightBegin, FlightPoll, Hold, IdempotencyBegin, IdempotencyStore,
    Increment, JobStore, KeyStore, LimitStore, MetricsStore, Settlement, StoreError,
    StoredResponse,
};
use crate::clock::Clock;
use crate::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use crate::keys::{BudgetPeriod, KeyHash, KeyLimits, KeyRecord};
use crate::metrics::{Rollup, RollupKey, RollupRow};
use crate::providers::Endpoint;

type Item = HashMap<String, AttributeValue>;

/// DynamoDB's item size limit is 400 KB; leave room for the other attributes.
const MAX_BLOB_BYTES: usize = 380 * 1024;
/// Bodies above this are deflated before storing.
const DEFLATE_ABOVE: usize = 1024;

/// The jobs table's sparse index of jobs not yet final, by their last change: partition key
/// `open_shard` (set when a job is stored, removed when it ends), sort key `updated_at_ms`.
pub const OPEN_JOBS_INDEX: &str = "open-jobs";
/// The limits table's sparse index of reservations (holds) by expiry: partition key
/// `hold_shard` (only hold items have it), sort key `expires_at_ms`.
pub const HOLDS_INDEX: &str = "holds-by-expiry";
/// The keys table's sparse index of keys by creation, for the admin list: partition key
/// `list_shard` (only `hash#` items have it, not the `id#` items), sort key `created_at_ms`,
/// every attribute projected. Read eventually consistently: a key created a moment ago may be
/// missing from a list for about a second (it authenticates at once: that is a `GetItem`).
pub const KEYS_INDEX: &str = "keys-by-creation";
/// Partitions of each index: housekeeping queries each one, and writes spread over them
/// (one index partition takes about 1,000 writes a second).
const INDEX_SHARDS: u32 = 8;

/// The index partition of an item, fixed by its id so every write of it lands in the same one.
fn index_shard(id: &str) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(id.as_bytes());
    format!("s{}", u32::from(digest[0]) % INDEX_SHARDS)
}

/// Names of the tables the adapter uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    /// Gateway keys.
    pub keys: String,
    /// Cached answers.
    pub cache: String,
    /// Async jobs.
    pub jobs: String,
    /// Rate-limit and budget counters, reservations and markers.
    pub limits: String,
    /// Usage rollups (partition key `pk`, sort key `sk`).
    pub metrics: String,
}

impl Tables {
    /// `<prefix>-keys`, `<prefix>-cache`, `<prefix>-jobs`, `<prefix>-limits`,
    /// `<prefix>-metrics`.
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            keys: format!("{prefix}-keys"),
            cache: format!("{prefix}-cache"),
            jobs: format!("{prefix}-jobs"),
            limits: format!("{prefix}-limits"),
            metrics: format!("{prefix}-metrics"),
        }
    }

    /// From `SLUICE_KEYS_TABLE`, `SLUICE_CACHE_TABLE`, `SLUICE_JOBS_TABLE`,
    /// `SLUICE_LIMITS_TABLE`, `SLUICE_METRICS_TABLE` (as the SAM template sets them), each
    /// defaulting to `sluice-<name>`.
    pub fn from_env() -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        Self {
            keys: var("SLUICE_KEYS_TABLE", "sluice-keys"),
            cache: var("SLUICE_CACHE_TABLE", "sluice-cache"),
            jobs: var("SLUICE_JOBS_TABLE", "sluice-jobs"),
            limits: var("SLUICE_LIMITS_TABLE", "sluice-limits"),
            metrics: var("SLUICE_METRICS_TABLE", "sluice-metrics"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [
            &self.keys,
            &self.cache,
            &self.jobs,
            &self.limits,
            &self.metrics,
        ]
    }
}

/// The DynamoDB store. Cheap to clone; counts its SDK calls.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: Tables,
    calls: Arc<AtomicU64>,
}

impl DynamoStore {
    /// A store over existing tables.
    pub fn new(client: Client, tables: Tables) -> Self {
        Self {
            client,
            tables,
            calls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// SDK calls made so far (for per-request cost reports).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

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

    /// Up to `max` items of one partition of a sparse index whose sort key is at most
    /// `until`, oldest first, leaving out items past their retention at `unexpired_at`. An
    /// index is read eventually consistently: callers recheck with conditional writes.
    async fn query_index(
        &self,
        table: &str,
        index: &str,
        (partition_name, partition): (&str, &str),
        (sort_name, until): (&str, u64),
        unexpired_at: Option<u64>,
        max: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        while out.len() < max {
            self.count();
            let mut query = self
                .client
                .query()
                .table_name(table)
                .index_name(index)
                .key_condition_expression("#p = :p AND #t <= :t")
                .expression_attribute_names("#p", partition_name)
                .expression_attribute_names("#t", sort_name)
                .expression_attribute_values(":p", s(partition))
                .expression_attribute_values(":t", n(until))
                .limit(i32::try_from(max - out.len()).unwrap_or(1000).min(1000))
                .set_exclusive_start_key(start.take());
            if let Some(now) = unexpired_at {
                query = query
                    .filter_expression("expires_at_ms > :now")
                    .expression_attribute_values(":now", n(now));
            }
            let page = query.send().await.map_err(sdk)?;
            out.extend(page.items().iter().cloned());
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// Creates the tables (on-demand, TTL on `expires_at`) unless they exist: for local
    /// development against moto and `serve --store dynamodb --create-tables`. On AWS the SAM
    /// template creates them.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        for table in self.tables.all() {
            // The metrics table is read by time range within a partition: it has a sort key.
            let sorted = table == self.tables.metrics;
            let mut keys = vec![("pk", KeyType::Hash)];
            if sorted {
                keys.push(("sk", KeyType::Range));
            }
            let mut create = self
                .client
                .create_table()
                .table_name(table)
                .billing_mode(BillingMode::PayPerRequest);
            // Housekeeping's sparse indexes (see the module table), queried, never scanned.
            // The admin list's index of keys (every attribute projected: `None`).
            let index = if table == self.tables.jobs {
                Some((
                    OPEN_JOBS_INDEX,
                    "open_shard",
                    "updated_at_ms",
                    Some(vec![
                        "status",
                        "attempts",
                        "lease_until_ms",
                        "expires_at_ms",
                    ]),
                ))
            } else if table == self.tables.limits {
                Some((
                    HOLDS_INDEX,
                    "hold_shard",
                    "expires_at_ms",
                    Some(vec!["undo"]),
                ))
            } else if table == self.tables.keys {
                Some((KEYS_INDEX, "list_shard", "created_at_ms", None))
            } else {
                None
            };
            if let Some((name, shard, time, projected)) = index {
                create = create
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(shard)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(build)?,
                    )
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(time)
                            .attribute_type(ScalarAttributeType::N)
                            .build()
                            .map_err(build)?,
                    )
                    .global_secondary_indexes(
                        GlobalSecondaryIndex::builder()
                            .index_name(name)
                            .key_schema(
                                KeySchemaElement::builder()
                                    .attribute_name(shard)
                                    .key_type(KeyType::Hash)
                                    .build()
                                    .map_err(build)?,
                            )
                            .key_schema(
                                KeySchemaElement::builder()
                                    .attribute_name(time)
                                    .key_type(KeyType::Range)
                                    .build()
                                    .map_err(build)?,
                            )
                            .projection(match projected {
                                Some(attributes) => Projection::builder()
                                    .projection_type(ProjectionType::Include)
                                    .set_non_key_attributes(Some(
                                        attributes.into_iter().map(str::to_owned).collect(),
                                    ))
                                    .build(),
                                None => Projection::builder()
                                    .projection_type(ProjectionType::All)
                                    .build(),
                            })
                            .build()
                            .map_err(build)?,
                    );
            }
            for (name, kind) in keys {
                create = create
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(name)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .map_err(build)?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(name)
                            .key_type(kind)
                            .build()
                            .map_err(build)?,
                    );
            }
            let created = create.send().await;
            match created {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception()) =>
                {
                    continue;
                }
                Err(e) => return Err(sdk(e)),
            }
            self.client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    TimeToLiveSpecification::builder()
                        .attribute_name("expires_at")
                        .enabled(true)
                        .build()
                        .map_err(build)?,
                )
                .send()
                .await
                .map_err(sdk)?;
        }
        Ok(())
    }
}

fn sdk<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> StoreError {
    let detail = match e.as_service_error() {
        Some(service) => service.to_string(),
        None => e.to_string(),
    };
    StoreError::Backend(format!("DynamoDB: {detail}"))
}

fn build(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend(format!("DynamoDB request: {e}"))
}

// ---- attribute helpers -------------------------------------------------------------------

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ttl_secs(ms: u64) -> AttributeValue {
    n(ms.div_ceil(1000))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("DynamoDB item: {what}"))
}

fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(corrupt(&format!("missing string `{name}`"))),
    }
}

fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn opt_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(&format!("bad number `{name}`"))),
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => Err(corrupt(&format!("`{name}` is not a number"))),
    }
}

fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    opt_n(item, name)?.ok_or_else(|| corrupt(&format!("missing number `{name}`")))
}

/// Stores bytes, deflated when large; the `<name>_enc` attribute says how.
fn put_blob(item: &mut Item, name: &str, bytes: &[u8]) -> Result<usize, StoreError> {
    let (data, enc) = if bytes.len() > DEFLATE_ABOVE {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(bytes)
            .and_then(|()| z.finish())
            .map(|d| (d, Some("deflate")))
            .map_err(|e| StoreError::Backend(format!("deflate: {e}")))?
    } else {
        (bytes.to_vec(), None)
    };
    let len = data.len();
    item.insert(name.to_owned(), AttributeValue::B(Blob::new(data)));
    if let Some(enc) = enc {
        item.insert(format!("{name}_enc"), s(enc));
    }
    Ok(len)
}

fn get_blob(item: &Item, name: &str) -> Result<Option<Bytes>, StoreError> {
    let Some(AttributeValue::B(blob)) = item.get(name) else {
        return Ok(None);
    };
    match opt_s(item, &format!("{name}_enc")).as_deref() {
        None => Ok(Some(Bytes::copy_from_slice(blob.as_ref()))),
        Some("deflate") => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(blob.as_ref())
                .read_to_end(&mut out)
                .map_err(|_| corrupt(&format!("`{name}` does not inflate")))?;
            Ok(Some(Bytes::from(out)))
        }
        Some(_) => Err(corrupt(&format!("unknown encoding of `{name}`"))),
    }
}

// ---- keys -------------------------------------------------------------------------------

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

fn is_condition_failure<R: std::fmt::Debug>(e: &SdkError<UpdateItemError, R>) -> bool {
    e.as_service_error()
        .is_some_and(|s| s.is_conditional_check_failed_exception())
}

// ---- cache ------------------------------------------------------------------------------

#[async_trait]
impl CacheStore for DynamoStore {
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        self.count();
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.cache)
            .key("pk", s(key.to_hex()))
            // Eventually consistent (half the read units): an entry written a moment ago may
            // be missed, which costs one provider call, never a wrong answer.
            .consistent_read(false)
            .send()
            .await
            .map_err(sdk)?;
        match out.item() {
            Some(item) => entry_from_item(item, key, now_ms),
            None => Ok(None),
        }
    }

    async fn cache_put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(key.to_hex()));
        item.insert("tenant".into(), s(&key.tenant));
        if put_blob(&mut item, "body", &entry.body)? > MAX_BLOB_BYTES {
            // Too large for an item even deflated: not cached, which is never an error.
            tracing::debug!(
                bytes = entry.body.len(),
                "answer too large to cache in DynamoDB"
            );
            return Ok(());
        }
        item.insert("created_at_ms".into(), n(entry.created_at_ms));
        item.insert("expires_at_ms".into(), n(entry.expires_at_ms));
        item.insert("purge_at_ms".into(), n(entry.purge_at_ms));
        item.insert("expires_at".into(), ttl_secs(entry.purge_at_ms));
        self.count();
        self.client
            .put_item()
            .table_name(&self.tables.cache)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn flight_begin(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
        landed_ms: u64,
    ) -> Result<FlightBegin, StoreError> {
        let lease_until_ms = now_ms.saturating_add(lease_ms);
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.cache)
            .item("pk", s(flight_pk(key)))
            .item("token", s(token))
            .item("started_at_ms", n(now_ms))
            .item("lease_until_ms", n(lease_until_ms))
            .item("expires_at", ttl_secs(lease_until_ms))
            .condition_expression(
                "attribute_not_exists(pk) OR lease_until_ms <= :now OR started_at_ms <= :landed",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":landed", n(landed_ms))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(FlightBegin::Leading),
            Err(e) => e,
        };
        let SdkError::ServiceError(service) = err else {
            return Err(sdk(err));
        };
        match service.into_err() {
            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                failed,
            ) => {
                // The holder came back with the refusal: no second read.
                let old = failed
                    .item()
                    .ok_or_else(|| corrupt("flight marker missing on conflict"))?;
                Ok(FlightBegin::Following(flight_from_item(old)?))
            }
            other => Err(StoreError::Backend(format!("DynamoDB: {other}"))),
        }
    }

    async fn flight_renew(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let lease_until_ms = now_ms.saturating_add(lease_ms);
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.cache)
            .key("pk", s(flight_pk(key)))
            .update_expression("SET lease_until_ms = :until, expires_at = :ttl")
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":ttl", ttl_secs(lease_until_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // Ended, or taken over: not ours any more.
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn flight_poll(&self, key: &CacheKey, now_ms: u64) -> Result<FlightPoll, StoreError> {
        let entry_pk = key.to_hex();
        let marker_pk = flight_pk(key);
        let mut keys: Vec<Item> = [&entry_pk, &marker_pk]
            .into_iter()
            .map(|pk| HashMap::from([("pk".to_owned(), s(pk.as_str()))]))
            .collect();
        let mut poll = FlightPoll::default();
        // One call for both items; keys DynamoDB leaves unprocessed (throttling) are asked again.
        while !keys.is_empty() {
            self.count();
            let out = self
                .client
                .batch_get_item()
                .request_items(
                    &self.tables.cache,
                    KeysAndAttributes::builder()
                        .set_keys(Some(keys))
                        // Eventually consistent, as cache reads are: a marker or entry seen a
                        // moment late costs one more poll, never a wrong answer.
                        .consistent_read(false)
                        .build()
                        .map_err(build)?,
                )
                .send()
                .await
                .map_err(sdk)?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.tables.cache))
                .into_iter()
                .flatten()
            {
                let pk = get_s(item, "pk")?;
                if pk == entry_pk {
                    poll.entry = entry_from_item(item, key, now_ms)?;
                } else if pk == marker_pk {
                    let flight = flight_from_item(item)?;
                    poll.flight = (flight.lease_until_ms > now_ms).then_some(flight);
                }
            }
            keys = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.tables.cache))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
        }
        Ok(poll)
    }

    async fn flight_end(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        self.count();
        let res = self
            .client
            .delete_item()
            .table_name(&self.tables.cache)
            .key("pk", s(flight_pk(key)))
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Another request holds it now (or it is gone): not ours to end.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}

/// The cache table's key of the in-flight marker of a cache key.
fn flight_pk(key: &CacheKey) -> String {
    format!("flight#{}", key.to_hex())
}

fn flight_from_item(item: &Item) -> Result<Flight, StoreError> {
    Ok(Flight {
        token: get_s(item, "token")?,
        started_at_ms: get_n(item, "started_at_ms")?,
        lease_until_ms: get_n(item, "lease_until_ms")?,
    })
}

/// A cache entry item as an answer, unless purged at `now_ms` or another tenant's.
fn entry_from_item(
    item: &Item,
    key: &CacheKey,
    now_ms: u64,
) -> Result<Option<CachedResponse>, StoreError> {
    let purge_at_ms: u64 = get_n(item, "purge_at_ms")?;
    // TTL deletion is lazy (or absent): expiry is checked here, not trusted to happen.
    if purge_at_ms <= now_ms || opt_s(item, "tenant").as_deref() != Some(&key.tenant) {
        return Ok(None);
    }
    Ok(Some(CachedResponse {
        body: get_blob(item, "body")?.ok_or_else(|| corrupt("cache body"))?,
        created_at_ms: get_n(item, "created_at_ms")?,
        expires_at_ms: get_n(item, "expires_at_ms")?,
        purge_at_ms,
    }))
}

// ---- provider-batch bookkeeping -----------------------------------------------------------

fn batch_pk(kind: BatchEntryKind, id: &str) -> String {
    format!("batch#{}#{id}", kind.as_str())
}

/// The `open-jobs` partition of a batch entry: a letter of its own per kind, so housekeeping's
/// queries of jobs (`s<n>`) never meet one.
fn batch_shard(kind: BatchEntryKind, id: &str) -> String {
    let letter = match kind {
        BatchEntryKind::Waiting => 'w',
        BatchEntryKind::Open => 'o',
    };
    format!("{letter}{}", &index_shard(id)[1..])
}

#[async_trait]
impl BatchStore for DynamoStore {
    async fn put_batch_entry(&self, entry: &BatchEntry) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(batch_pk(entry.kind, &entry.id)));
        item.insert("open_shard".into(), s(batch_shard(entry.kind, &entry.id)));
        item.insert("updated_at_ms".into(), n(entry.due_at_ms));
        item.insert("expires_at_ms".into(), n(entry.expires_at_ms));
        item.insert("expires_at".into(), ttl_secs(entry.expires_at_ms));
        if put_blob(&mut item, "body", &entry.body)? > MAX_BLOB_BYTES {
            return Err(StoreError::TooLarge(format!(
                "batch entry of {} bytes",
                entry.body.len()
            )));
        }
        self.count();
        self.client
            .put_item()
            .table_name(&self.tables.jobs)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn due_batch_entries(
        &self,
        kind: BatchEntryKind,
        due_by_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<BatchEntry>, StoreError> {
        let letter = match kind {
            BatchEntryKind::Waiting => 'w',
            BatchEntryKind::Open => 'o',
        };
        let mut keys = Vec::new();
        for shard in 0..INDEX_SHARDS {
            let items = self
                .query_index(
                    &self.tables.jobs,
                    OPEN_JOBS_INDEX,
                    ("open_shard", &format!("{letter}{shard}")),
                    ("updated_at_ms", due_by_ms),
                    Some(now_ms),
                    max.saturating_sub(keys.len()),
                )
                .await?;
            for item in &items {
                keys.push(get_s(item, "pk")?);
            }
            if keys.len() >= max {
                break;
            }
        }
        // The index projects no body: read each entry (strongly consistent; gone = skipped).
        let reads = futures_util::future::join_all(keys.iter().map(|pk| async move {
            self.count();
            self.client
                .get_item()
                .table_name(&self.tables.jobs)
                .key("pk", s(pk))
                .consistent_read(true)
                .send()
                .await
                .map_err(sdk)
        }))
        .await;
        let prefix = format!("batch#{}#", kind.as_str());
        let mut out = Vec::new();
        for read in reads {
            let Some(item) = read?.item else { continue };
            let expires_at_ms: u64 = get_n(&item, "expires_at_ms")?;
            let due_at_ms: u64 = get_n(&item, "updated_at_ms")?;
            if expires_at_ms <= now_ms || due_at_ms > due_by_ms {
                continue;
            }
            let pk = get_s(&item, "pk")?;
            out.push(BatchEntry {
                kind,
                id: pk.strip_prefix(&prefix).unwrap_or(&pk).to_owned(),
                due_at_ms,
                body: get_blob(&item, "body")?.unwrap_or_default(),
                expires_at_ms,
            });
        }
        out.sort_by_key(|e| e.due_at_ms);
        Ok(out)
    }

    async fn delete_batch_entry(&self, kind: BatchEntryKind, id: &str) -> Result<(), StoreError> {
        self.count();
        self.client
            .delete_item()
            .table_name(&self.tables.jobs)
            .key("pk", s(batch_pk(kind, id)))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }
}

// ---- jobs -------------------------------------------------------------------------------

fn job_from_item(item: &Item) -> Result<Job, StoreError> {
    let endpoint = Endpoint::parse(&get_s(item, "endpoint")?).ok_or_else(|| corrupt("endpoint"))?;
    let status = JobStatus::parse(&get_s(item, "status")?).ok_or_else(|| corrupt("status"))?;
    let result = match opt_n::<u16>(item, "result_status")? {
        Some(http_status) => Some(JobResult {
            http_status,
            body: get_blob(item, "result_body")?.unwrap_or_default(),
            tokens_in: opt_n(item, "tokens_in")?.unwrap_or(0),
            tokens_out: opt_n(item, "tokens_out")?.unwrap_or(0),
            cost_nano_usd: opt_n(item, "cost_nano_usd")?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Job {
        id: get_s(item, "pk")?,
        tenant: get_s(item, "tenant")?,
        key_id: get_s(item, "key_id")?,
        key_limits: opt_s(item, "key_limits")
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        endpoint,
        request: get_blob(item, "request")?.ok_or_else(|| corrupt("job request"))?,
        cache_control: opt_s(item, "cache_control"),
        callback_url: opt_s(item, "callback_url"),
        completion_window_s: opt_n(item, "completion_window_s")?,
        status,
        attempts: get_n(item, "attempts")?,
        lease_until_ms: get_n(item, "lease_until_ms")?,
        result,
        created_at_ms: get_n(item, "created_at_ms")?,
        updated_at_ms: get_n(item, "updated_at_ms")?,
        expires_at_ms: get_n(item, "expires_at_ms")?,
    })
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(&job.id));
        item.insert("tenant".into(), s(&job.tenant));
        item.insert("key_id".into(), s(&job.key_id));
        if let Ok(limits) = serde_json::to_string(&job.key_limits) {
            item.insert("key_limits".into(), s(limits));
        }
        item.insert("endpoint".into(), s(job.endpoint.as_str()));
        if put_blob(&mut item, "request", &job.request)? > MAX_BLOB_BYTES {
            return Err(StoreError::TooLarge(format!(
                "job request of {} bytes",
                job.request.len()
            )));
        }
        if let Some(cc) = &job.cache_control {
            item.insert("cache_control".into(), s(cc));
        }
        if let Some(url) = &job.callback_url {
            item.insert("callback_url".into(), s(url));
        }
        if let Some(window) = job.completion_window_s {
            item.insert("completion_window_s".into(), n(window));
        }
        item.insert("status".into(), s(job.status.as_str()));
        if !job.status.is_final() {
            item.insert("open_shard".into(), s(index_shard(&job.id)));
        }
        item.insert("attempts".into(), n(job.attempts));
        item.insert("lease_until_ms".into(), n(job.lease_until_ms));
        item.insert("created_at_ms".into(), n(job.created_at_ms));
        item.insert("updated_at_ms".into(), n(job.updated_at_ms));
        item.insert("expires_at_ms".into(), n(job.expires_at_ms));
        item.insert("expires_at".into(), ttl_secs(job.expires_at_ms));
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.jobs)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists(job.id.clone()))
            }
            Err(e) => Err(sdk(e)),
        }
    }

    async fn get_job(&self, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
        self.count();
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.jobs)
            .key("pk", s(id))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?;
        match out.item().map(job_from_item).transpose()? {
            Some(job) if job.expires_at_ms > now_ms => Ok(Some(job)),
            _ => Ok(None),
        }
    }

    async fn claim_job(&self, id: &str, now_ms: u64, lease_ms: u64) -> Result<Claim, StoreError> {
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.jobs)
            .key("pk", s(id))
            .update_expression(
                "SET #s = :running, attempts = attempts + :one, lease_until_ms = :lease, \
                 updated_at_ms = :now",
            )
            .condition_expression(
                "attribute_exists(pk) AND expires_at_ms > :now AND \
                 (#s = :queued OR (#s = :running AND lease_until_ms <= :now))",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":lease", n(now_ms.saturating_add(lease_ms)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => {
                let item = out
                    .attributes()
                    .ok_or_else(|| corrupt("claim returned nothing"))?;
                Ok(Claim::Claimed(job_from_item(item)?))
            }
            Err(SdkError::ServiceError(service)) => match service.into_err() {
                UpdateItemError::ConditionalCheckFailedException(failed) => {
                    // The old item came back with the failure: no second read needed.
                    let Some(item) = failed.item() else {
                        return Ok(Claim::Missing);
                    };
                    let job = job_from_item(item)?;
                    Ok(if job.expires_at_ms <= now_ms {
                        Claim::Missing
                    } else if job.status.is_final() {
                        Claim::Finished(job)
                    } else {
                        Claim::Leased {
                            until_ms: job.lease_until_ms,
                        }
                    })
                }
                other => Err(StoreError::Backend(format!("DynamoDB: {other}"))),
            },
            Err(e) => Err(sdk(e)),
        }
    }

    async fn release_job(&self, id: &str, attempt: u32, now_ms: u64) -> Result<bool, StoreError> {
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.jobs)
            .key("pk", s(id))
            .update_expression("SET #s = :queued, lease_until_ms = :zero, updated_at_ms = :now")
            .condition_expression("#s = :running AND attempts = :attempt")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":attempt", n(attempt))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn finish_job(
        &self,
        id: &str,
        attempt: u32,
        status: JobStatus,
        result: &JobResult,
        now_ms: u64,
        settle: Option<&Settlement>,
    ) -> Result<bool, StoreError> {
        let mut blob = Item::new();
        let stored = put_blob(&mut blob, "result_body", &result.body)?;
        let body = if stored > MAX_BLOB_BYTES {
            // The answer does not fit an item: record the failure to store it instead.
            let mut small = Item::new();
            let msg = br#"{"error":{"message":"The result was too large to store.","type":"server_error","code":"result_too_large","param":null}}"#;
            put_blob(&mut small, "result_body", msg)?;
            small
        } else {
            blob
        };
        let names = HashMap::from([("#s".to_owned(), "status".to_owned())]);
        let mut values: Item = HashMap::from([
            (":running".to_owned(), s("running")),
            (":attempt".to_owned(), n(attempt)),
            (":status".to_owned(), s(status.as_str())),
            (":code".to_owned(), n(result.http_status)),
            (":in".to_owned(), n(result.tokens_in)),
            (":out".to_owned(), n(result.tokens_out)),
            (":cost".to_owned(), n(result.cost_nano_usd)),
            (":zero".to_owned(), n(0)),
            (":now".to_owned(), n(now_ms)),
        ]);
        let mut set = String::from(
            "SET #s = :status, result_status = :code, tokens_in = :in, tokens_out = :out, \
             cost_nano_usd = :cost, lease_until_ms = :zero, updated_at_ms = :now",
        );
        for (name, value) in body {
            let placeholder = format!(":{name}");
            set.push_str(&format!(", {name} = {placeholder}"));
            values.insert(placeholder, value);
        }
        // A final job leaves the index of open jobs.
        set.push_str(" REMOVE open_shard");
        const CONDITION: &str = "#s = :running AND attempts = :attempt";
        let Some(settle) = settle else {
            self.count();
            let res = self
                .client
                .update_item()
                .table_name(&self.tables.jobs)
                .key("pk", s(id))
                .condition_expression(CONDITION)
                .update_expression(set)
                .set_expression_attribute_names(Some(names))
                .set_expression_attribute_values(Some(values))
                .send()
                .await;
            return match res {
                Ok(_) => Ok(true),
                Err(e) if is_condition_failure(&e) => Ok(false),
                Err(e) => Err(sdk(e)),
            };
        };
        // The result and the spend in one transaction: the job's update, the hold's deletion
        // and the counters; without the hold (released as abandoned), the real usage alone.
        let job = TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.tables.jobs)
                    .key("pk", s(id))
                    .condition_expression(CONDITION)
                    .update_expression(set)
                    .set_expression_attribute_names(Some(names))
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .map_err(build)?,
            )
            .build();
        let hold = TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.tables.limits)
                    .key("pk", s(format!("hold#{}", settle.hold_id)))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .map_err(build)?,
            )
            .build();
        let failed = |reasons: &[(Option<String>, Option<Item>)], i: usize| {
            reasons.get(i).and_then(|(c, _)| c.as_deref()) == Some("ConditionalCheckFailed")
        };
        let mut items = vec![job.clone(), hold];
        items.extend(self.counter_updates(&settle.increments)?);
        match self.transact(items).await? {
            None => return Ok(true),
            Some(reasons) if failed(&reasons, 0) => return Ok(false),
            // The hold is gone: again, with the real usage alone.
            Some(reasons) if failed(&reasons, 1) => {}
            Some(_) => {
                return Err(StoreError::Backend(
                    "DynamoDB: finish transaction cancelled".into(),
                ));
            }
        }
        let mut items = vec![job];
        items.extend(self.counter_updates(&settle.unheld)?);
        match self.transact(items).await? {
            None => Ok(true),
            Some(reasons) if failed(&reasons, 0) => Ok(false),
            Some(_) => Err(StoreError::Backend(
                "DynamoDB: finish transaction cancelled".into(),
            )),
        }
    }

    async fn stale_jobs(
        &self,
        changed_before_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<StaleJob>, StoreError> {
        let mut jobs = Vec::new();
        for shard in 0..INDEX_SHARDS {
            let items = self
                .query_index(
                    &self.tables.jobs,
                    OPEN_JOBS_INDEX,
                    ("open_shard", &format!("s{shard}")),
                    ("updated_at_ms", changed_before_ms),
                    Some(now_ms),
                    max.saturating_sub(jobs.len()),
                )
                .await?;
            for item in &items {
                let status =
                    JobStatus::parse(&get_s(item, "status")?).ok_or_else(|| corrupt("status"))?;
                // The index is read eventually consistently: a job that just ended may linger.
                if status.is_final() {
                    continue;
                }
                jobs.push(StaleJob {
                    id: get_s(item, "pk")?,
                    status,
                    attempts: get_n(item, "attempts")?,
                    lease_until_ms: get_n(item, "lease_until_ms")?,
                    updated_at_ms: get_n(item, "updated_at_ms")?,
                });
            }
            if jobs.len() >= max {
                break;
            }
        }
        Ok(jobs)
    }

    async fn requeue_job(
        &self,
        id: &str,
        changed_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.jobs)
            .key("pk", s(id))
            .update_expression("SET #s = :queued, lease_until_ms = :zero, updated_at_ms = :now")
            .condition_expression(
                "updated_at_ms = :seen AND expires_at_ms > :now AND \
                 (#s = :queued OR (#s = :running AND lease_until_ms <= :now))",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":running", s("running"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":seen", n(changed_at_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }
}

// ---- limits -----------------------------------------------------------------------------

/// Shards of a tenant's or the gateway's spending-cap counter by default: every request of
/// every key of a tenant writes it twice (reserve, settle), in transactions (two write units
/// each), and one item takes about 1,000 write units a second: about 250 requests a second
/// on one item, about 2,000 on eight.
pub const DEFAULT_BUDGET_SHARDS: u32 = 8;

/// Attempts of a limits transaction that lost a race with a concurrent one on the same item.
const CONFLICT_ATTEMPTS: u32 = 8;

/// Increments grouped by counter (one transaction may touch an item only once), in order.
fn by_counter(increments: &[Increment]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, inc) in increments.iter().enumerate() {
        match groups.iter_mut().find(|(c, _)| *c == inc.counter) {
            Some((_, idxs)) => idxs.push(i),
            None => groups.push((inc.counter.clone(), vec![i])),
        }
    }
    groups
}

impl DynamoStore {
    /// One transaction item per counter, adding its increments (unconditionally when they
    /// have no `at_most`, as a settlement's).
    fn counter_updates(
        &self,
        increments: &[Increment],
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        by_counter(increments)
            .into_iter()
            .map(|(counter, idxs)| {
                let incs: Vec<&Increment> = idxs.iter().map(|&i| &increments[i]).collect();
                Ok(TransactWriteItem::builder()
                    .update(self.counter_update(&counter, &incs)?)
                    .build())
            })
            .collect()
    }

    /// One `Update` adding every increment of a counter, conditional on the `at_most`s.
    fn counter_update(
        &self,
        counter: &str,
        increments: &[&Increment],
    ) -> Result<Update, StoreError> {
        let mut update = Update::builder()
            .table_name(&self.tables.limits)
            .key("pk", s(counter))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let mut adds = Vec::new();
        let mut conditions = Vec::new();
        let ttl = increments
            .iter()
            .map(|i| i.expires_at_ms)
            .max()
            .unwrap_or(0);
        for (j, inc) in increments.iter().enumerate() {
            adds.push(format!("#f{j} :d{j}"));
            update = update
                .expression_attribute_names(format!("#f{j}"), inc.field.as_str())
                .expression_attribute_values(format!(":d{j}"), n(inc.delta));
            if let Some(at_most) = inc.at_most {
                // A missing counter is 0, and `delta <= at_most` was checked before sending.
                conditions.push(format!("(attribute_not_exists(#f{j}) OR #f{j} <= :m{j})"));
                update =
                    update.expression_attribute_values(format!(":m{j}"), n(at_most - inc.delta));
            }
        }
        update = update
            .update_expression(format!("SET expires_at = :ttl ADD {}", adds.join(", ")))
            .expression_attribute_values(":ttl", ttl_secs(ttl));
        if !conditions.is_empty() {
            update = update.condition_expression(conditions.join(" AND "));
        }
        update.build().map_err(build)
    }

    /// Runs a limits transaction, retrying conflicts with concurrent transactions; returns the
    /// cancellation reasons' codes and old items when it was cancelled by a condition.
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
    ) -> Result<Option<Vec<(Option<String>, Option<Item>)>>, StoreError> {
        for attempt in 0..CONFLICT_ATTEMPTS {
            self.count();
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let err = match res {
                Ok(_) => return Ok(None),
                Err(e) => e,
            };
            let SdkError::ServiceError(service) = err else {
                return Err(sdk(err));
            };
            match service.into_err() {
                TransactWriteItemsError::TransactionCanceledException(t) => {
                    let reasons: Vec<(Option<String>, Option<Item>)> = t
                        .cancellation_reasons()
                        .iter()
                        .map(|r| (r.code().map(str::to_owned), r.item().cloned()))
                        .collect();
                    let conflict = reasons
                        .iter()
                        .any(|(c, _)| c.as_deref() == Some("TransactionConflict"));
                    let failed = reasons
                        .iter()
                        .any(|(c, _)| c.as_deref() == Some("ConditionalCheckFailed"));
                    if failed || !conflict {
                        return Ok(Some(reasons));
                    }
                }
                TransactWriteItemsError::TransactionInProgressException(_) => {}
                other => return Err(StoreError::Backend(format!("DynamoDB: {other}"))),
            }
            let backoff = 5u64 << attempt.min(5);
            let jitter = rand::random_range(0..=backoff);
            tokio::time::sleep(std::time::Duration::from_millis(backoff + jitter)).await;
        }
        Err(StoreError::Backend(
            "DynamoDB: limits transaction kept conflicting".into(),
        ))
    }
}

#[async_trait]
impl LimitStore for DynamoStore {
    fn default_budget_shards(&self) -> u32 {
        DEFAULT_BUDGET_SHARDS
    }

    async fn apply(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
    ) -> Result<Applied, StoreError> {
        for (index, inc) in increments.iter().enumerate() {
            if inc.at_most.is_some_and(|m| inc.delta > m) {
                // Cannot fit even on an empty counter: no call needed.
                return Ok(Applied::Refused {
                    index,
                    current: None,
                });
            }
        }
        let groups = by_counter(increments);
        let mut items = Vec::with_capacity(groups.len() + 1);
        for (counter, idxs) in &groups {
            let incs: Vec<&Increment> = idxs.iter().map(|&i| &increments[i]).collect();
            items.push(
                TransactWriteItem::builder()
                    .update(self.counter_update(counter, &incs)?)
                    .build(),
            );
        }
        // Guards check other counters in the same transaction (no extra call).
        let guarded: Vec<usize> = (0..increments.len())
            .filter(|&i| increments[i].guard.is_some())
            .collect();
        for &i in &guarded {
            if let Some(g) = &increments[i].guard {
                items.push(
                    TransactWriteItem::builder()
                        .condition_check(
                            ConditionCheck::builder()
                                .table_name(&self.tables.limits)
                                .key("pk", s(&g.counter))
                                .condition_expression("attribute_not_exists(#g) OR #g <= :gmax")
                                .expression_attribute_names("#g", g.field.as_str())
                                .expression_attribute_values(":gmax", n(g.at_most))
                                .build()
                                .map_err(build)?,
                        )
                        .build(),
                );
            }
        }
        if let Some(hold) = hold {
            let mut item = Item::new();
            item.insert("pk".into(), s(format!("hold#{}", hold.id)));
            item.insert(
                "undo".into(),
                s(serde_json::to_string(&hold.undo)
                    .map_err(|e| StoreError::Backend(e.to_string()))?),
            );
            item.insert("expires_at_ms".into(), n(hold.expires_at_ms));
            item.insert("hold_shard".into(), s(index_shard(&hold.id)));
            // Kept a week past its expiry so the release sweep finds it before TTL deletes it.
            item.insert(
                "expires_at".into(),
                ttl_secs(hold.expires_at_ms + 7 * 86_400_000),
            );
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.tables.limits)
                            .set_item(Some(item))
                            .condition_expression("attribute_not_exists(pk)")
                            .build()
                            .map_err(build)?,
                    )
                    .build(),
            );
        }
        let Some(reasons) = self.transact(items).await? else {
            return Ok(Applied::Granted);
        };
        for (g, (code, old)) in reasons.iter().enumerate() {
            if code.as_deref() != Some("ConditionalCheckFailed") {
                continue;
            }
            if let Some(&index) = g.checked_sub(groups.len()).and_then(|k| guarded.get(k)) {
                return Ok(Applied::Stale { index });
            }
            let Some((_, idxs)) = groups.get(g) else {
                return Err(StoreError::Backend(
                    "DynamoDB: reservation id collision".into(),
                ));
            };
            // The old item came back with the failure: the refusal needs no second read.
            let index = idxs
                .iter()
                .copied()
                .find(|&i| {
                    let inc = &increments[i];
                    let current = old
                        .as_ref()
                        .and_then(|o| opt_n::<i64>(o, inc.field.as_str()).ok().flatten())
                        .unwrap_or(0);
                    inc.at_most
                        .is_some_and(|m| current.saturating_add(inc.delta) > m)
                })
                .unwrap_or(idxs[0]);
            let current = old
                .as_ref()
                .map(|o| opt_n::<i64>(o, increments[index].field.as_str()))
                .transpose()?
                .map(|v| v.unwrap_or(0));
            return Ok(Applied::Refused { index, current });
        }
        Err(StoreError::Backend(
            "DynamoDB: limits transaction cancelled without a failed condition".into(),
        ))
    }

    async fn settle(&self, hold_id: &str, increments: &[Increment]) -> Result<bool, StoreError> {
        let mut items = vec![
            TransactWriteItem::builder()
                .delete(
                    Delete::builder()
                        .table_name(&self.tables.limits)
                        .key("pk", s(format!("hold#{hold_id}")))
                        .condition_expression("attribute_exists(pk)")
                        .build()
                        .map_err(build)?,
                )
                .build(),
        ];
        items.extend(self.counter_updates(increments)?);
        match self.transact(items).await? {
            None => Ok(true),
            Some(reasons)
                if reasons.first().and_then(|(c, _)| c.as_deref())
                    == Some("ConditionalCheckFailed") =>
            {
                Ok(false)
            }
            Some(_) => Err(StoreError::Backend(
                "DynamoDB: settle transaction cancelled".into(),
            )),
        }
    }

    async fn read_counters(
        &self,
        counters: &[(String, CounterField)],
    ) -> Result<Vec<i64>, StoreError> {
        let mut found: HashMap<String, Item> = HashMap::new();
        let mut pks: Vec<&str> = counters.iter().map(|(c, _)| c.as_str()).collect();
        pks.sort_unstable();
        pks.dedup();
        for chunk in pks.chunks(100) {
            let mut keys: Vec<Item> = chunk
                .iter()
                .map(|pk| HashMap::from([("pk".to_owned(), s(*pk))]))
                .collect();
            while !keys.is_empty() {
                self.count();
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(
                        &self.tables.limits,
                        KeysAndAttributes::builder()
                            .set_keys(Some(keys))
                            .consistent_read(true)
                            .build()
                            .map_err(build)?,
                    )
                    .send()
                    .await
                    .map_err(sdk)?;
                for item in out
                    .responses()
                    .and_then(|r| r.get(&self.tables.limits))
                    .into_iter()
                    .flatten()
                {
                    found.insert(get_s(item, "pk")?, item.clone());
                }
                keys = out
                    .unprocessed_keys()
                    .and_then(|u| u.get(&self.tables.limits))
                    .map(|k| k.keys().to_vec())
                    .unwrap_or_default();
            }
        }
        counters
            .iter()
            .map(|(c, f)| {
                Ok(match found.get(c) {
                    Some(item) => opt_n::<i64>(item, f.as_str())?.unwrap_or(0),
                    None => 0,
                })
            })
            .collect()
    }

    async fn expired_holds(&self, now_ms: u64, max: usize) -> Result<Vec<Hold>, StoreError> {
        let mut holds = Vec::new();
        for shard in 0..INDEX_SHARDS {
            let items = self
                .query_index(
                    &self.tables.limits,
                    HOLDS_INDEX,
                    ("hold_shard", &format!("s{shard}")),
                    ("expires_at_ms", now_ms),
                    None,
                    max.saturating_sub(holds.len()),
                )
                .await?;
            for item in &items {
                let pk = get_s(item, "pk")?;
                holds.push(Hold {
                    id: pk.trim_start_matches("hold#").to_owned(),
                    undo: serde_json::from_str(&get_s(item, "undo")?)
                        .map_err(|_| corrupt("hold undo list"))?,
                    expires_at_ms: get_n(item, "expires_at_ms")?,
                });
            }
            if holds.len() >= max {
                break;
            }
        }
        Ok(holds)
    }

    async fn mark_once(&self, marker: &str, expires_at_ms: u64) -> Result<bool, StoreError> {
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.limits)
            .item("pk", s(format!("mark#{marker}")))
            .item("expires_at", ttl_secs(expires_at_ms))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(sdk(e)),
        }
    }
}

// ---- metrics ----------------------------------------------------------------------------

/// Rollup rows per transaction: two updates each (tenant and gateway-wide copies) plus the
/// batch marker stay within DynamoDB's 100 items.
const ROWS_PER_TRANSACTION: usize = 49;

/// Separates tenant, model and provider in a sort key (a control character no name uses).
const SEP: char = '\u{1f}';

/// The partition of a scope's rollups for one UTC day: `m#t:<tenant>#<day>` or `m#*#<day>`.
fn metrics_pk(tenant: Option<&str>, minute: u64) -> String {
    let day = minute / 86_400;
    match tenant {
        Some(t) => format!("m#t:{t}#{day}"),
        None => format!("m#*#{day}"),
    }
}

fn metrics_sk(key: &RollupKey) -> String {
    format!(
        "{:010}#{}{SEP}{}{SEP}{}",
        key.minute, key.tenant, key.model, key.provider
    )
}

impl DynamoStore {
    /// One update adding a rollup to its row in one scope.
    fn rollup_update(&self, pk: String, row: &RollupRow) -> Result<TransactWriteItem, StoreError> {
        let k = &row.key;
        let mut update = Update::builder()
            .table_name(&self.tables.metrics)
            .key("pk", s(pk))
            .key("sk", s(metrics_sk(k)))
            .expression_attribute_values(":minute", n(k.minute))
            .expression_attribute_values(":tenant", s(k.tenant.clone()))
            .expression_attribute_values(":model", s(k.model.clone()))
            .expression_attribute_values(":provider", s(k.provider.clone()));
        let mut adds = Vec::new();
        for (name, value) in row.rollup.counters() {
            if value > 0 {
                adds.push(format!("{name} :{name}"));
                update = update.expression_attribute_values(format!(":{name}"), n(value));
            }
        }
        for (bucket, count) in row.rollup.latency.buckets() {
            adds.push(format!("h{bucket} :h{bucket}"));
            update = update.expression_attribute_values(format!(":h{bucket}"), n(count));
        }
        let mut expression = "SET #minute = :minute, tenant = :tenant, model = :model, \
                              provider = :provider"
            .to_owned();
        if !adds.is_empty() {
            expression.push_str(" ADD ");
            expression.push_str(&adds.join(", "));
        }
        let update = update
            .update_expression(expression)
            .expression_attribute_names("#minute", "minute")
            .build()
            .map_err(build)?;
        Ok(TransactWriteItem::builder().update(update).build())
    }
}

fn rollup_from_item(item: &Item) -> Result<RollupRow, StoreError> {
    let key = RollupKey {
        minute: get_n(item, "minute")?,
        tenant: get_s(item, "tenant")?,
        model: get_s(item, "model")?,
        provider: get_s(item, "provider")?,
    };
    let mut rollup = Rollup::default();
    for (name, _) in Rollup::default().counters() {
        rollup.set_counter(name, opt_n(item, name)?.unwrap_or(0));
    }
    for (name, value) in item {
        if let (Some(bucket), AttributeValue::N(count)) = (
            name.strip_prefix('h').and_then(|b| b.parse::<u16>().ok()),
            value,
        ) {
            let count = count.parse().map_err(|_| corrupt("bad histogram count"))?;
            rollup.latency.add(bucket, count);
        }
    }
    Ok(RollupRow { key, rollup })
}

#[async_trait]
impl MetricsStore for DynamoStore {
    async fn add_rollups(&self, batch_id: &str, rows: &[RollupRow]) -> Result<bool, StoreError> {
        let now = crate::clock::SystemClock.now_ms();
        let mut added = false;
        // Chunks are cut the same way every time, so a redelivered batch meets its markers.
        for (i, chunk) in rows.chunks(ROWS_PER_TRANSACTION).enumerate() {
            let mut items = Vec::with_capacity(chunk.len() * 2 + 1);
            for row in chunk {
                items.push(
                    self.rollup_update(metrics_pk(Some(&row.key.tenant), row.key.minute), row)?,
                );
                items.push(self.rollup_update(metrics_pk(None, row.key.minute), row)?);
            }
            let marker = Put::builder()
                .table_name(&self.tables.metrics)
                .item("pk", s(format!("batch#{batch_id}#{i}")))
                .item("sk", s("-"))
                .item(
                    "expires_at",
                    ttl_secs(now.saturating_add(crate::store::METRICS_MARKER_TTL_MS)),
                )
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(marker).build());
            match self.transact(items).await? {
                None => added = true,
                Some(reasons)
                    if reasons.last().is_some_and(|(code, _)| {
                        code.as_deref() == Some("ConditionalCheckFailed")
                    }) => {}
                Some(reasons) => {
                    return Err(StoreError::Backend(format!(
                        "DynamoDB: rollup transaction cancelled: {:?}",
                        reasons.iter().map(|(c, _)| c).collect::<Vec<_>>()
                    )));
                }
            }
        }
        Ok(added)
    }

    async fn rollups(
        &self,
        tenant: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let mut out = Vec::new();
        if to_s <= from_s {
            return Ok(out);
        }
        let (first_day, last_day) = (from_s / 86_400, (to_s - 1) / 86_400);
        for day in first_day..=last_day {
            let mut start: Option<Item> = None;
            loop {
                self.count();
                let page = self
                    .client
                    .query()
                    .table_name(&self.tables.metrics)
                    .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                    .expression_attribute_values(":pk", s(metrics_pk(tenant, day * 86_400)))
                    .expression_attribute_values(":a", s(format!("{from_s:010}")))
                    .expression_attribute_values(":b", s(format!("{:010}", to_s - 1) + "~"))
                    .set_exclusive_start_key(start.take())
                    .send()
                    .await
                    .map_err(sdk)?;
                for item in page.items() {
                    let row = rollup_from_item(item)?;
                    if row.key.minute >= from_s && row.key.minute < to_s {
                        out.push(row);
                    }
                }
                match page.last_evaluated_key() {
                    Some(key) if !key.is_empty() => start = Some(key.clone()),
                    _ => break,
                }
            }
        }
        Ok(out)
    }
}

// ---- idempotency ------------------------------------------------------------------------

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn idempotency_begin(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.cache)
            .item("pk", s(format!("idem#{key}")))
            .item("fingerprint", s(hex::encode(fingerprint)))
            .item("done", n(0))
            .item("lease_until_ms", n(now_ms + lease_ms))
            .item("expires_at_ms", n(now_ms + lease_ms))
            .item("expires_at", ttl_secs(now_ms + lease_ms + 86_400_000))
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at_ms <= :now \
                 OR (done = :zero AND lease_until_ms <= :now)",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":zero", n(0))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(IdempotencyBegin::Started),
            Err(e) => e,
        };
        let SdkError::ServiceError(service) = err else {
            return Err(sdk(err));
        };
        match service.into_err() {
            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                failed,
            ) => {
                // The existing record came back with the failure: no second read.
                let Some(old) = failed.item() else {
                    return Err(corrupt("idempotency record missing on conflict"));
                };
                if get_s(old, "fingerprint")? != hex::encode(fingerprint) {
                    return Ok(IdempotencyBegin::Mismatch);
                }
                if get_n::<u8>(old, "done")? == 1 {
                    return Ok(IdempotencyBegin::Replay(StoredResponse {
                        status: get_n(old, "status")?,
                        body: get_blob(old, "body")?.unwrap_or_default(),
                    }));
                }
                Ok(IdempotencyBegin::InProgress)
            }
            other => Err(StoreError::Backend(format!("DynamoDB: {other}"))),
        }
    }

    async fn idempotency_finish(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(format!("idem#{key}")));
        item.insert("fingerprint".into(), s(hex::encode(fingerprint)));
        item.insert("done".into(), n(1));
        item.insert("status".into(), n(response.status));
        if put_blob(&mut item, "body", &response.body)? > MAX_BLOB_BYTES {
            // Too large to keep: forget the claim instead, so a retry runs again.
            return self.idempotency_release(key).await;
        }
        item.insert("lease_until_ms".into(), n(0));
        item.insert("expires_at_ms".into(), n(expires_at_ms));
        item.insert("expires_at".into(), ttl_secs(expires_at_ms));
        self.count();
        self.client
            .put_item()
            .table_name(&self.tables.cache)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        self.count();
        let res = self
            .client
            .delete_item()
            .table_name(&self.tables.cache)
            .key("pk", s(format!("idem#{key}")))
            .condition_expression("done = :zero")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Already finished (or gone): a finished response is never forgotten early.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}
