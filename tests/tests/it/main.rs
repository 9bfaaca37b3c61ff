//! The integration tests of the whole gateway, one test binary (linking the AWS SDK once):
//! `e2e` runs Sluice in process over real HTTP on SQLite; `backends` runs the store and queue
//! ports' conformance suite against SQLite and moto, and the AWS-backed paths end to end.
//! Select a part with a filter: `cargo test --workspace --test it -- e2e::cache`.

mod backends;
mod e2e;
