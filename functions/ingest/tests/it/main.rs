//! The ingest function's integration tests, one test binary: API Gateway v2 events through the
//! Lambda adapter (`apigw`, `edge`, `fuzz`) and the real binary under the Lambda emulator
//! (`freeze`).

mod apigw;
mod edge;
mod freeze;
mod fuzz;
