//! Lambda `processor`: SQS job batches → `sluice::jobs`. Clients are built once per execution
//! environment; each invocation handles one batch.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use sluice::config::Config;
use sluice::deps::{Deps, Services};

#[tokio::main]
async fn main() -> Result<(), Error> {
    sluice::logging::init();
    let config = Config::from_env()?;
    let deps = Deps::aws_from_env(&config).await?;
    let processor = Services::build(&config, &deps)?.processor;
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let processor = std::sync::Arc::clone(&processor);
        let usage = std::sync::Arc::clone(&deps.usage);
        async move {
            let response = sluice_processor::handle_batch(&processor, event.payload).await;
            // The batch's usage events leave in one SendMessageBatch before the invocation ends.
            usage.flush().await;
            Ok::<SqsBatchResponse, Error>(response)
        }
    }))
    .await
}
