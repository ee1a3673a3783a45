//! How a backend plugs into the suite: a factory of isolated namespaces, and the per-case harness.

use std::sync::Arc;

use async_trait::async_trait;
use imstore_core::{
    ContentCodec, ConversationId, ManualClock, MessageStore, MsgId, Policy, StoreSettings,
};

/// Builds stores for the suite; each case gets its own namespace (schema, database, keyspace).
///
/// A third party implements this for its own backend or cluster, then invokes
/// [`crate::conformance_tests!`] with it.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// The store type under test.
    type Store: MessageStore + 'static;

    /// Creates a fresh, empty, isolated namespace and returns its name. Panics if the backend is
    /// unreachable: a conformance run never passes without its server.
    async fn create_namespace(&self) -> String;

    /// Opens a store over `namespace`; may be called more than once per namespace (e.g. with a
    /// rotated key ring), every handle seeing the same data. An error is the store refusing the
    /// settings (a policy the backend cannot honour); an unreachable server panics.
    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore_core::Result<Self::Store>;

    /// [`StoreFactory::try_open`] for settings the case knows to be valid.
    async fn open(&self, namespace: &str, settings: StoreSettings) -> Self::Store {
        match self.try_open(namespace, settings).await {
            Ok(store) => store,
            Err(e) => panic!("the store refused valid settings: {e}"),
        }
    }

    /// The content bytes of a message exactly as the backend persisted them, or `None` if absent.
    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>>;

    /// Overwrites the persisted content bytes of a message, bypassing the codec (tampering).
    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    );

    /// Removes the namespace and everything in it.
    async fn drop_namespace(&self, namespace: &str);
}

/// A factory whose stores are `Arc<dyn MessageStore>`: running the suite through it catches
/// forwarding bugs in the trait object path.
pub struct DynFactory<F>(pub F);

#[async_trait]
impl<F: StoreFactory> StoreFactory for DynFactory<F> {
    type Store = Arc<dyn MessageStore>;

    async fn create_namespace(&self) -> String {
        self.0.create_namespace().await
    }
    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore_core::Result<Self::Store> {
        Ok(Arc::new(self.0.try_open(namespace, settings).await?))
    }
    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        self.0.raw_content(namespace, conversation, msg_id).await
    }
    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        self.0
            .set_raw_content(namespace, conversation, msg_id, bytes)
            .await
    }
    async fn drop_namespace(&self, namespace: &str) {
        self.0.drop_namespace(namespace).await
    }
}

/// What a case asks of its store: the policy and the codec. The clock is always a [`ManualClock`].
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// The lifecycle rules.
    pub policy: Policy,
    /// The content codec.
    pub codec: ContentCodec,
}

/// One case's store, clock and namespace; `finish` drops the namespace.
///
/// A case that panics never reaches `finish`, so its namespace stays behind for inspection; the
/// guard says so on drop.
pub struct Harness<'f, F: StoreFactory> {
    factory: &'f F,
    namespace: String,
    /// The store under test.
    pub store: F::Store,
    /// The store's clock: advance it instead of sleeping.
    pub clock: ManualClock,
    /// The settings the store was opened with.
    pub settings: StoreSettings,
    finished: bool,
}

impl<'f, F: StoreFactory> Harness<'f, F> {
    /// A fresh namespace and a store over it, with `setup` and a manual clock at the current time.
    pub async fn start(factory: &'f F, setup: Setup) -> Self {
        let namespace = factory.create_namespace().await;
        let clock = ManualClock::starting_now();
        let settings = StoreSettings {
            policy: setup.policy,
            codec: setup.codec,
            clock: Arc::new(clock.clone()),
        };
        let store = factory.open(&namespace, settings.clone()).await;
        Harness {
            factory,
            namespace,
            store,
            clock,
            settings,
            finished: false,
        }
    }

    /// Another store over the same namespace and clock with other settings, or the store's
    /// refusal of them.
    pub async fn try_reopen(&self, settings: StoreSettings) -> imstore_core::Result<F::Store> {
        self.factory.try_open(&self.namespace, settings).await
    }

    /// Another store over the same namespace and clock with another codec.
    pub async fn reopen_with_codec(&self, codec: ContentCodec) -> F::Store {
        let settings = StoreSettings {
            codec,
            ..self.settings.clone()
        };
        self.factory.open(&self.namespace, settings).await
    }

    /// The persisted content bytes of a message.
    pub async fn raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        self.factory
            .raw_content(&self.namespace, conversation, msg_id)
            .await
    }

    /// Overwrites the persisted content bytes of a message.
    pub async fn set_raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        self.factory
            .set_raw_content(&self.namespace, conversation, msg_id, bytes)
            .await
    }

    /// The namespace this case runs in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Drops the namespace.
    pub async fn finish(mut self) {
        self.finished = true;
        self.factory.drop_namespace(&self.namespace).await;
    }
}

impl<F: StoreFactory> Drop for Harness<'_, F> {
    fn drop(&mut self) {
        if !self.finished {
            eprintln!(
                "imstore-conformance: namespace {:?} left in place for inspection (case did not finish)",
                self.namespace
            );
        }
    }
}

/// The value of a server variable set by `scripts/servers.sh`; panics, saying how to start the
/// servers, when it is unset: a conformance run never skips itself.
pub fn require_env(var: &str) -> String {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{var} is not set: start the test servers with `scripts/servers.sh start && source .servers/env` \
             (or run everything with `scripts/test.sh`)"
        ),
    }
}

/// A namespace name unique to this process and call: `prefix_<pid>_<counter>_<random>`, lowercase
/// ASCII, valid as a PostgreSQL schema, a MongoDB database and a CQL keyspace (at most 48 chars)
/// when `prefix` is a short lowercase word. Avoid `pg`: PostgreSQL reserves `pg_` schema names.
pub fn unique_namespace(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let salt: u32 = rand_salt();
    format!("{prefix}_{}_{n}_{salt:08x}", std::process::id())
}

fn rand_salt() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
