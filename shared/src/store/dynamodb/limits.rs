//! Rate windows, budget counters and reservations (`LimitStore`): counter, `hold#` and
//! `mark#` items of the limits table, written in `TransactWriteItems`.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    ConditionCheck, Delete, KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};

use super::cache::flight_from_item;
use super::codec::{Item, corrupt, get_n, get_s, n, opt_n, s, ttl_secs};
use super::error::{THROTTLED_CANCELLATIONS, build, sdk, service_error};
use super::{DynamoStore, HOLDS_INDEX, INDEX_SHARDS, index_shard};
use crate::store::{Applied, CounterField, FlightClaim, Hold, Increment, LimitStore, StoreError};

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
    pub(super) fn counter_updates(
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
    pub(super) async fn transact(
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
                    let throttled = reasons.iter().any(|(c, _)| {
                        c.as_deref()
                            .is_some_and(|c| THROTTLED_CANCELLATIONS.contains(&c))
                    });
                    if throttled && !failed {
                        return Err(StoreError::throttled(
                            format!("DynamoDB: {t}"),
                            Some(Arc::new(
                                TransactWriteItemsError::TransactionCanceledException(t),
                            )),
                        ));
                    }
                    if failed || !conflict {
                        return Ok(Some(reasons));
                    }
                }
                TransactWriteItemsError::TransactionInProgressException(_) => {}
                other => return Err(service_error(other)),
            }
            let backoff = 5u64 << attempt.min(5);
            let jitter = rand::random_range(0..=backoff);
            tokio::time::sleep(std::time::Duration::from_millis(backoff + jitter)).await;
        }
        Err(StoreError::backend(
            "DynamoDB: limits transaction kept conflicting",
        ))
    }
}

impl DynamoStore {
    /// [`LimitStore::apply`], with `claim`'s in-flight marker as the transaction's last item.
    async fn apply_claiming(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
        claim: Option<&FlightClaim>,
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
        let mut items = Vec::with_capacity(groups.len() + 2);
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
                    .map_err(|e| StoreError::backend_from(e.to_string(), e))?),
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
        // The marker last: its cancellation reason is the last one.
        if let Some(claim) = claim {
            items.push(
                TransactWriteItem::builder()
                    .put(self.flight_put(claim)?)
                    .build(),
            );
        }
        let marker = claim.map(|_| items.len() - 1);
        let Some(reasons) = self.transact(items).await? else {
            return Ok(Applied::Granted);
        };
        // Another flight holds the marker: follow it (whatever the counters said).
        if let Some((Some(code), old)) = marker.and_then(|m| reasons.get(m))
            && code == "ConditionalCheckFailed"
        {
            let old = old
                .as_ref()
                .ok_or_else(|| corrupt("flight marker missing on conflict"))?;
            return Ok(Applied::InFlight(flight_from_item(old)?));
        }
        for (g, (code, old)) in reasons.iter().enumerate() {
            if code.as_deref() != Some("ConditionalCheckFailed") {
                continue;
            }
            if let Some(&index) = g.checked_sub(groups.len()).and_then(|k| guarded.get(k)) {
                return Ok(Applied::Stale { index });
            }
            let Some((_, idxs)) = groups.get(g) else {
                return Err(StoreError::backend("DynamoDB: reservation id collision"));
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
        Err(StoreError::backend(
            "DynamoDB: limits transaction cancelled without a failed condition",
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
        self.apply_claiming(increments, hold, None).await
    }

    async fn apply_leading(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
        claim: &FlightClaim,
    ) -> Result<Applied, StoreError> {
        self.apply_claiming(increments, hold, Some(claim)).await
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
            Some(_) => Err(StoreError::backend(
                "DynamoDB: settle transaction cancelled",
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
