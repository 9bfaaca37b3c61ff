//! The aggregator function's integration tests, one test binary: real SQS event JSON through
//! the handler (`sqs`) and property tests of its decoding (`fuzz`).

mod fuzz;
mod sqs;
