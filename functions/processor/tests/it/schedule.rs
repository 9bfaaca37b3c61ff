//! The processor function's two kinds of invocation, told apart from real event JSON: its
//! SQS event source (job messages) and its one-minute schedule (a provider Batch API pass).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sluice_processor::{Invocation, classify};

#[test]
fn sqs_events_are_jobs_and_the_schedule_is_a_batch_pass() {
    let sqs: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/sqs-jobs-batch.json")).unwrap();
    match classify(sqs) {
        Ok(Invocation::Jobs(event)) => assert!(!event.records.is_empty()),
        _ => panic!("an SQS event is a batch of jobs"),
    }
    let scheduled: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/eventbridge-scheduled.json")).unwrap();
    assert!(matches!(classify(scheduled), Ok(Invocation::BatchPass)));
    // Anything else is refused, not guessed at.
    for other in [
        serde_json::json!({}),
        serde_json::json!({"source": "aws.events", "detail-type": "EC2 Instance State-change"}),
        serde_json::json!({"Records": "not a list"}),
    ] {
        assert!(classify(other).is_err());
    }
}
