//! How SDK failures become [`StoreError`]s.

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;

use crate::store::StoreError;

pub(super) fn sdk<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> StoreError {
    let detail = match e.as_service_error() {
        Some(service) => service.to_string(),
        None => e.to_string(),
    };
    StoreError::Backend(format!("DynamoDB: {detail}"))
}

pub(super) fn build(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::Backend(format!("DynamoDB request: {e}"))
}

pub(super) fn is_condition_failure<R: std::fmt::Debug>(e: &SdkError<UpdateItemError, R>) -> bool {
    e.as_service_error()
        .is_some_and(|s| s.is_conditional_check_failed_exception())
}
