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
//!
//! Layout: this module holds the client, the table names and their creation, and the index
//! query every port shares; `codec` the attribute codec, `error` the mapping of SDK failures;
//! then one file per port (`keys`, `cache`, `batch`, `jobs`, `limits`, `metrics`,
//! `idempotency`).

mod batch;
mod cache;
mod codec;
mod error;
mod idempotency;
mod jobs;
mod keys;
mod limits;
mod metrics;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

use codec::{Item, n, s};
use error::{build, sdk};

pub use limits::DEFAULT_BUDGET_SHARDS;

use crate::store::StoreError;

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
