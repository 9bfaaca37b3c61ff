//! Sluice: an AI API gateway. Applications send OpenAI-style requests to Sluice; Sluice
//! caches identical answers, routes to providers, and measures and logs every call.
//!
//! This crate is the gateway itself, with no hosting code: `sluice serve` (the `cli` crate)
//! and the Lambda functions are thin drivers around it.
//!
//! Layout:
//! - [`config`]: the TOML config, parsed once into typed structs and validated.
//! - [`deps`]: what a process builds once (store, queue, HTTP client, clock) and the services on it.
//! - [`api`]: the HTTP app (axum `Router`): routes, auth, admin, OpenAI-shaped errors, access log.
//! - [`gateway`]: the request pipeline, model catalog, cache keys and policy.
//! - [`providers`]: the provider trait and the closed enum of providers (OpenAI-compatible,
//!   Anthropic, Gemini, mock).
//! - [`metrics`]: usage events, latency histograms, per-minute rollups and their queries.
//! - [`jobs`]: async jobs: acceptance, the worker that runs them, callbacks, embedding batching.
//! - [`store`]: storage ports and their adapters (SQLite, DynamoDB).
//! - [`queue`]: the job queue port and its adapters (SQLite table, SQS).
//! - [`limits`]: rate limits and spending caps, enforced atomically in the store.
//! - [`keys`]: gateway keys: generation, hashing, records.
//! - [`tokens`]: token estimates and upper bounds.
//! - [`num`]: saturating conversions between number types.
//! - [`logging`]: the JSON log subscriber every binary installs (request ids, the log file).
//! - [`redact`]: what a key looks like, and replacing it before text reaches a log.
//! - [`secrets`]: the Lambda functions' secrets, read from Secrets Manager and kept current.
//! - [`server`]: the HTTP server loop of `sluice serve`: connection cap, header, body and idle
//!   deadlines.
//! - [`clock`]: wall-clock time behind a trait so tests can move it.
//! - [`invocation`]: a Lambda invocation's deadline and the work it owes before it ends.
//! - [`housekeeping`]: one pass that finds jobs left behind and reservations never settled.

// Tests may cast freely; the code they test may not (see [`num`]).
#![cfg_attr(
    test,
    allow(
        clippy::cast_possible_wrap,
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation
    )
)]

pub mod api;
pub mod clock;
pub mod config;
pub mod deps;
pub mod gateway;
pub mod housekeeping;
pub mod invocation;
pub mod jobs;
pub mod keys;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod num;
pub mod providers;
pub mod queue;
pub mod redact;
pub mod secrets;
pub mod server;
pub mod store;
pub mod tokens;

#[cfg(test)]
mod fuzzing;
