//! Lambda `processor`: SQS job batches → `sluice::jobs`. Clients are built once per execution
//! environment; each invocation handles one batch, and ends only once its results, spend and
//! usage events are written (no work is left for a frozen environment). Provider keys come from
//! Secrets Manager by ARN (`sluice::secrets`) and are read again on a TTL as batches arrive.
//! Its one-minute schedule runs a provider Batch API pass (see `sluice_processor::classify`).

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use sluice::deps::{Deps, Services};
use sluice::invocation::Role;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sluice::logging::init();
    let sdk = Deps::aws_sdk_config().await;
    let secrets = Arc::new(sluice::secrets::start_from_env(&sdk, true).await?);
    let config = secrets.config();
    let deps = Deps::aws_from_env_with(&sdk, config)?;
    deps.check_function_timeouts(Role::Processor, config)
        .await?;
    let services = Services::build(config, &deps)?;
    let (processor, batcher) = (services.processor, services.batcher);
    let usage = Arc::clone(&deps.usage);
    lambda_runtime::spawn_graceful_shutdown_handler(|| async move { usage.flush().await }).await;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let (processor, usage) = (Arc::clone(&processor), Arc::clone(&deps.usage));
        let (secrets, batcher) = (Arc::clone(&secrets), batcher.clone());
        async move {
            secrets.refresh_if_due().await;
            sluice_processor::handle_any(&processor, batcher.as_deref(), &*usage, event)
                .await
                .map_err(Error::from)
        }
    }))
    .await
}
