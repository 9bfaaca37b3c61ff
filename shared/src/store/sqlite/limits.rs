//! Rate windows, budget counters and reservations (`LimitStore`).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use super::cache::{holder, take_flight};
use super::error::backend;
use crate::num::{to_i64, to_u64};
use crate::store::{
    Applied, CounterField, FlightClaim, Hold, Increment, LimitStore, Settlement, StoreError,
};

/// Settles a hold inside the caller's transaction: deleted with its increments applied, or,
/// when it is already gone, the real usage on its own.
pub(super) fn settle_in(c: &Connection, settle: &Settlement) -> Result<(), StoreError> {
    let deleted = c
        .execute("DELETE FROM limit_holds WHERE id = ?1", [&settle.hold_id])
        .map_err(backend)?;
    let increments = if deleted == 1 {
        &settle.increments
    } else {
        &settle.unheld
    };
    for inc in increments {
        add_to_counter(c, inc)?;
    }
    Ok(())
}

/// Applies every increment and stores `hold` inside the caller's transaction, or writes
/// nothing if a guard or an `at_most` fails (every check runs before the first write).
fn apply_in(
    c: &Connection,
    increments: &[Increment],
    hold: Option<&Hold>,
) -> Result<Applied, StoreError> {
    for (index, inc) in increments.iter().enumerate() {
        if let Some(g) = &inc.guard
            && counter_value(c, &g.counter, g.field)? > g.at_most
        {
            return Ok(Applied::Stale { index });
        }
    }
    for (index, inc) in increments.iter().enumerate() {
        if let Some(at_most) = inc.at_most {
            let current = counter_value(c, &inc.counter, inc.field)?;
            if current.saturating_add(inc.delta) > at_most {
                return Ok(Applied::Refused {
                    index,
                    current: Some(current),
                });
            }
        }
    }
    for inc in increments {
        add_to_counter(c, inc)?;
    }
    if let Some(hold) = hold {
        let undo = serde_json::to_string(&hold.undo)
            .map_err(|e| StoreError::backend_from(e.to_string(), e))?;
        c.prepare_cached("INSERT INTO limit_holds (id, undo, expires_at_ms) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![hold.id, undo, to_i64(hold.expires_at_ms)]))
            .map_err(backend)?;
    }
    Ok(Applied::Granted)
}

fn counter_value(c: &Connection, counter: &str, field: CounterField) -> Result<i64, StoreError> {
    c.prepare_cached("SELECT value FROM limit_counters WHERE counter = ?1 AND field = ?2")
        .map_err(backend)?
        .query_row(params![counter, field.as_str()], |r| r.get::<_, i64>(0))
        .optional()
        .map_err(backend)
        .map(|v| v.unwrap_or(0))
}

fn add_to_counter(c: &Connection, inc: &Increment) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO limit_counters (counter, field, value, expires_at_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (counter, field) DO UPDATE SET value = value + excluded.value,
             expires_at_ms = MAX(expires_at_ms, excluded.expires_at_ms)",
    )
    .map_err(backend)?
    .execute(params![
        inc.counter,
        inc.field.as_str(),
        inc.delta,
        to_i64(inc.expires_at_ms)
    ])
    .map_err(backend)?;
    Ok(())
}

#[async_trait]
impl LimitStore for SqliteStore {
    async fn apply(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
    ) -> Result<Applied, StoreError> {
        let increments = increments.to_vec();
        let hold = hold.cloned();
        // One write job: checks and changes run in the same transaction on the single writer
        // (BEGIN IMMEDIATE also locks out other processes sharing the file), so they are atomic.
        self.write(move |c| apply_in(c, &increments, hold.as_ref()))
            .await
    }

    async fn apply_leading(
        &self,
        increments: &[Increment],
        hold: Option<&Hold>,
        claim: &FlightClaim,
    ) -> Result<Applied, StoreError> {
        let increments = increments.to_vec();
        let hold = hold.cloned();
        let claim = claim.clone();
        // The same write job: the marker is checked first, taken only with a grant.
        self.write(move |c| {
            let digest = &claim.key.digest;
            if let Some(held) = holder(c, digest, claim.now_ms, claim.landed_ms)? {
                return Ok(Applied::InFlight(held));
            }
            let applied = apply_in(c, &increments, hold.as_ref())?;
            if applied == Applied::Granted {
                take_flight(c, digest, &claim.token, claim.now_ms, claim.lease_ms)?;
            }
            Ok(applied)
        })
        .await
    }

    async fn settle(&self, hold_id: &str, increments: &[Increment]) -> Result<bool, StoreError> {
        let hold_id = hold_id.to_owned();
        let increments = increments.to_vec();
        self.write(move |c| {
            let deleted = c
                .prepare_cached("DELETE FROM limit_holds WHERE id = ?1")
                .and_then(|mut s| s.execute([hold_id]))
                .map_err(backend)?;
            if deleted == 0 {
                return Ok(false);
            }
            for inc in &increments {
                add_to_counter(c, inc)?;
            }
            Ok(true)
        })
        .await
    }

    async fn read_counters(
        &self,
        counters: &[(String, CounterField)],
    ) -> Result<Vec<i64>, StoreError> {
        let counters = counters.to_vec();
        self.read(move |c| {
            counters
                .iter()
                .map(|(counter, field)| counter_value(c, counter, *field))
                .collect()
        })
        .await
    }

    async fn expired_holds(&self, now_ms: u64, max: usize) -> Result<Vec<Hold>, StoreError> {
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, undo, expires_at_ms FROM limit_holds
                     WHERE expires_at_ms <= ?1 ORDER BY expires_at_ms LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![to_i64(now_ms), i64::try_from(max).unwrap_or(i64::MAX)],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(backend)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            rows.into_iter()
                .map(|(id, undo, expires)| {
                    Ok(Hold {
                        id,
                        undo: serde_json::from_str(&undo)
                            .map_err(|_| StoreError::Corrupt("hold undo list".into()))?,
                        expires_at_ms: to_u64(expires),
                    })
                })
                .collect()
        })
        .await
    }

    async fn mark_once(&self, marker: &str, expires_at_ms: u64) -> Result<bool, StoreError> {
        let marker = marker.to_owned();
        self.write(move |c| {
            let n = c
                .execute(
                    "INSERT OR IGNORE INTO limit_markers (marker, expires_at_ms) VALUES (?1, ?2)",
                    params![marker, to_i64(expires_at_ms)],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }
}
