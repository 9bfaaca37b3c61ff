//! Lambda `housekeeper`: run by a schedule (EventBridge, every minute, reserved concurrency 1
//! in `template.yaml`), one housekeeping pass per invocation (`sluice::housekeeping`): jobs
//! left behind are queued again or failed with a reason, dead-lettered job messages are sent
//! again or cleared, abandoned reservations are given back. It reads indexes, never scans.
//! The event's content is not used; the answer is the pass's report. It calls no provider, so
//! its role cannot read the provider secret: the config's provider keys stay unresolved.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use sluice::config::{ConfigSource, lookup_env};
use sluice::deps::{Deps, Services};
use sluice::housekeeping::Report;

#[tokio::main]
async fn main() -> Result<(), Error> {
    sluice::logging::init();
    let config = ConfigSource::from_env()?.resolve_without_provider_keys(&lookup_env)?;
    let deps = Deps::aws_from_env(&config).await?;
    let housekeeper = Services::build(&config, &deps)?.housekeeper;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| {
        let (housekeeper, usage) = (Arc::clone(&housekeeper), Arc::clone(&deps.usage));
        async move {
            let pass = housekeeper.run_once();
            let report =
                sluice::invocation::complete(event.context.deadline, &*usage, pass).await?;
            Ok::<Report, Error>(report)
        }
    }))
    .await
}
