//! The local job queue: a durable table in the SQLite file, with SQS's semantics (visibility
//! timeout, receive count, dead-letter queue) so that `sluice serve` behaves like the Lambdas.
//!
//! Messages survive `kill -9`: a message received but not deleted becomes visible again when
//! its visibility timeout runs out. Senders in this process wake waiting receivers at once;
//! messages sent by another process sharing the file are found by polling every 200 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::Notify;

use super::{Delivery, JobQueue, QueueError};
use crate::clock::Clock;
use crate::keys::{random_alnum, random_id};
use crate::store::StoreError;
use crate::store::sqlite::SqliteStore;

/// How often a waiting receiver looks for messages from other processes.
const POLL: Duration = Duration::from_millis(200);

/// The SQLite-backed queue.
#[derive(Clone)]
pub struct SqliteQueue {
    store: SqliteStore,
    clock: Arc<dyn Clock>,
    visibility_ms: u64,
    max_receive_count: u32,
    arrivals: Arc<Notify>,
}

impl SqliteQueue {
    /// A queue in `store`'s database file.
    pub fn new(
        store: SqliteStore,
        clock: Arc<dyn Clock>,
        visibility: Duration,
        max_receive_count: u32,
    ) -> Self {
        Self {
            store,
            clock,
            visibility_ms: crate::num::u128_to_u64(visibility.as_millis()),
            max_receive_count: max_receive_count.max(1),
            arrivals: Arc::new(Notify::new()),
        }
    }

    async fn take(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        let now = crate::num::to_i64(self.clock.now_ms());
        let visibility = crate::num::to_i64(self.visibility_ms);
        let max_receive = i64::from(self.max_receive_count);
        self.store
            .write(move |c| {
                // Like SQS's redrive policy: a message already delivered max_receive_count
                // times goes to the dead-letter queue instead of being delivered again.
                c.execute(
                    "INSERT OR REPLACE INTO dead_letters (message_id, body, receive_count, moved_at_ms)
                     SELECT message_id, body, receive_count, ?1 FROM queue_messages
                     WHERE visible_at_ms <= ?1 AND receive_count >= ?2",
                    params![now, max_receive],
                )
                .map_err(backend)?;
                c.execute(
                    "DELETE FROM queue_messages WHERE visible_at_ms <= ?1 AND receive_count >= ?2",
                    params![now, max_receive],
                )
                .map_err(backend)?;
                let mut stmt = c
                    .prepare_cached(
                        "SELECT seq, message_id, body, receive_count FROM queue_messages
                         WHERE visible_at_ms <= ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(backend)?;
                let rows = stmt
                    .query_map(params![now, i64::from(max)], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for (seq, message_id, body, count) in rows {
                    let receipt = format!("{message_id}:{}", random_alnum(16));
                    c.prepare_cached(
                        "UPDATE queue_messages SET visible_at_ms = ?2, receive_count = ?3,
                             receipt = ?4 WHERE seq = ?1",
                    )
                    .map_err(backend)?
                    .execute(params![seq, now + visibility, count + 1, receipt])
                    .map_err(backend)?;
                    out.push(Delivery {
                        message_id,
                        body,
                        receipt,
                        receive_count: crate::num::to_u32(count.saturating_add(1)),
                    });
                }
                Ok(out)
            })
            .await
            .map_err(QueueError::from)
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    crate::store::sqlite::backend(e)
}

impl From<StoreError> for QueueError {
    fn from(e: StoreError) -> Self {
        QueueError::Backend(e.to_string())
    }
}

#[async_trait]
impl JobQueue for SqliteQueue {
    async fn send(&self, body: &str) -> Result<(), QueueError> {
        let body = body.to_owned();
        let now = crate::num::to_i64(self.clock.now_ms());
        let message_id = random_id("msg_", 20);
        self.store
            .write(move |c| {
                c.prepare_cached(
                    "INSERT INTO queue_messages (message_id, body, visible_at_ms) VALUES (?1, ?2, ?3)",
                )
                .map_err(backend)?
                .execute(params![message_id, body, now])
                .map_err(backend)?;
                Ok(())
            })
            .await?;
        self.arrivals.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before looking, so a send between the look and the wait
            // still wakes us.
            let arrived = self.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let got = self.take(max.max(1)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let _ = tokio::time::timeout(left.min(POLL), arrived).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.store
            .write(move |c| {
                c.execute("DELETE FROM queue_messages WHERE receipt = ?1", [receipt])
                    .map_err(backend)?;
                Ok(())
            })
            .await
            .map_err(QueueError::from)
    }

    async fn visibility_timeout(&self) -> Result<Duration, QueueError> {
        Ok(Duration::from_millis(self.visibility_ms))
    }

    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        let now = crate::num::to_i64(self.clock.now_ms());
        let visibility = crate::num::to_i64(self.visibility_ms);
        self.store
            .write(move |c| {
                let rows = c
                    .prepare_cached(
                        "SELECT message_id, body, receive_count FROM dead_letters
                         WHERE visible_at_ms <= ?1 ORDER BY moved_at_ms, message_id LIMIT ?2",
                    )
                    .map_err(backend)?
                    .query_map(params![now, i64::from(max.max(1))], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    })
                    .map_err(backend)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for (message_id, body, count) in rows {
                    let receipt = format!("{message_id}:{}", random_alnum(16));
                    c.prepare_cached(
                        "UPDATE dead_letters SET visible_at_ms = ?2, receipt = ?3
                         WHERE message_id = ?1",
                    )
                    .map_err(backend)?
                    .execute(params![message_id, now + visibility, receipt])
                    .map_err(backend)?;
                    out.push(Delivery {
                        message_id,
                        body,
                        receipt,
                        receive_count: crate::num::to_u32(count),
                    });
                }
                Ok(out)
            })
            .await
            .map_err(QueueError::from)
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        self.store
            .write(move |c| {
                c.execute("DELETE FROM dead_letters WHERE receipt = ?1", [receipt])
                    .map_err(backend)?;
                Ok(())
            })
            .await
            .map_err(QueueError::from)
    }

    async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        self.store
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(crate::num::to_u64)
                .map_err(backend)
            })
            .await
            .map_err(QueueError::from)
    }
}
