//! How rusqlite failures become [`StoreError`]s: a busy or locked database (another
//! connection holds the lock past `busy_timeout`) is throttling, a violated constraint a failed
//! condition, anything else a backend failure; the rusqlite error is kept as the source.

use std::sync::Arc;

use rusqlite::ErrorCode;

use crate::store::{BackendSource, StoreError};

/// A failed SQLite call.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    let message = e.to_string();
    let code = e.sqlite_error_code();
    let source: Option<BackendSource> = Some(Arc::new(e));
    match code {
        // SQLITE_BUSY / SQLITE_LOCKED (https://www.sqlite.org/rescode.html#busy): the same
        // statement may succeed once the other writer is done.
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Throttled { message, source }
        }
        Some(ErrorCode::ConstraintViolation) => StoreError::ConditionFailed { message, source },
        _ => StoreError::Backend { message, source },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::Connection;

    use super::*;

    #[test]
    fn a_busy_database_is_throttled_and_keeps_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("CREATE TABLE t (v INTEGER); BEGIN EXCLUSIVE; INSERT INTO t VALUES (1);")
            .unwrap();
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(Duration::ZERO).unwrap();
        let raw = other.execute("INSERT INTO t VALUES (2)", []).unwrap_err();
        assert_eq!(raw.sqlite_error_code(), Some(ErrorCode::DatabaseBusy));
        let e = backend(raw);
        assert!(e.is_throttled(), "{e:?}");
        assert!(!e.is_condition_failed(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("store backend error: database is locked"),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("the rusqlite error is kept");
        assert!(
            source.downcast_ref::<rusqlite::Error>().is_some(),
            "{source}"
        );
    }

    #[test]
    fn a_locked_table_is_throttled() {
        let raw = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_LOCKED),
            None,
        );
        assert!(backend(raw).is_throttled());
    }

    #[test]
    fn a_violated_constraint_is_a_failed_condition_and_other_failures_are_neither() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY); INSERT INTO t VALUES (1);")
            .unwrap();
        let e = backend(c.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(e.is_condition_failed(), "{e:?}");
        assert!(!e.is_throttled(), "{e:?}");
        let e = backend(c.execute("INSERT INTO missing VALUES (1)", []).unwrap_err());
        assert!(
            matches!(
                e,
                StoreError::Backend {
                    source: Some(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_throttled() && !e.is_condition_failed(), "{e:?}");
    }
}
