//! `Idempotency-Key` claims and stored responses (`IdempotencyStore`): `idem#` items of the
//! cache table.

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use super::DynamoStore;
use super::codec::{
    Item, MAX_BLOB_BYTES, corrupt, get_blob, get_n, get_s, n, put_blob, s, ttl_secs,
};
use super::error::{sdk, service_error};
use crate::store::{IdempotencyBegin, IdempotencyStore, StoreError, StoredResponse};

#[async_trait]
impl IdempotencyStore for DynamoStore {
    async fn idempotency_begin(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<IdempotencyBegin, StoreError> {
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.cache)
            .item("pk", s(format!("idem#{key}")))
            .item("fingerprint", s(hex::encode(fingerprint)))
            .item("done", n(0))
            .item("lease_until_ms", n(now_ms + lease_ms))
            .item("expires_at_ms", n(now_ms + lease_ms))
            .item("expires_at", ttl_secs(now_ms + lease_ms + 86_400_000))
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at_ms <= :now \
                 OR (done = :zero AND lease_until_ms <= :now)",
            )
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":zero", n(0))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(IdempotencyBegin::Started),
            Err(e) => e,
        };
        let SdkError::ServiceError(service) = err else {
            return Err(sdk(err));
        };
        match service.into_err() {
            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                failed,
            ) => {
                // The existing record came back with the failure: no second read.
                let Some(old) = failed.item() else {
                    return Err(corrupt("idempotency record missing on conflict"));
                };
                if get_s(old, "fingerprint")? != hex::encode(fingerprint) {
                    return Ok(IdempotencyBegin::Mismatch);
                }
                if get_n::<u8>(old, "done")? == 1 {
                    return Ok(IdempotencyBegin::Replay(StoredResponse {
                        status: get_n(old, "status")?,
                        body: get_blob(old, "body")?.unwrap_or_default(),
                    }));
                }
                Ok(IdempotencyBegin::InProgress)
            }
            other => Err(service_error(other)),
        }
    }

    async fn idempotency_finish(
        &self,
        key: &str,
        fingerprint: &[u8; 32],
        response: &StoredResponse,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(format!("idem#{key}")));
        item.insert("fingerprint".into(), s(hex::encode(fingerprint)));
        item.insert("done".into(), n(1));
        item.insert("status".into(), n(response.status));
        if put_blob(&mut item, "body", &response.body)? > MAX_BLOB_BYTES {
            // Too large to keep: forget the claim instead, so a retry runs again.
            return self.idempotency_release(key).await;
        }
        item.insert("lease_until_ms".into(), n(0));
        item.insert("expires_at_ms".into(), n(expires_at_ms));
        item.insert("expires_at".into(), ttl_secs(expires_at_ms));
        self.count();
        self.client
            .put_item()
            .table_name(&self.tables.cache)
            .set_item(Some(item))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn idempotency_release(&self, key: &str) -> Result<(), StoreError> {
        self.count();
        let res = self
            .client
            .delete_item()
            .table_name(&self.tables.cache)
            .key("pk", s(format!("idem#{key}")))
            .condition_expression("done = :zero")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Already finished (or gone): a finished response is never forgotten early.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk(e)),
        }
    }
}
