//! A bare `lambda_runtime` function that echoes its event: the baseline for the Lambda init
//! times in infra/bench/lambda.sh (what the runtime alone costs, before Sluice's own set-up).

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|event: LambdaEvent<Value>| async move {
        Ok::<Value, Error>(event.payload)
    }))
    .await
}
