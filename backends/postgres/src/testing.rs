//! The conformance factory for PostgreSQL (cargo feature `testing`): one fresh schema per case,
//! raw access to stored bytes, cleanup, and a sweeper for schemas that crashed runs left.
//!
//! Used by this crate's tests, by the benches, and by anyone running the suite against their
//! own server:
//!
//! ```no_run
//! # async fn demo() {
//! use imstore_postgres::testing::PgFactory;
//! let factory = PgFactory::from_env(); // IMSTORE_POSTGRES_URL; panics when unset
//! factory.sweep_leftovers().await;     // schemas of crashed runs, older than an hour
//! # }
//! ```
//!
//! The raw-content hooks exist only here, never in the production API: they bypass the codec
//! with plain SQL on the schema-qualified table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{Connect, ConversationId, MsgId, StoreSettings};
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio::sync::OnceCell;

use crate::{PostgresBackend, PostgresConfig, PostgresStore, validate_schema_name};

/// What the schema comment of a factory-made schema starts with; the creation time follows.
const COMMENT_TAG: &str = "imstore-testing created_at_ms=";

/// Makes an isolated schema per conformance case on one PostgreSQL server, and opens stores
/// over it. Takes its connection settings (URL with credentials, pool size) instead of
/// hard-coding them.
#[derive(Debug)]
pub struct PgFactory {
    url: String,
    prefix: String,
    pool_size: u32,
    leftover_age: Duration,
    acquire_timeout: Option<Duration>,
    admin: OnceCell<PgPool>,
}

impl PgFactory {
    /// The schema prefix of the conformance runs (not `pg`: PostgreSQL reserves `pg_*`).
    pub const DEFAULT_PREFIX: &'static str = "imspg";

    /// A factory on the server at `url` (`postgres://user:password@host:port/db`): schemas
    /// `imspg_<pid>_<n>_<salt>`, stores with 6 pooled connections (cases run concurrently), and
    /// a sweeper that drops leftovers older than an hour. Connects lazily, on first use.
    pub fn new(url: impl Into<String>) -> Self {
        PgFactory {
            url: url.into(),
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            pool_size: 6,
            leftover_age: Duration::from_secs(3600),
            acquire_timeout: None,
            admin: OnceCell::new(),
        }
    }

    /// A factory on `IMSTORE_POSTGRES_URL`; panics, saying how to start the servers, when it
    /// is unset: a test never skips itself.
    pub fn from_env() -> Self {
        PgFactory::new(require_env("IMSTORE_POSTGRES_URL"))
    }

    /// Schemas named `<prefix>_...`; the prefix must be a valid schema name itself.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Pooled connections of every store this factory opens.
    pub fn with_pool_size(mut self, n: u32) -> Self {
        self.pool_size = n;
        self
    }

    /// How long a store this factory opens waits for a pooled connection before `Unavailable`
    /// (default: the backend's). The fault tests shorten it so that callers waiting through an
    /// outage see it, instead of waiting it out silently.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }

    /// [`PgFactory::sweep_leftovers`] drops schemas of this prefix created longer ago than this
    /// (`Duration::ZERO`: all of them).
    pub fn with_leftover_age(mut self, age: Duration) -> Self {
        self.leftover_age = age;
        self
    }

    /// The server's URL (with its credentials: do not print it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A pool of two connections for administration (DDL, raw reads), opened on first use;
    /// panics when the server cannot be reached.
    pub async fn admin(&self) -> &PgPool {
        self.admin
            .get_or_init(|| async {
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&self.url)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at the factory's URL: {e}"))
            })
            .await
    }

    /// The configuration of a store over `schema`: the URL, the schema, the pool size (and the
    /// acquire timeout, when set).
    pub fn config(&self, schema: &str) -> PostgresConfig {
        let config = PostgresConfig::new(&self.url)
            .with_schema(schema)
            .with_max_connections(self.pool_size);
        match self.acquire_timeout {
            Some(t) => config.with_acquire_timeout(t),
            None => config,
        }
    }

    /// Creates schema `name` (which must be a valid schema name), tagged with its creation time
    /// for the sweeper; panics on failure.
    pub async fn create_schema(&self, name: &str) {
        validate_schema_name(name).expect("a plain schema name");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA {name}; COMMENT ON SCHEMA {name} IS '{COMMENT_TAG}{created}'"
        )))
        .execute(self.admin().await)
        .await
        .unwrap_or_else(|e| panic!("create schema {name}: {e}"));
    }

    /// Drops schema `name` and everything in it, if it exists; panics on failure.
    pub async fn drop_schema(&self, name: &str) {
        validate_schema_name(name).expect("a plain schema name");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE"
        )))
        .execute(self.admin().await)
        .await
        .unwrap_or_else(|e| panic!("drop schema {name}: {e}"));
    }

    /// Drops the schemas of this factory's prefix that crashed runs left behind: every
    /// `<prefix>_*` schema created longer ago than the leftover age (an hour unless set), and
    /// any `<prefix>_*` schema without the factory's creation tag (made by an older factory).
    /// Younger schemas are kept: they may belong to a run still going. Returns the names.
    pub async fn sweep_leftovers(&self) -> Vec<String> {
        let pattern = format!("{}\\_%", self.prefix.replace('_', "\\_"));
        let found: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT nspname::text, obj_description(oid, 'pg_namespace') FROM pg_namespace \
             WHERE nspname LIKE $1 ORDER BY nspname",
        )
        .bind(pattern)
        .fetch_all(self.admin().await)
        .await
        .expect("list schemas");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let cutoff = now.saturating_sub(self.leftover_age.as_millis());
        let mut dropped = Vec::new();
        for (name, comment) in found {
            let created = comment
                .as_deref()
                .and_then(|c| c.strip_prefix(COMMENT_TAG))
                .and_then(|t| t.parse::<u128>().ok());
            let stale = self.leftover_age.is_zero() || created.is_none_or(|t| t <= cutoff);
            if stale && validate_schema_name(&name).is_ok() {
                self.drop_schema(&name).await;
                dropped.push(name);
            }
        }
        dropped
    }
}

#[async_trait]
impl StoreFactory for PgFactory {
    type Store = PostgresStore;

    async fn create_namespace(&self) -> String {
        let schema = unique_namespace(&self.prefix);
        self.create_schema(&schema).await;
        schema
    }

    /// Connects (panicking when the server or schema cannot be reached or migrated: a test
    /// never passes without its server), then builds the store over it, whose refusal of
    /// `settings` (a policy beyond [`PostgresBackend`]'s limits) is the `Err`.
    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore_core::Result<PostgresStore> {
        let backend = PostgresBackend::connect(self.config(namespace))
            .await
            .unwrap_or_else(|e| panic!("connect and migrate schema {namespace}: {e}"));
        PostgresStore::with_backend(backend, settings)
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        validate_schema_name(namespace).expect("a factory schema");
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT content FROM {namespace}.messages WHERE conversation_id = $1 AND msg_id = $2"
        )))
        .bind(conversation.as_str())
        .bind(msg_id.as_i64())
        .fetch_optional(self.admin().await)
        .await
        .expect("read raw content")
    }

    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        validate_schema_name(namespace).expect("a factory schema");
        let done = sqlx::query(AssertSqlSafe(format!(
            "UPDATE {namespace}.messages SET content = $3 \
             WHERE conversation_id = $1 AND msg_id = $2"
        )))
        .bind(conversation.as_str())
        .bind(msg_id.as_i64())
        .bind(bytes)
        .execute(self.admin().await)
        .await
        .expect("write raw content");
        assert_eq!(done.rows_affected(), 1, "no such message to tamper with");
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.drop_schema(namespace).await;
    }
}
