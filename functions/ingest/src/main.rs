//! Lambda `ingest`: HTTP events → the same axum router as `sluice serve`, over DynamoDB and
//! SQS. Clients are built once per execution environment.
//!
//! Two modes, chosen by `SLUICE_LAMBDA_RESPONSE`: `buffered` (default) for API Gateway HTTP
//! API events, whose integration takes the whole response at once; `stream` for a function
//! URL with `InvokeMode: RESPONSE_STREAM`, where server-sent events reach the client as the
//! provider produces them. `template.yaml` deploys the binary once in each mode.
//!
//! `SLUICE_ROUTES` picks the routes: `public` (default) serves the API but answers `/admin/*`
//! with 404, `admin` serves only `/admin/*` (the IAM-only admin function). A buffered answer
//! over Lambda's 6 MB payload limit becomes a 413 that says what to do instead. Either way an
//! invocation ends only once what its request owes is done (`invocation` in the shared crate),
//! and SIGTERM sends the usage events still buffered.

use std::sync::Arc;

use lambda_http::RequestExt;
use sluice::api::Surface;
use sluice::config::Config;
use sluice::deps::{Deps, Services};
use sluice::invocation::{self, Delivery, Role};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    sluice::logging::init();
    let config = Config::from_env()?;
    let deps = Deps::aws_from_env(&config).await?;
    let services = Services::build(&config, &deps)?;
    let (delivery, role) = match std::env::var("SLUICE_LAMBDA_RESPONSE").as_deref() {
        Ok("stream") => (Delivery::Streamed, Role::IngestStreamed),
        Ok("buffered") | Err(_) => (Delivery::Buffered, Role::IngestBuffered),
        Ok(other) => Err(format!(
            "SLUICE_LAMBDA_RESPONSE must be `buffered` or `stream`, not `{other}`"
        ))?,
    };
    deps.check_function_timeouts(role, &config).await?;
    let surface = Surface::from_env()?;
    let admin_secret = match std::env::var("SLUICE_ADMIN_KEY") {
        Ok(key) if surface == Surface::Admin => key,
        // The public functions serve no admin route and need no admin key.
        _ if surface == Surface::Public => sluice::keys::random_alnum(48),
        _ => {
            // No admin key configured: admin routes stay closed to everyone.
            tracing::warn!("SLUICE_ADMIN_KEY is not set; the admin API is disabled");
            sluice::keys::random_alnum(48)
        }
    };
    let state = sluice::api::AppState::new(&config, &deps, &services, &admin_secret);
    let router = sluice::api::router_for(Arc::new(state), surface);
    let app = invocation::settle_before_answering(router, Arc::clone(&deps.usage), delivery, |r| {
        r.lambda_context_ref().map(|c| c.deadline)
    });
    let usage = Arc::clone(&deps.usage);
    lambda_runtime::spawn_graceful_shutdown_handler(|| async move { usage.flush().await }).await;
    match delivery {
        Delivery::Streamed => lambda_http::run_with_streaming_response(app).await,
        Delivery::Buffered => lambda_http::run(app).await,
    }
}
