//! How to reach the database: URL, pool size, schema, and whether to migrate on connect.

use std::time::Duration;

use imstore_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

/// Connection settings of a [`crate::PostgresBackend`]; build with [`PostgresConfig::new`] and the
/// `with_*` methods (each keeps every other setting); checked by [`PostgresConfig::validate`]
/// when the store is built.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    url: String,
    max_connections: u32,
    migrate_on_connect: bool,
    schema: Option<String>,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("migrate_on_connect", &self.migrate_on_connect)
            .field("schema", &self.schema)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

impl PostgresConfig {
    /// Settings for `url` (`postgres://user:pass@host:port/db`): a pool of 8 connections, the
    /// server's default `search_path`, migrations applied on connect, 30 s pool acquire timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            max_connections: 8,
            migrate_on_connect: true,
            schema: None,
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// At most `n` pooled connections (1..=1000, checked on connect).
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Whether connecting applies pending migrations (`true`), or leaves it to an explicit
    /// [`crate::PostgresBackend::migrate`] call (`false`, for deployments that migrate separately).
    pub fn with_migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate_on_connect = migrate;
        self
    }

    /// Keep every table in `schema` (which must exist): each connection's `search_path` is set
    /// to it. The name must be a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63 bytes).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How long an operation waits for a pooled connection before failing as `Unavailable`.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// The connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The pool's maximum size.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Whether connecting applies pending migrations.
    pub fn migrate_on_connect(&self) -> bool {
        self.migrate_on_connect
    }

    /// The schema the tables live in, when not the server's default `search_path`.
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// How long an operation waits for a pooled connection.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// Refuses, as `InvalidInput` naming the setting, what the server would reject late or
    /// dangerously: a malformed URL, a pool size outside 1..=1000, a schema name that is not a
    /// plain identifier.
    pub fn validate(&self) -> Result<()> {
        self.connect_options()?;
        if !(1..=1000).contains(&self.max_connections) {
            return Err(Error::invalid_input(
                "max_connections",
                "must be between 1 and 1000",
            ));
        }
        if let Some(schema) = &self.schema {
            validate_schema_name(schema)?;
        }
        Ok(())
    }

    /// The driver's connection options: the URL, with `search_path` set to the schema.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions> {
        // The parse error is not attached: it may quote the URL, password included.
        let options: PgConnectOptions = self
            .url
            .parse()
            .map_err(|_| Error::invalid_input("url", "is not a valid PostgreSQL URL"))?;
        Ok(match &self.schema {
            Some(schema) => options.options([("search_path", schema.as_str())]),
            None => options,
        })
    }
}

/// Accepts only names that need no quoting anywhere (`search_path`, DDL): `[a-z_][a-z0-9_]*`, ≤ 63 bytes.
pub fn validate_schema_name(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > 63 || schema.starts_with("pg_") {
        return Err(Error::invalid_input(
            "schema",
            "must match [a-z_][a-z0-9_]*, be at most 63 bytes and not start with pg_",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema_name("pg_123_4_abcd").is_err());
        assert!(validate_schema_name("imstore").is_ok());
        assert!(validate_schema_name("_a1").is_ok());
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            &"a".repeat(64),
        ] {
            assert_eq!(
                validate_schema_name(bad).unwrap_err().field(),
                Some("schema"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn debug_never_prints_the_url() {
        let c = PostgresConfig::new("postgres://u:secret@h/db");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn pool_size_is_bounded() {
        let c = PostgresConfig::new("postgres://h/db").with_max_connections(0);
        assert_eq!(c.validate().unwrap_err().field(), Some("max_connections"));
    }
}
