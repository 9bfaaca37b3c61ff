//! Typed configuration: one TOML file, parsed once at start-up.
//!
//! Parsing happens in three steps so that every error names the field it is about:
//! TOML syntax (with line and column), `${ENV}` interpolation inside string values (with the
//! field path), then typed deserialization with `deny_unknown_fields` (with the field path).
//! [`Config::validate`] then checks what types cannot: references between sections, weights,
//! prices, URLs. Without a file, [`Config::builtin`] serves the offline `mock` provider.
//!
//! This module owns the whole ([`Config`], its sources, parsing, secrets and [`ConfigError`]);
//! each section is a module with its types and its own `validate`: `server`, `cache`, `jobs`
//! (with `[jobs.batch_api]`), `limits` (with `[[tenants]]`), `providers`, `models`,
//! `routing`, `metrics`, `logging`. `pattern` holds the compiled regexes the config carries,
//! `prices` the price type and built-in table, `pricing` which price a model is billed at,
//! `env` the `${VAR}` interpolation and `secret` the rotatable secret values.

mod cache;
mod env;
mod jobs;
mod limits;
mod logging;
mod metrics;
mod models;
mod pattern;
mod prices;
mod pricing;
mod providers;
mod routing;
mod secret;
mod server;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use cache::CacheConfig;
pub use jobs::{BatchApiConfig, JobsConfig};
pub use limits::{LimitsConfig, TenantConfig};
pub use logging::LoggingConfig;
pub use metrics::MetricsConfig;
pub use models::{DeploymentConfig, ModelConfig, OnLimit, Routing, RuleConfig};
pub use pattern::Pattern;
pub use prices::{
    Listed, LongContext, Matched, Price, PriceTable, TableEntry, default_price, lookup, price_table,
};
pub use pricing::PriceOrigin;
pub use providers::{ProviderConfig, ProviderKind};
pub use routing::RoutingConfig;
pub use secret::Secret;
pub use server::ServerConfig;

/// Why a configuration could not be loaded. Every message names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// A `${VAR}` placeholder names an environment variable that is not set.
    #[error("{origin}: {field}: environment variable {var} is not set")]
    MissingEnv {
        origin: String,
        field: String,
        var: String,
    },
    /// A `${` without its closing `}`.
    #[error("{origin}: {field}: unterminated ${{…}} placeholder")]
    BadPlaceholder { origin: String, field: String },
    /// A field has the wrong type, an unknown name or a bad value.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
    /// Both `SLUICE_CONFIG` and `SLUICE_CONFIG_TOML` are set, so which one is meant is unclear.
    #[error("SLUICE_CONFIG ({path}) and SLUICE_CONFIG_TOML are both set; set one of them")]
    TwoSources { path: String },
}

/// A [`ConfigError::Invalid`]: `field` of the config read from `origin` is wrong.
fn invalid(origin: &str, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        field: field.into(),
        message: message.into(),
    }
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Response cache settings.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Upstream providers and their API keys.
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Public model names and the deployments that serve them.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
    /// Async jobs: queue, workers, callbacks.
    #[serde(default)]
    pub jobs: JobsConfig,
    /// Gateway-wide limits: the global spending cap and how reservations behave.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Per-tenant rate limits and spending caps (keys carry their own).
    #[serde(default)]
    pub tenants: Vec<TenantConfig>,
    /// Retries, deadlines and circuit breaking.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Usage events and rollups.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// What the request log may hold beyond ids and numbers: bodies, and what to redact.
    #[serde(default)]
    pub logging: LoggingConfig,
}

/// Resolves `${VAR}` from the environment (`sluice serve`, and the functions for what their
/// secrets do not hold).
pub fn lookup_env(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

/// Resolves `${VAR}` from the environment first, then from a secret holding a JSON object of
/// strings (`{"OPENAI_API_KEY":"sk-..."}`), as the functions do with their provider secret.
pub fn lookup_env_then_secret(secret_json: &str) -> impl Fn(&str) -> Option<String> + '_ {
    move |var| lookup_env(var).or_else(|| lookup_secret(secret_json, var))
}

/// `var`'s string value in a secret holding a JSON object (`{"OPENAI_API_KEY":"sk-..."}`).
pub(crate) fn lookup_secret(secrets_json: &str, var: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(secrets_json).ok()?;
    parsed.get(var)?.as_str().map(str::to_owned)
}

/// Whether `field` (a path such as `providers[0].api_keys[1]`) holds a provider API key.
fn is_provider_key(field: &str) -> bool {
    field.starts_with("providers[") && field.contains("].api_keys[")
}

/// Where a config's text comes from, kept after start-up so that the same text can be
/// resolved again when the secret values behind its `${VAR}` placeholders change
/// (`crate::secrets`). No `Debug`: the text may hold literal keys.
#[derive(Clone)]
pub enum ConfigSource {
    /// No file: [`Config::builtin`].
    Builtin,
    /// TOML text and where it was read from (a path, or `SLUICE_CONFIG_TOML`), for errors.
    Text { text: String, origin: String },
}

impl ConfigSource {
    /// The file named by `SLUICE_CONFIG`, else the text in `SLUICE_CONFIG_TOML`, else the
    /// built-in config (see [`Config::from_env`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_sources(
            std::env::var_os("SLUICE_CONFIG").map(PathBuf::from),
            std::env::var("SLUICE_CONFIG_TOML").ok(),
        )
    }

    /// [`ConfigSource::from_env`] over the two variables' values.
    fn from_sources(path: Option<PathBuf>, text: Option<String>) -> Result<Self, ConfigError> {
        let path = path.filter(|p| !p.as_os_str().is_empty());
        let text = text.filter(|t| !t.trim().is_empty());
        match (path, text) {
            (Some(path), Some(_)) => Err(ConfigError::TwoSources {
                path: path.display().to_string(),
            }),
            (Some(path), None) => {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: origin.clone(),
                    source,
                })?;
                Ok(Self::Text { text, origin })
            }
            (None, Some(text)) => Ok(Self::Text {
                text,
                origin: "SLUICE_CONFIG_TOML".into(),
            }),
            (None, None) => Ok(Self::Builtin),
        }
    }

    /// Parses the text, `lookup` resolving its placeholders.
    pub fn resolve(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        match self {
            Self::Builtin => Ok(Config::builtin()),
            Self::Text { text, origin } => Config::parse(text, origin, lookup),
        }
    }

    /// Parses the text for a process that never calls a provider (the housekeeper, whose role
    /// cannot read the provider secret): a provider key that `lookup` cannot resolve keeps
    /// its `${VAR}` text instead of failing. Every other placeholder must resolve.
    pub fn resolve_without_provider_keys(
        &self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        match self {
            Self::Builtin => Ok(Config::builtin()),
            Self::Text { text, origin } => {
                Config::parse_keeping_unresolved(text, origin, lookup, &is_provider_key)
            }
        }
    }
}

impl Config {
    /// Reads, interpolates, parses and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        ConfigSource::from_sources(Some(path.to_owned()), None)?.resolve(&lookup_env)
    }

    /// The config of a Lambda function: the file named by `SLUICE_CONFIG` (on AWS
    /// `/opt/sluice.toml`, from the template's config layer; `sluice serve` reads the same
    /// variable), else the TOML text in `SLUICE_CONFIG_TOML` (handy under `cargo lambda watch`),
    /// else the built-in config. Empty values count as unset; both set is an error.
    /// Placeholders resolve from the environment; a function with a provider secret resolves
    /// them through `crate::secrets` instead.
    pub fn from_env() -> Result<Self, ConfigError> {
        ConfigSource::from_env()?.resolve(&lookup_env)
    }

    /// [`Config::from_env`] over the two variables' values.
    #[cfg(test)]
    fn from_sources(path: Option<PathBuf>, text: Option<String>) -> Result<Self, ConfigError> {
        ConfigSource::from_sources(path, text)?.resolve(&lookup_env)
    }

    /// Every secret in the config with its field path, in the order of the text.
    pub fn secrets(&self) -> Vec<(String, &Secret)> {
        let mut all = Vec::new();
        for (i, p) in self.providers.iter().enumerate() {
            for (k, key) in p.api_keys.iter().enumerate() {
                all.push((format!("providers[{i}].api_keys[{k}]"), key));
            }
        }
        if let Some(s) = &self.jobs.callback_secret {
            all.push(("jobs.callback_secret".to_owned(), s));
        }
        if let Some(s) = &self.server.metrics_token {
            all.push(("server.metrics_token".to_owned(), s));
        }
        all
    }

    /// Gives this config's secrets, and every clone of them in use, the values in `newer`: the
    /// same text resolved again with rotated secret values. Answers the fields whose value
    /// changed (names only), or why the two configs' secrets do not line up.
    pub fn take_secret_values(&self, newer: &Config) -> Result<Vec<String>, String> {
        let (current, fresh) = (self.secrets(), newer.secrets());
        let fields = |s: &[(String, &Secret)]| s.iter().map(|(f, _)| f.clone()).collect::<Vec<_>>();
        if fields(&current) != fields(&fresh) {
            return Err(format!(
                "the secrets moved: {:?} became {:?}",
                fields(&current),
                fields(&fresh)
            ));
        }
        Ok(current
            .iter()
            .zip(&fresh)
            .filter(|((_, old), (_, new))| old.replace(&new.expose()))
            .map(|((field, _), _)| field.clone())
            .collect())
    }

    /// Parses TOML text; `lookup` resolves `${VAR}` placeholders. `origin` names the source in errors.
    pub fn parse(
        text: &str,
        origin: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Self::parse_keeping_unresolved(text, origin, lookup, &|_| false)
    }

    /// [`Config::parse`], except that a placeholder `lookup` cannot resolve in a field for
    /// which `keep` holds stays as written.
    fn parse_keeping_unresolved(
        text: &str,
        origin: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        keep: &dyn Fn(&str) -> bool,
    ) -> Result<Self, ConfigError> {
        let mut value: toml::Value = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        env::interpolate(&mut value, origin, lookup, keep)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            let error = e.into_inner();
            // toml ends every error raised inside a table with "in `models.rules`"; a bad
            // pattern is named by `field` (with its indices) and says only what is wrong.
            let message = if error.message().starts_with(pattern::NOT_A_REGEX) {
                error.message().to_owned()
            } else {
                error.to_string()
            };
            ConfigError::Invalid {
                origin: origin.to_owned(),
                field: if field == "." {
                    "(top level)".into()
                } else {
                    field
                },
                message,
            }
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    /// The configuration used when no file is given: the offline `mock` provider behind a few
    /// familiar model names, so `sluice serve` works on a machine without network.
    pub fn builtin() -> Self {
        let mock = |name: &str, upstream: &str| ModelConfig {
            name: name.into(),
            aliases: Vec::new(),
            deployments: vec![DeploymentConfig {
                provider: "mock".into(),
                model: upstream.into(),
                weight: 1,
                rpm: None,
                tpm: None,
            }],
            price: None,
            cache_ttl_s: None,
            max_output_tokens: None,
            on_limit: OnLimit::Reject,
            routing: Routing::Weighted,
            fallbacks: Vec::new(),
            stale_fallback: true,
            rules: Vec::new(),
            fallback_message: None,
        };
        let mut fast = mock("gpt-4o-mini", "mock-chat");
        fast.aliases.push("fast".into());
        Self {
            server: ServerConfig::default(),
            cache: CacheConfig::default(),
            jobs: JobsConfig::default(),
            limits: LimitsConfig::default(),
            tenants: Vec::new(),
            routing: RoutingConfig::default(),
            metrics: MetricsConfig::default(),
            logging: LoggingConfig::default(),
            providers: vec![ProviderConfig {
                name: "mock".into(),
                kind: ProviderKind::Mock,
                base_url: None,
                api_keys: Vec::new(),
            }],
            models: vec![
                fast,
                mock("gpt-4o", "mock-chat"),
                mock("text-embedding-3-small", "mock-embedding"),
            ],
        }
    }

    /// Checks what the types cannot: names are unique, references resolve, numbers make sense.
    /// Each section checks itself; the first error found is the answer.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.server.validate(origin)?;
        self.cache.validate(origin)?;
        self.metrics.validate(origin)?;
        self.jobs.validate(origin)?;
        self.routing.validate(origin)?;
        self.limits.validate(origin)?;
        self.logging.validate(origin)?;
        TenantConfig::validate_all(&self.tenants, origin)?;
        let providers = ProviderConfig::validate_all(&self.providers, origin)?;
        ModelConfig::validate_all(&self.models, &providers, origin)?;
        self.validate_capped_models_are_priced(origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[providers]]
name = "fake"
kind = "openai"
base_url = "http://127.0.0.1:9999/v1"
api_keys = ["${FAKE_KEY}"]

[[models]]
name = "gpt-test"
deployments = [{ provider = "fake", model = "gpt-4o-mini", weight = 1 }]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }
cache_ttl_s = 3600
"#;

    fn env(var: &str) -> Option<String> {
        (var == "FAKE_KEY").then(|| "sk-fake".to_owned())
    }

    #[test]
    fn the_issue_example_parses_with_interpolated_secret() {
        let c = Config::parse(EXAMPLE, "example.toml", &env).unwrap();
        assert_eq!(c.providers[0].api_keys, vec![Secret::new("sk-fake")]);
        assert!(!format!("{c:?}").contains("sk-fake"));
        assert_eq!(c.models[0].cache_ttl_s, Some(3600));
        assert_eq!(c.models[0].deployments[0].weight, 1);
    }

    #[test]
    fn a_missing_env_var_names_the_field() {
        let err = Config::parse(EXAMPLE, "example.toml", &|_| None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("providers[0].api_keys[0]"), "{msg}");
        assert!(msg.contains("FAKE_KEY"), "{msg}");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_path() {
        let text = EXAMPLE.replace("weight = 1", "weigth = 1");
        let msg = Config::parse(&text, "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("models[0].deployments[0]"), "{msg}");
        assert!(msg.contains("weigth"), "{msg}");
    }

    #[test]
    fn a_wrong_type_is_named_with_its_path() {
        let text = EXAMPLE.replace("cache_ttl_s = 3600", "cache_ttl_s = \"long\"");
        let msg = Config::parse(&text, "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("models[0].cache_ttl_s"), "{msg}");
    }

    #[test]
    fn a_dangling_provider_reference_is_named() {
        let text = EXAMPLE.replace("provider = \"fake\"", "provider = \"nope\"");
        let msg = Config::parse(&text, "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("models[0].deployments[0].provider") && msg.contains("nope"),
            "{msg}"
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let msg = Config::parse("[[providers]\nname=", "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("x.toml") && msg.contains("line"), "{msg}");
    }

    #[test]
    fn logging_defaults_to_no_bodies_and_checks_redact_patterns() {
        let c = Config::parse(EXAMPLE, "x.toml", &env).unwrap();
        assert!(!c.logging.bodies && c.logging.redact.is_empty());

        let text = format!("{EXAMPLE}\n[logging]\nbodies = true\nredact = [\"card-\\\\d{{4}}\"]\n");
        let c = Config::parse(&text, "x.toml", &env).unwrap();
        assert!(c.logging.bodies);
        assert!(c.logging.redact[0].regex().is_match("card-1234"));

        let bad = format!("{EXAMPLE}\n[logging]\nredact = [\"ok\", \"(unclosed\"]\n");
        let msg = Config::parse(&bad, "x.toml", &env).unwrap_err().to_string();
        assert!(
            msg.contains("logging.redact[1]") && msg.contains("not a valid regex"),
            "{msg}"
        );

        let unknown = format!("{EXAMPLE}\n[logging]\nheaders = true\n");
        let msg = Config::parse(&unknown, "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("logging") && msg.contains("headers"), "{msg}");
    }

    #[test]
    fn a_bad_rule_pattern_is_a_config_error_naming_its_field() {
        let text = format!(
            "{EXAMPLE}rules = [{{ pattern = \"(?i)refund\", reply = \"a\" }}, \
             {{ pattern = \"(unclosed\", reply = \"b\" }}]\n"
        );
        let msg = Config::parse(&text, "x.toml", &env)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "x.toml: models[0].rules[1].pattern: not a valid regex: found open group without \
             closing ')'"
        );
        let good = format!("{EXAMPLE}rules = [{{ pattern = \"(?i)refund\", reply = \"a\" }}]\n");
        let c = Config::parse(&good, "x.toml", &env).unwrap();
        assert!(
            c.models[0].rules[0]
                .pattern
                .regex()
                .is_match("a REFUND please")
        );
    }

    #[test]
    fn server_limits_have_defaults_and_are_checked() {
        let c = Config::parse(EXAMPLE, "x.toml", &env).unwrap();
        let s = &c.server;
        assert_eq!(
            (
                s.header_read_timeout_s,
                s.body_read_timeout_s,
                s.idle_timeout_s
            ),
            (10.0, 30.0, 60.0)
        );
        assert_eq!(s.max_connections, 4096);
        assert!(s.metrics_token.is_none());
        let with =
            |extra: &str| Config::parse(&format!("[server]\n{extra}\n{EXAMPLE}"), "x.toml", &env);
        let c = with(
            "header_read_timeout_s = 2\nmax_connections = 50\nmetrics_token = \"${FAKE_KEY}\"",
        )
        .unwrap();
        assert_eq!(c.server.header_read_timeout_s, 2.0);
        assert_eq!(c.server.max_connections, 50);
        assert_eq!(c.server.metrics_token.unwrap().expose().as_ref(), "sk-fake");
        for (extra, field) in [
            ("header_read_timeout_s = 0", "server.header_read_timeout_s"),
            ("body_read_timeout_s = -1", "server.body_read_timeout_s"),
            ("idle_timeout_s = 1e12", "server.idle_timeout_s"),
            ("max_connections = 0", "server.max_connections"),
            ("metrics_token = \" \"", "server.metrics_token"),
            ("header_timeout_s = 5", "header_timeout_s"),
        ] {
            let msg = with(extra).unwrap_err().to_string();
            assert!(msg.contains(field), "{extra}: {msg}");
        }
    }

    #[test]
    fn coalesce_wait_has_a_default_and_is_checked() {
        let c = Config::parse(EXAMPLE, "x.toml", &env).unwrap();
        assert_eq!(c.cache.coalesce_wait_s, 30.0);
        let with =
            |extra: &str| Config::parse(&format!("[cache]\n{extra}\n{EXAMPLE}"), "x.toml", &env);
        assert_eq!(
            with("coalesce_wait_s = 0").unwrap().cache.coalesce_wait_s,
            0.0
        );
        assert_eq!(
            with("coalesce_wait_s = 2.5").unwrap().cache.coalesce_wait_s,
            2.5
        );
        for bad in ["-1", "1e12", "nan", "\"long\""] {
            let msg = with(&format!("coalesce_wait_s = {bad}"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("cache.coalesce_wait_s"), "{bad}: {msg}");
        }
    }

    #[test]
    fn builtin_config_is_valid() {
        Config::builtin().validate("builtin").unwrap();
    }

    #[test]
    fn well_known_models_get_default_prices() {
        let c = Config::parse(
            &EXAMPLE.replace(
                "price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }",
                "",
            ),
            "x.toml",
            &env,
        )
        .unwrap();
        let p = Config::price_of(&c.models[0]).unwrap();
        assert_eq!(p.input_per_mtok, 0.15);
    }

    const UNPRICED: &str = r#"
[[providers]]
name = "p"
kind = "mock"

[[models]]
name = "priced"
deployments = [{ provider = "p", model = "gpt-4o-mini" }]

[[models]]
name = "custom"
deployments = [{ provider = "p", model = "my-finetune" }]
"#;

    #[test]
    fn a_cap_in_config_needs_a_price_for_every_model() {
        let none = |_: &str| None;
        Config::parse(UNPRICED, "x.toml", &none).unwrap();
        for (cap, named) in [
            (
                "[limits]\nglobal_budget_usd = 10.0\n",
                "limits.global_budget_usd",
            ),
            (
                "[[tenants]]\nname = \"t\"\nbudget_usd = 1.0\nperiod = \"day\"\n",
                "tenants[0].budget_usd",
            ),
        ] {
            let err = Config::parse(&format!("{UNPRICED}\n{cap}"), "x.toml", &none)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("x.toml: models[1].price: required"),
                "{err}"
            );
            assert!(err.contains(named) && err.contains("`custom`"), "{err}");
            let priced = UNPRICED.replace(
                "model = \"my-finetune\" }]",
                "model = \"my-finetune\" }]\nprice = { input_per_mtok = 1, output_per_mtok = 2 }",
            );
            Config::parse(&format!("{priced}\n{cap}"), "x.toml", &none).unwrap();
        }
    }

    #[test]
    fn the_price_origin_says_where_price_of_finds_a_price() {
        let text = r#"
[[providers]]
name = "p"
kind = "mock"

[[models]]
name = "own"
deployments = [{ provider = "p", model = "my-finetune" }]
price = { input_per_mtok = 1, output_per_mtok = 2 }

[[models]]
name = "gpt-4o-mini-2024-07-18"
deployments = [{ provider = "p", model = "my-finetune" }]

[[models]]
name = "public"
deployments = [{ provider = "p", model = "o4-mini" }, { provider = "p", model = "claude-haiku-4-5-20251001" }]

[[models]]
name = "custom"
deployments = [{ provider = "p", model = "o4-mini" }, { provider = "p", model = "my-finetune" }]
"#;
        let c = Config::parse(text, "x.toml", &|_| None).unwrap();
        let origins: Vec<PriceOrigin> = c.models.iter().map(Config::price_origin).collect();
        assert!(matches!(origins[0], PriceOrigin::Config));
        assert!(
            matches!(&origins[1], PriceOrigin::Table(l) if l.entry.name == "gpt-4o-mini" && l.matched == Matched::Snapshot)
        );
        let PriceOrigin::Deployments(d) = &origins[2] else {
            panic!("{:?}", origins[2])
        };
        assert_eq!(d[1].1.entry.name, "claude-haiku-4-5");
        assert!(matches!(origins[3], PriceOrigin::Unpriced));
        for (m, origin) in c.models.iter().zip(&origins) {
            assert_eq!(
                Config::price_of(m).is_some(),
                !matches!(origin, PriceOrigin::Unpriced)
            );
        }
        // The dearest of o4-mini ($1.10/$4.40) and Haiku 4.5 ($1/$5), component by component.
        let p = Config::price_of(&c.models[2]).unwrap();
        assert_eq!((p.input_per_mtok, p.output_per_mtok), (1.10, 5.00));
        assert_eq!(p.cache_write_1h_per_mtok, Some(2.00));
    }

    #[test]
    fn a_model_is_priced_as_its_most_expensive_deployment() {
        let text = r#"
[[providers]]
name = "p"
kind = "mock"

[[models]]
name = "mixed"
deployments = [{ provider = "p", model = "gpt-4o-mini" }, { provider = "p", model = "claude-opus-4-1" }]

[[models]]
name = "partly-known"
deployments = [{ provider = "p", model = "gpt-4o-mini" }, { provider = "p", model = "my-finetune" }]
"#;
        let c = Config::parse(text, "x.toml", &|_| None).unwrap();
        let p = Config::price_of(&c.models[0]).unwrap();
        assert_eq!((p.input_per_mtok, p.output_per_mtok), (15.0, 75.0));
        assert!(
            Config::price_of(&c.models[1]).is_none(),
            "a deployment without a price leaves the model unpriced"
        );
    }

    /// The config `sam deploy` ships to the functions (the template's config layer).
    const AWS_CONFIG: &str = include_str!("../../../infra/aws/config/sluice.toml");

    #[test]
    fn the_aws_config_is_valid_with_the_keys_from_the_provider_secret() {
        // What the functions see on AWS: the provider secret's JSON object (crate::secrets).
        let secret = r#"{"OPENAI_API_KEY":"sk-o","ANTHROPIC_API_KEY":"sk-a","GEMINI_API_KEY":"g"}"#;
        let c = Config::parse(AWS_CONFIG, "sluice.toml", &|v| lookup_secret(secret, v)).unwrap();
        let kinds: Vec<_> = c.providers.iter().map(|p| p.kind.name()).collect();
        assert_eq!(kinds, ["openai", "anthropic", "gemini"]);
        let keys: Vec<_> = c
            .providers
            .iter()
            .map(|p| p.api_keys[0].expose().to_string())
            .collect();
        assert_eq!(keys, ["sk-o", "sk-a", "g"]);
        // The gateway-wide cap needs a price for every model: all come from the built-in table.
        assert!(c.limits.global_budget_usd.is_some());
        for m in &c.models {
            assert!(Config::price_of(m).is_some(), "{} has no price", m.name);
        }
    }

    #[test]
    fn the_aws_config_without_a_key_names_the_field_and_the_variable() {
        let secret = r#"{"OPENAI_API_KEY":"sk-o","ANTHROPIC_API_KEY":"sk-a"}"#;
        let msg = Config::parse(AWS_CONFIG, "/opt/sluice.toml", &|v| {
            lookup_secret(secret, v)
        })
        .unwrap_err()
        .to_string();
        assert!(msg.contains("/opt/sluice.toml"), "{msg}");
        assert!(
            msg.contains("providers[2].api_keys[0]") && msg.contains("GEMINI_API_KEY"),
            "{msg}"
        );
    }

    #[test]
    fn a_rotation_reaches_every_clone_of_the_configs_secrets_and_names_only_the_fields() {
        let source = ConfigSource::Text {
            text: AWS_CONFIG.to_owned(),
            origin: "sluice.toml".into(),
        };
        let v1 = r#"{"OPENAI_API_KEY":"sk-o1","ANTHROPIC_API_KEY":"sk-a1","GEMINI_API_KEY":"g1"}"#;
        let v2 = r#"{"OPENAI_API_KEY":"sk-o2","ANTHROPIC_API_KEY":"sk-a1","GEMINI_API_KEY":"g1"}"#;
        let live = source.resolve(&|v| lookup_secret(v1, v)).unwrap();
        let in_use = live.providers[0].api_keys[0].clone();
        let newer = source.resolve(&|v| lookup_secret(v2, v)).unwrap();
        let changed = live.take_secret_values(&newer).unwrap();
        assert_eq!(changed, ["providers[0].api_keys[0]"]);
        assert_eq!(&*in_use.expose(), "sk-o2");
        assert_eq!(&*live.providers[1].api_keys[0].expose(), "sk-a1");
        assert!(live.take_secret_values(&newer).unwrap().is_empty());

        // A config whose secrets do not line up (another text) changes nothing.
        let other = Config::parse(EXAMPLE, "x.toml", &|_| Some("sk-x".into())).unwrap();
        let err = live.take_secret_values(&other).unwrap_err();
        assert!(!err.contains("sk-"), "{err}");
        assert_eq!(&*in_use.expose(), "sk-o2");
    }

    #[test]
    fn without_provider_keys_only_the_keys_may_stay_unresolved() {
        let source = ConfigSource::Text {
            text: AWS_CONFIG.to_owned(),
            origin: "/opt/sluice.toml".into(),
        };
        let c = source.resolve_without_provider_keys(&|_| None).unwrap();
        assert_eq!(&*c.providers[0].api_keys[0].expose(), "${OPENAI_API_KEY}");
        let text = format!("{AWS_CONFIG}\n[jobs]\ncallback_secret = \"${{CALLBACK_SECRET}}\"\n");
        let source = ConfigSource::Text {
            text,
            origin: "/opt/sluice.toml".into(),
        };
        let msg = source
            .resolve_without_provider_keys(&|_| None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("jobs.callback_secret") && msg.contains("CALLBACK_SECRET"),
            "{msg}"
        );
    }

    #[test]
    fn a_secret_that_is_not_a_json_object_of_strings_resolves_nothing() {
        assert_eq!(lookup_secret("sk-plain", "OPENAI_API_KEY"), None);
        assert_eq!(
            lookup_secret(r#"{"OPENAI_API_KEY":1}"#, "OPENAI_API_KEY"),
            None
        );
        assert_eq!(lookup_secret(r#"{"A":"x"}"#, "A").as_deref(), Some("x"));
    }

    #[test]
    fn from_env_reads_the_file_named_by_sluice_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        let text = EXAMPLE.replace("${FAKE_KEY}", "sk-in-file");
        std::fs::write(&file, &text).unwrap();
        let c = Config::from_sources(Some(file.clone()), None).unwrap();
        assert_eq!(c.models[0].name, "gpt-test");
        assert_eq!(c.providers[0].api_keys, vec![Secret::new("sk-in-file")]);

        // Errors name the file, as for `sluice serve --config`.
        std::fs::write(&file, text.replace("weight = 1", "weigth = 1")).unwrap();
        let msg = Config::from_sources(Some(file.clone()), None)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(&file.display().to_string()) && msg.contains("weigth"),
            "{msg}"
        );

        let missing = dir.path().join("nope.toml");
        let err = Config::from_sources(Some(missing.clone()), None).unwrap_err();
        assert!(
            matches!(err, ConfigError::Read { ref path, .. } if *path == missing.display().to_string())
        );
    }

    #[test]
    fn from_env_takes_inline_text_or_the_builtin_config_and_refuses_both_sources() {
        let text = EXAMPLE.replace("${FAKE_KEY}", "sk-inline");
        let c = Config::from_sources(None, Some(text.clone())).unwrap();
        assert_eq!(c.models[0].name, "gpt-test");

        for (path, inline) in [(None, None), (Some(PathBuf::new()), Some(" \n".to_owned()))] {
            let c = Config::from_sources(path, inline).unwrap();
            assert_eq!(
                c.providers[0].kind,
                ProviderKind::Mock,
                "empty values count as unset"
            );
        }

        let err = Config::from_sources(Some("/opt/sluice.toml".into()), Some(text)).unwrap_err();
        assert!(matches!(err, ConfigError::TwoSources { ref path } if path == "/opt/sluice.toml"));
    }
}

/// Property tests: any text, and the example config with any of its values replaced, is
/// either a config or an error that names where it came from; an accepted config builds the
/// model catalog.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::fuzzing;

    const EXAMPLE: &str = include_str!("../../../infra/sluice.example.toml");
    const ORIGIN: &str = "fuzz.toml";

    /// Keys the config knows, so replaced tables reach its validation.
    const KEYS: &[&str] = &[
        "name",
        "kind",
        "base_url",
        "api_keys",
        "models",
        "providers",
        "deployments",
        "provider",
        "model",
        "weight",
        "rpm",
        "tpm",
        "price",
        "input_per_mtok",
        "output_per_mtok",
        "aliases",
        "fallbacks",
        "routing",
        "strategy",
        "rules",
        "match",
        "cache_ttl_s",
        "max_output_tokens",
        "on_limit",
        "budget_usd",
        "period",
        "tenants",
        "server",
        "cache",
        "limits",
        "jobs",
        "logging",
        "metrics",
        "redact",
        "enabled",
        "default_ttl_s",
        "coalesce_wait_s",
        "max_body_bytes",
        "upstream_timeout_s",
        "header_read_timeout_s",
        "idle_timeout_s",
        "max_connections",
        "metrics_token",
        "soft_threshold",
        "counter_shards",
        "budget_shards",
        "budget_shard_min_usd",
        "workers",
        "lease_s",
        "visibility_timeout_s",
        "callback_secret",
        "bodies",
        "flush_every_ms",
    ];

    fn toml_value() -> impl Strategy<Value = toml::Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(toml::Value::Integer),
            (-3i64..5).prop_map(toml::Value::Integer),
            any::<f64>().prop_map(toml::Value::Float),
            any::<bool>().prop_map(toml::Value::Boolean),
            prop_oneof![
                proptest::sample::select(KEYS).prop_map(str::to_owned),
                Just("${FUZZ_VAR}".to_owned()),
                Just("${UNSET_VAR:-fallback}".to_owned()),
                Just("${".to_owned()),
                Just("(".to_owned()),
                Just("openai".to_owned()),
                Just("mock".to_owned()),
                any::<String>(),
            ]
            .prop_map(toml::Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
                proptest::collection::vec(
                    (
                        proptest::sample::select(KEYS).prop_map(str::to_owned),
                        inner
                    ),
                    0..4
                )
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
            ]
        })
    }

    /// Every node of a TOML document as a path from the root.
    fn paths(value: &toml::Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(here.clone());
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    here.push(k.clone());
                    paths(v, here, out);
                    here.pop();
                }
            }
            toml::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    here.push(i.to_string());
                    paths(v, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }

    fn node_mut<'a>(value: &'a mut toml::Value, path: &[String]) -> Option<&'a mut toml::Value> {
        path.iter().try_fold(value, |v, step| match v {
            toml::Value::Table(t) => t.get_mut(step),
            toml::Value::Array(items) => items.get_mut(step.parse::<usize>().ok()?),
            _ => None,
        })
    }

    /// The example config with one to three nodes replaced.
    fn mutated_example() -> impl Strategy<Value = String> {
        proptest::collection::vec((any::<Index>(), toml_value()), 1..4).prop_map(|edits| {
            let mut doc: toml::Value = toml::from_str(EXAMPLE).unwrap();
            for (at, replacement) in edits {
                let mut all = Vec::new();
                paths(&doc, &mut Vec::new(), &mut all);
                let path = at.get(&all).clone();
                if let Some(node) = node_mut(&mut doc, &path) {
                    // The root must stay a table for TOML to write it.
                    if !path.is_empty() || replacement.is_table() {
                        *node = replacement;
                    }
                }
            }
            toml::to_string(&doc).unwrap_or_default()
        })
    }

    fn check(text: &str, env: &Option<String>) -> Result<(), TestCaseError> {
        // The example needs FAKE_KEY; FUZZ_VAR (placed by the mutations) may be unset.
        let lookup = |var: &str| match var {
            "FAKE_KEY" => Some("sk-fake".to_owned()),
            "FUZZ_VAR" => env.clone(),
            _ => None,
        };
        match Config::parse(text, ORIGIN, &lookup) {
            Ok(config) => {
                let _ = crate::gateway::catalog::Catalog::from_config(&config);
                for model in &config.models {
                    let _ = Config::price_of(model);
                }
            }
            Err(e) => prop_assert!(e.to_string().starts_with(ORIGIN), "{e}"),
        }
        Ok(())
    }

    /// The example itself is accepted; otherwise the mutations below test nothing deep.
    #[test]
    fn the_example_is_valid() {
        let lookup = |_: &str| Some("sk-test".to_owned());
        Config::parse(EXAMPLE, ORIGIN, &lookup).unwrap();
    }

    proptest! {
        #![proptest_config(fuzzing::config(fuzzing::CASES))]

        #[test]
        fn fuzz_any_text(text in prop_oneof![any::<String>(), "[\\[\\]a-z_=\" .0-9\n{}$,-]{0,200}"], env in proptest::option::of(any::<String>())) {
            check(&text, &env)?;
        }

        #[test]
        fn fuzz_example_with_values_replaced(text in mutated_example(), env in proptest::option::of(prop_oneof![Just("sk-x".to_owned()), any::<String>(), Just("${FUZZ_VAR}".to_owned())])) {
            check(&text, &env)?;
        }
    }
}
