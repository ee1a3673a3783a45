//! The conformance factory for this backend (feature `testing`): one fresh database per case,
//! raw access to stored content bytes, cleanup, and a sweeper for crashed runs' databases.
//!
//! The backend's own tests, the benches and third parties' suites all build their databases
//! here. Raw content access exists only under this feature, never in the production API.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{ConversationId, MsgId, StoreSettings};
use mongodb::Client;
use mongodb::bson::{Bson, Document, doc};
use tokio::sync::OnceCell;

use crate::config::validate_database_name;
use crate::doc::{binary, key};
use crate::{MongoBackend, MongoConfig, MongoStore};

type Configure = Arc<dyn Fn(MongoConfig) -> MongoConfig + Send + Sync>;

/// Builds one [`MongoStore`] per case over a fresh database named
/// `<prefix>_<unix seconds>_<pid>_<counter>_<salt>`, so that [`MongoFactory::sweep_leftovers`]
/// can tell how old a leftover is.
pub struct MongoFactory {
    url: String,
    prefix: String,
    client: OnceCell<Client>,
    configure: Configure,
}

impl std::fmt::Debug for MongoFactory {
    // The URL may carry a password: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoFactory")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// The operation timeout of the factory's backends (the production default is 30 s). FerretDB
/// over SQLite answers one query at a time per database, scanning whole collections: in the
/// suite's case of 2,000 members pulling the feed at once, with other cases running beside it,
/// the last pulls wait in the client's pool for longer than 30 s.
pub const TEST_OPERATION_TIMEOUT: Duration = Duration::from_secs(120);

/// How old a database of this factory's prefix must be before the sweeper drops it: longer
/// than any run, so a concurrent run's databases are never dropped.
pub const LEFTOVER_AGE: Duration = Duration::from_secs(60 * 60);

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl MongoFactory {
    /// A factory for the deployment at `url` (credentials, replica set and TLS as the URL says),
    /// naming its databases `mg_...`, opening backends with [`TEST_OPERATION_TIMEOUT`].
    /// Connects on first use.
    pub fn new(url: impl Into<String>) -> Self {
        MongoFactory {
            url: url.into(),
            prefix: "mg".to_string(),
            client: OnceCell::new(),
            configure: Arc::new(|c| c.with_operation_timeout(TEST_OPERATION_TIMEOUT)),
        }
    }

    /// The factory for the server named by `IMSTORE_MONGODB_URL`; panics when it is unset (a
    /// conformance run never skips itself).
    pub fn from_env() -> Self {
        MongoFactory::new(require_env("IMSTORE_MONGODB_URL"))
    }

    /// Names databases `<prefix>_...` instead (a short lowercase word: the name must stay a
    /// valid database name of at most 63 bytes).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Adjusts the configuration of every backend opened (write concern, timeouts...), starting
    /// from [`MongoConfig::new`]'s defaults.
    pub fn with_config(
        mut self,
        configure: impl Fn(MongoConfig) -> MongoConfig + Send + Sync + 'static,
    ) -> Self {
        self.configure = Arc::new(configure);
        self
    }

    /// The connection string.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The factory's client (connected on first use).
    pub async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                Client::with_uri_str(&self.url)
                    .await
                    .expect("IMSTORE_MONGODB_URL is a valid MongoDB connection string")
            })
            .await
    }

    /// The configuration a backend over `namespace` is opened with.
    pub fn config(&self, namespace: &str) -> MongoConfig {
        (self.configure)(MongoConfig::new(&self.url, namespace))
    }

    /// A backend over database `namespace`, sharing the factory's client.
    pub async fn backend(&self, namespace: &str) -> MongoBackend {
        MongoBackend::with_client(self.client().await.clone(), self.config(namespace))
            .await
            .expect("the backend opens over the namespace")
    }

    fn messages(db: &mongodb::Database) -> mongodb::Collection<Document> {
        db.collection(crate::schema::MESSAGES)
    }

    /// Drops every database of this factory's prefix created more than [`LEFTOVER_AGE`] ago
    /// (left by runs that crashed before their cleanup); returns their names. Names of the
    /// prefix without a creation time are left alone.
    pub async fn sweep_leftovers(&self) -> Vec<String> {
        self.sweep_older_than(LEFTOVER_AGE).await
    }

    /// [`MongoFactory::sweep_leftovers`] with another age (`Duration::ZERO`: every database of
    /// the prefix that carries a creation time, concurrent runs' included).
    pub async fn sweep_older_than(&self, age: Duration) -> Vec<String> {
        let client = self.client().await;
        let now = unix_secs();
        let start = format!("{}_", self.prefix);
        let names = client
            .list_database_names()
            .await
            .expect("the server lists its databases");
        let mut dropped = Vec::new();
        for name in names {
            let created = name
                .strip_prefix(&start)
                .and_then(|rest| rest.split('_').next())
                .and_then(|secs| secs.parse::<u64>().ok());
            if created.is_some_and(|t| now.saturating_sub(t) >= age.as_secs()) {
                client.database(&name).drop().await.expect("drop database");
                dropped.push(name);
            }
        }
        dropped
    }
}

#[async_trait]
impl StoreFactory for MongoFactory {
    type Store = MongoStore;

    async fn create_namespace(&self) -> String {
        let ns = unique_namespace(&format!("{}_{}", self.prefix, unix_secs()));
        validate_database_name(&ns).expect("the prefix makes valid database names");
        // Databases appear on first write; make sure the server answers now.
        self.client()
            .await
            .database(&ns)
            .run_command(doc! {"ping": 1})
            .await
            .expect("the MongoDB server answers ping");
        ns
    }

    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore_core::Result<MongoStore> {
        MongoStore::with_backend(self.backend(namespace).await, settings)
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        let db = self.client().await.database(namespace);
        let doc = Self::messages(&db)
            .find_one(key(conversation, msg_id))
            .await
            .expect("find_one")?;
        match doc.get("content") {
            Some(Bson::Binary(b)) => Some(b.bytes.clone()),
            other => panic!("content is not binary: {other:?}"),
        }
    }

    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        let db = self.client().await.database(namespace);
        let r = Self::messages(&db)
            .update_one(
                key(conversation, msg_id),
                doc! {"$set": {"content": binary(bytes)}},
            )
            .await
            .expect("update_one");
        assert_eq!(r.matched_count, 1, "the message exists");
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.client()
            .await
            .database(namespace)
            .drop()
            .await
            .expect("drop database");
    }
}
