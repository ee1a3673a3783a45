//! The suite's factory for [`MemoryStore`], the reference implementation.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use imstore_core::{ConversationId, MemoryStore, MsgId, StoreSettings};

use crate::harness::{StoreFactory, unique_namespace};

/// Keeps one [`MemoryStore`] per namespace, so reopening a namespace sees the same data.
#[derive(Default)]
pub struct MemoryFactory {
    stores: Mutex<HashMap<String, MemoryStore>>,
}

impl MemoryFactory {
    fn store(&self, namespace: &str) -> MemoryStore {
        self.stores
            .lock()
            .unwrap()
            .get(namespace)
            .cloned()
            .expect("namespace was created by this factory")
    }
}

#[async_trait]
impl StoreFactory for MemoryFactory {
    type Store = MemoryStore;

    async fn create_namespace(&self) -> String {
        let ns = unique_namespace("mem");
        self.stores
            .lock()
            .unwrap()
            .insert(ns.clone(), MemoryStore::default());
        ns
    }

    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore_core::Result<MemoryStore> {
        self.store(namespace).reconfigured(settings)
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        self.store(namespace)
            .inner()
            .raw_content(conversation, msg_id)
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
                .inner()
                .set_raw_content(conversation, msg_id, bytes)
        );
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.stores.lock().unwrap().remove(namespace);
    }
}
