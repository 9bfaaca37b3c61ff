//! Queue port: where accepted jobs wait for a worker.
//!
//! Two adapters with SQS semantics: SQS itself (`sqs`, on AWS and in `serve --queue sqs`) and a
//! durable table in the SQLite file (`sqlite`, the local default). A received message is
//! invisible for the visibility timeout; if it is not deleted by then it is delivered again,
//! and after `max_receive_count` deliveries it moves to a dead-letter queue instead.

#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "aws")]
pub mod sqs;

use std::time::Duration;

use async_trait::async_trait;

/// A queue operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The backend refused or failed the call.
    #[error("queue backend error: {0}")]
    Backend(String),
}

/// One delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Stable id of the message.
    pub message_id: String,
    /// The message body.
    pub body: String,
    /// Handle for deleting this delivery (changes with every delivery).
    pub receipt: String,
    /// How many times the message has been delivered, this time included.
    pub receive_count: u32,
}

/// A job queue.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Adds a message.
    async fn send(&self, body: &str) -> Result<(), QueueError>;
    /// Takes up to `max` visible messages, waiting up to `wait` for the first one.
    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes a delivered message (it was handled); a stale receipt is not an error.
    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;
    /// How long a received message stays invisible (SQS: the queue's own setting, as SQS
    /// reports it; the processor checks it against its timeouts at start-up).
    async fn visibility_timeout(&self) -> Result<Duration, QueueError>;
    /// Messages currently in the dead-letter queue.
    async fn dead_letter_count(&self) -> Result<u64, QueueError>;
    /// Takes up to `max` messages from the dead-letter queue for inspection (housekeeping);
    /// each is hidden from the next call for the visibility timeout and stays in the
    /// dead-letter queue unless deleted. Nothing when there is no dead-letter queue.
    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<Delivery>, QueueError>;
    /// Deletes a dead letter (its job is final, or was queued again); a stale receipt is not
    /// an error.
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError>;
}
