//! The functions' secrets on moto's Secrets Manager (real SDK wire protocol): read at a
//! function-style start-up (provider keys into the config, the admin key into the admin check),
//! rotated with `PutSecretValue` and followed after the TTL without a restart, kept when a
//! refresh fails, and never printed: not in a log line (captured without Sluice's redaction,
//! at debug level) nor in `Debug` output.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sluice::api::{self, AppState};
use sluice::clock::ManualClock;
use sluice::config::ConfigSource;
use sluice::deps::{Deps, Services};
use sluice::secrets::{
    FunctionSecrets, RETRY_AFTER_FAILURE_MS, SecretIds, SecretSource, SecretsManager,
};
use sluice_tests::logs::Captured;
use sluice_tests::{FakeUpstream, PROVIDER_KEY, aws, fake_config};

/// The placeholder the config uses for the provider key; nothing in the environment sets it.
const VAR: &str = "SLUICE_TEST_ROTATED_PROVIDER_KEY";

/// Values that do not look like keys, so the log's own key-shape redaction cannot hide them.
const PROVIDER_ONE: &str = "provider-value-one";
const PROVIDER_TWO: &str = "provider-value-two";
const PROVIDER_THREE: &str = "provider-value-three";
const ADMIN_ONE: &str = "admin-value-one";
const ADMIN_TWO: &str = "admin-value-two";

fn provider_secret(key: &str) -> String {
    json!({ VAR: key }).to_string()
}

/// A plain fmt subscriber (no redaction) writing to `logs`, as this thread's default until
/// the guard drops; the tests run on a current-thread runtime, so the server's tasks log
/// there too.
fn install(logs: &Captured) -> tracing::subscriber::DefaultGuard {
    let sink = logs.clone();
    Captured::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish(),
    )
}

/// Creates a secret on moto; answers its ARN.
async fn create_secret(sm: &aws_sdk_secretsmanager::Client, name: &str, value: &str) -> String {
    let out = sm
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
    out.arn().unwrap().to_owned()
}

async fn put_secret(sm: &aws_sdk_secretsmanager::Client, id: &str, value: &str) {
    sm.put_secret_value()
        .secret_id(id)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

/// An ingest function as its `main` builds it, over a SQLite store: secrets, config,
/// services, admin key, router with the refresh layer, served on 127.0.0.1.
struct Function {
    url: String,
    http: reqwest::Client,
    upstream: FakeUpstream,
    clock: ManualClock,
    secrets: Arc<FunctionSecrets>,
    _dir: tempfile::TempDir,
}

impl Function {
    async fn start(ids: SecretIds) -> Self {
        let upstream = FakeUpstream::start().await;
        let text = fake_config(&upstream.base_url).replace(PROVIDER_KEY, &format!("${{{VAR}}}"));
        let clock = ManualClock::new(1_800_000_000_000);
        let reader = Arc::new(SecretsManager::new(aws::secrets_client().await));
        let secrets = FunctionSecrets::start(
            ids,
            ConfigSource::Text {
                text,
                origin: "/opt/sluice.toml".into(),
            },
            reader,
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        let secrets = Arc::new(secrets);
        let config = secrets.config();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sluice.db");
        let deps = Deps::sqlite(db.to_str().unwrap(), config, Arc::new(clock.clone())).unwrap();
        let services = Services::build(config, &deps).unwrap();
        let admin = secrets.admin_key().unwrap();
        let state = AppState::with_admin_key(config, &deps, &services, admin);
        let app = sluice::secrets::refreshing(api::router(Arc::new(state)), Arc::clone(&secrets));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            http: reqwest::Client::new(),
            upstream,
            clock,
            secrets,
            _dir: dir,
        }
    }

    /// `POST /admin/keys` with `admin`: the status, and the new key on 201.
    async fn create_key(&self, admin: &str) -> (u16, Option<String>) {
        let r = self
            .http
            .post(format!("{}/admin/keys", self.url))
            .bearer_auth(admin)
            .json(&json!({"tenant": "t1"}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value = r.json().await.unwrap();
        (status, body["key"].as_str().map(str::to_owned))
    }

    /// A chat completion (a new prompt each time, so the cache never answers); the provider
    /// key the upstream received.
    async fn provider_key_used(&self, key: &str, prompt: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(&json!({"model": "gpt-test", "messages": [{"role": "user", "content": prompt}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let auth = self.upstream.last().headers["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        auth.strip_prefix("Bearer ").unwrap().to_owned()
    }
}

#[tokio::test]
async fn a_function_reads_both_secrets_at_start_and_follows_a_rotation_after_the_ttl() {
    let logs = Captured::default();
    let _guard = install(&logs);
    let sm = aws::secrets_client().await;
    let prefix = aws::unique_prefix();
    let provider = create_secret(
        &sm,
        &format!("{prefix}/providers"),
        &provider_secret(PROVIDER_ONE),
    )
    .await;
    let admin = create_secret(&sm, &format!("{prefix}/admin"), ADMIN_ONE).await;
    let f = Function::start(SecretIds {
        provider: Some(provider.clone()),
        admin_key: Some(admin.clone()),
        ttl: Duration::from_secs(60),
        calls_providers: true,
    })
    .await;

    let (status, key) = f.create_key(ADMIN_ONE).await;
    assert_eq!(status, 201);
    let key = key.unwrap();
    assert_eq!(f.provider_key_used(&key, "one").await, PROVIDER_ONE);

    // Rotated in Secrets Manager: nothing changes before the TTL has passed...
    put_secret(&sm, &provider, &provider_secret(PROVIDER_TWO)).await;
    put_secret(&sm, &admin, ADMIN_TWO).await;
    f.clock.advance_ms(59_000);
    assert_eq!(f.provider_key_used(&key, "two").await, PROVIDER_ONE);
    assert_eq!(f.create_key(ADMIN_ONE).await.0, 201);

    // ...and after it, the next request reads the new values, with no restart.
    f.clock.advance_ms(2_000);
    assert_eq!(f.provider_key_used(&key, "three").await, PROVIDER_TWO);
    assert_eq!(
        f.create_key(ADMIN_ONE).await.0,
        403,
        "the old admin key is refused"
    );
    assert_eq!(f.create_key(ADMIN_TWO).await.0, 201);
    assert_eq!(f.provider_key_used(&key, "four").await, PROVIDER_TWO);

    let text = logs.text();
    assert!(text.contains("provider secret rotated"), "{text}");
    assert!(text.contains("admin key rotated"), "{text}");
    let shown = format!("{:?} {:?}", f.secrets, f.secrets.config());
    for value in [PROVIDER_ONE, PROVIDER_TWO, ADMIN_ONE, ADMIN_TWO] {
        assert!(!text.contains(value), "{value} in the log:\n{text}");
        assert!(!shown.contains(value), "{value} in Debug output:\n{shown}");
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_values_in_use_and_is_tried_again_sooner() {
    let logs = Captured::default();
    let _guard = install(&logs);
    let sm = aws::secrets_client().await;
    let prefix = aws::unique_prefix();
    // By name, as infra/samconfig.toml passes them.
    let (provider, admin) = (format!("{prefix}/providers"), format!("{prefix}/admin"));
    create_secret(&sm, &provider, &provider_secret(PROVIDER_ONE)).await;
    create_secret(&sm, &admin, ADMIN_ONE).await;
    let ttl_ms = 300_000;
    let f = Function::start(SecretIds {
        provider: Some(provider.clone()),
        admin_key: Some(admin.clone()),
        ttl: Duration::from_millis(ttl_ms),
        calls_providers: true,
    })
    .await;
    let key = f.create_key(ADMIN_ONE).await.1.unwrap();

    // Both secrets gone: the refresh after the TTL fails, and the values in use stay.
    for id in [&provider, &admin] {
        sm.delete_secret()
            .secret_id(id)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    }
    f.clock.advance_ms(ttl_ms);
    assert_eq!(
        f.provider_key_used(&key, "after a failure").await,
        PROVIDER_ONE
    );
    assert_eq!(f.create_key(ADMIN_ONE).await.0, 201);
    let text = logs.text();
    assert!(
        text.contains("cannot refresh the provider secret") && text.contains(&provider),
        "{text}"
    );
    assert!(text.contains("cannot refresh the admin key"), "{text}");

    // Back with a new value: read again after the shorter retry interval, not a whole TTL.
    create_secret(&sm, &provider, &provider_secret(PROVIDER_THREE)).await;
    create_secret(&sm, &admin, ADMIN_TWO).await;
    f.clock.advance_ms(RETRY_AFTER_FAILURE_MS - 1);
    assert_eq!(f.provider_key_used(&key, "not yet").await, PROVIDER_ONE);
    f.clock.advance_ms(1);
    assert_eq!(f.provider_key_used(&key, "retried").await, PROVIDER_THREE);
    assert_eq!(f.create_key(ADMIN_TWO).await.0, 201);

    let text = logs.text();
    for value in [PROVIDER_ONE, PROVIDER_THREE, ADMIN_ONE, ADMIN_TWO] {
        assert!(!text.contains(value), "{value} in the log:\n{text}");
    }
}

#[tokio::test]
async fn start_up_fails_naming_the_secret_it_cannot_read_or_the_field_it_cannot_fill() {
    let sm = aws::secrets_client().await;
    let reader: Arc<dyn SecretSource> = Arc::new(SecretsManager::new(sm.clone()));
    let source = ConfigSource::Text {
        text: fake_config("http://127.0.0.1:9/v1").replace(PROVIDER_KEY, &format!("${{{VAR}}}")),
        origin: "/opt/sluice.toml".into(),
    };
    let start = |ids: SecretIds| {
        FunctionSecrets::start(
            ids,
            source.clone(),
            Arc::clone(&reader),
            Arc::new(ManualClock::new(0)),
        )
    };
    let missing = format!("{}/nowhere", aws::unique_prefix());
    let err = start(SecretIds {
        provider: Some(missing.clone()),
        admin_key: None,
        ttl: Duration::from_secs(60),
        calls_providers: true,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cannot read secret") && err.contains(&missing),
        "{err}"
    );

    // A provider secret without the config's variable: the field, the variable, the secret.
    let name = format!("{}/providers", aws::unique_prefix());
    let arn = create_secret(&sm, &name, r#"{"OTHER_KEY":"provider-value-x"}"#).await;
    let err = start(SecretIds {
        provider: Some(arn.clone()),
        admin_key: None,
        ttl: Duration::from_secs(60),
        calls_providers: true,
    })
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains(&arn) && err.contains("providers[0].api_keys[0]") && err.contains(VAR),
        "{err}"
    );
    assert!(!err.contains("provider-value-x"), "{err}");

    // An admin key secret must hold a key (here beside a config with its key written in).
    let empty = create_secret(&sm, &format!("{}/admin", aws::unique_prefix()), " ").await;
    let literal = ConfigSource::Text {
        text: fake_config("http://127.0.0.1:9/v1"),
        origin: "/opt/sluice.toml".into(),
    };
    let ids = SecretIds {
        provider: None,
        admin_key: Some(empty.clone()),
        ttl: Duration::from_secs(60),
        calls_providers: true,
    };
    let err = FunctionSecrets::start(ids, literal, reader, Arc::new(ManualClock::new(0)))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&empty) && err.contains("admin key is empty"),
        "{err}"
    );
}
