//! Cassandra / ScyllaDB: imstore-scylla in a fresh keyspace made by the crate's testing factory,
//! against the scylla driver with the minimal prepared statement on the same tables (`messages`
//! keyed `((conversation_id, bucket), msg_id)`, `conversation_state` keyed `((conversation_id),
//! kind, k, request_id)`).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use imstore_core::{MsgId, NewMessage, StoreSettings};
use imstore_scylla::ScyllaStore;
use imstore_scylla::testing::ScyllaFactory;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};

use crate::harness::R;
use crate::now_ms;
use crate::target::{Handle, Raw, SyncStores, Target};
use crate::wire::{CountingProxy, Protocol};

/// The keyspace prefix of the bench (its sweeper drops only these).
const PREFIX: &str = "bench_scylla";

/// The testing factory for `nodes` (replication factor 1: a single node), bench keyspaces.
fn factory(nodes: &str) -> ScyllaFactory {
    ScyllaFactory::new(nodes)
        .with_prefix(PREFIX)
        .with_reuse(false)
}

/// The Cassandra/ScyllaDB target over keyspace `keyspace`.
pub struct ScyllaTarget {
    nodes: String,
    keyspace: String,
    version: String,
    session: Arc<Session>,
    factory: ScyllaFactory,
    raw: Arc<ScyllaRaw>,
}

impl ScyllaTarget {
    /// Creates the keyspace through the testing factory, and prepares the baseline's
    /// statements on the same session.
    pub async fn connect(nodes: &str, keyspace: String) -> R<Self> {
        let factory = factory(nodes);
        factory.create_keyspace(&keyspace).await.map_err(|e| {
            format!("scylla: cannot create {keyspace} on IMSTORE_SCYLLA_NODES: {e}")
        })?;
        let session = factory.session().await;
        let base = factory
            .open_store(&keyspace, StoreSettings::default())
            .await?;
        let info = base.inner().server();
        let version = format!("{:?} {}", info.flavour, info.release_version);
        let raw = Arc::new(ScyllaRaw::prepare(session.clone(), &keyspace, base.clone()).await?);
        Ok(ScyllaTarget {
            nodes: nodes.to_owned(),
            keyspace,
            version,
            session,
            factory,
            raw,
        })
    }
}

#[async_trait]
impl Target for ScyllaTarget {
    fn name(&self) -> &'static str {
        "scylla"
    }
    fn namespace(&self) -> String {
        format!("keyspace {}", self.keyspace)
    }
    fn server_version(&self) -> Option<String> {
        Some(self.version.clone())
    }
    async fn open(&self, settings: StoreSettings) -> R<Handle> {
        let store = self.factory.open_store(&self.keyspace, settings).await?;
        Ok(Handle {
            store: Arc::new(store),
            close: None,
        })
    }
    async fn open_sync(&self, settings: StoreSettings) -> R<SyncStores> {
        let timed = Arc::new(
            self.factory
                .open_store(&self.keyspace, settings.clone())
                .await?,
        );
        // A single node: the driver talks to the contact point it was given, so every request
        // goes through the proxy (a count of zero would say otherwise, and the bench refuses it).
        let node = self
            .nodes
            .split(',')
            .next()
            .ok_or("IMSTORE_SCYLLA_NODES is empty")?
            .trim();
        let proxy = CountingProxy::start(node, Protocol::Cql).await?;
        let counting = factory(&proxy.addr.to_string());
        let counted = Arc::new(counting.open_store(&self.keyspace, settings).await?);
        let keep = Arc::new((proxy, counting));
        Ok(SyncStores {
            timed,
            counted,
            requests: Some(Arc::new(move || keep.0.count())),
            method: "wire: QUERY, PREPARE, EXECUTE and BATCH frames the driver sent, counted by \
                     a loopback proxy (requests; reads in flight together overlap)"
                .into(),
        })
    }
    fn raw(&self) -> Arc<dyn Raw> {
        self.raw.clone()
    }
    fn write_method(&self) -> String {
        "server: system_views.local_write_latency count deltas per table of the bench keyspace \
         (partition updates applied on the node; a conditional batch on one partition is one)"
            .into()
    }
    async fn write_counters(&self) -> R<Option<BTreeMap<String, u64>>> {
        let rows = self
            .session
            .query_unpaged(
                "SELECT table_name, count FROM system_views.local_write_latency \
                 WHERE keyspace_name = ? ALLOW FILTERING",
                (self.keyspace.as_str(),),
            )
            .await?
            .into_rows_result()?;
        let mut out = BTreeMap::new();
        for row in rows.rows::<Row>()? {
            let row = row?;
            let table = match row.columns.first() {
                Some(Some(CqlValue::Text(t))) => t.clone(),
                _ => continue,
            };
            let n = match row.columns.get(1) {
                Some(Some(CqlValue::BigInt(n))) => *n as u64,
                Some(Some(CqlValue::Int(n))) => *n as u64,
                Some(Some(CqlValue::Counter(c))) => c.0 as u64,
                _ => 0,
            };
            out.insert(format!("{table}.writes"), n);
        }
        Ok(Some(out))
    }
    async fn drop_namespace(&self) -> R<()> {
        self.factory.drop_keyspace(&self.keyspace).await?;
        Ok(())
    }
}

/// The driver on the same session and tables, one prepared statement per operation.
pub struct ScyllaRaw {
    session: Arc<Session>,
    store: ScyllaStore,
    insert: PreparedStatement,
    get: PreparedStatement,
    latest: PreparedStatement,
    recall: PreparedStatement,
    restore: PreparedStatement,
    feed: PreparedStatement,
    bucket_add: PreparedStatement,
}

impl ScyllaRaw {
    async fn prepare(session: Arc<Session>, ks: &str, store: ScyllaStore) -> R<Self> {
        let p = |q: String| {
            let session = session.clone();
            async move { session.prepare(q).await }
        };
        Ok(ScyllaRaw {
            insert: p(format!(
                "INSERT INTO {ks}.messages (conversation_id, bucket, msg_id, sender_id, msg_type, content, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            get: p(format!(
                "SELECT content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?"
            ))
            .await?,
            latest: p(format!(
                "SELECT msg_id, sender_id, content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT ?"
            ))
            .await?,
            // A message's first transition creates its state row: the minimal compare-and-set.
            recall: p(format!(
                "INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id, status, version, recalled_at, recalled_by) \
                 VALUES (?, 0, ?, '', 1, 2, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            restore: p(format!(
                "UPDATE {ks}.conversation_state SET status = 0, restored_at = ? \
                 WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF status = 1"
            ))
            .await?,
            feed: p(format!(
                "SELECT k, msg_id, status, version FROM {ks}.conversation_state \
                 WHERE conversation_id = ? AND kind = 1 AND k > ? LIMIT ?"
            ))
            .await?,
            bucket_add: p(format!(
                "INSERT INTO {ks}.buckets (conversation_id, bucket) VALUES (?, ?)"
            ))
            .await?,
            session,
            store,
        })
    }

    fn bucket(&self, id: MsgId) -> i32 {
        self.store.inner().bucket_of(id)
    }

    /// One plain INSERT of `m`'s message row, with `content` as the stored bytes.
    async fn insert_row(&self, m: &NewMessage, content: &[u8]) -> R<()> {
        self.session
            .execute_unpaged(
                &self.insert,
                (
                    m.conversation_id.as_str(),
                    self.bucket(m.msg_id),
                    m.msg_id.as_i64(),
                    m.sender_id.as_str(),
                    m.msg_type.code(),
                    content,
                    now_ms(),
                ),
            )
            .await?;
        Ok(())
    }

    async fn insert_one(&self, m: &NewMessage) -> R<()> {
        self.insert_row(m, &m.content).await
    }
}

#[async_trait]
impl Raw for ScyllaRaw {
    async fn send(&self, m: &NewMessage) -> R<()> {
        self.insert_one(m).await
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        // 1,000 × 300 B is over Cassandra's batch size limit: concurrent single inserts, as many
        // in flight as imstore's batch insert uses (16).
        futures::stream::iter(0..ms.len())
            .map(|i| self.insert_one(&ms[i]))
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
    async fn bulk_history(&self, ms: &[NewMessage]) -> R<bool> {
        // The rows imstore's insert writes (message row with plain-codec content, bucket index
        // row), without its IF NOT EXISTS: history loads in seconds instead of minutes.
        let codec = imstore_core::ContentCodec::plain();
        let mut buckets = std::collections::BTreeSet::new();
        for m in ms {
            buckets.insert((m.conversation_id.as_str(), self.bucket(m.msg_id)));
        }
        for (c, b) in buckets {
            self.session
                .execute_unpaged(&self.bucket_add, (c, b))
                .await?;
        }
        let encoded = ms
            .iter()
            .map(|m| codec.encode(&m.conversation_id, m.msg_id, &m.content))
            .collect::<imstore_core::Result<Vec<_>>>()?;
        futures::stream::iter(0..ms.len())
            .map(|i| self.insert_row(&ms[i], &encoded[i]))
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(true)
    }
    async fn get(&self, conv: &str, id: i64) -> R<()> {
        let mid = MsgId::from_i64(id)?;
        let rows = self
            .session
            .execute_unpaged(&self.get, (conv, self.bucket(mid), id))
            .await?
            .into_rows_result()?;
        let (content,): (Vec<u8>,) = rows.single_row()?;
        std::hint::black_box(content);
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32) -> R<usize> {
        // The newest bucket is the current one: the bench wrote every message just now.
        let now = imstore_core::Timestamp::from_millis(now_ms());
        let bucket = self.bucket(MsgId::from_parts(now, 0, 0)?);
        let rows = self
            .session
            .execute_unpaged(&self.latest, (conv, bucket, limit as i32))
            .await?
            .into_rows_result()?;
        let mut n = 0;
        for r in rows.rows::<(i64, String, Vec<u8>)>()? {
            std::hint::black_box(r?);
            n += 1;
        }
        Ok(n)
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, at: i64) -> R<()> {
        self.session
            .execute_unpaged(&self.recall, (conv, id, at, by))
            .await?;
        Ok(())
    }
    async fn restore(&self, conv: &str, id: i64, at: i64) -> R<()> {
        self.session
            .execute_unpaged(&self.restore, (at, conv, id))
            .await?;
        Ok(())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let rows = self
            .session
            .execute_unpaged(&self.feed, (conv, after as i64, limit as i32))
            .await?
            .into_rows_result()?;
        Ok(rows.rows_num())
    }
}

/// Drops every `bench_scylla_*` keyspace (left behind by interrupted runs); returns their names.
pub async fn drop_leftovers(nodes: &str) -> R<Vec<String>> {
    Ok(factory(nodes)
        .sweep_leftovers(std::time::Duration::ZERO)
        .await?)
}
