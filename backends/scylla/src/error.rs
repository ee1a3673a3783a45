//! Driver errors mapped once to the contract's [`ErrorKind`]s.
//!
//! Only what a retry may cure (timeouts, unavailable or overloaded replicas, broken or missing
//! connections, schema agreement not reached) becomes [`ErrorKind::Unavailable`], which
//! [`Error::is_temporary`] reports. A replica that *failed* a read or write (`READ_FAILURE`,
//! `WRITE_FAILURE`: too many tombstones, a mutation over the commitlog limit, a replica-side
//! exception) fails the same way on every retry, so it is [`ErrorKind::Backend`], like statements
//! the server refuses (syntax, invalid, too large, config, authorisation). Rows that do not have the
//! shape the schema promises are [`Error::corrupt`] (`Backend`): retrying will not fix them.

use imstore_core::{Error, ErrorKind};
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError,
    SchemaAgreementError,
};

/// The kind a server-side error stands for.
fn db_kind(db: &DbError) -> ErrorKind {
    match db {
        DbError::Unavailable { .. }
        | DbError::Overloaded
        | DbError::IsBootstrapping
        | DbError::ReadTimeout { .. }
        | DbError::WriteTimeout { .. }
        | DbError::RateLimitReached { .. } => ErrorKind::Unavailable,
        // READ_FAILURE / WRITE_FAILURE are replicas answering "I could not": on Cassandra the
        // message names the reason (READ_TOO_MANY_TOMBSTONES, a mutation over
        // `max_mutation_size`), none of which a retry changes.
        _ => ErrorKind::Backend,
    }
}

fn attempt_kind(e: &RequestAttemptError) -> ErrorKind {
    match e {
        RequestAttemptError::DbError(db, _) => db_kind(db),
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => ErrorKind::Unavailable,
        _ => ErrorKind::Backend,
    }
}

fn prepare_kind(e: &PrepareError) -> ErrorKind {
    match e {
        PrepareError::ConnectionPoolError(_) => ErrorKind::Unavailable,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_kind(first_attempt),
        _ => ErrorKind::Backend,
    }
}

fn execution_kind(e: &ExecutionError) -> ErrorKind {
    match e {
        ExecutionError::EmptyPlan
        | ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => ErrorKind::Unavailable,
        ExecutionError::LastAttemptError(a) => attempt_kind(a),
        ExecutionError::PrepareError(p) => prepare_kind(p),
        _ => ErrorKind::Backend,
    }
}

/// A failed statement execution.
pub(crate) fn execution(e: ExecutionError) -> Error {
    Error::new(execution_kind(&e), "statement failed").with_source(e)
}

/// A statement that could not be prepared at start-up.
pub(crate) fn prepare(e: PrepareError) -> Error {
    Error::new(prepare_kind(&e), "statement could not be prepared").with_source(e)
}

/// A session that could not be opened.
pub(crate) fn new_session(e: NewSessionError) -> Error {
    let kind = match &e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            ErrorKind::InvalidInput
        }
        _ => ErrorKind::Unavailable,
    };
    Error::new(kind, "could not connect to the cluster").with_source(e)
}

/// Schema agreement not reached after DDL.
pub(crate) fn schema_agreement(e: SchemaAgreementError) -> Error {
    Error::new(ErrorKind::Unavailable, "schema agreement was not reached").with_source(e)
}

/// A row or result that does not have the shape the schema promises.
pub(crate) fn decode(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::corrupt(format!("could not decode {what}")).with_source(e)
}

/// A stored value that decoded but is not valid for the contract (negative version, bad id).
pub(crate) fn corrupt(what: &str) -> Error {
    Error::corrupt(format!("stored {what} is invalid"))
}

/// True when a conditional (Paxos) write timed out or lost its coordinator: it may or may not have
/// been applied, so the caller re-reads instead of failing.
pub(crate) fn lwt_outcome_unknown(e: &Error) -> bool {
    e.kind() == ErrorKind::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use scylla::errors::WriteType;
    use scylla::statement::Consistency;

    /// True when the error is a Paxos write timeout.
    fn is_cas_timeout(e: &ExecutionError) -> bool {
        matches!(
            e,
            ExecutionError::LastAttemptError(RequestAttemptError::DbError(
                DbError::WriteTimeout {
                    write_type: WriteType::Cas,
                    ..
                },
                _
            ))
        )
    }

    #[test]
    fn timeouts_and_unavailable_replicas_are_temporary() {
        let timeout = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout {
                consistency: Consistency::Quorum,
                received: 0,
                required: 1,
                write_type: WriteType::Cas,
            },
            "timeout".into(),
        ));
        assert!(is_cas_timeout(&timeout));
        assert!(execution(timeout).is_temporary());
        let unavailable = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Unavailable {
                consistency: Consistency::Quorum,
                required: 2,
                alive: 1,
            },
            "down".into(),
        ));
        assert!(execution(unavailable).is_temporary());
        assert!(
            execution(ExecutionError::RequestTimeout(
                std::time::Duration::from_secs(1)
            ))
            .is_temporary()
        );
    }

    #[test]
    fn server_side_limits_are_never_temporary() {
        let tombstones = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::ReadFailure {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                numfailures: 1,
                data_present: false,
            },
            "Operation failed - received 0 responses and 1 failures: READ_TOO_MANY_TOMBSTONES"
                .into(),
        ));
        let too_large = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteFailure {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                numfailures: 1,
                write_type: WriteType::Simple,
            },
            "Mutation of 17MiB is too large for the maximum size of 16MiB".into(),
        ));
        let rejected = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::Invalid,
            "Rejected an oversized mutation (17000000/16777216)".into(),
        ));
        for e in [tombstones, too_large, rejected] {
            let e = execution(e);
            assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
            assert!(!e.is_temporary());
        }
    }

    #[test]
    fn refused_statements_are_permanent() {
        let syntax = ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::SyntaxError,
            "bad".into(),
        ));
        let e = execution(syntax);
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_temporary());
    }
}
