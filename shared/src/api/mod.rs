//! The HTTP app: one axum `Router` served by `sluice serve` and by the ingest Lambda alike.
//!
//! Routes: `GET /health`; the OpenAI-compatible `POST /v1/chat/completions`,
//! `POST /v1/embeddings`, `GET /v1/models`; Anthropic's `POST /v1/messages`; async jobs `POST /v1/jobs`, `GET /v1/jobs/{id}`
//! (and `Prefer: respond-async` on the two POST routes above); `GET /v1/usage`;
//! `GET /v1/metrics` (usage rollups as series); `GET /metrics` (Prometheus text);
//! `GET /dashboard` (the live dashboard page); `GET /openapi.json` (the OpenAPI 3.1 document
//! of all these, [`openapi`]); the admin API
//! `GET /admin/usage?tenant=`, `POST|GET /admin/keys`,
//! `DELETE /admin/keys/{id}` ([`Surface`] says which of these a router serves: on AWS the
//! admin API is a separate, IAM-only function). The routes are listed once, in [`routes`], with
//! each handler's OpenAPI operation: the router and the document are both built from it. Every
//! response carries `x-request-id`, every error is OpenAI-shaped, and every request produces
//! one access-log line.

mod access_log;
pub mod admin;
pub mod auth;
pub mod body_log;
mod dashboard;
pub mod error;
mod idempotency;
mod jobs;
mod messages;
mod metrics;
mod openai;
pub mod openapi;
mod usage;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::Clock;
use crate::config::{Config, Secret};
use crate::deps::{Deps, Services};
use crate::gateway::Gateway;
use crate::jobs::Jobs;
use crate::store::SharedStore;
pub use access_log::{Outcome, RequestId};
pub use admin::key_json;
use auth::{AdminKey, KeyAuth, MetricsToken};
pub use messages::to_chat_request;

/// The headers Sluice adds to answers. Named once as constants: a name given as a `&str`
/// is copied into a new allocation every time it is inserted.
pub mod headers {
    use axum::http::HeaderName;

    /// Sluice's id of the request, on every response.
    pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    /// `hit`, `coalesced`, `miss`, `stale` or `bypass`.
    pub const X_SLUICE_CACHE: HeaderName = HeaderName::from_static("x-sluice-cache");
    /// The exact cost of a JSON answer, in USD.
    pub const X_SLUICE_COST_USD: HeaderName = HeaderName::from_static("x-sluice-cost-usd");
    /// The deployment that answered.
    pub const X_SLUICE_PROVIDER: HeaderName = HeaderName::from_static("x-sluice-provider");
    /// The fallback tier of a degraded answer.
    pub const X_SLUICE_FALLBACK: HeaderName = HeaderName::from_static("x-sluice-fallback");
}

/// Everything a handler needs, built once at start-up and shared.
pub struct AppState {
    /// The request pipeline.
    pub gateway: Arc<Gateway>,
    /// Async job submission and lookup.
    pub jobs: Jobs,
    /// Gateway-key checks.
    pub keys: KeyAuth,
    /// The admin key.
    pub admin: AdminKey,
    /// The token `/metrics` requires, if one is configured.
    pub metrics_token: Option<MetricsToken>,
    /// The store (for the admin API).
    pub store: SharedStore,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Largest accepted body, for the 413 message.
    pub max_body_bytes: usize,
    /// Where usage events go.
    pub usage: Arc<dyn crate::metrics::UsageSink>,
    /// Prometheus metrics for `/metrics`, when this process serves them.
    #[cfg(feature = "prometheus")]
    pub prometheus: Option<Arc<crate::metrics::prometheus::Prometheus>>,
    /// Request and response bodies for the access line, when `logging.bodies` is on.
    pub body_log: Option<Arc<body_log::BodyLog>>,
}

impl AppState {
    /// Assembles the state from a validated config, the shared dependencies and the services
    /// built on them (the same services the workers use).
    pub fn new(config: &Config, deps: &Deps, services: &Services, admin_secret: &str) -> Self {
        Self::with_admin_key(config, deps, services, Secret::new(admin_secret))
    }

    /// [`AppState::new`] with an admin key that may be rotated while the process runs
    /// (`crate::secrets`): every check reads its current value.
    pub fn with_admin_key(
        config: &Config,
        deps: &Deps,
        services: &Services,
        admin: Secret,
    ) -> Self {
        // Trait upcasting: the key checker needs only the key port of the store.
        let key_store: Arc<dyn crate::store::KeyStore> = Arc::clone(&deps.store) as _;
        Self {
            gateway: Arc::clone(&services.gateway),
            jobs: services.jobs.clone(),
            keys: KeyAuth::new(
                key_store,
                Arc::clone(&deps.clock),
                crate::num::f64_to_u64(config.server.key_cache_ttl_s * 1000.0),
            ),
            body_log: body_log::BodyLog::from_config(config, &admin).map(Arc::new),
            admin: AdminKey::new(admin),
            metrics_token: config
                .server
                .metrics_token
                .as_ref()
                .map(|t| MetricsToken::new(t.clone())),
            store: Arc::clone(&deps.store),
            clock: Arc::clone(&deps.clock),
            max_body_bytes: config.server.max_body_bytes,
            usage: Arc::clone(&deps.usage),
            #[cfg(feature = "prometheus")]
            prometheus: deps.prometheus.clone(),
        }
    }
}

/// Which routes a router serves. `sluice serve` serves all of them; on AWS the public
/// functions (behind the HTTP API and the open function URL) serve everything but `/admin/*`,
/// and the admin function, reachable only with IAM credentials, serves `/admin/*` alone — so
/// a leaked admin key is not enough to mint keys from the internet (docs/aws.md, "The edge").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Every route (`sluice serve`, tests).
    All,
    /// Every route but `/admin/*`, which answers 404 `admin_not_served`.
    Public,
    /// `/admin/*`, `/v1/metrics` (for the admin key's all-tenant view) and `/health` only.
    Admin,
}

impl Surface {
    /// The surface named by `SLUICE_ROUTES` (`public` or `admin`), for the ingest function;
    /// unset means `public`, so a function deployed without it never serves the admin API.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("SLUICE_ROUTES").as_deref() {
            Ok("public") | Err(_) => Ok(Self::Public),
            Ok("admin") => Ok(Self::Admin),
            Ok(other) => Err(format!(
                "SLUICE_ROUTES must be `public` or `admin`, not `{other}`"
            )),
        }
    }
}

/// The router with every route, the body limit and the access log.
pub fn router(state: Arc<AppState>) -> Router {
    router_for(state, Surface::All)
}

/// Every route `surface` serves, each with its OpenAPI operation (`#[utoipa::path]` on the
/// handler): the one list of routes, from which both the router ([`router_for`]) and the
/// document at `/openapi.json` ([`openapi::ApiDoc`], built from [`Surface::All`]) are made.
pub(crate) fn routes(surface: Surface) -> OpenApiRouter<Arc<AppState>> {
    // On every surface: liveness, and the metrics (the admin function serves them for the
    // admin key's all-tenant view, which only it holds on AWS).
    let mut routes = OpenApiRouter::new()
        .routes(routes!(openai::health))
        .routes(routes!(metrics::metrics));
    if surface != Surface::Admin {
        routes = routes
            .routes(routes!(openapi::openapi_json))
            .routes(routes!(dashboard::dashboard))
            .routes(routes!(openai::models))
            .routes(routes!(openai::chat_completions))
            .routes(routes!(openai::embeddings))
            .routes(routes!(messages::messages))
            .routes(routes!(jobs::create_job))
            .routes(routes!(jobs::get_job))
            .routes(routes!(usage::key_usage))
            .routes(routes!(metrics::prometheus));
    }
    if surface != Surface::Public {
        routes = routes
            .routes(routes!(usage::tenant_usage))
            .routes(routes!(admin::create_key, admin::list_keys))
            .routes(routes!(admin::revoke_key));
    }
    routes
}

/// The router serving `surface`'s routes, with the body limit and the access log.
pub fn router_for(state: Arc<AppState>, surface: Surface) -> Router {
    let max_body = state.max_body_bytes;
    let (routes, _document) = routes(surface).split_for_parts();
    let routes = if surface == Surface::Public {
        routes.fallback(admin::not_served_here)
    } else {
        routes.fallback(openai::no_route)
    };
    let routes = routes
        .method_not_allowed_fallback(openai::wrong_method)
        .layer(DefaultBodyLimit::max(max_body));
    // Only with body logging on: a layer that passes every request through still costs each
    // request its boxed futures and a clone of the service behind it.
    let routes = match &state.body_log {
        Some(body_log) => routes.layer(axum::middleware::from_fn_with_state(
            Arc::clone(body_log),
            body_log::capture,
        )),
        None => routes,
    };
    routes
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            access_log::access_log,
        ))
        .with_state(state)
}
