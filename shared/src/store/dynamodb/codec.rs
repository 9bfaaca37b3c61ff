//! The attribute codec: typed reads and writes of item attributes, and large bodies stored
//! deflated.
//!
//! Hand-written rather than `serde_dynamo`: items carry key prefixes, index shards, TTL
//! seconds and deflated bodies that are not fields of the domain types, and most writes are
//! `UpdateItem` expressions that name attributes one by one, so a serde mapping would add an
//! item struct per port beside the domain type without removing these helpers.

use std::collections::HashMap;
use std::io::{Read, Write};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;

use crate::store::StoreError;

pub(super) type Item = HashMap<String, AttributeValue>;

/// DynamoDB's item size limit is 400 KB; leave room for the other attributes.
pub(super) const MAX_BLOB_BYTES: usize = 380 * 1024;
/// Bodies above this are deflated before storing.
const DEFLATE_ABOVE: usize = 1024;

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn ttl_secs(ms: u64) -> AttributeValue {
    n(ms.div_ceil(1000))
}

pub(super) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("DynamoDB item: {what}"))
}

pub(super) fn get_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(corrupt(&format!("missing string `{name}`"))),
    }
}

pub(super) fn opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(super) fn opt_n<T: std::str::FromStr>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map(Some)
            .map_err(|_| corrupt(&format!("bad number `{name}`"))),
        None | Some(AttributeValue::Null(_)) => Ok(None),
        Some(_) => Err(corrupt(&format!("`{name}` is not a number"))),
    }
}

pub(super) fn get_n<T: std::str::FromStr>(item: &Item, name: &str) -> Result<T, StoreError> {
    opt_n(item, name)?.ok_or_else(|| corrupt(&format!("missing number `{name}`")))
}

/// Stores bytes, deflated when large; the `<name>_enc` attribute says how.
pub(super) fn put_blob(item: &mut Item, name: &str, bytes: &[u8]) -> Result<usize, StoreError> {
    let (data, enc) = if bytes.len() > DEFLATE_ABOVE {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(bytes)
            .and_then(|()| z.finish())
            .map(|d| (d, Some("deflate")))
            .map_err(|e| StoreError::backend_from(format!("deflate: {e}"), e))?
    } else {
        (bytes.to_vec(), None)
    };
    let len = data.len();
    item.insert(name.to_owned(), AttributeValue::B(Blob::new(data)));
    if let Some(enc) = enc {
        item.insert(format!("{name}_enc"), s(enc));
    }
    Ok(len)
}

pub(super) fn get_blob(item: &Item, name: &str) -> Result<Option<Bytes>, StoreError> {
    let Some(AttributeValue::B(blob)) = item.get(name) else {
        return Ok(None);
    };
    match opt_s(item, &format!("{name}_enc")).as_deref() {
        None => Ok(Some(Bytes::copy_from_slice(blob.as_ref()))),
        Some("deflate") => {
            let mut out = Vec::new();
            flate2::read::DeflateDecoder::new(blob.as_ref())
                .read_to_end(&mut out)
                .map_err(|_| corrupt(&format!("`{name}` does not inflate")))?;
            Ok(Some(Bytes::from(out)))
        }
        Some(_) => Err(corrupt(&format!("unknown encoding of `{name}`"))),
    }
}
