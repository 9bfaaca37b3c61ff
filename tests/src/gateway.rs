//! Sluice in-process on 127.0.0.1:0, with a manual clock and its own SQLite database.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice::api::{self, AppState};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::deps::{Deps, Services};

/// The admin key every [`TestGateway`] uses.
pub const ADMIN_KEY: &str = "sk-sluice-admin-test";

/// A running gateway. Dropping it stops the server.
pub struct TestGateway {
    /// e.g. `http://127.0.0.1:41234`
    pub url: String,
    /// The bound address.
    pub addr: SocketAddr,
    /// The gateway's clock; advance it to expire cache entries.
    pub clock: ManualClock,
    /// A client for talking to it.
    pub http: reqwest::Client,
    /// Its store, queue, HTTP client and clock.
    pub deps: Deps,
    /// Its gateway, jobs service and processor.
    pub services: Services,
    task: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
        for w in &self.workers {
            w.abort();
        }
    }
}

impl TestGateway {
    /// Starts with a config (TOML text) on a private in-memory database.
    pub async fn start(config_toml: &str) -> Self {
        Self::start_with_db(config_toml, ":memory:").await
    }

    /// Starts with a config on the SQLite database at `db`.
    pub async fn start_with_db(config_toml: &str, db: &str) -> Self {
        let config = Config::parse(config_toml, "test config", &|_| None).unwrap();
        Self::start_config(&config, db).await
    }

    /// Starts with the built-in offline config (`sluice serve` without `--config`).
    pub async fn start_builtin() -> Self {
        Self::start_config(&Config::builtin(), ":memory:").await
    }

    /// Starts with a parsed config on the SQLite database at `db` (store and job queue),
    /// with `config.jobs.workers` job workers.
    pub async fn start_config(config: &Config, db: &str) -> Self {
        let clock = ManualClock::new(1_800_000_000_000);
        let deps = Deps::sqlite(db, config, Arc::new(clock.clone()))
            .unwrap()
            .with_local_metrics(&config.metrics);
        Self::start_deps(config, deps, clock).await
    }

    /// Starts like [`TestGateway::start`], keeping a copy of every usage event.
    pub async fn start_recording(config_toml: &str) -> (Self, Arc<crate::RecordingSink>) {
        let config = Config::parse(config_toml, "test config", &|_| None).unwrap();
        let clock = ManualClock::new(1_800_000_000_000);
        let mut deps = Deps::sqlite(":memory:", &config, Arc::new(clock.clone()))
            .unwrap()
            .with_local_metrics(&config.metrics);
        let recording = crate::RecordingSink::new(Arc::clone(&deps.usage));
        deps.usage = recording.clone();
        (Self::start_deps(&config, deps, clock).await, recording)
    }

    /// Starts over given dependencies (e.g. DynamoDB and SQS on moto).
    pub async fn start_deps(config: &Config, deps: Deps, clock: ManualClock) -> Self {
        Self::start_wrapped(config, deps, clock, |app| app).await
    }

    /// Starts like [`TestGateway::start_deps`], each request run as the ingest function runs
    /// it on Lambda (`invocation::settle_before_answering`): its answer arrives only once the
    /// work it owes is done (the cache entry written after the reply, …) and its usage events
    /// are flushed, so what one request costs can be counted as soon as it is answered.
    pub async fn start_deps_as_lambda(config: &Config, deps: Deps, clock: ManualClock) -> Self {
        let usage = Arc::clone(&deps.usage);
        Self::start_wrapped(config, deps, clock, move |app| {
            sluice::invocation::settle_before_answering(
                app,
                usage,
                sluice::invocation::Delivery::Buffered,
                |_| None,
            )
        })
        .await
    }

    async fn start_wrapped(
        config: &Config,
        deps: Deps,
        clock: ManualClock,
        wrap: impl FnOnce(axum::Router) -> axum::Router,
    ) -> Self {
        let services = Services::build(config, &deps).unwrap();
        let state = AppState::new(config, &deps, &services, ADMIN_KEY);
        let app = wrap(api::router(Arc::new(state)));
        let mut workers = Vec::new();
        for _ in 0..config.jobs.workers {
            workers.push(tokio::spawn(sluice::jobs::worker::run(
                Arc::clone(&services.processor),
                Arc::clone(&deps.queue),
                std::time::Duration::from_millis(config.jobs.batch_window_ms),
            )));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            clock,
            http: reqwest::Client::new(),
            deps,
            services,
            task,
            workers,
        }
    }

    /// Creates a gateway key for `tenant` through the admin API and returns its secret.
    pub async fn create_key(&self, tenant: &str) -> String {
        let created = self.admin_create(json!({ "tenant": tenant })).await;
        created["key"].as_str().unwrap().to_owned()
    }

    /// `POST /admin/keys` with the admin key; panics unless it answers 201.
    pub async fn admin_create(&self, spec: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/admin/keys", self.url))
            .bearer_auth(ADMIN_KEY)
            .json(&spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "admin create failed");
        r.json().await.unwrap()
    }

    /// A GET of `path` with a gateway key, its JSON body (whatever the status).
    pub async fn get_json(&self, path: &str, key: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET /v1/usage` with a gateway key: the key's limits and spend as JSON.
    pub async fn usage(&self, key: &str) -> Value {
        self.get_json("/v1/usage", key).await
    }

    /// A POST of a JSON body with a gateway key, returning the raw response.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// A chat completion with one user message.
    pub async fn chat(&self, key: &str, model: &str, prompt: &str) -> reqwest::Response {
        self.post(
            "/v1/chat/completions",
            key,
            &json!({"model": model, "messages": [{"role": "user", "content": prompt}]}),
        )
        .await
    }
}
