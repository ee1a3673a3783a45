//! How to reach the database: URL, pool, schema, and whether to migrate on connect.

use std::time::Duration;

use imstore_core::{Error, Result};
use sqlx::postgres::PgConnectOptions;

/// Connection settings of a [`crate::PostgresBackend`]; build with [`PostgresConfig::new`] and the
/// `with_*` methods (each keeps every other setting). Checked by [`PostgresConfig::validate`]
/// when the store is built, so a setting PostgreSQL would refuse is `InvalidInput` naming it.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    url: String,
    max_connections: u32,
    migrate_on_connect: bool,
    schema: Option<String>,
    acquire_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    ping_before_acquire: bool,
    state_cache: usize,
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
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("ping_before_acquire", &self.ping_before_acquire)
            .field("state_cache", &self.state_cache)
            .finish()
    }
}

/// The default [`PostgresConfig::with_state_cache`]: about 200 bytes an entry, a few MiB.
pub(crate) const DEFAULT_STATE_CACHE: usize = 16_384;

/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer names are truncated.
const MAX_IDENTIFIER_BYTES: usize = 63;

impl PostgresConfig {
    /// Settings for `url` (`postgres://user:pass@host:port/db`): a pool of 8 connections, the
    /// server's default `search_path`, migrations applied on connect, a 30 s acquire timeout,
    /// idle connections closed after 5 min, every connection retired after 30 min, no ping
    /// before a connection is handed out, and the states of the last 16,384 messages this
    /// handle touched kept for one-round-trip transitions.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            max_connections: 8,
            migrate_on_connect: true,
            schema: None,
            acquire_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(5 * 60)),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            ping_before_acquire: false,
            state_cache: DEFAULT_STATE_CACHE,
        }
    }

    /// At most `n` pooled connections (1..=1000).
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// Whether connecting applies pending migrations (`true`), or leaves it to an explicit
    /// [`crate::PostgresBackend::migrate`] call (`false`, for deployments that migrate
    /// separately).
    pub fn with_migrate_on_connect(mut self, migrate: bool) -> Self {
        self.migrate_on_connect = migrate;
        self
    }

    /// Keep every table in `schema`, which must exist: each connection's `search_path` is set to
    /// it. The name must be a plain lowercase identifier (see [`validate_schema_name`]).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// How long an operation waits for a pooled connection before failing as `Unavailable`
    /// (more than zero).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Close a connection that sat idle in the pool this long (`None`: never). By default the
    /// pool does not ping a connection before handing it out
    /// ([`Self::with_ping_before_acquire`]), so this bounds how stale one can be.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Retire every connection after this long (`None`: never), so server-side session state
    /// and connections through a restarted proxy do not live forever.
    pub fn with_max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Whether the pool pings a connection (one `Sync` round trip) every time it hands one out
    /// (default `false`). Off, a call costs its statements only, and a connection the server
    /// closed while idle (restart, `pg_terminate_backend`, a proxy's timeout) fails the first
    /// statement sent on it as `Unavailable` and is discarded; reads re-run once on another
    /// connection, a write is left to the caller's retry (same request id, same answer). On, that
    /// first statement goes to a live connection, at one extra round trip per call: for
    /// networks that drop idle connections silently faster than [`Self::with_idle_timeout`].
    pub fn with_ping_before_acquire(mut self, ping: bool) -> Self {
        self.ping_before_acquire = ping;
        self
    }

    /// Whether the pool pings a connection before handing it out.
    pub fn ping_before_acquire(&self) -> bool {
        self.ping_before_acquire
    }

    /// Keep the states (sender, lifecycle) of about `entries` messages this handle recently
    /// inserted, read or changed (0: none). A transition of a message still in it is decided on
    /// that state and applied in one round trip if the stored row still equals it, column by
    /// column; otherwise the same statement reads the row and the transition takes the usual
    /// two. Never trusted, so never a correctness setting: only memory against round trips.
    pub fn with_state_cache(mut self, entries: usize) -> Self {
        self.state_cache = entries;
        self
    }

    /// How many message states the handle keeps for one-round-trip transitions.
    pub fn state_cache(&self) -> usize {
        self.state_cache
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

    /// How long a connection may sit idle in the pool.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// How long a connection lives at most.
    pub fn max_lifetime(&self) -> Option<Duration> {
        self.max_lifetime
    }

    /// Refuses, as `InvalidInput` naming the setting, what PostgreSQL or the pool would reject
    /// late or dangerously: a malformed URL, a pool size outside 1..=1000, a zero timeout, a
    /// schema name that is not a plain identifier.
    pub fn validate(&self) -> Result<()> {
        self.connect_options()?;
        if !(1..=1000).contains(&self.max_connections) {
            return Err(Error::invalid_input(
                "max_connections",
                "must be between 1 and 1000",
            ));
        }
        if self.acquire_timeout.is_zero() {
            return Err(Error::invalid_input(
                "acquire_timeout",
                "must be more than zero",
            ));
        }
        if self.idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_input(
                "idle_timeout",
                "must be more than zero (or None)",
            ));
        }
        if self.max_lifetime.is_some_and(|d| d.is_zero()) {
            return Err(Error::invalid_input(
                "max_lifetime",
                "must be more than zero (or None)",
            ));
        }
        if let Some(schema) = &self.schema {
            validate_schema_name(schema)?;
        }
        Ok(())
    }

    /// The driver's connection options: the URL, with `search_path` set to the schema.
    pub(crate) fn connect_options(&self) -> Result<PgConnectOptions> {
        // sqlx would take any scheme; a mysql:// URL here is a configuration mistake.
        let scheme_ok = ["postgres://", "postgresql://"].iter().any(|p| {
            self.url
                .get(..p.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(p))
        });
        if !scheme_ok {
            return Err(Error::invalid_input(
                "url",
                "must start with postgres:// or postgresql://",
            ));
        }
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

/// Accepts only schema names that PostgreSQL takes as they are, everywhere (`search_path`, DDL,
/// no quoting, no truncation): `[a-z_][a-z0-9_]*`, at most 63 bytes, not `pg_*` (reserved for
/// system schemas) and not `information_schema`. Anything else is `InvalidInput` on `schema`.
pub fn validate_schema_name(schema: &str) -> Result<()> {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || schema.len() > MAX_IDENTIFIER_BYTES {
        return Err(Error::invalid_input(
            "schema",
            "must match [a-z_][a-z0-9_]* and be at most 63 bytes",
        ));
    }
    if schema.starts_with("pg_") || schema == "information_schema" {
        return Err(Error::invalid_input(
            "schema",
            "is reserved by PostgreSQL (pg_* and information_schema)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(validate_schema_name("imstore").is_ok());
        assert!(validate_schema_name("_a1").is_ok());
        assert!(validate_schema_name(&"a".repeat(63)).is_ok());
        for bad in [
            "",
            "1a",
            "A",
            "a-b",
            "a b",
            "a\"b",
            "a;drop",
            "a.b",
            "pg_123_4_abcd",
            "pg_catalog",
            "information_schema",
            "é",
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
    fn the_pool_does_not_ping_unless_asked() {
        let c = PostgresConfig::new("postgres://h/db");
        assert!(!c.ping_before_acquire());
        let on = c.clone().with_ping_before_acquire(true);
        assert!(on.ping_before_acquire() && on.validate().is_ok());
        assert_eq!(on.with_ping_before_acquire(false), c);
    }

    #[test]
    fn debug_never_prints_the_url() {
        let c = PostgresConfig::new("postgres://u:secret@h/db");
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn bad_settings_are_invalid_input_naming_the_setting() {
        let ok = PostgresConfig::new("postgres://h/db");
        assert!(ok.validate().is_ok());
        for (config, field) in [
            (ok.clone().with_max_connections(0), "max_connections"),
            (ok.clone().with_max_connections(1001), "max_connections"),
            (
                ok.clone().with_acquire_timeout(Duration::ZERO),
                "acquire_timeout",
            ),
            (
                ok.clone().with_idle_timeout(Some(Duration::ZERO)),
                "idle_timeout",
            ),
            (
                ok.clone().with_max_lifetime(Some(Duration::ZERO)),
                "max_lifetime",
            ),
            (ok.clone().with_schema("pg_x"), "schema"),
            (PostgresConfig::new("mysql://u:secret@h/db"), "url"),
            (PostgresConfig::new("not a url"), "url"),
        ] {
            let err = config.validate().unwrap_err();
            assert_eq!(err.field(), Some(field), "{config:?}");
            assert!(!err.to_string().contains("secret"));
        }
    }
}
