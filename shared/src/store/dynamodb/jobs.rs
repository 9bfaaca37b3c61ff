//! Async jobs (`JobStore`): job items of the jobs table, leases and the `open-jobs` index.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    Delete, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use super::codec::{
    Item, MAX_BLOB_BYTES, corrupt, get_blob, get_n, get_s, n, opt_n, opt_s, put_blob, s, ttl_secs,
};
use super::error::{build, is_condition_failure, sdk, service_error};
use super::{DynamoStore, INDEX_SHARDS, OPEN_JOBS_INDEX, index_shard};
use crate::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use crate::providers::Endpoint;
use crate::store::{JobStore, Settlement, StoreError};

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
                other => Err(service_error(other)),
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
                return Err(StoreError::backend(
                    "DynamoDB: finish transaction cancelled",
                ));
            }
        }
        let mut items = vec![job];
        items.extend(self.counter_updates(&settle.unheld)?);
        match self.transact(items).await? {
            None => Ok(true),
            Some(reasons) if failed(&reasons, 0) => Ok(false),
            Some(_) => Err(StoreError::backend(
                "DynamoDB: finish transaction cancelled",
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
