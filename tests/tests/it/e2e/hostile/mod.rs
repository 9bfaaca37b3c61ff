//! The hostile-client suite (issue 13): every promise of the README's limits, cache, jobs and
//! security sections tried with requests a careless or malicious client would send, most of
//! them generated (proptest) rather than picked. What each part tried and what held is
//! summed up in RELIABILITY.md, "Hostile clients".
//!
//! - [`caps`]: spending caps and token limits against any request shape; impossible requests;
//!   prices; cache lifetimes; resource bounds on every input.
//! - [`jobs`]: revoked keys and queued jobs; tenant isolation in embedding micro-batches;
//!   `Idempotency-Key` on every route that documents it.
//! - [`edge`]: the server's own edge: half-open connections, descriptor limits, logs that
//!   never keep a key, callback SSRF forms, what a key may see.

mod caps;
mod edge;
mod jobs;
