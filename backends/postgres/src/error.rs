//! Driver errors mapped once to the contract's kinds; nothing else in the crate inspects sqlx
//! errors.
//!
//! Only faults a retry may fix are `Unavailable` (connection loss, timeouts, overload, a failover
//! in progress). A server-side limit (`54xxx`), a full disk, a value the server refuses (class
//! `22`: the pipeline validated every argument, so this is a deployment mismatch such as a
//! non-UTF-8 database, not the caller's input) and anything unexpected are `Backend`.
//! Configuration the caller got wrong (credentials, database, schema) is `InvalidInput` naming
//! the setting, from [`map_connect`].

use imstore_core::{Error, ErrorKind};

/// SQLSTATE of a serialization failure: the transaction may succeed if run again.
const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE of a detected deadlock: the server aborted this transaction to break the cycle.
const DEADLOCK_DETECTED: &str = "40P01";
/// SQLSTATE of a unique violation.
const UNIQUE_VIOLATION: &str = "23505";

/// True when the statement should simply be run again (serialization failure, deadlock); the
/// backend's [`imstore_core::Retry`] loops re-run these, callers see them only when attempts
/// run out.
pub(crate) fn is_retryable(err: &sqlx::Error) -> bool {
    sqlstate(err).is_some_and(|c| c == SERIALIZATION_FAILURE || c == DEADLOCK_DETECTED)
}

/// True when `err` is a unique violation on `table`: a concurrent writer inserted the same key
/// first.
pub(crate) fn is_unique_violation_on(err: &sqlx::Error, table: &str) -> bool {
    err.as_database_error().is_some_and(|db| {
        db.code().as_deref() == Some(UNIQUE_VIOLATION) && db.table() == Some(table)
    })
}

fn sqlstate(err: &sqlx::Error) -> Option<String> {
    err.as_database_error()
        .and_then(|db| db.code())
        .map(|c| c.into_owned())
}

/// The contract's kind for a SQLSTATE code.
fn kind_for_sqlstate(code: &str) -> ErrorKind {
    match code {
        // Lost a race; only seen here once the store's own retries are spent.
        SERIALIZATION_FAILURE | DEADLOCK_DETECTED => ErrorKind::Unavailable,
        UNIQUE_VIOLATION => ErrorKind::Conflict,
        // Statement timeout or cancel, lock timeout: the server was too busy for us.
        "57014" | "55P03" => ErrorKind::Unavailable,
        // Admin/crash shutdown, cannot connect now, idle-session timeouts.
        "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => ErrorKind::Unavailable,
        // A read-only transaction: the server is a standby, or a failover is in progress.
        "25006" => ErrorKind::Unavailable,
        // Too many connections, out of memory: overload that passes.
        "53300" | "53200" => ErrorKind::Unavailable,
        // Connection exceptions.
        c if c.starts_with("08") => ErrorKind::Unavailable,
        // Data exceptions: a value the server refuses.
        c if c.starts_with("22") => ErrorKind::InvalidInput,
        // Disk full, configuration limits (53xxx otherwise), program limits such as the maximum
        // array or index row size (54xxx), missing tables or permissions (42xxx): retrying does
        // not fix these.
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
        // A stored value that does not fit the type the schema promises.
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => ErrorKind::Backend,
        _ => ErrorKind::Backend,
    }
}

/// An imstore error for a driver error: its kind and the driver error as the cause.
///
/// The message never contains bound values (content, keys): sqlx errors carry the server's
/// message and SQLSTATE, not parameters; the message here names only the SQLSTATE (the cause
/// says the rest, and `Display` does not repeat it).
pub(crate) fn map(err: sqlx::Error) -> Error {
    let kind = kind_of(&err);
    let message = match sqlstate(&err) {
        Some(code) => format!("postgres error {code}"),
        None => "postgres driver error".to_string(),
    };
    Error::new(kind, message).with_source(err)
}

/// Why one attempt of an operation that [`imstore_core::Retry`] re-runs ended without an answer.
pub(crate) enum Failed {
    /// A concurrent writer got there first; nothing was written: run again.
    Lost,
    /// The driver failed (maybe a race the server aborted, see [`is_retryable`]).
    Db(sqlx::Error),
    /// A stored value or a rule refused it.
    Store(Error),
}

impl From<sqlx::Error> for Failed {
    fn from(e: sqlx::Error) -> Self {
        Failed::Db(e)
    }
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Store(e)
    }
}

impl Failed {
    /// What the retry loop does with it: run again (`Ok(None)`) after a lost race or an aborted
    /// statement, stop with the mapped error otherwise.
    pub(crate) fn retry<T>(self) -> imstore_core::Result<Option<T>> {
        match self {
            Failed::Lost => Ok(None),
            Failed::Db(e) if is_retryable(&e) => Ok(None),
            Failed::Db(e) => Err(map(e)),
            Failed::Store(e) => Err(e),
        }
    }
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
            ("55P03", ErrorKind::Unavailable),
            ("25006", ErrorKind::Unavailable),
            ("08006", ErrorKind::Unavailable),
            ("53300", ErrorKind::Unavailable),
            ("53100", ErrorKind::Backend),
            ("53400", ErrorKind::Backend),
            ("54000", ErrorKind::Backend),
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
            ErrorKind::Backend
        );
        assert!(!is_retryable(&sqlx::Error::PoolTimedOut));
    }
}
