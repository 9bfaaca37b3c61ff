//! How SDK failures become [`StoreError`]s: throttling and failed conditions are told apart from
//! other failures by the error code DynamoDB answers with, and the SDK's error is kept as the
//! source (the service error alone when there is one, without the raw response).

use std::fmt::Debug;
use std::sync::Arc;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

use crate::store::{BackendSource, StoreError};

/// The error codes with which DynamoDB refuses a request for its rate ("Error handling with
/// DynamoDB", Developer Guide: `ProvisionedThroughputExceededException`,
/// `RequestLimitExceeded`, `ThrottlingException`; all retryable).
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// The `TransactWriteItems` cancellation-reason codes that mean throttling (API reference,
/// `TransactionCanceledException`: `ProvisionedThroughputExceeded`, `ThrottlingError`).
pub(super) const THROTTLED_CANCELLATIONS: [&str; 2] =
    ["ProvisionedThroughputExceeded", "ThrottlingError"];

/// A failed SDK call.
pub(super) fn sdk<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(service) => service_error(service.into_err()),
        other => StoreError::backend_from(format!("DynamoDB: {other}"), other),
    }
}

/// An operation's service error, classified by its code.
pub(super) fn service_error<E>(e: E) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let message = format!("DynamoDB: {e}");
    let code = e.code().map(str::to_owned);
    let source: Option<BackendSource> = Some(Arc::new(e));
    match code.as_deref() {
        Some(c) if THROTTLING_CODES.contains(&c) => StoreError::Throttled { message, source },
        Some("ConditionalCheckFailedException") => StoreError::ConditionFailed { message, source },
        _ => StoreError::Backend { message, source },
    }
}

pub(super) fn build(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::backend_from(format!("DynamoDB request: {e}"), e)
}

pub(super) fn is_condition_failure<R: std::fmt::Debug>(e: &SdkError<UpdateItemError, R>) -> bool {
    e.as_service_error()
        .is_some_and(|s| s.is_conditional_check_failed_exception())
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_sdk_dynamodb::operation::put_item::PutItemError;
    use aws_sdk_dynamodb::types::error::{
        ConditionalCheckFailedException, ProvisionedThroughputExceededException,
        RequestLimitExceeded, ResourceNotFoundException, ThrottlingException,
    };

    use super::*;

    /// A service error as the SDK hands it over (the raw response does not matter here).
    fn service<E>(e: E) -> SdkError<E, ()> {
        SdkError::service_error(e, ())
    }

    /// The metadata the SDK's deserializer attaches to every service error: the code from the
    /// answer's `__type` / `x-amzn-errortype`, without its namespace, and the message.
    fn wire(code: &str, message: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).message(message).build()
    }

    #[test]
    fn every_dynamodb_throttling_error_is_throttled_and_keeps_its_source() {
        let exceeded = "The level of configured provisioned throughput for the table was exceeded.";
        let limit = "Throughput exceeds the current throughput limit for your account.";
        let rate = "Rate of requests exceeds the allowed throughput.";
        let errors = [
            GetItemError::ProvisionedThroughputExceededException(
                ProvisionedThroughputExceededException::builder()
                    .message(exceeded)
                    .meta(wire("ProvisionedThroughputExceededException", exceeded))
                    .build(),
            ),
            GetItemError::RequestLimitExceeded(
                RequestLimitExceeded::builder()
                    .message(limit)
                    .meta(wire("RequestLimitExceeded", limit))
                    .build(),
            ),
            GetItemError::ThrottlingException(
                ThrottlingException::builder()
                    .message(rate)
                    .meta(wire("ThrottlingException", rate))
                    .build(),
            ),
            // An operation that does not model it gets it as an unhandled error with its code.
            GetItemError::generic(wire("ThrottlingException", rate)),
        ];
        for op in errors {
            let e = sdk(service(op));
            assert!(e.is_throttled(), "{e:?}");
            assert!(!e.is_condition_failed(), "{e:?}");
            assert!(e.is_backend_failure(), "{e:?}");
            assert!(
                e.to_string().starts_with("store backend error: DynamoDB: "),
                "{e}"
            );
            let source = std::error::Error::source(&e).expect("the SDK error is kept");
            assert!(source.downcast_ref::<GetItemError>().is_some(), "{source}");
        }
    }

    #[test]
    fn a_failed_condition_is_told_apart_from_throttling_and_other_failures() {
        let text = "The conditional request failed";
        let failed = sdk(service(PutItemError::ConditionalCheckFailedException(
            ConditionalCheckFailedException::builder()
                .message(text)
                .meta(wire("ConditionalCheckFailedException", text))
                .build(),
        )));
        assert!(failed.is_condition_failed(), "{failed:?}");
        assert!(!failed.is_throttled(), "{failed:?}");
        assert_eq!(
            failed.to_string(),
            "store backend error: DynamoDB: ConditionalCheckFailedException: The conditional request failed"
        );

        let text = "Requested resource not found";
        let missing = sdk(service(GetItemError::ResourceNotFoundException(
            ResourceNotFoundException::builder()
                .message(text)
                .meta(wire("ResourceNotFoundException", text))
                .build(),
        )));
        let timeout = sdk(SdkError::<GetItemError, ()>::timeout_error(
            "the operation timed out",
        ));
        for e in [missing, timeout] {
            assert!(matches!(e, StoreError::Backend { .. }), "{e:?}");
            assert!(!e.is_throttled() && !e.is_condition_failed(), "{e:?}");
            assert!(std::error::Error::source(&e).is_some(), "{e:?}");
        }
    }
}
