//! The store and queue ports, one conformance suite run unchanged against both adapters:
//! SQLite (a temporary file) and DynamoDB + SQS (moto's server, real SDK wire protocol).
//! Plus the AWS-backed gateway and processor end to end on moto, and the functions' secrets
//! on moto's Secrets Manager.

mod aws_coalesce;
mod aws_e2e;
mod aws_faults;
mod conformance;
mod costs;
mod hostile;
mod housekeeping;
mod secrets;
