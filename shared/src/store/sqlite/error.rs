//! How rusqlite failures become [`StoreError`]s.

use crate::store::StoreError;

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}
