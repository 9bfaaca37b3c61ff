//! Usage rollups (`MetricsStore`): the metrics table, one partition per tenant and minute.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::DynamoStore;
use super::codec::{Item, corrupt, get_n, get_s, n, opt_n, s, ttl_secs};
use super::error::{build, sdk};
use crate::clock::Clock;
use crate::metrics::{Rollup, RollupKey, RollupRow};
use crate::store::{MetricsStore, StoreError};

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
                    return Err(StoreError::backend(format!(
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
