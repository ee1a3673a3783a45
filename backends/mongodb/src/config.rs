//! How a [`crate::MongoBackend`] connects: URL, database, read and write concerns, timeout.

use std::time::Duration;

use imstore_core::{Error, Result};
use mongodb::options::{Acknowledgment, ConnectionString, ReadConcern, WriteConcern};

/// Connection settings of a [`crate::MongoBackend`]; build with [`MongoConfig::new`] or
/// [`MongoConfig::from_url`] and the `with_*` methods (each keeps every other setting). Checked
/// by [`MongoConfig::validate`] when the backend connects, so a setting the server would refuse
/// is `InvalidInput` naming it, never a `Backend` error from the first write.
#[derive(Clone)]
pub struct MongoConfig {
    url: String,
    database: String,
    write_concern: WriteConcern,
    read_concern: Option<ReadConcern>,
    operation_timeout: Duration,
}

impl std::fmt::Debug for MongoConfig {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &"<redacted>")
            .field("database", &self.database)
            .field("write_concern", &self.write_concern)
            .field("read_concern", &self.read_concern)
            .field("operation_timeout", &self.operation_timeout)
            .finish()
    }
}

/// MongoDB refuses database names of 64 bytes or more.
const MAX_DATABASE_BYTES: usize = 63;

/// Characters MongoDB refuses in a database name on some platform (Unix: `/\. "$`; Windows
/// adds `*<>:|?`): refused everywhere, so a name that works on one deployment works on all.
const FORBIDDEN_IN_DATABASE: &[char] =
    &['/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?'];

impl MongoConfig {
    /// Settings for `database` on the deployment at `url` (`mongodb://host:port/?replicaSet=rs0`):
    /// `w: "majority"` with a 10 s `wtimeout`, read concern `majority`, a 30 s operation timeout.
    pub fn new(url: impl Into<String>, database: impl Into<String>) -> Self {
        MongoConfig {
            url: url.into(),
            database: database.into(),
            write_concern: WriteConcern::builder()
                .w(Acknowledgment::Majority)
                .w_timeout(Duration::from_secs(10))
                .build(),
            read_concern: Some(ReadConcern::majority()),
            operation_timeout: Duration::from_secs(30),
        }
    }

    /// Settings for the deployment and database named by `url` (`mongodb://host/chat`), with the
    /// defaults of [`MongoConfig::new`]; a URL without a database is `InvalidInput` on `url`.
    pub fn from_url(url: impl Into<String>) -> Result<Self> {
        let url = url.into();
        let database = parse(&url)?
            .default_database
            .ok_or_else(|| Error::invalid_input("url", "names no database (mongodb://host/db)"))?;
        Ok(MongoConfig::new(url, database))
    }

    /// The write concern of every write (`w`, `wtimeout`, `j`). With fewer than a majority of
    /// nodes acknowledging, a failover can roll back an acknowledged transition.
    pub fn with_write_concern(mut self, write_concern: WriteConcern) -> Self {
        self.write_concern = write_concern;
        self
    }

    /// The read concern of every read (`None`: the server's default, `local`). `majority`
    /// (the default) keeps a decision or a feed cursor from resting on a write a failover
    /// rolls back.
    pub fn with_read_concern(mut self, read_concern: Option<ReadConcern>) -> Self {
        self.read_concern = read_concern;
        self
    }

    /// How long one store operation (its reads, writes and retries) may take before it fails as
    /// `Unavailable` (more than zero). A write may still land after the timeout: retrying with
    /// the same request id or msg_id is always safe.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database holding the store's collections.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The write concern of every write.
    pub fn write_concern(&self) -> &WriteConcern {
        &self.write_concern
    }

    /// The read concern of every read, when not the server's default.
    pub fn read_concern(&self) -> Option<&ReadConcern> {
        self.read_concern.as_ref()
    }

    /// How long one store operation may take.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// Refuses, as `InvalidInput` naming the setting, what the driver or the server would reject
    /// later: a malformed URL, a database name MongoDB refuses, a zero timeout or `wtimeout`.
    pub fn validate(&self) -> Result<()> {
        parse(&self.url)?;
        validate_database_name(&self.database)?;
        if self.operation_timeout.is_zero() {
            return Err(Error::invalid_input(
                "operation_timeout",
                "must be more than zero",
            ));
        }
        if self.write_concern.w_timeout.is_some_and(|d| d.is_zero()) {
            // The server reads wtimeout 0 as "wait forever", not "fail at once".
            return Err(Error::invalid_input(
                "write_concern",
                "wtimeout must be more than zero (or unset)",
            ));
        }
        Ok(())
    }
}

fn parse(url: &str) -> Result<ConnectionString> {
    // The parse error is not attached: it may quote the URL, password included.
    ConnectionString::parse(url)
        .map_err(|_| Error::invalid_input("url", "is not a valid MongoDB connection string"))
}

/// Accepts only database names every MongoDB deployment takes: 1..=63 bytes, none of
/// `/\. "$*<>:|?`, no control character. Anything else is `InvalidInput` on `database`.
pub fn validate_database_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_DATABASE_BYTES {
        return Err(Error::invalid_input(
            "database",
            format!("must be 1 to {MAX_DATABASE_BYTES} bytes"),
        ));
    }
    if name
        .chars()
        .any(|c| c.is_control() || FORBIDDEN_IN_DATABASE.contains(&c))
    {
        return Err(Error::invalid_input(
            "database",
            "must not contain control characters or any of / \\ . space \" $ * < > : | ?",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_core::ErrorKind;

    #[test]
    fn debug_never_prints_the_password() {
        let c = MongoConfig::new("mongodb://alice:s3cret@db.example:27017/?tls=true", "chat");
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(shown.contains("chat"));
    }

    #[test]
    fn database_names_the_server_refuses_are_invalid_input() {
        let long = "x".repeat(64);
        for bad in [
            "", "a.b", "$cmd", "a b", "a/b", "a\\b", "a\"b", "a\0b", "a:b", &long,
        ] {
            let e = MongoConfig::new("mongodb://h", bad).validate().unwrap_err();
            assert_eq!(
                (e.kind(), e.field()),
                (ErrorKind::InvalidInput, Some("database")),
                "{bad:?}"
            );
        }
        let ok = "x".repeat(63);
        for good in ["chat", "im_store-2", ok.as_str()] {
            MongoConfig::new("mongodb://h", good).validate().unwrap();
        }
    }

    #[test]
    fn urls_and_timeouts_are_checked() {
        let e = MongoConfig::new("postgres://h", "db")
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("url"));
        let e = MongoConfig::from_url("mongodb://h:1").unwrap_err();
        assert_eq!(e.field(), Some("url"));
        let c = MongoConfig::from_url("mongodb://u:p@h:1/chat?w=1").unwrap();
        assert_eq!(c.database(), "chat");
        let e = c
            .clone()
            .with_operation_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), Some("operation_timeout"));
        let wc = WriteConcern::builder().w_timeout(Duration::ZERO).build();
        let e = c.with_write_concern(wc).validate().unwrap_err();
        assert_eq!(e.field(), Some("write_concern"));
    }
}
