//! Driver errors mapped once to the contract's [`ErrorKind`]s: the only place that decides.
//!
//! Connection loss, timeouts, server selection, pool clears, write-concern failures (a
//! `wtimeout` included), the `RetryableWriteError` label and the server's "not primary / shutting
//! down / interrupted" codes are [`ErrorKind::Unavailable`]: temporary, the caller may retry. A
//! duplicate key that reaches the caller is [`ErrorKind::Conflict`] (the store resolves the
//! expected ones itself). A document or command too large, and everything else, is
//! [`ErrorKind::Backend`]: retrying will not fix it.

use std::time::Duration;

use imstore_core::{Error, ErrorKind};
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind, WriteFailure};

/// The server's duplicate-key error code.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// The server's "namespace not found" code (a collection that does not exist yet).
pub(crate) const NAMESPACE_NOT_FOUND: i32 = 26;

/// The server's "not implemented" code: FerretDB v1 answers it for the aggregation
/// accumulators it lacks (it has `$count` and `$sum` only).
pub(crate) const NOT_IMPLEMENTED: i32 = 238;

/// Server codes that mean "this node cannot serve you right now": host unreachable or not
/// found, network timeout, interrupted, exceeded time limit, not primary, stepping down,
/// shutting down, write concern timeout.
const TEMPORARY_CODES: &[i32] = &[
    6, 7, 50, 64, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11601, 11602, 13435, 13436,
];

/// The label the server and driver put on errors a write may be retried after.
const RETRYABLE_WRITE_LABEL: &str = "RetryableWriteError";

/// The server or write error code carried by `e`, if any.
pub(crate) fn code_of(e: &DriverError) -> Option<i32> {
    match e.kind.as_ref() {
        DriverKind::Command(c) => Some(c.code),
        DriverKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        DriverKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// True when `e` is a duplicate-key error of a single-document write: the insert lost a race
/// for one of the unique keys it claims.
pub(crate) fn is_duplicate_key(e: &DriverError) -> bool {
    matches!(e.kind.as_ref(), DriverKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY)
        || matches!(e.kind.as_ref(), DriverKind::Command(c) if c.code == DUPLICATE_KEY)
}

/// The contract kind of a driver error.
pub(crate) fn kind_of(e: &DriverError) -> ErrorKind {
    if e.contains_label(RETRYABLE_WRITE_LABEL) {
        return ErrorKind::Unavailable;
    }
    match e.kind.as_ref() {
        DriverKind::Io(_)
        | DriverKind::ConnectionPoolCleared { .. }
        | DriverKind::ServerSelection { .. }
        | DriverKind::DnsResolve { .. }
        | DriverKind::Shutdown => ErrorKind::Unavailable,
        DriverKind::Write(WriteFailure::WriteConcernError(_)) => ErrorKind::Unavailable,
        DriverKind::InsertMany(m) if m.write_concern_error.is_some() => ErrorKind::Unavailable,
        DriverKind::InsertMany(m) => match m.write_errors.as_deref() {
            Some(errors) if errors.iter().all(|w| w.code == DUPLICATE_KEY) => ErrorKind::Conflict,
            Some(errors) if errors.iter().any(|w| TEMPORARY_CODES.contains(&w.code)) => {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Backend,
        },
        _ => match code_of(e) {
            Some(DUPLICATE_KEY) => ErrorKind::Conflict,
            Some(code) if TEMPORARY_CODES.contains(&code) => ErrorKind::Unavailable,
            _ => ErrorKind::Backend,
        },
    }
}

/// The imstore error for a driver error, with the driver error as its source.
pub(crate) fn map(e: DriverError) -> Error {
    let kind = kind_of(&e);
    let what = match kind {
        ErrorKind::Unavailable => "the MongoDB server is unavailable or timed out",
        ErrorKind::Conflict => "duplicate key",
        _ => "MongoDB operation failed",
    };
    Error::new(kind, what).with_source(e)
}

/// The operation ran past the configured operation timeout: temporary (it may have written
/// part of its work; every write of this backend is safe to repeat).
pub(crate) fn timed_out(after: Duration) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "the operation did not finish within {} ms",
            after.as_millis()
        ),
    )
}

/// A stored field that is missing or has the wrong type: the document is not one this store
/// wrote, so retrying will not help.
pub(crate) fn bad_field(field: &str, why: &str) -> Error {
    Error::corrupt(format!("stored field `{field}` {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> DriverError {
        DriverError::from(std::io::Error::new(kind, "x"))
    }

    #[test]
    fn network_errors_are_temporary() {
        for k in [
            std::io::ErrorKind::ConnectionReset,
            std::io::ErrorKind::TimedOut,
            std::io::ErrorKind::ConnectionRefused,
        ] {
            let e = map(io(k));
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(e.is_temporary());
        }
        assert!(timed_out(Duration::from_secs(1)).is_temporary());
    }

    #[test]
    fn custom_errors_are_permanent() {
        let e = map(DriverError::custom("boom".to_string()));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_temporary());
    }

    #[test]
    fn display_does_not_repeat_the_driver_error() {
        let e = map(io(std::io::ErrorKind::ConnectionReset));
        assert_eq!(
            e.to_string(),
            "unavailable: the MongoDB server is unavailable or timed out"
        );
        assert!(std::error::Error::source(&e).is_some());
    }
}
