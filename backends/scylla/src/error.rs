//! Driver errors mapped once to the contract's [`ErrorKind`]s.
//!
//! Only what a retry may cure (timeouts, unavailable or overloaded replicas, broken or missing
//! connections, schema agreement not reached) becomes [`ErrorKind::Unavailable`], which
//! [`Error::is_temporary`] reports. A replica that *failed* a read or write (`READ_FAILURE`,
//! `WRITE_FAILURE`: too many tombstones, a mutation over the commitlog limit, a replica-side
//! exception) fails the same way on every retry, so it is [`ErrorKind::Backend`], like statements
//! the server refuses (syntax, invalid, too large, config, authorisation). Rows that do not have the
//! shape the schema promises are [`Error::corrupt`] (`Backend`): retrying will not fix them.
//!
//! Protocol v4 (what the driver speaks) carries no per-node failure-reason map in `READ_FAILURE`
//! (only `numfailures`); Cassandra puts the reasons in the error text
//! (`... 1 failures: READ_TOO_MANY_TOMBSTONES from /127.0.0.1:7000`), so the server-limit cases
//! are told apart by that text, only to name the limit in the message: the kind never depends
//! on it.

use imstore_core::{Error, ErrorKind};
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, PrepareError, RequestAttemptError,
    SchemaAgreementError,
};

/// The kind a server-side error stands for.
fn db_kind(db: &DbError) -> ErrorKind {
    match db {
        // A read timeout can come from a slow tombstone scan below the failure threshold, but
        // also from a replica that is merely busy: a retry may succeed, so it stays temporary.
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

/// The server error behind an execution error, with the server's own text.
fn db_error(e: &ExecutionError) -> Option<(&DbError, &str)> {
    let attempt = match e {
        ExecutionError::LastAttemptError(a) => a,
        ExecutionError::PrepareError(PrepareError::AllAttemptsFailed { first_attempt }) => {
            first_attempt
        }
        _ => return None,
    };
    match attempt {
        RequestAttemptError::DbError(db, text) => Some((db, text.as_str())),
        _ => None,
    }
}

/// The message of a failure caused by a server limit, naming the limit, so that an operator
/// sees which setting or which data (tombstones, a value's size) it is about.
fn limit_message(db: &DbError, text: &str) -> Option<&'static str> {
    let upper = text.to_ascii_uppercase();
    match db {
        DbError::ReadFailure { .. } if upper.contains("TOMBSTONE") => Some(
            "a replica refused the read: it would pass more tombstones than the server's \
             tombstone_failure_threshold (READ_TOO_MANY_TOMBSTONES); a retry fails the same way \
             until compaction drops them",
        ),
        DbError::ReadFailure { .. } => {
            Some("a replica failed the read (READ_FAILURE); a retry fails the same way")
        }
        DbError::WriteFailure { .. } if upper.contains("TOO LARGE") => Some(
            "a replica refused the mutation: it is over the server's max_mutation_size (half a \
             commitlog segment by default)",
        ),
        DbError::WriteFailure { .. } => {
            Some("a replica failed the write (WRITE_FAILURE); a retry fails the same way")
        }
        DbError::Invalid if upper.contains("BATCH TOO LARGE") => {
            Some("the server refused the batch: it is over the server's batch_size_fail_threshold")
        }
        DbError::Invalid if upper.contains("OVERSIZED") || upper.contains("TOO LARGE") => Some(
            "the server refused a value over its size limits (max_mutation_size, \
             native_transport_max_frame_size)",
        ),
        DbError::Invalid if upper.contains("GUARDRAIL") => {
            Some("the server refused the statement: a guardrail threshold was exceeded")
        }
        _ => None,
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
    let message = db_error(&e)
        .and_then(|(db, text)| limit_message(db, text))
        .unwrap_or("statement failed");
    Error::new(execution_kind(&e), message).with_source(e)
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

    /// A server error as the driver hands it over after its last attempt.
    fn db(db: DbError, text: &str) -> ExecutionError {
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, text.into()))
    }

    /// What Cassandra 5 sends (protocol v4) when a replica hits `tombstone_failure_threshold`:
    /// a READ_FAILURE with the failure reason only in the text.
    fn tombstone_failure() -> ExecutionError {
        db(
            DbError::ReadFailure {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                numfailures: 1,
                data_present: false,
            },
            "Operation failed - received 0 responses and 1 failures: READ_TOO_MANY_TOMBSTONES \
             from localhost/127.0.0.1:7000",
        )
    }

    #[test]
    fn a_tombstone_overwhelmed_read_is_permanent_and_names_the_threshold() {
        let e = execution(tombstone_failure());
        assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
        assert!(!e.is_temporary());
        assert!(
            !lwt_outcome_unknown(&e),
            "a failed read is not an unknown LWT outcome"
        );
        assert!(e.message().contains("tombstone_failure_threshold"), "{e}");
        // The same failure met while preparing is classified the same way.
        let ExecutionError::LastAttemptError(attempt) = tombstone_failure() else {
            unreachable!()
        };
        let e = execution(ExecutionError::PrepareError(
            PrepareError::AllAttemptsFailed {
                first_attempt: attempt,
            },
        ));
        assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
        assert!(e.message().contains("tombstone_failure_threshold"), "{e}");
    }

    #[test]
    fn a_read_timeout_stays_temporary() {
        let e = execution(db(
            DbError::ReadTimeout {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                data_present: false,
            },
            "Operation timed out - received only 0 responses.",
        ));
        assert!(e.is_temporary(), "{e}");
    }

    #[test]
    fn server_side_limits_are_never_temporary() {
        let other_read_failure = db(
            DbError::ReadFailure {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                numfailures: 1,
                data_present: false,
            },
            "Operation failed - received 0 responses and 1 failures: UNKNOWN from /127.0.0.1",
        );
        let too_large = db(
            DbError::WriteFailure {
                consistency: Consistency::LocalQuorum,
                received: 0,
                required: 1,
                numfailures: 1,
                write_type: WriteType::Simple,
            },
            "Mutation of 17MiB is too large for the maximum size of 16MiB",
        );
        let rejected = db(
            DbError::Invalid,
            "Rejected an oversized mutation (17000000/16777216)",
        );
        let batch = db(DbError::Invalid, "Batch too large");
        let guardrail = db(
            DbError::Invalid,
            "Guardrail partition_size violated: partition is too big",
        );
        for (e, names) in [
            (other_read_failure, "READ_FAILURE"),
            (too_large, "max_mutation_size"),
            (rejected, "max_mutation_size"),
            (batch, "batch_size_fail_threshold"),
            (guardrail, "guardrail"),
        ] {
            let e = execution(e);
            assert_eq!(e.kind(), ErrorKind::Backend, "{e}");
            assert!(!e.is_temporary());
            assert!(e.message().contains(names), "{e} should name {names}");
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
