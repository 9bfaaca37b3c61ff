//! The `sluice` binary's integration tests, one test binary: each module runs the real
//! process (`common` starts and collects it). Select one with a filter:
//! `cargo test --workspace --test it -- security::`.

mod aws;
mod chaos;
mod cli;
mod coalesce;
mod common;
mod hostile_edge;
mod loadtest;
mod security;
