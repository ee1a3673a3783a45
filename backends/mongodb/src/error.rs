//! Driver errors mapped once to the contract's [`ErrorKind`]s.
//!
//! Connection loss, timeouts, server selection, pool clears, write-concern failures, the
//! `RetryableWriteError` label and the server's "not primary / shutting down" codes are
//! [`ErrorKind::Unavailable`] (temporary: the caller may retry). A duplicate key is a
//! [`ErrorKind::Conflict`] when it reaches the caller at all (the store resolves the expected ones
//! itself). Everything else is [`ErrorKind::Backend`].

use imstore_core::{Error, ErrorKind};
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind, WriteFailure};

/// The server's duplicate-key error code.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// Server codes that mean "this node cannot serve you right now": not primary, stepping down,
/// shutting down, host unreachable, network timeout, time limit exceeded.
const TEMPORARY_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
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

/// True when `e` is a duplicate-key error of a single-document write.
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
        DriverKind::BsonDeserialization(_) => ErrorKind::Decode,
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
        ErrorKind::Decode => "a stored document could not be decoded",
        _ => "MongoDB operation failed",
    };
    Error::new(kind, what).with_source(e)
}

/// A stored field that is missing or has the wrong type: a decode error naming the field.
pub(crate) fn bad_field(field: &str, why: &str) -> Error {
    Error::new(ErrorKind::Decode, format!("stored field `{field}` {why}"))
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
    }

    #[test]
    fn custom_errors_are_permanent() {
        let e = map(DriverError::custom("boom".to_string()));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_temporary());
    }
}
