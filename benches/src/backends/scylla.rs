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
use crate::target::{Fair, Handle, Raw, SyncStores, Target};
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
    fair: Arc<ScyllaFair>,
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
        let fair = Arc::new(ScyllaFair::prepare(session.clone(), &keyspace, base.clone()).await?);
        Ok(ScyllaTarget {
            fair,
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
    fn fair(&self) -> Option<Arc<dyn Fair>> {
        Some(self.fair.clone())
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

/// The fair baseline on Cassandra/ScyllaDB: imstore's tables and row layout, the same
/// consistency levels, written by hand in the fewest round trips in series:
///
/// * send: the bucket index row and the history index entry (before the message, so a crash
///   never leaves a message no page lists), one `IF NOT EXISTS` insert, then the bucket row
///   again (a purge may have unlisted the bucket as empty meanwhile): three in series, as
///   imstore's guarantees need; not applied: the returned row judged as a retry or a conflict.
///   A batch: the index rows, conditional batches of 50 rows per partition, the bucket rows.
/// * point read: the message row and its lifecycle row with the bucket's purge sentinel, in
///   parallel (one round trip).
/// * latest page: the bucket index beside the page of the bucket last seen and, as imstore on
///   a keyspace with sentinel mirrors, that bucket's lifecycles from its top down to the last
///   page's bottom with the mirror (one round trip when the guess holds and the slice covers
///   the page; the lifecycles it did not reach after, with the sentinel).
/// * recall: the head, lifecycle, sentinel and request record in one read of the state
///   partition, beside the message row and the retention queue entry (idempotent: written before
///   the decision is known), then one conditional batch: head claim, lifecycle compare-and-set,
///   sentinel fence, event and record (two in series).
/// * feed page: the events with the head and purge mark as statics (one).
pub struct ScyllaFair {
    session: Arc<Session>,
    store: ScyllaStore,
    retention_ms: i64,
    send: PreparedStatement,
    bucket_add: PreparedStatement,
    message: PreparedStatement,
    states: PreparedStatement,
    top: PreparedStatement,
    buckets: PreparedStatement,
    page: PreparedStatement,
    recall_read: PreparedStatement,
    restore_read: PreparedStatement,
    restore_write: PreparedStatement,
    rq_add: PreparedStatement,
    hq_add: PreparedStatement,
    days_add: PreparedStatement,
    head_mark: PreparedStatement,
    head_claim: PreparedStatement,
    state_write: PreparedStatement,
    sentinel_fence: PreparedStatement,
    event_put: PreparedStatement,
    request_put: PreparedStatement,
    events: PreparedStatement,
    /// Per conversation: its newest bucket as last seen, and the lowest msg_id the last page
    /// read there (the floor of the next page's lifecycle slice).
    newest_bucket: std::sync::Mutex<std::collections::HashMap<String, (i32, Option<i64>)>>,
    known_days: std::sync::Mutex<std::collections::HashSet<(i32, i32)>>,
}

/// A row of the recall's read: kind, k, status, version, purging, at_ms, feed head.
type RecallCols = (
    i8,
    i64,
    Option<i8>,
    Option<i32>,
    Option<bool>,
    Option<i64>,
    Option<i64>,
);

/// A lifecycle row as the fair baseline reads it: status, version, purging, sentinel epoch, and
/// the request id (`''`, but `~sentinel` on a sentinel's mirror).
type StateCols = (
    i64,
    Option<i8>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<bool>,
    Option<i64>,
    String,
);

impl ScyllaFair {
    async fn prepare(session: Arc<Session>, ks: &str, store: ScyllaStore) -> R<Self> {
        let p = |q: String| {
            let session = session.clone();
            async move { session.prepare(q).await }
        };
        Ok(ScyllaFair {
            retention_ms: imstore_core::Policy::default().retention().as_millis() as i64,
            send: p(format!(
                "INSERT INTO {ks}.messages (conversation_id, bucket, msg_id, sender_id, msg_type, content, created_at, insert_token) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            bucket_add: p(format!(
                "INSERT INTO {ks}.buckets (conversation_id, bucket) VALUES (?, ?)"
            ))
            .await?,
            message: p(format!(
                "SELECT sender_id, msg_type, content, created_at FROM {ks}.messages \
                 WHERE conversation_id = ? AND bucket = ? AND msg_id = ?"
            ))
            .await?,
            states: p(format!(
                "SELECT k, status, version, recalled_at, recalled_by, purging, at_ms, request_id \
                 FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k IN ? \
                 AND request_id = ''"
            ))
            .await?,
            top: p(format!(
                "SELECT k, status, version, recalled_at, recalled_by, purging, at_ms, request_id \
                 FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k >= ? \
                 AND k <= ? ORDER BY kind DESC, k DESC, request_id DESC LIMIT ?"
            ))
            .await?,
            buckets: p(format!(
                "SELECT bucket FROM {ks}.buckets WHERE conversation_id = ? LIMIT 8"
            ))
            .await?,
            page: p(format!(
                "SELECT msg_id, sender_id, msg_type, content, created_at FROM {ks}.messages \
                 WHERE conversation_id = ? AND bucket = ? LIMIT ?"
            ))
            .await?,
            recall_read: p(format!(
                "SELECT kind, k, status, version, purging, at_ms, feed_head FROM {ks}.conversation_state \
                 WHERE conversation_id = ? AND (kind, k, request_id) IN ((-1, 0, ''), (0, ?, ''), (0, ?, ''), (2, 0, ?))"
            ))
            .await?,
            restore_read: p(format!(
                "SELECT kind, status, version, purging, recalled_at, recalled_by, feed_head FROM {ks}.conversation_state \
                 WHERE conversation_id = ? AND (kind, k, request_id) IN ((-1, 0, ''), (0, ?, ''), (2, 0, ?))"
            ))
            .await?,
            restore_write: p(format!(
                "UPDATE {ks}.conversation_state SET status = 0, version = ?, recalled_at = null, restored_at = ?, event_seqs = event_seqs + ? \
                 WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF version = ? AND purging = null"
            ))
            .await?,
            rq_add: p(format!(
                "INSERT INTO {ks}.retention_queue (day, shard, due, conversation_id, msg_id, request_id) VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            hq_add: p(format!(
                "INSERT INTO {ks}.history_index (day, shard, created_at, conversation_id, msg_id) VALUES (?, ?, ?, ?, ?)"
            ))
            .await?,
            days_add: p(format!(
                "INSERT INTO {ks}.purge_days (shard, day) VALUES (?, ?)"
            ))
            .await?,
            head_mark: p(format!(
                "INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id) VALUES (?, -1, 0, '')"
            ))
            .await?,
            head_claim: p(format!(
                "UPDATE {ks}.conversation_state SET feed_head = ? WHERE conversation_id = ? IF feed_head = ?"
            ))
            .await?,
            state_write: p(format!(
                "UPDATE {ks}.conversation_state SET status = ?, version = ?, recalled_at = ?, recalled_by = ?, event_seqs = event_seqs + ? \
                 WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF version = ? AND purging = null"
            ))
            .await?,
            sentinel_fence: p(format!(
                "UPDATE {ks}.conversation_state SET at_ms = ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF at_ms = ?"
            ))
            .await?,
            event_put: p(format!(
                "INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id, msg_id, status, version, at_ms, actor) \
                 VALUES (?, 1, ?, '', ?, ?, ?, ?, ?)"
            ))
            .await?,
            request_put: p(format!(
                "UPDATE {ks}.conversation_state SET action = ?, msg_id = ?, actor = ?, status = ?, version = ?, changed = ?, at_ms = ?, call_token = ? \
                 WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ? IF at_ms = null"
            ))
            .await?,
            events: p(format!(
                "SELECT k, msg_id, status, version, at_ms, actor, feed_head, purged_through FROM {ks}.conversation_state \
                 WHERE conversation_id = ? AND kind = 1 AND k > ? LIMIT ?"
            ))
            .await?,
            newest_bucket: Default::default(),
            known_days: Default::default(),
            session,
            store,
        })
    }

    fn bucket(&self, id: MsgId) -> i32 {
        self.store.inner().bucket_of(id)
    }

    /// A conditional batch at the store's levels.
    fn batch(&self) -> scylla::statement::batch::Batch {
        let c = self.store.inner().config();
        let mut b =
            scylla::statement::batch::Batch::new(scylla::statement::batch::BatchType::Unlogged);
        b.set_consistency(c.consistency());
        b.set_serial_consistency(Some(c.serial_consistency()));
        b
    }

    /// The bucket index row of `(conv, bucket)`.
    async fn index_bucket(&self, conv: &str, bucket: i32) -> R<()> {
        self.session
            .execute_unpaged(&self.bucket_add, (conv, bucket))
            .await?;
        Ok(())
    }

    /// The `purge_days` row of `(queue, day)`, once per process.
    async fn note_day(&self, queue: i32, day: i32) -> R<()> {
        if self
            .known_days
            .lock()
            .map_err(|_| "poisoned")?
            .contains(&(queue, day))
        {
            return Ok(());
        }
        self.session
            .execute_unpaged(&self.days_add, (queue, day))
            .await?;
        self.known_days
            .lock()
            .map_err(|_| "poisoned")?
            .insert((queue, day));
        Ok(())
    }

    /// The history index entries of `ms`, accepted at `at`: one unlogged batch per 100 (they
    /// share the conversation's queue partition of the day).
    async fn index_history(&self, ms: &[NewMessage], at: i64) -> R<()> {
        let day = i32::try_from(at.div_euclid(86_400_000))?;
        self.note_day(3, day).await?;
        futures::stream::iter((0..ms.len()).step_by(100))
            .map(|start| async move {
                let chunk = &ms[start..(start + 100).min(ms.len())];
                let mut b = scylla::statement::batch::Batch::new(
                    scylla::statement::batch::BatchType::Unlogged,
                );
                let mut values = Vec::new();
                for m in chunk {
                    b.append_statement(self.hq_add.clone());
                    values.push((
                        day,
                        imstore_scylla_shard(&m.conversation_id),
                        at,
                        m.conversation_id.as_str(),
                        m.msg_id.as_i64(),
                    ));
                }
                self.session.batch(&b, values).await?;
                R::Ok(())
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The retention queue entry of a transition's request (and of its message, when recalled)
    /// accepted at `now`.
    async fn queue_retention(&self, conv: &str, id: i64, request: &str, now: i64) -> R<()> {
        let due = now + self.retention_ms;
        let day = i32::try_from(due.div_euclid(86_400_000))?;
        let c = imstore_core::ConversationId::new(conv)?;
        let shard = imstore_scylla_shard(&c);
        self.note_day(2, day).await?;
        self.session
            .execute_unpaged(&self.rq_add, (day, shard, due, conv, id, request))
            .await?;
        Ok(())
    }

    /// The message row's sender and creation time.
    async fn sender_of(&self, conv: &str, bucket: i32, id: i64) -> R<(String, i64)> {
        let rows = self
            .session
            .execute_unpaged(&self.message, (conv, bucket, id))
            .await?
            .into_rows_result()?;
        let (sender, _, _, created): (String, i32, Vec<u8>, i64) = rows.single_row()?;
        Ok((sender, created))
    }

    /// One attempt at [`Fair::recall`]: false when its batch lost the conversation's head to
    /// another change (the caller reads and tries again, as imstore does).
    async fn recall_once(
        &self,
        conv: &str,
        id: i64,
        by: &str,
        request: &str,
        window_ms: i64,
    ) -> R<bool> {
        let now = now_ms();
        let mid = MsgId::from_i64(id)?;
        let bucket = self.bucket(mid);
        let sentinel = -i64::from(bucket) - 1;
        let state = async {
            let rows = self
                .session
                .execute_unpaged(&self.recall_read, (conv, id, sentinel, request))
                .await?
                .into_rows_result()?;
            let rows: Vec<RecallCols> = rows.rows()?.collect::<Result<_, _>>()?;
            R::Ok(rows)
        };
        let message = async {
            let rows = self
                .session
                .execute_unpaged(&self.message, (conv, bucket, id))
                .await?
                .into_rows_result()?;
            R::Ok(rows.single_row::<(String, i32, Vec<u8>, i64)>()?)
        };
        // The retention entry first or beside: a purge that finds one whose message is not
        // recalled drops it.
        let queue = self.queue_retention(conv, id, request, now);
        let (rows, m, ()) = futures::try_join!(state, message, queue)?;
        let mut head = None;
        let mut lifecycle = None;
        let mut epoch = None;
        for r in &rows {
            head = head.or(r.6);
            match (r.0, r.1) {
                (2, _) => return Ok(true), // a replay: its record is the answer
                (0, k) if k == id => lifecycle = Some((r.2, r.3, r.4)),
                (0, _) => epoch = r.5,
                _ => {}
            }
        }
        let (status, version, purging) = lifecycle.unwrap_or((None, None, None));
        if status.unwrap_or(0) != 0 || purging.is_some() || m.0 != by || m.3 < now - window_ms {
            return Err(format!("fair recall of {id} refused").into());
        }
        let version_before = version.unwrap_or(1);
        let seq = head.unwrap_or(0) + 1;
        let mut b = self.batch();
        let mut values: Vec<BoxedValues> = Vec::new();
        b.append_statement(self.head_mark.clone());
        values.push(Box::new((conv,)));
        b.append_statement(self.head_claim.clone());
        values.push(Box::new((seq, conv, head)));
        b.append_statement(self.state_write.clone());
        values.push(Box::new((
            1i8,
            version_before + 1,
            now,
            by,
            vec![seq],
            conv,
            id,
            version,
        )));
        if lifecycle.is_none() {
            b.append_statement(self.sentinel_fence.clone());
            // Unset, not null, when no sentinel exists: no tombstone.
            let set = epoch.map_or(
                scylla::value::MaybeUnset::Unset,
                scylla::value::MaybeUnset::Set,
            );
            values.push(Box::new((set, conv, sentinel, epoch)));
        }
        b.append_statement(self.event_put.clone());
        values.push(Box::new((conv, seq, id, 1i8, version_before + 1, now, by)));
        b.append_statement(self.request_put.clone());
        values.push(Box::new((
            "recall",
            id,
            by,
            1i8,
            version_before + 1,
            true,
            now,
            rand::random::<i64>(),
            conv,
            request,
        )));
        // Not applied: another change of the conversation claimed the head first; read again.
        self.applied(&b, values).await
    }

    /// One attempt at [`Fair::restore`], as [`ScyllaFair::recall_once`].
    async fn restore_once(
        &self,
        conv: &str,
        id: i64,
        by: &str,
        request: &str,
        window_ms: i64,
    ) -> R<bool> {
        // The recall's shape: one read of the state partition beside the message row and the
        // retention entry, then one conditional batch (no sentinel: a recalled message has its
        // lifecycle row).
        let now = now_ms();
        let bucket = self.bucket(MsgId::from_i64(id)?);
        let state = async {
            let rows = self
                .session
                .execute_unpaged(&self.restore_read, (conv, id, request))
                .await?
                .into_rows_result()?;
            type Cols = (
                i8,
                Option<i8>,
                Option<i32>,
                Option<bool>,
                Option<i64>,
                Option<String>,
                Option<i64>,
            );
            let rows: Vec<Cols> = rows.rows()?.collect::<Result<_, _>>()?;
            R::Ok(rows)
        };
        let queue = self.queue_retention(conv, id, request, now);
        let (rows, (sender, _), ()) =
            futures::try_join!(state, self.sender_of(conv, bucket, id), queue)?;
        let mut head = None;
        let mut lifecycle = None;
        for r in &rows {
            head = head.or(r.6);
            match r.0 {
                2 => return Ok(true), // a replay: its record is the answer
                0 => lifecycle = Some((r.1, r.2, r.3, r.4, r.5.as_deref())),
                _ => {}
            }
        }
        let Some((Some(1), Some(version), None, Some(recalled_at), Some(recalled_by))) = lifecycle
        else {
            return Err(format!("fair restore of {id}: not recalled").into());
        };
        if sender != by || recalled_by != by || recalled_at < now - window_ms {
            return Err(format!("fair restore of {id} refused").into());
        }
        let seq = head.unwrap_or(0) + 1;
        let mut b = self.batch();
        let mut values: Vec<BoxedValues> = Vec::new();
        b.append_statement(self.head_mark.clone());
        values.push(Box::new((conv,)));
        b.append_statement(self.head_claim.clone());
        values.push(Box::new((seq, conv, head)));
        b.append_statement(self.restore_write.clone());
        values.push(Box::new((version + 1, now, vec![seq], conv, id, version)));
        b.append_statement(self.event_put.clone());
        values.push(Box::new((conv, seq, id, 0i8, version + 1, now, by)));
        b.append_statement(self.request_put.clone());
        values.push(Box::new((
            "restore",
            id,
            by,
            0i8,
            version + 1,
            true,
            now,
            rand::random::<i64>(),
            conv,
            request,
        )));
        // Not applied: another change of the conversation claimed the head first; read again.
        self.applied(&b, values).await
    }

    /// Runs a conditional batch; whether it applied (the `[applied]` column of its answer).
    async fn applied(
        &self,
        b: &scylla::statement::batch::Batch,
        values: Vec<BoxedValues<'_>>,
    ) -> R<bool> {
        let res = self.session.batch(b, values).await?.into_rows_result()?;
        let row = res.maybe_first_row::<Row>()?.ok_or("no LWT result")?;
        Ok(matches!(
            row.columns.first(),
            Some(Some(CqlValue::Boolean(true)))
        ))
    }

    /// An insert that did not apply: the stored row is the same message (a retry) or not.
    async fn judge(&self, m: &NewMessage, bucket: i32) -> R<()> {
        let rows = self
            .session
            .execute_unpaged(
                &self.message,
                (m.conversation_id.as_str(), bucket, m.msg_id.as_i64()),
            )
            .await?
            .into_rows_result()?;
        let (sender, ty, content, _): (String, i32, Vec<u8>, i64) = rows.single_row()?;
        if sender != m.sender_id.as_str() || ty != m.msg_type.code() || content != m.content {
            return Err("conflict: the id exists with other content".into());
        }
        Ok(())
    }

    /// The lifecycle rows of `ids` and the purge sentinel of `bucket`, by k.
    async fn states_of(
        &self,
        conv: &str,
        ids: Vec<i64>,
    ) -> R<std::collections::HashMap<i64, StateCols>> {
        let rows = self
            .session
            .execute_unpaged(&self.states, (conv, ids))
            .await?
            .into_rows_result()?;
        let mut out = std::collections::HashMap::new();
        for r in rows.rows::<StateCols>()? {
            let r = r?;
            out.insert(r.0, r);
        }
        Ok(out)
    }
}

/// Shown to `viewer`: a message without a lifecycle row is normal; a recalled one only to its
/// sender; a purging one (or one whose bucket was purged after it was written) to nobody.
fn scylla_shown(sender: &str, state: Option<&StateCols>, viewer: &str) -> bool {
    match state {
        None => true,
        Some(s) => match (s.1, s.5) {
            (_, Some(true)) => false,
            (None | Some(0), _) => true,
            (Some(1), _) => sender == viewer,
            _ => false,
        },
    }
}

#[async_trait]
impl Fair for ScyllaFair {
    fn round_trips(&self, path: &str) -> Option<u32> {
        match path {
            "point_read" | "feed_page" | "latest_page" => Some(1),
            "recall" => Some(2),
            "send" => Some(3),
            // Index rows (10 history batches in flight beside the bucket row), 20 conditional
            // batches of 50 (8 in flight), the bucket row.
            "batch_send_1000" => Some(3),
            _ => None,
        }
    }
    async fn send(&self, m: &NewMessage) -> R<()> {
        let conv = m.conversation_id.as_str();
        let bucket = self.bucket(m.msg_id);
        let at = now_ms();
        futures::try_join!(
            self.index_bucket(conv, bucket),
            self.index_history(std::slice::from_ref(m), at)
        )?;
        let res = self
            .session
            .execute_unpaged(
                &self.send,
                (
                    conv,
                    bucket,
                    m.msg_id.as_i64(),
                    m.sender_id.as_str(),
                    m.msg_type.code(),
                    m.content.as_slice(),
                    at,
                    rand::random::<i64>(),
                ),
            )
            .await?
            .into_rows_result()?;
        let row = res.maybe_first_row::<Row>()?.ok_or("no LWT result")?;
        if matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true)))) {
            return self.index_bucket(conv, bucket).await;
        }
        self.judge(m, bucket).await
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        // The bench's batches are one partition each, under 50 rows and 32 KiB per chunk.
        let at = now_ms();
        let first = ms.first().ok_or("empty batch")?;
        let conv = first.conversation_id.as_str();
        let bucket = self.bucket(first.msg_id);
        if ms
            .iter()
            .any(|m| m.conversation_id.as_str() != conv || self.bucket(m.msg_id) != bucket)
        {
            return Err("the fair batch takes one partition".into());
        }
        futures::try_join!(self.index_bucket(conv, bucket), self.index_history(ms, at))?;
        futures::stream::iter((0..ms.len()).step_by(50))
            .map(|start| async move {
                let chunk = &ms[start..(start + 50).min(ms.len())];
                let mut b = self.batch();
                let mut values = Vec::new();
                for m in chunk {
                    b.append_statement(self.send.clone());
                    values.push((
                        conv,
                        bucket,
                        m.msg_id.as_i64(),
                        m.sender_id.as_str(),
                        m.msg_type.code(),
                        m.content.as_slice(),
                        at,
                        rand::random::<i64>(),
                    ));
                }
                // Not applied (some id existed), or an outcome a timeout hid (the batch may
                // have applied): each message then goes alone, and one found stored is judged
                // a retry or a conflict, as imstore settles its own.
                let applied = match self.session.batch(&b, values).await {
                    Ok(res) => {
                        let res = res.into_rows_result()?;
                        let row = res.maybe_first_row::<Row>()?.ok_or("no LWT result")?;
                        matches!(row.columns.first(), Some(Some(CqlValue::Boolean(true))))
                    }
                    Err(_) => false,
                };
                if !applied {
                    for m in chunk {
                        self.send(m).await?;
                    }
                }
                R::Ok(())
            })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        self.index_bucket(conv, bucket).await
    }
    async fn get(&self, conv: &str, id: i64, viewer: &str) -> R<()> {
        let bucket = self.bucket(MsgId::from_i64(id)?);
        let sentinel = -i64::from(bucket) - 1;
        let message = async {
            let rows = self
                .session
                .execute_unpaged(&self.message, (conv, bucket, id))
                .await?
                .into_rows_result()?;
            R::Ok(rows.single_row::<(String, i32, Vec<u8>, i64)>()?)
        };
        let (m, states) = futures::try_join!(message, self.states_of(conv, vec![id, sentinel]))?;
        let shown = scylla_shown(&m.0, states.get(&id), viewer);
        std::hint::black_box((m.0, m.1, m.3, shown.then_some(m.2), states.get(&sentinel)));
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32, viewer: &str) -> R<usize> {
        let remembered = self
            .newest_bucket
            .lock()
            .map_err(|_| "poisoned")?
            .get(conv)
            .copied();
        let guess = remembered.map(|(b, _)| b);
        let fetch = limit as i32 + 1;
        let page_of = |bucket: i32| async move {
            let rows = self
                .session
                .execute_unpaged(&self.page, (conv, bucket, fetch))
                .await?
                .into_rows_result()?;
            let page: Vec<(i64, String, i32, Vec<u8>, i64)> =
                rows.rows()?.collect::<Result<_, _>>()?;
            R::Ok(page)
        };
        let index = async {
            let rows = self
                .session
                .execute_unpaged(&self.buckets, (conv,))
                .await?
                .into_rows_result()?;
            let b: Vec<i32> = rows
                .rows::<(i32,)>()?
                .map(|r| r.map(|(b,)| b))
                .collect::<Result<_, _>>()?;
            R::Ok(b)
        };
        let guessed = async {
            match guess {
                Some(b) => Ok(Some(page_of(b).await?)),
                None => R::Ok(None),
            }
        };
        // The guessed bucket's lifecycles from its top down to the last page's bottom, with
        // the sentinel's mirror: one snapshot, beside the rows.
        let slice = async {
            let Some((bucket, Some(floor))) = remembered else {
                return R::Ok(None);
            };
            let (low, high) = self.store.inner().bucket_ids(bucket);
            let low = low.max(floor);
            let cap = fetch + 2;
            let rows = self
                .session
                .execute_unpaged(&self.top, (conv, low, high, cap))
                .await?
                .into_rows_result()?;
            let mut states = std::collections::HashMap::new();
            let (mut read, mut lowest, mut mirror) = (0, i64::MAX, false);
            for r in rows.rows::<StateCols>()? {
                let row = r?;
                read += 1;
                lowest = lowest.min(row.0);
                if row.7.is_empty() {
                    states.insert(row.0, row);
                } else {
                    mirror = true;
                }
            }
            let covers_from = if read < cap { low } else { lowest };
            R::Ok(Some((states, covers_from, mirror)))
        };
        let (buckets, guessed, slice) = futures::try_join!(index, guessed, slice)?;
        let newest = *buckets.first().ok_or("no bucket")?;
        let (page, slice) = match (guess, guessed) {
            (Some(g), Some(p)) if g == newest => (p, slice),
            _ => (page_of(newest).await?, None),
        };
        let bottom = page.last().map(|r| r.0);
        self.newest_bucket
            .lock()
            .map_err(|_| "poisoned")?
            .insert(conv.to_owned(), (newest, bottom));
        // A page that the newest bucket does not fill continues into the older ones (in series,
        // as imstore's; the bench's histories fit in one).
        let mut parts = vec![(newest, page)];
        for &older in buckets.iter().skip(1) {
            let have: usize = parts.iter().map(|(_, p)| p.len()).sum();
            if have >= fetch as usize {
                break;
            }
            let rows = page_of(older).await?;
            parts.push((older, rows));
        }
        let mut slice = slice;
        let mut shown = 0;
        for (bucket, rows) in &parts {
            let take = rows.len().min((limit as usize).saturating_sub(shown));
            if take == 0 {
                break;
            }
            let rows = &rows[..take];
            let (mut states, covers_from, mirror) = slice
                .take()
                .unwrap_or_else(|| (Default::default(), i64::MAX, false));
            // Lifecycles the slice did not reach are read with the sentinel, as without one.
            let mut ids: Vec<i64> = rows
                .iter()
                .map(|r| r.0)
                .filter(|&id| id < covers_from)
                .collect();
            if !ids.is_empty() {
                ids.push(-i64::from(*bucket) - 1);
                states.extend(self.states_of(conv, ids).await?);
            }
            if mirror {
                return Err(
                    "the bench's conversations are never purged: no re-check is written".into(),
                );
            }
            for r in rows {
                let visible = scylla_shown(&r.1, states.get(&r.0), viewer);
                std::hint::black_box((r.0, &r.1, r.2, r.4, visible.then_some(&r.3)));
            }
            shown += take;
        }
        Ok(shown)
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        for _ in 0..LOST_ROUNDS {
            if self.recall_once(conv, id, by, request, window_ms).await? {
                return Ok(());
            }
        }
        Err(format!("fair recall of {id} lost {LOST_ROUNDS} rounds").into())
    }
    async fn restore(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        for _ in 0..LOST_ROUNDS {
            if self.restore_once(conv, id, by, request, window_ms).await? {
                return Ok(());
            }
        }
        Err(format!("fair restore of {id} lost {LOST_ROUNDS} rounds").into())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let rows = self
            .session
            .execute_unpaged(&self.events, (conv, after as i64, limit as i32))
            .await?
            .into_rows_result()?;
        let mut n = 0;
        for r in rows.rows::<(
            i64,
            Option<i64>,
            Option<i8>,
            Option<i32>,
            Option<i64>,
            Option<String>,
            Option<i64>,
            Option<i64>,
        )>()? {
            std::hint::black_box(r?);
            n += 1;
        }
        Ok(n)
    }
}

/// Attempts of a fair transition before it gives up: each lost round is another change of the
/// same conversation that won the feed head, as imstore's transitions retry.
const LOST_ROUNDS: u32 = 200;

/// The values of one statement of a batch.
type BoxedValues<'a> = Box<dyn scylla::serialize::row::SerializeRow + Send + Sync + 'a>;

/// The retention queue shard of a conversation, as imstore computes it (FNV-1a, 32 shards).
fn imstore_scylla_shard(c: &imstore_core::ConversationId) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in c.as_str().bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 32) as i32
}
