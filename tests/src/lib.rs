//! Test support: a fake OpenAI-compatible upstream that speaks the real wire format and records
//! what it is sent, and an in-process Sluice bound to 127.0.0.1:0.
//!
//! Used by this crate's tests and by the `cli` crate's process-level tests.

pub mod aws;
pub mod callback_receiver;
pub mod fake_upstream;
pub mod faulty_store;
pub mod gateway;
pub mod hostile_jobs;
pub mod logs;
pub mod recording;
pub mod requests;
pub mod throttle_proxy;

pub use callback_receiver::CallbackReceiver;
pub use fake_upstream::batches::BatchFate;
pub use fake_upstream::{Behaviour, FakeUpstream, Recorded};
pub use faulty_store::{Fault, FaultyStore, Op};
pub use gateway::TestGateway;
pub use recording::RecordingSink;
pub use throttle_proxy::{Tally, Throttle, ThrottleProxy};

/// A config routing `gpt-test` and `embed-test` to the fake upstream at `base_url`, with the
/// provider key `sk-provider-test`, 1 s upstream timeout and a 64 KiB body limit.
pub fn fake_config(base_url: &str) -> String {
    format!(
        r#"
[server]
upstream_timeout_s = 1
max_body_bytes = 65536

# One attempt per deployment and no circuit breaking: these tests count upstream calls.
# Retries, circuits and fallbacks have their own tests with their own settings.
[routing]
attempts_per_deployment = 1
circuit_failures = 1000000

[[providers]]
name = "fake"
kind = "openai"
base_url = "{base_url}"
api_keys = ["sk-provider-test"]

[[models]]
name = "gpt-test"
aliases = ["fast"]
deployments = [{{ provider = "fake", model = "gpt-4o-mini", weight = 1 }}]
price = {{ input_per_mtok = 0.15, output_per_mtok = 0.60 }}
cache_ttl_s = 3600

[[models]]
name = "embed-test"
deployments = [{{ provider = "fake", model = "text-embedding-3-small" }}]
cache_ttl_s = 3600
"#
    )
}

/// [`fake_config`] plus job settings for tests: one worker, a 300 ms batching window,
/// a callback secret (`whsec-test`) and callbacks to 127.0.0.1 allowed.
pub fn fake_config_with_jobs(base_url: &str, workers: usize) -> String {
    format!(
        "{}\n[jobs]\nworkers = {workers}\nbatch_window_ms = 300\ncallback_secret = \"{CALLBACK_SECRET}\"\nallow_private_callbacks = true\n",
        fake_config(base_url)
    )
}

/// [`fake_config`] with more TOML appended (e.g. `[limits]`, `[[tenants]]`).
pub fn fake_config_with(base_url: &str, extra: &str) -> String {
    format!("{}\n{extra}\n", fake_config(base_url))
}

/// The callback signing secret of [`fake_config_with_jobs`].
pub const CALLBACK_SECRET: &str = "whsec-test";

/// The provider key [`fake_config`] gives the fake upstream.
pub const PROVIDER_KEY: &str = "sk-provider-test";
