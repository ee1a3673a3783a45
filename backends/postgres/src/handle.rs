//! [`PostgresBackend`]: the pool every module works over, how it is built, and the
//! [`Backend`] impl (each method a thin call into the module of its concern).

use async_trait::async_trait;
use imstore_core::backend::{
    ContentScan, EncodedMessage, FeedHead, FeedSlice, Fields, Inserted, Limits, PageQuery, PurgeJob,
};
use imstore_core::transition::Decider;
use imstore_core::{
    Backend, Connect, ConversationId, FeedCursor, MsgId, Operation, PurgeReport, Result, Store,
    StoredMessage, Timestamp, TransitionOutcome,
};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::sync::Arc;

use crate::cache::StateCache;
use crate::config::PostgresConfig;
use crate::error::map_connect;
use crate::{feed, insert, purge, read, rekey, schema, transition};

/// The largest encoded content one message may carry: PostgreSQL keeps a `bytea` value of at
/// most 1 GiB (`MaxAllocSize`) and refuses a protocol message (the insert's Bind, which carries
/// the content inside a `bytea[]`) over 1 GiB; 1 MiB is left for the row's other fields and the
/// array and message headers.
const MAX_STORED_CONTENT_BYTES: usize = (1 << 30) - (1 << 20);

/// The PostgreSQL backend: a connection pool whose connections resolve the store's tables
/// through `search_path`, and the states of recently touched messages (see
/// [`PostgresConfig::with_state_cache`]). Cheap to clone (both are shared).
#[derive(Debug, Clone)]
pub struct PostgresBackend {
    pool: PgPool,
    cache: Arc<StateCache>,
}

/// The store over PostgreSQL: the core's pipeline over [`PostgresBackend`].
pub type PostgresStore = Store<PostgresBackend>;

impl PostgresBackend {
    /// A backend over an existing pool, whose connections must already resolve the tables (via
    /// `search_path`), with the default state cache. Neither checks nor migrates the database.
    pub fn with_pool(pool: PgPool) -> Self {
        Self::with_pool_and_cache(pool, crate::config::DEFAULT_STATE_CACHE)
    }

    fn with_pool_and_cache(pool: PgPool, entries: usize) -> Self {
        PostgresBackend {
            pool,
            cache: Arc::new(StateCache::new(entries)),
        }
    }

    /// The connection pool, for tooling (re-key jobs, inspection, closing it).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations ([`crate::MIGRATOR`]) not yet applied in the pool's
    /// schema; idempotent, and safe from several processes at once.
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.pool).await.map_err(|e| {
            e.with_operation(Operation::Connect)
                .with_backend(<Self as Backend>::NAME)
        })
    }
}

#[async_trait]
impl Connect for PostgresBackend {
    type Config = PostgresConfig;

    /// Validates `config`, opens the pool (one connection, to fail fast on a wrong URL,
    /// password or database), checks the schema exists and the database is UTF-8, and
    /// migrates when `config.migrate_on_connect()`.
    async fn connect(config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections())
            .acquire_timeout(config.acquire_timeout())
            // By default no ping before every acquire (a round trip per operation): a
            // connection that died while idle fails its first statement, sqlx discards it, and
            // reads re-run once on another (`read::reading`). Idle timeout and max lifetime
            // keep the pool from holding connections long enough to go stale behind a proxy or
            // a restart. (sqlx still pings a connection when it is released, in a background
            // task off the caller's path, and discards it if that fails; it has no setting.)
            .test_before_acquire(config.ping_before_acquire())
            .idle_timeout(config.idle_timeout())
            .max_lifetime(config.max_lifetime())
            .connect_with(config.connect_options()?)
            .await
            .map_err(map_connect)?;
        schema::check_database(&pool, config.schema()).await?;
        let backend = PostgresBackend::with_pool_and_cache(pool, config.state_cache());
        if config.migrate_on_connect() {
            backend.migrate().await?;
        }
        Ok(backend)
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    const NAME: &'static str = "postgres";

    fn limits(&self) -> Limits {
        // Batches are cut into statements by size (`insert.rs`), so any batch size fits.
        Limits::new(MAX_STORED_CONTENT_BYTES, usize::MAX)
    }

    async fn insert(&self, message: &EncodedMessage, created_at: Timestamp) -> Result<Inserted> {
        let mut found = self
            .insert_batch(std::slice::from_ref(message), created_at)
            .await?;
        found
            .pop()
            .ok_or_else(|| imstore_core::Error::corrupt("the insert answered for no message"))
    }

    async fn insert_batch(
        &self,
        messages: &[EncodedMessage],
        created_at: Timestamp,
    ) -> Result<Vec<Inserted>> {
        let found = insert::insert_batch(&self.pool, messages, created_at).await?;
        self.cache.put_inserted(messages, &found, created_at);
        Ok(found)
    }

    async fn fetch(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<Option<StoredMessage>> {
        let found = read::fetch(&self.pool, conversation, msg_id, fields).await?;
        match &found {
            Some(m) => self.cache.put_read(std::slice::from_ref(m)),
            None => self.cache.forget(conversation, msg_id),
        }
        Ok(found)
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        query: PageQuery,
    ) -> Result<Vec<StoredMessage>> {
        let found = read::page(&self.pool, conversation, query).await?;
        self.cache.put_read(&found);
        Ok(found)
    }

    async fn transition(&self, decider: &Decider<'_>) -> Result<TransitionOutcome> {
        transition::transition(&self.pool, &self.cache, decider).await
    }

    async fn changes(
        &self,
        conversation: &ConversationId,
        after: FeedCursor,
        limit: u32,
    ) -> Result<FeedSlice> {
        feed::changes(&self.pool, conversation, after, limit).await
    }

    async fn heads(&self, conversations: &[ConversationId]) -> Result<Vec<FeedHead>> {
        feed::heads(&self.pool, conversations).await
    }

    async fn purge(&self, job: &PurgeJob<'_>) -> Result<PurgeReport> {
        purge::purge(&self.pool, job).await
    }

    async fn scan_contents(&self, after: Option<&str>, limit: u32) -> Result<ContentScan> {
        rekey::scan_contents(&self.pool, after, limit).await
    }

    async fn replace_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        expected: &[u8],
        replacement: &[u8],
    ) -> Result<bool> {
        rekey::replace_content(&self.pool, conversation, msg_id, expected, replacement).await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        purge::set_legal_hold(&self.pool, conversation, held).await
    }
}
