//! [`ScyllaBackend`]: the one shared handle (session, prepared statements, configuration, what
//! the server is and can hold) that every other module works through, and the `Backend` impl
//! that delegates each method to its module.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use imstore_core::backend::{
    ContentScan, EncodedMessage, FeedHead, FeedSlice, Fields, Inserted, PageQuery, PurgeJob,
};
use imstore_core::transition::Decider;
use imstore_core::{
    Backend, Connect, ConversationId, FeedCursor, Limits, MsgId, PurgeReport, Result, Store,
    StoreSettings, StoredMessage, Timestamp, TransitionOutcome,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::batch::{Batch, BatchType};

use crate::config::ScyllaConfig;
use crate::schema::{self, ServerInfo};
use crate::statements::Statements;
use crate::{error, feed, insert, purge, read, rekey, transition};

/// The backend's name in errors and spans.
pub(crate) const NAME: &str = "scylla";

/// What the stored content may take of a mutation: the rest is for the keys, the sender, the
/// attachment (at most ~1.5 KiB under the policy's id limits) and the mutation's own framing,
/// with ample room.
const MUTATION_OVERHEAD: usize = 64 * 1024;

/// The ScyllaDB/Cassandra backend: cheap to clone, safe to share; every clone uses one session.
#[derive(Clone)]
pub struct ScyllaBackend {
    inner: Arc<Inner>,
}

/// The imstore store on ScyllaDB or Apache Cassandra: the core pipeline over [`ScyllaBackend`].
pub type ScyllaStore = Store<ScyllaBackend>;

pub(crate) struct Inner {
    pub(crate) session: Arc<Session>,
    pub(crate) config: ScyllaConfig,
    pub(crate) st: Statements,
    pub(crate) server: ServerInfo,
    pub(crate) max_mutation: usize,
    /// `(shard, day)` rows already written to `purge_days` by this process (a day row is never
    /// removed while new entries can still land in it, so remembering it is safe).
    pub(crate) known_days: Mutex<HashSet<(i32, i32)>>,
    /// The keyspace was made with head rows: a partition without one has no state at all.
    pub(crate) head_rows: bool,
    /// The keyspace was made with sentinel mirrors: a latest page reads its first bucket's
    /// lifecycles beside its rows (`read::top_states`).
    pub(crate) sentinel_mirrors: bool,
    /// Single inserts waiting for their partition's next conditional batch.
    pub(crate) lanes: insert::Lanes,
    /// Changes waiting for their conversation's next combined batch.
    pub(crate) transition_lanes: transition::Lanes,
    /// The first bucket of recently paged conversations: the guess a page reads beside the index.
    pub(crate) first_buckets: read::FirstBuckets,
    /// Purge commits of this handle's ended calls whose outcome a timeout hid and that the call
    /// could not settle: the next call meeting such a marker finishes it as its own.
    pub(crate) purge_strays: purge::Strays,
    /// Conditional batches a test has the outcome of hidden after they ran.
    #[cfg(feature = "testing")]
    pub(crate) hidden: crate::testing::Hidden,
}

impl std::fmt::Debug for ScyllaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaBackend")
            .field("keyspace", &self.inner.config.keyspace())
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

impl ScyllaBackend {
    /// A backend over an existing session (one session per application, shared by every store):
    /// checks the configuration, detects the server, creates or migrates the schema when the
    /// configuration says so, prepares every statement and reads the node's size limits.
    pub async fn with_session(session: Arc<Session>, config: ScyllaConfig) -> Result<Self> {
        config.validate()?;
        let server = schema::detect(&session).await?;
        if config.create_schema() {
            schema::ensure(&session, &config, server.flavour).await?;
        }
        let st = Statements::prepare(&session, &config).await?;
        let max_mutation = schema::max_mutation_bytes(&session, server.flavour).await;
        let layout = schema::state_layout(&session, config.keyspace()).await?;
        Ok(ScyllaBackend {
            inner: Arc::new(Inner {
                session,
                config,
                st,
                server,
                max_mutation,
                known_days: Mutex::new(HashSet::new()),
                head_rows: layout.head_rows,
                sentinel_mirrors: layout.sentinel_mirrors,
                lanes: insert::Lanes::default(),
                transition_lanes: transition::Lanes::default(),
                first_buckets: read::FirstBuckets::default(),
                purge_strays: purge::Strays::default(),
                #[cfg(feature = "testing")]
                hidden: crate::testing::Hidden::default(),
            }),
        })
    }

    /// The checked store over a shared session: [`ScyllaBackend::with_session`], then the pipeline.
    pub async fn store(
        session: Arc<Session>,
        config: ScyllaConfig,
        settings: StoreSettings,
    ) -> Result<ScyllaStore> {
        let backend = ScyllaBackend::with_session(session, config)
            .await
            .map_err(|e| {
                e.with_operation(imstore_core::Operation::Connect)
                    .with_backend(NAME)
            })?;
        Store::with_backend(backend, settings)
    }

    /// Adds what newer versions of the schema need to the keyspace (idempotent; also done at
    /// start-up when the configuration creates the schema).
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.inner.session, self.inner.config.keyspace()).await
    }

    /// The shared driver session.
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The server this backend talks to (ScyllaDB or Cassandra, and its version).
    pub fn server(&self) -> &ServerInfo {
        &self.inner.server
    }

    /// The configuration the backend was opened with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.inner.config
    }

    /// The bucket a message id falls in (its timestamp divided by the bucket width).
    pub fn bucket_of(&self, msg_id: MsgId) -> i32 {
        let ms = msg_id.timestamp().as_millis() - imstore_core::ids::MSG_ID_EPOCH_MS;
        i32::try_from(ms.div_euclid(self.inner.config.bucket_ms())).unwrap_or(i32::MAX)
    }

    /// The lowest and highest msg_id that fall in `bucket` (the inverse of [`Self::bucket_of`]),
    /// clamped to the positive ids.
    pub fn bucket_ids(&self, bucket: i32) -> (i64, i64) {
        let first = |bucket: i64| {
            let ms = bucket.saturating_mul(self.inner.config.bucket_ms());
            let at = imstore_core::Timestamp::from_millis(
                ms.saturating_add(imstore_core::ids::MSG_ID_EPOCH_MS),
            );
            MsgId::from_parts(at, 0, 0).map(MsgId::as_i64)
        };
        // Bucket 0 starts at the epoch, whose id (0) is not a msg_id: its first is 1.
        let low = if bucket <= 0 {
            1
        } else {
            first(i64::from(bucket)).unwrap_or(i64::MAX)
        };
        // Past the id range, the bucket reaches the largest id.
        let high = first(i64::from(bucket) + 1).map_or(i64::MAX, |next| next - 1);
        (low, high)
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    pub(crate) fn st(&self) -> &Statements {
        &self.inner.st
    }

    /// An empty conditional batch (its statements must share one partition).
    pub(crate) fn conditional_batch(&self) -> Batch {
        let c = &self.inner.config;
        let mut b = Batch::new(BatchType::Unlogged);
        b.set_consistency(c.consistency());
        b.set_serial_consistency(Some(c.serial_consistency()));
        b.set_request_timeout(Some(c.request_timeout()));
        b.set_is_idempotent(false);
        b
    }
}

/// Opens a driver session for `config` the way the backend does (contact points, credentials,
/// TLS, consistency, timeout), for callers that share one session between several stores.
pub async fn session_for(config: &ScyllaConfig) -> Result<Session> {
    config.validate()?;
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency())
        .serial_consistency(Some(config.serial_consistency()))
        .request_timeout(Some(config.request_timeout()))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(config.nodes())
        .default_execution_profile_handle(profile.into_handle());
    if let Some(c) = config.credentials() {
        builder = builder.user(c.user(), c.password());
    }
    if let Some(tls) = config.tls() {
        builder = builder.tls_context(Some(tls.client_config()?));
    }
    builder = if config.fetch_schema_metadata() {
        builder.keyspaces_to_fetch([config.keyspace().to_string()])
    } else {
        builder.fetch_schema_metadata(false)
    };
    builder.build().await.map_err(error::new_session)
}

#[async_trait]
impl Connect for ScyllaBackend {
    type Config = ScyllaConfig;

    async fn connect(config: ScyllaConfig) -> Result<Self> {
        let session = session_for(&config).await?;
        ScyllaBackend::with_session(Arc::new(session), config).await
    }
}

#[async_trait]
impl Backend for ScyllaBackend {
    const NAME: &'static str = NAME;

    /// A message is one mutation (its partition's row, and the Paxos proposal that carries it),
    /// so its content may take what the node accepts in one mutation (half a commitlog segment,
    /// `max_mutation_size`, and on Cassandra the native protocol's frame limit; see
    /// [`schema::max_mutation_bytes`]) minus room for the other columns.
    fn limits(&self) -> Limits {
        Limits::new(
            self.inner.max_mutation.saturating_sub(MUTATION_OVERHEAD),
            usize::MAX,
        )
    }

    async fn insert(&self, message: &EncodedMessage, created_at: Timestamp) -> Result<Inserted> {
        insert::insert(self, message, created_at).await
    }

    async fn insert_batch(
        &self,
        messages: &[EncodedMessage],
        created_at: Timestamp,
    ) -> Result<Vec<Inserted>> {
        insert::insert_batch(self, messages, created_at).await
    }

    async fn fetch(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<Option<StoredMessage>> {
        read::fetch(self, conversation, msg_id, fields).await
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        query: PageQuery,
    ) -> Result<Vec<StoredMessage>> {
        read::page(self, conversation, query).await
    }

    async fn transition(&self, decider: &Decider<'_>) -> Result<TransitionOutcome> {
        transition::transition(self, decider).await
    }

    async fn changes(
        &self,
        conversation: &ConversationId,
        after: FeedCursor,
        limit: u32,
    ) -> Result<FeedSlice> {
        feed::changes(self, conversation, after, limit).await
    }

    async fn heads(&self, conversations: &[ConversationId]) -> Result<Vec<FeedHead>> {
        feed::heads(self, conversations).await
    }

    async fn purge(&self, job: &PurgeJob<'_>) -> Result<PurgeReport> {
        purge::purge(self, job).await
    }

    async fn scan_contents(&self, after: Option<&str>, limit: u32) -> Result<ContentScan> {
        rekey::scan_contents(self, after, limit).await
    }

    async fn replace_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        expected: &[u8],
        replacement: &[u8],
    ) -> Result<bool> {
        rekey::replace_content(self, conversation, msg_id, expected, replacement).await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        purge::set_legal_hold(self, conversation, held).await
    }
}
