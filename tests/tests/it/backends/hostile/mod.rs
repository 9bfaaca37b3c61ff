//! The hostile-client suite's checks that must hold on DynamoDB + SQS too (moto): see
//! `e2e/hostile` for the SQLite side and RELIABILITY.md, "Hostile clients".

mod caps;
mod jobs;
