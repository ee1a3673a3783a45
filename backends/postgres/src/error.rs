//! Driver errors mapped once to the contract's kinds; nothing else in the crate inspects sqlx errors.

use imstore_core::{Error, ErrorKind};

/// The backend name reported in errors and spans.
pub(crate) const BACKEND: &str = "postgres";

/// SQLSTATE of a serialization failure: the transaction may succeed if run again.
const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a detected deadlock: the server aborted this transaction to break the cycle.
const DEADLOCK_DETECTED: &str = "40P01";

/// True when the whole transaction should simply be run again (serialization failure, deadlock).
///
/// The store's loops retry these themselves; callers never see them unless retries run out.
pub(crate) fn is_retryable(err: &sqlx::Error) -> bool {
    sqlstate(err).is_some_and(|c| c == SERIALIZATION_FAILURE || c == DEADLOCK_DETECTED)
}

/// True when `err` is a unique violation (23505) on `table`: a concurrent writer inserted the
/// same key first.
pub(crate) fn is_unique_violation_on(err: &sqlx::Error, table: &str) -> bool {
    err.as_database_error()
        .is_some_and(|db| db.code().as_deref() == Some("23505") && db.table() == Some(table))
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

/// The contract's kind for a SQLSTATE code.
///
/// Class 08 (connection exception), 53 (insufficient resources, e.g. too many connections),
/// 57P01-57P05 (admin/crash shutdown, cannot connect now, idle timeouts), 57014 (statement
/// timeout or cancel) and 40001/40P01 (when retries ran out) are temporary: `Unavailable`.
/// 23505 (unique violation) is a `Conflict`; class 22 (data exception) is `InvalidInput`.
fn kind_for_sqlstate(code: &str) -> ErrorKind {
    match code {
        SERIALIZATION_FAILURE | DEADLOCK_DETECTED => ErrorKind::Unavailable,
        "23505" => ErrorKind::Conflict,
        "57014" | "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => ErrorKind::Unavailable,
        c if c.starts_with("08") || c.starts_with("53") => ErrorKind::Unavailable,
        c if c.starts_with("22") => ErrorKind::InvalidInput,
        _ => ErrorKind::Backend,
    }
}

/// The contract's kind for a driver error.
pub(crate) fn kind_of(err: &sqlx::Error) -> ErrorKind {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .map(|c| kind_for_sqlstate(&c))
            .unwrap_or(ErrorKind::Backend),
        // The connection broke, could not be opened, or the pool had none to give in time.
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => ErrorKind::Unavailable,
        // Stored data that does not fit the expected type.
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::Decode,
        sqlx::Error::RowNotFound => ErrorKind::NotFound,
        _ => ErrorKind::Backend,
    }
}

/// An imstore error for a driver error: its kind, the backend, and the driver error as the cause.
///
/// The message never contains bound values (content, keys): sqlx errors carry the server's
/// message and SQLSTATE, not parameters.
pub(crate) fn map(err: sqlx::Error) -> Error {
    let kind = kind_of(&err);
    let message = match sqlstate(&err) {
        Some(code) => format!("postgres error {code}"),
        None => "postgres driver error".to_string(),
    };
    Error::new(kind, message)
        .with_backend(BACKEND)
        .with_source(err)
}

/// A decode error for a stored value that is not what the schema promises.
pub(crate) fn corrupt(what: impl Into<String>) -> Error {
    Error::new(ErrorKind::Decode, what).with_backend(BACKEND)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_contract_kinds() {
        for (code, kind) in [
            ("40001", ErrorKind::Unavailable),
            ("40P01", ErrorKind::Unavailable),
            ("23505", ErrorKind::Conflict),
            ("57P01", ErrorKind::Unavailable),
            ("57014", ErrorKind::Unavailable),
            ("08006", ErrorKind::Unavailable),
            ("53300", ErrorKind::Unavailable),
            ("22021", ErrorKind::InvalidInput),
            ("42P01", ErrorKind::Backend),
        ] {
            assert_eq!(kind_for_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn transport_failures_are_temporary() {
        let io = sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ));
        assert!(map(io).is_temporary());
        assert!(map(sqlx::Error::PoolTimedOut).is_temporary());
        assert_eq!(
            map(sqlx::Error::Decode("bad".into())).kind(),
            ErrorKind::Decode
        );
        assert!(!is_retryable(&sqlx::Error::PoolTimedOut));
    }
}
