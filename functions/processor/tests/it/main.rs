//! The processor function's integration tests, one test binary: real SQS and EventBridge
//! event JSON through the handler (`sqs`, `schedule`) and property tests of its decoding
//! (`fuzz`).

mod fuzz;
mod schedule;
mod sqs;
