//! Lambda `ingest`: HTTP events → the same axum router as `sluice serve`, over DynamoDB and
//! SQS. Clients are built once per execution environment.
//!
//! Two modes, chosen by `SLUICE_LAMBDA_RESPONSE`: `buffered` (default) for API Gateway HTTP
//! API events, whose integration takes the whole response at once; `stream` for a function
//! URL with `InvokeMode: RESPONSE_STREAM`, where server-sent events reach the client as the
//! provider produces them. `template.yaml` deploys the binary once in each mode.

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
    let app = api::router(Arc::new(state));
    match std::env::var("SLUICE_LAMBDA_RESPONSE").as_deref() {
        Ok("stream") => lambda_http::run_with_streaming_response(app).await,
        Ok("buffered") | Err(_) => lambda_http::run(app).await,
        Ok(other) => Err(format!(
            "SLUICE_LAMBDA_RESPONSE must be `buffered` or `stream`, not `{other}`"
        )
        .into()),
    }
}
