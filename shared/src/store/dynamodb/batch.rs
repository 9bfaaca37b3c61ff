//! Provider-batch bookkeeping (`BatchStore`): the `batch#` items of the jobs table, found
//! through the `open-jobs` index.

use async_trait::async_trait;

use super::codec::{Item, MAX_BLOB_BYTES, get_blob, get_n, get_s, n, put_blob, s, ttl_secs};
use super::error::sdk;
use super::{DynamoStore, INDEX_SHARDS, OPEN_JOBS_INDEX, index_shard};
use crate::store::{BatchEntry, BatchEntryKind, BatchStore, StoreError};

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
