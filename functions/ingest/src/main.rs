//! Lambda `ingest`: API Gateway HTTP API (payload v2) events → the same axum router as
//! `sluice serve`, over DynamoDB and SQS. Clients are built once per execution environment.

use std::sync::Arc;

use sluice::api::{self, AppState};
use sluice::config::Config;
use sluice::deps::{Deps, Services};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    sluice::logging::init();
    let config = Config::from_env()?;
    let deps = Deps::aws_from_env(&config).await?;
    let services = Services::build(&config, &deps)?;
    let admin_secret = std::env::var("SLUICE_ADMIN_KEY").unwrap_or_else(|_| {
        // No admin key configured: admin routes stay closed to everyone.
        tracing::warn!("SLUICE_ADMIN_KEY is not set; the admin API is disabled");
        sluice::keys::random_alnum(48)
    });
    let state = AppState::new(&config, &deps, &services, &admin_secret);
    lambda_http::run(api::router(Arc::new(state))).await
}
