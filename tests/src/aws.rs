//! DynamoDB, SQS and Secrets Manager on moto's server for tests: real SDK clients, real wire protocol.
//!
//! `AWS_ENDPOINT_URL` must point at a moto server on 127.0.0.1 (`./infra/test.sh` starts one;
//! `infra/aws/moto.sh` does it by hand). Refusing anything else keeps a test from ever
//! touching a real AWS account. Every call gets fresh, uniquely named tables and queues.

use std::time::Duration;

use sluice::keys::random_alnum;
use sluice::queue::sqs::SqsQueue;
use sluice::store::dynamodb::{DynamoStore, Tables};

/// SDK config for the moto server named by `AWS_ENDPOINT_URL`.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    assert!(
        endpoint.starts_with("http://127.0.0.1:"),
        "AWS_ENDPOINT_URL must name a moto server on 127.0.0.1 (got `{endpoint}`); \
         run ./infra/test.sh, or start one with infra/aws/moto.sh"
    );
    sdk_config_at(&endpoint).await
}

/// SDK config for an endpoint on 127.0.0.1 (moto, or a proxy in front of it), with the
/// SDK's default retry policy.
pub async fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "sluice-tests",
        ))
        .load()
        .await
}

/// A unique name prefix for one test's resources.
pub fn unique_prefix() -> String {
    format!("t{}", random_alnum(10).to_lowercase())
}

/// A DynamoDB store over freshly created tables.
pub async fn dynamo_store() -> DynamoStore {
    let sdk = sdk_config().await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        Tables::with_prefix(&unique_prefix()),
    );
    store.create_tables().await.unwrap();
    store
}

/// A fresh SQS queue with a dead-letter queue after `max_receive_count` deliveries.
pub async fn sqs_queue(visibility: Duration, max_receive_count: u32) -> SqsQueue {
    let sdk = sdk_config().await;
    SqsQueue::create(
        aws_sdk_sqs::Client::new(&sdk),
        &unique_prefix(),
        visibility,
        max_receive_count,
    )
    .await
    .unwrap()
}

/// A Secrets Manager client for moto.
pub async fn secrets_client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&sdk_config().await)
}
