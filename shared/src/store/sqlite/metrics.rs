//! Usage rollups (`MetricsStore`).

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::error::backend;
use crate::clock::Clock;
use crate::metrics::{Rollup, RollupKey, RollupRow};
use crate::num::{to_i64, to_u64};
use crate::store::{METRICS_MARKER_TTL_MS, MetricsStore, StoreError};

const ROLLUP_COLUMNS: &str = "minute, tenant, model, provider, requests, errors_client, \
    errors_rate_limited, errors_upstream, errors_server, cache_hits, fallbacks, tokens_in, \
    tokens_out, cost_nano_usd, latency";

fn rollup_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RollupRow, StoreError>> {
    let key = RollupKey {
        minute: to_u64(row.get::<_, i64>(0)?),
        tenant: row.get(1)?,
        model: row.get(2)?,
        provider: row.get(3)?,
    };
    let mut rollup = Rollup::default();
    let names = rollup.counters().map(|(n, _)| n);
    for (i, name) in names.iter().enumerate() {
        rollup.set_counter(name, to_u64(row.get::<_, i64>(4 + i)?));
    }
    let latency: String = row.get(14)?;
    Ok(match serde_json::from_str(&latency) {
        Ok(h) => {
            rollup.latency = h;
            Ok(RollupRow { key, rollup })
        }
        Err(e) => Err(StoreError::Corrupt(format!("rollup histogram: {e}"))),
    })
}

#[async_trait]
impl MetricsStore for SqliteStore {
    async fn add_rollups(&self, batch_id: &str, rows: &[RollupRow]) -> Result<bool, StoreError> {
        let batch_id = batch_id.to_owned();
        let rows = rows.to_vec();
        let now = crate::clock::SystemClock.now_ms();
        self.write(move |c| {
            let fresh = c
                .execute(
                    "INSERT OR IGNORE INTO metrics_batches (batch_id, expires_at_ms) VALUES (?1, ?2)",
                    params![batch_id, to_i64(now.saturating_add(METRICS_MARKER_TTL_MS))],
                )
                .map_err(backend)?
                == 1;
            if !fresh {
                return Ok(false);
            }
            for row in rows {
                let k = &row.key;
                let existing = c
                    .query_row(
                        &format!(
                            "SELECT {ROLLUP_COLUMNS} FROM metrics_rollups \
                             WHERE minute = ?1 AND tenant = ?2 AND model = ?3 AND provider = ?4"
                        ),
                        params![to_i64(k.minute), k.tenant, k.model, k.provider],
                        rollup_from_row,
                    )
                    .optional()
                    .map_err(backend)?
                    .transpose()?;
                let mut total = existing.map(|r| r.rollup).unwrap_or_default();
                total.merge(&row.rollup);
                let latency = serde_json::to_string(&total.latency)
                    .map_err(|e| StoreError::backend_from(e.to_string(), e))?;
                let counters = total.counters().map(|(_, v)| to_i64(v));
                c.execute(
                    &format!(
                        "INSERT OR REPLACE INTO metrics_rollups ({ROLLUP_COLUMNS}) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                    ),
                    params![
                        to_i64(k.minute),
                        k.tenant,
                        k.model,
                        k.provider,
                        counters[0],
                        counters[1],
                        counters[2],
                        counters[3],
                        counters[4],
                        counters[5],
                        counters[6],
                        counters[7],
                        counters[8],
                        counters[9],
                        latency
                    ],
                )
                .map_err(backend)?;
            }
            c.execute(
                "DELETE FROM metrics_batches WHERE expires_at_ms < ?1",
                params![to_i64(now)],
            )
            .map_err(backend)?;
            Ok(true)
        })
        .await
    }

    async fn rollups(
        &self,
        tenant: Option<&str>,
        from_s: u64,
        to_s: u64,
    ) -> Result<Vec<RollupRow>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {ROLLUP_COLUMNS} FROM metrics_rollups \
                     WHERE minute >= ?1 AND minute < ?2 AND (?3 IS NULL OR tenant = ?3) \
                     ORDER BY minute, tenant, model, provider"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![to_i64(from_s), to_i64(to_s), tenant],
                    rollup_from_row,
                )
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(backend)??);
            }
            Ok(out)
        })
        .await
    }
}
