//! Sluice in-process on 127.0.0.1:0, with a manual clock and its own SQLite database.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use sluice::api::{self, AppState};
use sluice::clock::ManualClock;
use sluice::config::Config;
use sluice::store::SharedStore;
use sluice::store::sqlite::SqliteStore;

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
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.task.abort();
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

    /// Starts with a parsed config on the SQLite database at `db`.
    pub async fn start_config(config: &Config, db: &str) -> Self {
        let store: SharedStore = Arc::new(SqliteStore::open(db).unwrap());
        let clock = ManualClock::new(1_800_000_000_000);
        let state = AppState::new(
            config,
            store,
            sluice::gateway::http_client().unwrap(),
            Arc::new(clock.clone()),
            ADMIN_KEY,
        );
        let app = api::router(Arc::new(state));
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
            task,
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
