//! Async jobs (`JobStore`): the `jobs` table, leases and their settlement.

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::error::backend;
use super::limits::settle_in;
use crate::jobs::model::{Claim, Job, JobResult, JobStatus, StaleJob};
use crate::num::{to_i64, to_u16, to_u32, to_u64};
use crate::providers::Endpoint;
use crate::store::{JobStore, Settlement, StoreError};

fn job_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Job, StoreError>> {
    let endpoint: String = row.get("endpoint")?;
    let status: String = row.get("status")?;
    let (Some(endpoint), Some(status)) = (Endpoint::parse(&endpoint), JobStatus::parse(&status))
    else {
        return Ok(Err(StoreError::Corrupt(
            "unknown job endpoint or status".into(),
        )));
    };
    let result = match row.get::<_, Option<i64>>("result_status")? {
        Some(http_status) => Some(JobResult {
            http_status: to_u16(http_status),
            body: Bytes::from(
                row.get::<_, Option<Vec<u8>>>("result_body")?
                    .unwrap_or_default(),
            ),
            tokens_in: to_u64(row.get::<_, Option<i64>>("tokens_in")?.unwrap_or(0)),
            tokens_out: to_u64(row.get::<_, Option<i64>>("tokens_out")?.unwrap_or(0)),
            cost_nano_usd: to_u64(row.get::<_, Option<i64>>("cost_nano_usd")?.unwrap_or(0)),
        }),
        None => None,
    };
    Ok(Ok(Job {
        id: row.get("id")?,
        tenant: row.get("tenant")?,
        key_id: row.get("key_id")?,
        key_limits: row
            .get::<_, Option<String>>("key_limits")?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default(),
        endpoint,
        request: Bytes::from(row.get::<_, Vec<u8>>("request")?),
        cache_control: row.get("cache_control")?,
        callback_url: row.get("callback_url")?,
        completion_window_s: row
            .get::<_, Option<i64>>("completion_window_s")?
            .map(to_u64),
        status,
        attempts: to_u32(row.get::<_, i64>("attempts")?),
        lease_until_ms: to_u64(row.get::<_, i64>("lease_until_ms")?),
        result,
        created_at_ms: to_u64(row.get::<_, i64>("created_at_ms")?),
        updated_at_ms: to_u64(row.get::<_, i64>("updated_at_ms")?),
        expires_at_ms: to_u64(row.get::<_, i64>("expires_at_ms")?),
    }))
}

fn job_by_id(c: &Connection, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
    c.prepare_cached("SELECT * FROM jobs WHERE id = ?1 AND expires_at_ms > ?2")
        .map_err(backend)?
        .query_row(params![id, to_i64(now_ms)], job_from_row)
        .optional()
        .map_err(backend)?
        .transpose()
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn insert_job(&self, job: &Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.write(move |c| {
            let res = c.execute(
                "INSERT INTO jobs (id, tenant, key_id, endpoint, request, cache_control,
                     callback_url, status, attempts, lease_until_ms, created_at_ms,
                     updated_at_ms, expires_at_ms, key_limits, completion_window_s)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    job.id,
                    job.tenant,
                    job.key_id,
                    job.endpoint.as_str(),
                    &job.request[..],
                    job.cache_control,
                    job.callback_url,
                    job.status.as_str(),
                    job.attempts,
                    to_i64(job.lease_until_ms),
                    to_i64(job.created_at_ms),
                    to_i64(job.updated_at_ms),
                    to_i64(job.expires_at_ms),
                    serde_json::to_string(&job.key_limits).ok(),
                    job.completion_window_s.map(to_i64),
                ],
            );
            match res {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::AlreadyExists(job.id.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn get_job(&self, id: &str, now_ms: u64) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| job_by_id(c, &id, now_ms)).await
    }

    async fn claim_job(&self, id: &str, now_ms: u64, lease_ms: u64) -> Result<Claim, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let claimed = c
                .prepare_cached(
                    "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                         lease_until_ms = ?2 + ?3, updated_at_ms = ?2
                     WHERE id = ?1 AND expires_at_ms > ?2
                       AND (status = 'queued' OR (status = 'running' AND lease_until_ms <= ?2))
                     RETURNING *",
                )
                .map_err(backend)?
                .query_row(params![id, to_i64(now_ms), to_i64(lease_ms)], job_from_row)
                .optional()
                .map_err(backend)?
                .transpose()?;
            if let Some(job) = claimed {
                return Ok(Claim::Claimed(job));
            }
            Ok(match job_by_id(c, &id, now_ms)? {
                None => Claim::Missing,
                Some(job) if job.status.is_final() => Claim::Finished(job),
                Some(job) => Claim::Leased {
                    until_ms: job.lease_until_ms,
                },
            })
        })
        .await
    }

    async fn release_job(&self, id: &str, attempt: u32, now_ms: u64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'queued', lease_until_ms = 0, updated_at_ms = ?3
                     WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                    params![id, attempt, to_i64(now_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
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
        let id = id.to_owned();
        let result = result.clone();
        let settle = settle.cloned();
        // One transaction on the single writer: the result and the spend land together.
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = ?3, result_status = ?4, result_body = ?5,
                         tokens_in = ?6, tokens_out = ?7, cost_nano_usd = ?8,
                         lease_until_ms = 0, updated_at_ms = ?9
                     WHERE id = ?1 AND status = 'running' AND attempts = ?2",
                    params![
                        id,
                        attempt,
                        status.as_str(),
                        result.http_status,
                        &result.body[..],
                        to_i64(result.tokens_in),
                        to_i64(result.tokens_out),
                        to_i64(result.cost_nano_usd),
                        to_i64(now_ms),
                    ],
                )
                .map_err(backend)?;
            if n == 0 {
                return Ok(false);
            }
            if let Some(settle) = &settle {
                settle_in(c, settle)?;
            }
            Ok(true)
        })
        .await
    }

    async fn stale_jobs(
        &self,
        changed_before_ms: u64,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<StaleJob>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, status, attempts, lease_until_ms, updated_at_ms FROM jobs
                     WHERE status IN ('queued', 'running') AND updated_at_ms <= ?1
                       AND expires_at_ms > ?2
                     ORDER BY updated_at_ms LIMIT ?3",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        to_i64(changed_before_ms),
                        to_i64(now_ms),
                        i64::try_from(max).unwrap_or(i64::MAX)
                    ],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, status, attempts, lease, updated) = row.map_err(backend)?;
                let status = JobStatus::parse(&status)
                    .ok_or_else(|| StoreError::Corrupt("unknown job status".into()))?;
                out.push(StaleJob {
                    id,
                    status,
                    attempts: to_u32(attempts),
                    lease_until_ms: to_u64(lease),
                    updated_at_ms: to_u64(updated),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn requeue_job(
        &self,
        id: &str,
        changed_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "UPDATE jobs SET status = 'queued', lease_until_ms = 0, updated_at_ms = ?3
                     WHERE id = ?1 AND updated_at_ms = ?2 AND expires_at_ms > ?3
                       AND (status = 'queued' OR (status = 'running' AND lease_until_ms <= ?3))",
                    params![id, to_i64(changed_at_ms), to_i64(now_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}
