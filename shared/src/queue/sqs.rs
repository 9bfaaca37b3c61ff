//! The SQS adapter: the jobs queue on AWS, and for `serve --queue sqs`.
//!
//! On Lambda the processor is driven by SQS events instead (the runtime receives and deletes
//! for it); this adapter sends from ingest and lets `sluice serve` poll the same queue.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};

use super::{Delivery, JobQueue, QueueError};

/// A queue by URL, with an optional dead-letter queue (for counting).
#[derive(Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    dead_letter_url: Option<String>,
    visibility: Duration,
}

fn sdk<E: std::error::Error + 'static, R: std::fmt::Debug>(e: SdkError<E, R>) -> QueueError {
    let detail = match e.as_service_error() {
        Some(service) => service.to_string(),
        None => e.to_string(),
    };
    QueueError::Backend(format!("SQS: {detail}"))
}

impl SqsQueue {
    /// A queue at `url`; received messages stay invisible for `visibility`.
    pub fn new(
        client: Client,
        url: String,
        dead_letter_url: Option<String>,
        visibility: Duration,
    ) -> Self {
        Self {
            client,
            url,
            dead_letter_url,
            visibility,
        }
    }

    /// The queue URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The dead-letter queue URL, if known.
    pub fn dead_letter_url(&self) -> Option<&str> {
        self.dead_letter_url.as_deref()
    }

    /// Creates `name` and `name-dlq` with a redrive policy after `max_receive_count`
    /// deliveries (for development against moto; on AWS the SAM template creates them).
    pub async fn create(
        client: Client,
        name: &str,
        visibility: Duration,
        max_receive_count: u32,
    ) -> Result<Self, QueueError> {
        let dlq = client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await
            .map_err(sdk)?;
        let dlq_url = dlq
            .queue_url()
            .ok_or_else(|| QueueError::Backend("SQS: no dead-letter queue URL".into()))?
            .to_owned();
        let attrs = client
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(sdk)?;
        let dlq_arn = attrs
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .ok_or_else(|| QueueError::Backend("SQS: no dead-letter queue ARN".into()))?;
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dlq_arn,
            "maxReceiveCount": max_receive_count.to_string(),
        });
        let main = client
            .create_queue()
            .queue_name(name)
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                visibility.as_secs().to_string(),
            )
            .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
            .send()
            .await
            .map_err(sdk)?;
        let url = main
            .queue_url()
            .ok_or_else(|| QueueError::Backend("SQS: no queue URL".into()))?
            .to_owned();
        Ok(Self::new(client, url, Some(dlq_url), visibility))
    }

    /// The queue's visibility timeout as SQS has it.
    async fn queue_visibility(&self) -> Result<Duration, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .send()
            .await
            .map_err(sdk)?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::VisibilityTimeout))
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| QueueError::Backend("SQS: no visibility timeout".into()))
    }

    async fn receive_from(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(i32::try_from(max.clamp(1, 10)).unwrap_or(10))
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .visibility_timeout(i32::try_from(self.visibility.as_secs().max(1)).unwrap_or(i32::MAX))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(sdk)?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                let receive_count = m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                Some(Delivery {
                    message_id: m.message_id()?.to_owned(),
                    body: m.body().unwrap_or_default().to_owned(),
                    receipt: m.receipt_handle()?.to_owned(),
                    receive_count,
                })
            })
            .collect())
    }

    async fn delete_from(&self, url: &str, receipt: &str) -> Result<(), QueueError> {
        match self
            .client
            .delete_message()
            .queue_url(url)
            .receipt_handle(receipt)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            // A receipt from an older delivery: the message was redelivered; not an error.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn send(&self, body: &str) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.receive_from(&self.url, max, wait).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.delete_from(&self.url, receipt).await
    }

    async fn visibility_timeout(&self) -> Result<Duration, QueueError> {
        self.queue_visibility().await
    }

    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        match &self.dead_letter_url {
            Some(url) => self.receive_from(url, max, Duration::ZERO).await,
            None => Ok(Vec::new()),
        }
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        match &self.dead_letter_url {
            Some(url) => self.delete_from(url, receipt).await,
            None => Ok(()),
        }
    }

    async fn dead_letter_count(&self) -> Result<u64, QueueError> {
        let Some(url) = &self.dead_letter_url else {
            return Ok(0);
        };
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(sdk)?;
        let attrs = out.attributes();
        let get = |name: QueueAttributeName| -> u64 {
            attrs
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(get(QueueAttributeName::ApproximateNumberOfMessages)
            + get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
    }
}
