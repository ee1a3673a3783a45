//! The conformance suite against the MongoDB-compatible server named by `IMSTORE_MONGODB_URL`
//! (FerretDB v1 from `scripts/servers.sh`), one test per case, each in its own database.

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{ConversationId, MsgId, StoreSettings};
use imstore_mongodb::{MongoConfig, MongoStore};
use mongodb::Client;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};

/// Builds one store per case over a fresh database, dropped when the case finishes.
pub struct MongoFactory {
    url: String,
    client: Client,
    takeover_after: Option<std::time::Duration>,
}

impl MongoFactory {
    fn messages(&self, namespace: &str) -> mongodb::Collection<Document> {
        self.client.database(namespace).collection("messages")
    }
}

async fn factory_with(takeover_after: Option<std::time::Duration>) -> MongoFactory {
    let url = require_env("IMSTORE_MONGODB_URL");
    let client = Client::with_uri_str(&url)
        .await
        .expect("IMSTORE_MONGODB_URL is a valid connection string");
    MongoFactory {
        url,
        client,
        takeover_after,
    }
}

/// The factory with the default configuration (majority write concern, 5 s takeover).
pub async fn mongo_factory() -> MongoFactory {
    factory_with(None).await
}

#[async_trait]
impl StoreFactory for MongoFactory {
    type Store = MongoStore;

    async fn create_namespace(&self) -> String {
        let ns = unique_namespace("mg");
        // Databases appear on first write; make sure the server is reachable now.
        self.client
            .database(&ns)
            .run_command(doc! {"ping": 1})
            .await
            .expect("the MongoDB server answers ping");
        ns
    }

    async fn open(&self, namespace: &str, settings: StoreSettings) -> MongoStore {
        let mut config = MongoConfig::new(&self.url, namespace);
        if let Some(t) = self.takeover_after {
            config = config.with_takeover_after(t);
        }
        MongoStore::with_client(self.client.clone(), config, settings)
            .await
            .expect("store opens")
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        let doc = self
            .messages(namespace)
            .find_one(doc! {"conversation_id": conversation.as_str(), "msg_id": msg_id.as_i64()})
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
        let r = self
            .messages(namespace)
            .update_one(
                doc! {"conversation_id": conversation.as_str(), "msg_id": msg_id.as_i64()},
                doc! {"$set": {"content": Binary {subtype: BinarySubtype::Generic, bytes}}},
            )
            .await
            .expect("update_one");
        assert_eq!(r.matched_count, 1, "the message exists");
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.client
            .database(namespace)
            .drop()
            .await
            .expect("drop database");
    }
}

mod direct {
    imstore_conformance::conformance_tests!(super::mongo_factory().await);
}

/// The suite through `Arc<dyn MessageStore>`, with no takeover delay: every transition and feed
/// read also completes whatever unfinished commit it meets, so the repair path runs concurrently
/// with the writers in every case.
mod through_arc_dyn_eager_repair {
    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(
        super::factory_with(Some(std::time::Duration::ZERO)).await
    ));
}
