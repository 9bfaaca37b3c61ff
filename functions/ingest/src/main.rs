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
//!
//! Provider keys (public functions) and the admin key (admin function) come from Secrets Manager
//! by ARN (`sluice::secrets`), read again on a TTL as requests arrive, so a rotation takes
//! effect without a redeploy.

use std::sync::Arc;

use lambda_http::RequestExt;
use sluice::api::Surface;
use sluice::config::Secret;
use sluice::deps::{Deps, Services};
use sluice::invocation::{self, Delivery, Role};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    sluice::logging::init();
    let sdk = Deps::aws_sdk_config().await;
    let surface = Surface::from_env()?;
    // The admin function calls no provider: its role cannot read the provider secret.
    let calls_providers = surface != Surface::Admin;
    let secrets = Arc::new(sluice::secrets::start_from_env(&sdk, calls_providers).await?);
    let config = secrets.config();
    let deps = Deps::aws_from_env_with(&sdk, config)?;
    let services = Services::build(config, &deps)?;
    let (delivery, role) = match std::env::var("SLUICE_LAMBDA_RESPONSE").as_deref() {
        Ok("stream") => (Delivery::Streamed, Role::IngestStreamed),
        Ok("buffered") | Err(_) => (Delivery::Buffered, Role::IngestBuffered),
        Ok(other) => Err(format!(
            "SLUICE_LAMBDA_RESPONSE must be `buffered` or `stream`, not `{other}`"
        ))?,
    };
    deps.check_function_timeouts(role, config).await?;
    // The admin function: the admin key's secret, else SLUICE_ADMIN_KEY (under `cargo lambda
    // watch`), else none. The public functions serve no admin route and need no admin key.
    let admin = match (surface, secrets.admin_key()) {
        (Surface::Admin | Surface::All, Some(key)) => key,
        (Surface::Admin | Surface::All, None) => {
            Secret::new(std::env::var("SLUICE_ADMIN_KEY").unwrap_or_else(|_| {
                // No admin key configured: admin routes stay closed to everyone.
                tracing::warn!(
                    "no admin key secret and no SLUICE_ADMIN_KEY; the admin API is disabled"
                );
                sluice::keys::random_alnum(48)
            }))
        }
        (Surface::Public, _) => Secret::new(sluice::keys::random_alnum(48)),
    };
    let state = sluice::api::AppState::with_admin_key(config, &deps, &services, admin);
    let router = sluice::api::router_for(Arc::new(state), surface);
    let router = sluice::secrets::refreshing(router, Arc::clone(&secrets));
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
