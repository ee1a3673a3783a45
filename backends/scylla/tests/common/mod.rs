//! The conformance factory for the ScyllaDB/Cassandra backend: one keyspace per case.
#![allow(dead_code)] // shared by two test binaries, each using part of it

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{ConversationId, MsgId, StoreSettings};
use imstore_scylla::schema;
use imstore_scylla::{Replication, ScyllaConfig, ScyllaStore, session_for};
use scylla::client::session::Session;

/// The test cluster's contact points, from `scripts/servers.sh` (panics with instructions if unset).
pub fn nodes() -> String {
    require_env("IMSTORE_SCYLLA_NODES")
}

/// The test configuration for `keyspace`: RF 1 (a single node), no driver schema metadata.
pub fn config(keyspace: &str) -> ScyllaConfig {
    let mut c = ScyllaConfig::from_node_list(&nodes(), keyspace);
    c.replication = Replication::Everywhere(1);
    c.fetch_schema_metadata = false;
    c
}

/// Makes a fresh keyspace per case over one shared session, and drops it afterwards.
pub struct ScyllaFactory {
    session: Arc<Session>,
    stores: Mutex<HashMap<String, ScyllaStore>>,
}

impl ScyllaFactory {
    /// Connects to the test cluster.
    pub async fn new() -> Self {
        let session = session_for(&config("imstore_probe"))
            .await
            .expect("connect to the CQL server named by IMSTORE_SCYLLA_NODES");
        ScyllaFactory {
            session: Arc::new(session),
            stores: Mutex::new(HashMap::new()),
        }
    }

    fn store(&self, namespace: &str) -> ScyllaStore {
        self.stores
            .lock()
            .unwrap()
            .get(namespace)
            .cloned()
            .expect("namespace was opened by this factory")
    }
}

#[async_trait]
impl StoreFactory for ScyllaFactory {
    type Store = ScyllaStore;

    async fn create_namespace(&self) -> String {
        let ns = unique_namespace("sc");
        let info = schema::detect(&self.session).await.expect("detect server");
        schema::ensure(&self.session, &config(&ns), info.flavour)
            .await
            .expect("create keyspace and tables");
        ns
    }

    async fn open(&self, namespace: &str, settings: StoreSettings) -> ScyllaStore {
        let mut cfg = config(namespace);
        // create_namespace made the schema; the store's own start-up DDL is the same function.
        cfg.create_schema = false;
        let store = ScyllaStore::with_session(self.session.clone(), cfg, settings)
            .await
            .expect("open store");
        self.stores
            .lock()
            .unwrap()
            .insert(namespace.to_string(), store.clone());
        store
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        self.store(namespace)
            .raw_content(conversation, msg_id)
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
        assert!(
            self.store(namespace)
                .set_raw_content(conversation, msg_id, bytes)
                .await
                .expect("write raw content"),
            "no such message"
        );
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.stores.lock().unwrap().remove(namespace);
        schema::drop_keyspace(&self.session, namespace)
            .await
            .expect("drop keyspace");
    }
}
