//! Lambda `ingest`: HTTP events → the same axum router as `sluice serve`, over DynamoDB and
//! SQS. Clients are built once per execution environment.
//!
//! Two modes, chosen by `SLUICE_LAMBDA_RESPONSE`: `buffered` (default) for API Gateway HTTP
//! API events, whose integration takes the whole response at once; `stream` for a function
//! URL with `InvokeMode: RESPONSE_STREAM`, where server-sent events reach the client as the
//! provider produces them. `template.yaml` deploys the binary once in each mode. Either way an
//! invocation ends only once what its request owes is done (`invocation` in the shared crate),
//! and SIGTERM sends the usage events still buffered.
//!
//! Provider keys and the admin key come from Secrets Manager by ARN (`sluice::secrets`), read
//! again on a TTL as requests arrive, so a rotation takes effect without a redeploy.

use std::sync::Arc;

use lambda_http::RequestExt;
use sluice::config::Secret;
use sluice::deps::{Deps, Services};
use sluice::invocation::{self, Delivery, Role};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    sluice::logging::init();
    let sdk = Deps::aws_sdk_config().await;
    let secrets = Arc::new(sluice::secrets::start_from_env(&sdk).await?);
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
    // The admin key's secret, else SLUICE_ADMIN_KEY (under `cargo lambda watch`), else none.
    let admin = secrets.admin_key().unwrap_or_else(|| {
        Secret::new(std::env::var("SLUICE_ADMIN_KEY").unwrap_or_else(|_| {
            // No admin key configured: admin routes stay closed to everyone.
            tracing::warn!(
                "no admin key secret and no SLUICE_ADMIN_KEY; the admin API is disabled"
            );
            sluice::keys::random_alnum(48)
        }))
    });
    let state = sluice::api::AppState::with_admin_key(config, &deps, &services, admin);
    let router = sluice::api::router(Arc::new(state));
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
