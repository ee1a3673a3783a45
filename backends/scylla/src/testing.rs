//! The conformance factory, shipped behind the `testing` feature: the backend's own tests, the
//! benches and third parties' suites all make their keyspaces with it.
//!
//! * Connection settings come from the caller ([`ScyllaFactory::new`] and its `with_*`
//!   builders) or from the environment ([`ScyllaFactory::from_env`]); nothing is hard-coded.
//! * Every case gets a keyspace of its own. DDL is what a case costs on Cassandra (each table
//!   is a schema change flushed to disk), so by default a finished case's keyspace is emptied
//!   with `TRUNCATE` (every table, synchronously, on every replica) and handed to the next case
//!   of the same process: the next case starts from empty tables, as from a new keyspace. A
//!   case that does not finish keeps its keyspace for inspection, and it is never reused.
//! * Raw stored-bytes access for the at-rest cases exists only here.
//! * [`ScyllaFactory::sweep_leftovers`] drops this factory's keyspaces older than an age
//!   (names carry their creation time): those of crashed runs, and the emptied ones a finished
//!   run leaves for reuse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use imstore_conformance::{StoreFactory, require_env, unique_namespace};
use imstore_core::{ConversationId, MsgId, Result, Store, StoreSettings};
use scylla::client::session::Session;
use scylla::statement::{Consistency, SerialConsistency};
use tokio::sync::OnceCell;

use crate::config::{Credentials, Replication, ScyllaConfig, ScyllaTls};
use crate::error;
use crate::handle::{ScyllaBackend, ScyllaStore, session_for};
use crate::rows;
use crate::schema::{self, Flavour};

/// Emptied keyspaces ready for another case, per (nodes, prefix, replication), for the whole
/// process: every test builds its own factory, and they share what earlier cases left.
static POOL: Mutex<Vec<(String, String, std::time::Instant)>> = Mutex::new(Vec::new());

/// The purge-queue shard `conversation`'s entries land in: tests that need several
/// conversations in one queue partition (so one queue page holds them all) pick them with it.
pub fn queue_shard(conversation: &ConversationId) -> i32 {
    crate::index::shard_of(conversation)
}

impl ScyllaBackend {
    /// The content bytes of a message exactly as stored (after the codec); `None` if absent.
    pub async fn raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Result<Option<Vec<u8>>> {
        let ks = self.config().keyspace();
        let res = self
            .session()
            .query_unpaged(
                format!(
                    "SELECT content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?"
                ),
                (
                    conversation.as_str(),
                    self.bucket_of(msg_id),
                    msg_id.as_i64(),
                ),
            )
            .await
            .map_err(error::execution)?
            .into_rows_result()
            .map_err(|e| error::decode("message row", e))?;
        Ok(res
            .maybe_first_row::<(Option<Vec<u8>>,)>()
            .map_err(|e| error::decode("message row", e))?
            .and_then(|(c,)| c))
    }

    /// Overwrites the stored content bytes of a message, bypassing the codec (tampering);
    /// false when the message does not exist. A conditional write, as every message write is.
    pub async fn set_raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) -> Result<bool> {
        let ks = self.config().keyspace();
        let res = self
            .session()
            .query_unpaged(
                format!(
                    "UPDATE {ks}.messages SET content = ? WHERE conversation_id = ? AND bucket = ? AND msg_id = ? IF EXISTS"
                ),
                (
                    bytes,
                    conversation.as_str(),
                    self.bucket_of(msg_id),
                    msg_id.as_i64(),
                ),
            )
            .await
            .map_err(error::execution)?;
        Ok(rows::lwt(res)?.applied)
    }
}

/// Makes a keyspace per case on the cluster it is given, and removes or recycles it afterwards.
pub struct ScyllaFactory {
    nodes: String,
    replication: Replication,
    consistency: Option<(Consistency, SerialConsistency)>,
    credentials: Option<Credentials>,
    tls: Option<ScyllaTls>,
    prefix: String,
    reuse: bool,
    quiet: std::time::Duration,
    session: OnceCell<(Arc<Session>, Flavour)>,
    stores: Mutex<HashMap<String, ScyllaStore>>,
}

impl ScyllaFactory {
    /// A factory for the cluster reachable through `nodes` (comma-separated `host:port`):
    /// replication factor 1, no credentials, keyspaces named `sc_…`, emptied keyspaces reused.
    pub fn new(nodes: &str) -> Self {
        ScyllaFactory {
            nodes: nodes.to_string(),
            replication: Replication::Everywhere(1),
            consistency: None,
            credentials: None,
            tls: None,
            prefix: "sc".to_string(),
            reuse: true,
            quiet: std::time::Duration::ZERO,
            session: OnceCell::new(),
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// The factory for `IMSTORE_SCYLLA_NODES` (required: panics, saying how to start the test
    /// servers, when unset), with `IMSTORE_SCYLLA_RF` as the replication factor (default 1)
    /// and `IMSTORE_SCYLLA_USER` / `IMSTORE_SCYLLA_PASSWORD` as credentials when set.
    pub fn from_env() -> Self {
        let mut f = ScyllaFactory::new(&require_env("IMSTORE_SCYLLA_NODES"));
        if let Ok(rf) = std::env::var("IMSTORE_SCYLLA_RF") {
            let rf = rf
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("IMSTORE_SCYLLA_RF={rf:?} is not a number"));
            f = f.with_replication(Replication::Everywhere(rf));
        }
        if let Ok(user) = std::env::var("IMSTORE_SCYLLA_USER") {
            let password = std::env::var("IMSTORE_SCYLLA_PASSWORD").unwrap_or_default();
            f = f.with_credentials(Credentials::new(user, password));
        }
        f
    }

    /// The replication of the keyspaces it creates.
    pub fn with_replication(mut self, replication: Replication) -> Self {
        self.replication = replication;
        self
    }

    /// The consistency and serial consistency of its stores' statements (default: the backend's,
    /// `ScyllaConfig::new`'s): the multi-node tests pin QUORUM and SERIAL.
    pub fn with_consistency(mut self, consistency: Consistency, serial: SerialConsistency) -> Self {
        self.consistency = Some((consistency, serial));
        self
    }

    /// Logs in with these credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Connects over TLS (`None`: plain TCP, the default).
    pub fn with_tls(mut self, tls: Option<ScyllaTls>) -> Self {
        self.tls = tls;
        self
    }

    /// Names its keyspaces `<prefix>_…` (a short lowercase word), and sweeps only those.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.to_string();
        self
    }

    /// Whether a finished case's keyspace is emptied and reused (default) or dropped.
    pub fn with_reuse(mut self, reuse: bool) -> Self {
        self.reuse = reuse;
        self
    }

    /// How long a finished case's keyspace rests before it is emptied and reused (default
    /// none). On a cluster, a write that timed out at its coordinator may still reach a replica
    /// later, until the replica drops it as older than the server's write timeout; a `TRUNCATE`
    /// before that is no fence (it leaves no tombstone), and the late write would appear in the
    /// next case's keyspace. Set it above the servers' `write_request_timeout`.
    pub fn with_reuse_quiet(mut self, quiet: std::time::Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// The backend configuration for `keyspace` with this factory's settings (schema created
    /// by the factory, no driver schema metadata).
    pub fn config(&self, keyspace: &str) -> ScyllaConfig {
        let mut c = ScyllaConfig::from_node_list(&self.nodes, keyspace)
            .with_replication(self.replication.clone())
            .with_fetch_schema_metadata(false)
            .with_create_schema(false)
            .with_tls(self.tls.clone());
        if let Some(cred) = &self.credentials {
            c = c.with_credentials(cred.clone());
        }
        if let Some((consistency, serial)) = self.consistency {
            c = c
                .with_consistency(consistency)
                .with_serial_consistency(serial);
        }
        c
    }

    /// The factory's session (connected on first use) and the server's flavour; panics when
    /// the cluster is unreachable: a test never passes without its server.
    pub async fn session(&self) -> Arc<Session> {
        self.connection().await.0.clone()
    }

    async fn connection(&self) -> &(Arc<Session>, Flavour) {
        self.session
            .get_or_init(|| async {
                let session = session_for(&self.config("imstore_probe"))
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cannot connect to the CQL nodes {:?}: {e}", self.nodes)
                    });
                let info = schema::detect(&session)
                    .await
                    .unwrap_or_else(|e| panic!("cannot detect the CQL server: {e}"));
                (Arc::new(session), info.flavour)
            })
            .await
    }

    /// A keyspace name of this factory, carrying its creation time (for the sweeper).
    fn fresh_name(&self) -> String {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // unique_namespace adds the process, a counter and a random salt.
        unique_namespace(&format!("{}_{secs:x}", self.prefix))
    }

    /// Creates keyspace `name` with the current schema (idempotent).
    pub async fn create_keyspace(&self, name: &str) -> Result<()> {
        let (session, flavour) = self.connection().await;
        let config = self.config(name);
        schema::ensure(session, &config, *flavour).await
    }

    /// A store over keyspace `name` (which must exist), on the factory's session.
    pub async fn open_store(&self, name: &str, settings: StoreSettings) -> Result<ScyllaStore> {
        let backend = ScyllaBackend::with_session(self.session().await, self.config(name)).await?;
        Store::with_backend(backend, settings)
    }

    /// Drops keyspace `name`.
    pub async fn drop_keyspace(&self, name: &str) -> Result<()> {
        schema::drop_keyspace(&*self.session().await, name).await
    }

    /// Drops every keyspace named `<prefix>_…` by this factory that is older than `age` (by the
    /// creation time in its name), and returns their names. With `Duration::ZERO` it drops every
    /// keyspace of the prefix, names without a creation time included (a bench names its own).
    pub async fn sweep_leftovers(&self, age: Duration) -> Result<Vec<String>> {
        let session = self.session().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let start = format!("{}_", self.prefix);
        let mut dropped = Vec::new();
        for ks in schema::keyspaces(&session).await? {
            let Some(rest) = ks.strip_prefix(&start) else {
                continue;
            };
            let created = rest
                .split('_')
                .next()
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            let old = match created {
                _ if age.is_zero() => true,
                Some(t) => now.saturating_sub(t) >= age.as_secs(),
                None => false,
            };
            if old {
                schema::drop_keyspace(&session, &ks).await?;
                dropped.push(ks);
            }
        }
        POOL.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(_, k, _)| !dropped.contains(k));
        Ok(dropped)
    }

    /// Keyspaces are reused only by factories that would have made the same ones.
    fn pool_key(&self) -> String {
        format!("{}|{}|{:?}", self.nodes, self.prefix, self.replication)
    }

    fn store(&self, namespace: &str) -> ScyllaStore {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(namespace)
            .cloned()
            .expect("namespace was opened by this factory")
    }
}

#[async_trait]
impl StoreFactory for ScyllaFactory {
    type Store = ScyllaStore;

    async fn create_namespace(&self) -> String {
        if self.reuse {
            let key = self.pool_key();
            let rested = {
                let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
                pool.iter()
                    .position(|(k, _, at)| *k == key && at.elapsed() >= self.quiet)
                    .map(|i| pool.swap_remove(i).1)
            };
            if let Some(name) = rested {
                let (session, flavour) = self.connection().await;
                schema::truncate_keyspace(session, &name, *flavour)
                    .await
                    .unwrap_or_else(|e| panic!("truncate keyspace {name}: {e}"));
                return name;
            }
        }
        let name = self.fresh_name();
        self.create_keyspace(&name)
            .await
            .unwrap_or_else(|e| panic!("create keyspace {name}: {e}"));
        name
    }

    async fn try_open(&self, namespace: &str, settings: StoreSettings) -> Result<ScyllaStore> {
        // The backend first (a failure there is the server's: it panics, a test never passes
        // without its server), then the pipeline, whose refusal of the settings is returned.
        let backend = ScyllaBackend::with_session(self.session().await, self.config(namespace))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "open a backend over {namespace}: {e}: {:?}",
                    std::error::Error::source(&e)
                )
            });
        let store = Store::with_backend(backend, settings)?;
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(namespace.to_string(), store.clone());
        Ok(store)
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
                .inner()
                .set_raw_content(conversation, msg_id, bytes)
                .await
                .expect("write raw content"),
            "no such message"
        );
    }

    async fn drop_namespace(&self, namespace: &str) {
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(namespace);
        if self.reuse {
            // Emptied when it is taken again, after its rest (see `with_reuse_quiet`).
            POOL.lock().unwrap_or_else(|p| p.into_inner()).push((
                self.pool_key(),
                namespace.to_string(),
                std::time::Instant::now(),
            ));
        } else {
            let (session, _) = self.connection().await;
            schema::drop_keyspace(session, namespace)
                .await
                .unwrap_or_else(|e| panic!("drop keyspace {namespace}: {e}"));
        }
    }
}

/// How a test-injected fault strikes a statement (see [`hide_outcomes`] and [`refuse`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Fault {
    /// The statement runs, then answers `Unavailable`: its outcome is unknown to the caller.
    Hide,
    /// The statement answers `Unavailable` without running, as a timeout before any replica
    /// heard it (or a SERIAL read that lost its Paxos round).
    Refuse,
}

/// Statements the backend makes fail on a test's request: by a text they contain, how many
/// more to strike, and how.
#[derive(Default)]
pub(crate) struct Hidden(Mutex<Vec<(String, u32, Fault)>>);

impl Hidden {
    /// True when one of `texts` is to be struck with `fault` (and counts it).
    fn take_texts(&self, texts: &[&str], fault: Fault) -> bool {
        let mut hidden = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = hidden.iter().position(|(needle, _, f)| {
            *f == fault && texts.iter().any(|t| t.contains(needle.as_str()))
        }) else {
            return false;
        };
        hidden[i].1 -= 1;
        if hidden[i].1 == 0 {
            hidden.remove(i);
        }
        true
    }

    /// True when the outcome of `batch` is to be hidden (and counts it).
    pub(crate) fn take(&self, batch: &scylla::statement::batch::Batch) -> bool {
        use scylla::statement::batch::BatchStatement;
        let texts: Vec<&str> = batch
            .statements
            .iter()
            .map(|s| match s {
                BatchStatement::Query(q) => q.contents.as_str(),
                BatchStatement::PreparedStatement(p) => p.get_statement(),
                _ => "",
            })
            .collect();
        self.take_texts(&texts, Fault::Hide)
    }

    /// `Unavailable` when a test asked for `fault` on `st` (and counts it).
    pub(crate) fn strike(
        &self,
        st: &scylla::statement::prepared::PreparedStatement,
        fault: Fault,
    ) -> Result<()> {
        if self.take_texts(&[st.get_statement()], fault) {
            return Err(imstore_core::Error::new(
                imstore_core::ErrorKind::Unavailable,
                "the statement is struck by the test, as a timeout strikes it",
            ));
        }
        Ok(())
    }
}

fn push_fault(backend: &crate::ScyllaBackend, needle: &str, times: u32, fault: Fault) {
    if times > 0 {
        backend
            .inner()
            .hidden
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((needle.to_owned(), times, fault));
    }
}

/// The next `times` conditional batches of `backend` with a statement containing `needle` (and
/// the single conditional writes that honour it: the re-key's content swap) run as usual, and
/// then answer `Unavailable`, as when a timeout hides whether a write applied: for recovery
/// cases of the callers that must settle such an outcome.
pub fn hide_outcomes(backend: &crate::ScyllaBackend, needle: &str, times: u32) {
    push_fault(backend, needle, times, Fault::Hide);
}

/// The next `times` statements of `backend` containing `needle`, among those that honour it
/// (the re-key's content swap and the SERIAL read that settles it), answer `Unavailable`
/// without running, as a coordinator timeout or a lost Paxos round does.
pub fn refuse(backend: &crate::ScyllaBackend, needle: &str, times: u32) {
    push_fault(backend, needle, times, Fault::Refuse);
}

/// How many faults [`hide_outcomes`] and [`refuse`] asked for are still to come: 0 once every one
/// happened (a case checks it, so a statement renamed under its text cannot pass unhidden).
pub fn hidden_pending(backend: &crate::ScyllaBackend) -> u32 {
    backend
        .inner()
        .hidden
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, n, _)| *n)
        .sum()
}
