//! Lambda `aggregator`: usage-queue batches → rollups in DynamoDB and EMF lines on stdout
//! (CloudWatch Logs turns them into metrics). The store is built once per environment.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use sluice::store::dynamodb::{DynamoStore, Tables};

#[tokio::main]
async fn main() -> Result<(), Error> {
    sluice::logging::init();
    let sdk = aws_config::load_from_env().await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), Tables::from_env());
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let store = store.clone();
        async move {
            let response =
                sluice_aggregator::handle_batch(&store, event.payload, |line| println!("{line}"))
                    .await;
            Ok::<SqsBatchResponse, Error>(response)
        }
    }))
    .await
}
