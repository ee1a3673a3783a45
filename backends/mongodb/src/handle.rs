//! [`MongoBackend`]: the one handle every module works through (client, database, collections,
//! configuration), and the [`Backend`] impl that delegates each method to its module.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use async_trait::async_trait;
use imstore_core::backend::{
    ContentScan, EncodedMessage, FeedHead, FeedSlice, Fields, Inserted, PageQuery, PurgeJob,
};
use imstore_core::transition::Decider;
use imstore_core::{
    Backend, Connect, ConversationId, FeedCursor, Limits, MsgId, PurgeReport, Result,
    StoredMessage, Timestamp, TransitionOutcome,
};
use mongodb::bson::Document;
use mongodb::options::{ClientOptions, CollectionOptions};
use mongodb::{Client, Collection, Database};

use crate::config::MongoConfig;
use crate::error::{map, timed_out};
use crate::{feed, insert, purge, read, rekey, schema, transition};

/// The largest BSON document MongoDB stores (and FerretDB v1, which enforces the same limit).
const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// What a message document holds besides its content, at most: field names, the ids (at most
/// 256 bytes each: conversation, sender, recalled_by, deleted_by), the attachment (key up to
/// 1,024 bytes, mime up to 255), the lifecycle integers and the `_id`: under 3 KiB. The margin
/// keeps the largest allowed content clear of the limit whatever a later field adds.
const MESSAGE_OVERHEAD_BYTES: usize = 64 * 1024;

/// The imstore backend over one MongoDB (or FerretDB) database; cheap to clone, safe to share.
#[derive(Clone)]
pub struct MongoBackend {
    pub(crate) config: MongoConfig,
    pub(crate) client: Client,
    pub(crate) db: Database,
    pub(crate) messages: Collection<Document>,
    pub(crate) log: Collection<Document>,
    pub(crate) holds: Collection<Document>,
    /// Whether the server runs the grouped pipelines of the batch head read; cleared the
    /// first time it answers "not implemented" (FerretDB v1), and the reads go one by one.
    pub(crate) grouped_heads: Arc<AtomicBool>,
}

impl std::fmt::Debug for MongoBackend {
    // The configuration's Debug hides the URL; the client's would print every driver option.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoBackend")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The MongoDB store: the core pipeline over [`MongoBackend`].
pub type MongoStore = imstore_core::Store<MongoBackend>;

impl MongoBackend {
    /// Opens the backend over `config.database()` with an existing client (several backends
    /// may share one client), building the indexes it relies on (idempotent).
    pub async fn with_client(client: Client, config: MongoConfig) -> Result<Self> {
        config.validate()?;
        let db = client.database(config.database());
        let options = CollectionOptions::builder()
            .write_concern(config.write_concern().clone())
            .read_concern(config.read_concern().cloned())
            .build();
        let coll = |name: &str| db.collection_with_options::<Document>(name, options.clone());
        let backend = MongoBackend {
            messages: coll(schema::MESSAGES),
            log: coll(schema::LOG),
            holds: coll(schema::HOLDS),
            grouped_heads: Arc::new(AtomicBool::new(true)),
            client,
            db,
            config,
        };
        backend.timed(schema::ensure(&backend.db)).await?;
        Ok(backend)
    }

    /// The database the store lives in (for administration: backups, metrics, tooling).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The driver client the backend uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configuration the backend was opened with.
    pub fn config(&self) -> &MongoConfig {
        &self.config
    }

    /// Runs one backend operation under the configured operation timeout.
    async fn timed<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = self.config.operation_timeout();
        tokio::time::timeout(limit, work)
            .await
            .unwrap_or_else(|_| Err(timed_out(limit)))
    }
}

#[async_trait]
impl Connect for MongoBackend {
    type Config = MongoConfig;

    /// Validates `config`, connects to its URL and opens the backend (building indexes).
    async fn connect(config: MongoConfig) -> Result<Self> {
        config.validate()?;
        let options = ClientOptions::parse(config.url()).await.map_err(map)?;
        let client = Client::with_options(options).map_err(map)?;
        MongoBackend::with_client(client, config).await
    }
}

#[async_trait]
impl Backend for MongoBackend {
    const NAME: &'static str = "mongodb";

    /// MongoDB's 16 MiB document limit minus what else a message document holds.
    fn limits(&self) -> Limits {
        Limits::new(MAX_DOCUMENT_BYTES - MESSAGE_OVERHEAD_BYTES, usize::MAX)
    }

    async fn insert(&self, message: &EncodedMessage, created_at: Timestamp) -> Result<Inserted> {
        self.timed(insert::one(self, message, created_at)).await
    }

    async fn insert_batch(
        &self,
        messages: &[EncodedMessage],
        created_at: Timestamp,
    ) -> Result<Vec<Inserted>> {
        self.timed(insert::batch(self, messages, created_at)).await
    }

    async fn fetch(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<Option<StoredMessage>> {
        self.timed(read::fetch(self, conversation, msg_id, fields))
            .await
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        query: PageQuery,
    ) -> Result<Vec<StoredMessage>> {
        self.timed(read::page(self, conversation, query)).await
    }

    async fn transition(&self, decider: &Decider<'_>) -> Result<TransitionOutcome> {
        self.timed(transition::run(self, decider)).await
    }

    async fn changes(
        &self,
        conversation: &ConversationId,
        after: FeedCursor,
        limit: u32,
    ) -> Result<FeedSlice> {
        self.timed(feed::changes(self, conversation, after, limit))
            .await
    }

    async fn heads(&self, conversations: &[ConversationId]) -> Result<Vec<FeedHead>> {
        self.timed(feed::heads(self, conversations)).await
    }

    async fn purge(&self, job: &PurgeJob<'_>) -> Result<PurgeReport> {
        self.timed(purge::batch(self, job)).await
    }

    async fn scan_contents(&self, after: Option<&str>, limit: u32) -> Result<ContentScan> {
        self.timed(rekey::scan(self, after, limit)).await
    }

    async fn replace_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        expected: &[u8],
        replacement: &[u8],
    ) -> Result<bool> {
        self.timed(rekey::replace(
            self,
            conversation,
            msg_id,
            expected,
            replacement,
        ))
        .await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        self.timed(purge::set_legal_hold(self, conversation, held))
            .await
    }
}
