//! Usage events, latency histograms and per-minute rollups.
//!
//! Every request yields one [`UsageEvent`]. Events go to a [`UsageSink`]: locally a channel
//! to [`sink::aggregate_loop`], on AWS batched SQS messages read by the aggregator Lambda.
//! Both roll events up per minute, tenant, model and provider ([`rollup`]) and add the
//! rollups to the store once per batch. `GET /v1/metrics` reads them back ([`query`]).

pub mod event;
pub mod histogram;
pub mod query;
pub mod rollup;
pub mod sink;
pub mod ticket;

pub use event::{ErrorClass, EventKind, UsageEvent};
pub use histogram::Histogram;
pub use rollup::{Rollup, RollupKey, RollupRow, roll_up};
pub use sink::{Discard, UsageSink};
pub use ticket::UsageTicket;
