//! One error type for every backend: a kind per contract outcome, the operation, the backend, the cause.

use std::fmt;

/// What went wrong, as the contract names it; the suite and callers decide on this, never on text.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The message (or conversation) does not exist, or was purged.
    NotFound,
    /// The requester may not do this to this message (not the sender, not a moderator).
    Forbidden,
    /// The requester was allowed, but the window for this action has closed.
    WindowExpired,
    /// The message is in a state this action cannot leave (e.g. restoring a deleted message).
    InvalidState,
    /// The request's client timestamp is too far from the store's clock.
    StaleRequest,
    /// A field of the request is malformed; [`Error::field`] names it.
    InvalidInput,
    /// The write clashes with what is stored (same msg_id with other fields, a reused request id).
    Conflict,
    /// Stored content could not be decoded (tampered, truncated, foreign, unknown key).
    Decode,
    /// The backend could not be reached or timed out: temporary, safe to retry.
    Unavailable,
    /// The backend failed in a way that retrying will not fix (schema, permissions, driver bug).
    Backend,
}

impl ErrorKind {
    /// A stable snake_case name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::WindowExpired => "window_expired",
            ErrorKind::InvalidState => "invalid_state",
            ErrorKind::StaleRequest => "stale_request",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Decode => "decode",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Backend => "backend",
        }
    }
}

impl ErrorKind {
    /// Every kind, for parsing and exhaustive tests.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::NotFound,
        ErrorKind::Forbidden,
        ErrorKind::WindowExpired,
        ErrorKind::InvalidState,
        ErrorKind::StaleRequest,
        ErrorKind::InvalidInput,
        ErrorKind::Conflict,
        ErrorKind::Decode,
        ErrorKind::Unavailable,
        ErrorKind::Backend,
    ];

    /// The kind whose [`ErrorKind::as_str`] is `s` (as stored in a request record).
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The store operation an error came from.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Connecting, migrating, or building the store.
    Connect,
    /// `insert` or `insert_batch`.
    Insert,
    /// `get`.
    Get,
    /// `list`.
    List,
    /// A recall transition.
    Recall,
    /// A restore transition.
    Restore,
    /// A delete transition.
    Delete,
    /// `audit`.
    Audit,
    /// `attachment_access`.
    AttachmentAccess,
    /// `changes_since`.
    Changes,
    /// `purge`.
    Purge,
    /// `set_legal_hold`.
    LegalHold,
    /// The re-key job (`rekey`, `key_usage`).
    Rekey,
    /// Encoding or decoding content outside a store call.
    Codec,
    /// Validating a policy or an input before any store call.
    Validate,
}

impl Operation {
    /// A stable snake_case name, used in tracing spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Connect => "connect",
            Operation::Insert => "insert",
            Operation::Get => "get",
            Operation::List => "list",
            Operation::Recall => "recall",
            Operation::Restore => "restore",
            Operation::Delete => "delete",
            Operation::Audit => "audit",
            Operation::AttachmentAccess => "attachment_access",
            Operation::Changes => "changes_since",
            Operation::Purge => "purge",
            Operation::LegalHold => "legal_hold",
            Operation::Rekey => "rekey",
            Operation::Codec => "codec",
            Operation::Validate => "validate",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An imstore error: its kind, where it happened, a human message and the underlying cause.
///
/// Built fluently: `Error::new(ErrorKind::NotFound, "no such message").with_operation(Operation::Get)`.
pub struct Error {
    kind: ErrorKind,
    operation: Option<Operation>,
    backend: Option<&'static str>,
    field: Option<&'static str>,
    message: String,
    source: Option<Source>,
    persistent: bool,
}

/// The result type of every store call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` with a human-readable message (never containing message content or keys).
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            operation: None,
            backend: None,
            field: None,
            message: message.into(),
            source: None,
            persistent: false,
        }
    }

    /// [`ErrorKind::NotFound`] for a message that does not exist (or was purged).
    pub fn not_found(msg_id: crate::ids::MsgId) -> Self {
        Error::new(ErrorKind::NotFound, format!("message {msg_id} not found"))
    }

    /// [`ErrorKind::Backend`] for a stored field that cannot be what the store wrote (corruption,
    /// or a row written by something else): retrying will not fix it.
    pub fn corrupt(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Backend, what)
    }

    /// Marks an error whose retries were already spent inside the store: even if its kind is
    /// [`ErrorKind::Unavailable`], an immediate retry by the caller is not expected to help.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// An [`ErrorKind::InvalidInput`] naming the offending field and why it was refused.
    pub fn invalid_input(field: &'static str, why: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidInput, why).with_field(field)
    }

    /// Records the operation, unless one was already recorded closer to the cause.
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.operation.get_or_insert(operation);
        self
    }

    /// Records the backend, unless one was already recorded.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend.get_or_insert(backend);
        self
    }

    /// Records the offending input field.
    pub fn with_field(mut self, field: &'static str) -> Self {
        self.field = Some(field);
        self
    }

    /// Attaches the underlying cause (a driver error, an I/O error).
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The contract outcome this error stands for.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The store operation that failed, when known.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The backend that failed, when known.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// The input field an [`ErrorKind::InvalidInput`] refers to.
    pub fn field(&self) -> Option<&'static str> {
        self.field
    }

    /// The human-readable message, without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when the same call may succeed if retried soon: the backend was unavailable or timed
    /// out, and the store did not already spend its own retries on it (see [`Error::persistent`]).
    pub fn is_temporary(&self) -> bool {
        matches!(self.kind, ErrorKind::Unavailable) && !self.persistent
    }

    /// True when the store already retried this failure itself and gave up.
    pub fn is_persistent(&self) -> bool {
        self.persistent
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("operation", &self.operation)
            .field("backend", &self.backend)
            .field("field", &self.field)
            .field("message", &self.message)
            .field("persistent", &self.persistent);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(op) = self.operation {
            write!(f, " in {op}")?;
        }
        if let Some(backend) = self.backend {
            write!(f, " on {backend}")?;
        }
        if let Some(field) = self.field {
            write!(f, " (field `{field}`)")?;
        }
        // The cause is reachable through `source()`; printing it here too would repeat it in
        // every report that walks the chain.
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_temporary() {
        assert!(Error::new(ErrorKind::Unavailable, "x").is_temporary());
        for kind in [
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Backend,
            ErrorKind::Decode,
        ] {
            assert!(!Error::new(kind, "x").is_temporary(), "{kind}");
        }
    }

    #[test]
    fn exhausted_retries_are_not_temporary() {
        let e = Error::new(ErrorKind::Unavailable, "gave up").persistent();
        assert!(!e.is_temporary());
        assert!(e.is_persistent());
    }

    #[test]
    fn display_does_not_repeat_the_source() {
        let io = std::io::Error::other("connection reset");
        let e = Error::new(ErrorKind::Unavailable, "lost the server").with_source(io);
        assert_eq!(e.to_string(), "unavailable: lost the server");
        assert_eq!(
            std::error::Error::source(&e).unwrap().to_string(),
            "connection reset"
        );
    }

    #[test]
    fn display_names_kind_operation_backend_and_field() {
        let e = Error::invalid_input("sender_id", "must not be empty")
            .with_operation(Operation::Insert)
            .with_backend("memory");
        assert_eq!(
            e.to_string(),
            "invalid_input in insert on memory (field `sender_id`): must not be empty"
        );
        // The operation closest to the cause wins.
        assert_eq!(
            e.with_operation(Operation::Get).operation(),
            Some(Operation::Insert)
        );
    }
}
