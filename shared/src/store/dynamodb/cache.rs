//! The response cache and its single-flight markers (`CacheStore`): digest items and
//! `flight#` items of the cache table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::types::{KeysAndAttributes, Put, ReturnValuesOnConditionCheckFailure};

use super::DynamoStore;
use super::codec::{
    Item, MAX_BLOB_BYTES, corrupt, get_blob, get_n, get_s, n, opt_s, put_blob, s, ttl_secs,
};
use super::error::{build, is_condition_failure, sdk, service_error};
use crate::store::{
    CacheKey, CacheStore, CachedResponse, Flight, FlightBegin, FlightClaim, FlightPoll, StoreError,
};

#[async_trait]
impl CacheStore for DynamoStore {
    async fn cache_get(
        &self,
        key: &CacheKey,
        now_ms: u64,
    ) -> Result<Option<CachedResponse>, StoreError> {
        self.count();
        let out = self
            .client
            .get_item()
            .table_name(&self.tables.cache)
            .key("pk", s(key.to_hex()))
            // Eventually consistent (half the read units): an entry written a moment ago may
            // be missed, which costs one provider call, never a wrong answer.
            .consistent_read(false)
            .send()
            .await
            .map_err(sdk)?;
        match out.item() {
            Some(item) => entry_from_item(item, key, now_ms),
            None => Ok(None),
        }
    }

    async fn cache_put(&self, key: &CacheKey, entry: &CachedResponse) -> Result<(), StoreError> {
        let mut item = Item::new();
        item.insert("pk".into(), s(key.to_hex()));
        item.insert("tenant".into(), s(&key.tenant));
        if put_blob(&mut item, "body", &entry.body)? > MAX_BLOB_BYTES {
            // Too large for an item even deflated: not cached, which is never an error.
            tracing::debug!(
                bytes = entry.body.len(),
                "answer too large to cache in DynamoDB"
            );
            return Ok(());
        }
        item.insert("created_at_ms".into(), n(entry.created_at_ms));
        item.insert("expires_at_ms".into(), n(entry.expires_at_ms));
        item.insert("purge_at_ms".into(), n(entry.purge_at_ms));
        item.insert("expires_at".into(), ttl_secs(entry.purge_at_ms));
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

    async fn flight_begin(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
        landed_ms: u64,
    ) -> Result<FlightBegin, StoreError> {
        self.count();
        let res = self
            .client
            .put_item()
            .table_name(&self.tables.cache)
            .set_item(Some(flight_item(key, token, now_ms, lease_ms)))
            .condition_expression(FLIGHT_FREE)
            .set_expression_attribute_values(Some(flight_free_values(now_ms, landed_ms)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let err = match res {
            Ok(_) => return Ok(FlightBegin::Leading),
            Err(e) => e,
        };
        let SdkError::ServiceError(service) = err else {
            return Err(sdk(err));
        };
        match service.into_err() {
            aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(
                failed,
            ) => {
                // The holder came back with the refusal: no second read.
                let old = failed
                    .item()
                    .ok_or_else(|| corrupt("flight marker missing on conflict"))?;
                Ok(FlightBegin::Following(flight_from_item(old)?))
            }
            other => Err(service_error(other)),
        }
    }

    async fn flight_renew(
        &self,
        key: &CacheKey,
        token: &str,
        now_ms: u64,
        lease_ms: u64,
    ) -> Result<bool, StoreError> {
        let lease_until_ms = now_ms.saturating_add(lease_ms);
        self.count();
        let res = self
            .client
            .update_item()
            .table_name(&self.tables.cache)
            .key("pk", s(flight_pk(key)))
            .update_expression("SET lease_until_ms = :until, expires_at = :ttl")
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .expression_attribute_values(":until", n(lease_until_ms))
            .expression_attribute_values(":ttl", ttl_secs(lease_until_ms))
            .send()
            .await;
        match res {
            Ok(_) => Ok(true),
            // Ended, or taken over: not ours any more.
            Err(e) if is_condition_failure(&e) => Ok(false),
            Err(e) => Err(sdk(e)),
        }
    }

    async fn flight_poll(&self, key: &CacheKey, now_ms: u64) -> Result<FlightPoll, StoreError> {
        let entry_pk = key.to_hex();
        let marker_pk = flight_pk(key);
        let mut keys: Vec<Item> = [&entry_pk, &marker_pk]
            .into_iter()
            .map(|pk| HashMap::from([("pk".to_owned(), s(pk.as_str()))]))
            .collect();
        let mut poll = FlightPoll::default();
        // One call for both items; keys DynamoDB leaves unprocessed (throttling) are asked again.
        while !keys.is_empty() {
            self.count();
            let out = self
                .client
                .batch_get_item()
                .request_items(
                    &self.tables.cache,
                    KeysAndAttributes::builder()
                        .set_keys(Some(keys))
                        // Eventually consistent, as cache reads are: a marker or entry seen a
                        // moment late costs one more poll, never a wrong answer.
                        .consistent_read(false)
                        .build()
                        .map_err(build)?,
                )
                .send()
                .await
                .map_err(sdk)?;
            for item in out
                .responses()
                .and_then(|r| r.get(&self.tables.cache))
                .into_iter()
                .flatten()
            {
                let pk = get_s(item, "pk")?;
                if pk == entry_pk {
                    poll.entry = entry_from_item(item, key, now_ms)?;
                } else if pk == marker_pk {
                    let flight = flight_from_item(item)?;
                    poll.flight = (flight.lease_until_ms > now_ms).then_some(flight);
                }
            }
            keys = out
                .unprocessed_keys()
                .and_then(|u| u.get(&self.tables.cache))
                .map(|k| k.keys().to_vec())
                .unwrap_or_default();
        }
        Ok(poll)
    }

    async fn flight_end(&self, key: &CacheKey, token: &str) -> Result<(), StoreError> {
        self.count();
        let res = self
            .client
            .delete_item()
            .table_name(&self.tables.cache)
            .key("pk", s(flight_pk(key)))
            .condition_expression("#token = :token")
            .expression_attribute_names("#token", "token")
            .expression_attribute_values(":token", s(token))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            // Another request holds it now (or it is gone): not ours to end.
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

/// The cache table's key of the in-flight marker of a cache key.
/// When a flight's marker may be taken: none, its lease ran out, or an entry the caller saw
/// (created at `:landed`) is newer than it.
const FLIGHT_FREE: &str =
    "attribute_not_exists(pk) OR lease_until_ms <= :now OR started_at_ms <= :landed";

impl DynamoStore {
    /// `claim`'s marker as a transaction's conditional `Put` (the holder returned when the
    /// condition fails), for [`crate::store::LimitStore::apply_leading`].
    pub(super) fn flight_put(&self, claim: &FlightClaim) -> Result<Put, StoreError> {
        Put::builder()
            .table_name(&self.tables.cache)
            .set_item(Some(flight_item(
                &claim.key,
                &claim.token,
                claim.now_ms,
                claim.lease_ms,
            )))
            .condition_expression(FLIGHT_FREE)
            .set_expression_attribute_values(Some(flight_free_values(
                claim.now_ms,
                claim.landed_ms,
            )))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(build)
    }
}

/// `token`'s marker for `key`, begun at `now_ms` and leased for `lease_ms`.
fn flight_item(key: &CacheKey, token: &str, now_ms: u64, lease_ms: u64) -> Item {
    let lease_until_ms = now_ms.saturating_add(lease_ms);
    Item::from([
        ("pk".to_owned(), s(flight_pk(key))),
        ("token".to_owned(), s(token)),
        ("started_at_ms".to_owned(), n(now_ms)),
        ("lease_until_ms".to_owned(), n(lease_until_ms)),
        ("expires_at".to_owned(), ttl_secs(lease_until_ms)),
    ])
}

/// The values of [`FLIGHT_FREE`].
fn flight_free_values(now_ms: u64, landed_ms: u64) -> Item {
    Item::from([
        (":now".to_owned(), n(now_ms)),
        (":landed".to_owned(), n(landed_ms)),
    ])
}

fn flight_pk(key: &CacheKey) -> String {
    format!("flight#{}", key.to_hex())
}

pub(super) fn flight_from_item(item: &Item) -> Result<Flight, StoreError> {
    Ok(Flight {
        token: get_s(item, "token")?,
        started_at_ms: get_n(item, "started_at_ms")?,
        lease_until_ms: get_n(item, "lease_until_ms")?,
    })
}

/// A cache entry item as an answer, unless purged at `now_ms` or another tenant's.
fn entry_from_item(
    item: &Item,
    key: &CacheKey,
    now_ms: u64,
) -> Result<Option<CachedResponse>, StoreError> {
    let purge_at_ms: u64 = get_n(item, "purge_at_ms")?;
    // TTL deletion is lazy (or absent): expiry is checked here, not trusted to happen.
    if purge_at_ms <= now_ms || opt_s(item, "tenant").as_deref() != Some(&key.tenant) {
        return Ok(None);
    }
    Ok(Some(CachedResponse {
        body: get_blob(item, "body")?.ok_or_else(|| corrupt("cache body"))?,
        created_at_ms: get_n(item, "created_at_ms")?,
        expires_at_ms: get_n(item, "expires_at_ms")?,
        purge_at_ms,
    }))
}
