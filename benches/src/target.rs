//! What a backend provides to the bench: imstore stores over a fresh namespace, the raw-driver
//! baseline over the same tables, and a server-side count of writes.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;
use imstore_core::{ContentCodec, MessageStore, NewMessage, StoreSettings};
use serde_json::Value;

use crate::harness::R;

/// The same operations as imstore's, done with the raw driver and the minimal statement.
///
/// Content is written as given (no codec); ids are the raw `i64` msg_ids.
#[async_trait]
pub trait Raw: Send + Sync {
    /// One message, one plain INSERT.
    async fn send(&self, m: &NewMessage) -> R<()>;
    /// Many messages in as few round trips as the driver allows.
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()>;
    /// The content of one message; an error if absent.
    async fn get(&self, conv: &str, id: i64) -> R<()>;
    /// The newest `limit` messages of a conversation; returns how many came back.
    async fn latest(&self, conv: &str, limit: u32) -> R<usize>;
    /// Marks a message recalled (status 0 → 1), one conditional update.
    async fn recall(&self, conv: &str, id: i64, by: &str, at: i64) -> R<()>;
    /// Marks a recalled message normal again (status 1 → 0), one conditional update.
    async fn restore(&self, conv: &str, id: i64, at: i64) -> R<()>;
    /// Up to `limit` change events after `after`; returns how many came back.
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize>;
    /// Copies messages that imstore loaded into the baseline's own structure, when it has one
    /// (the in-memory baseline); server baselines read imstore's tables and need nothing.
    async fn mirror(&self, _ms: &[NewMessage]) -> R<()> {
        Ok(())
    }
    /// Writes a history conversation's messages directly as the backend lays them out (content
    /// through the plain codec), when loading through imstore would take minutes; returns false
    /// when it does not (then imstore loads them).
    async fn bulk_history(&self, _ms: &[NewMessage]) -> R<bool> {
        Ok(false)
    }
    /// Round trips of `path`'s operation, by construction, when known (see [`Fair::round_trips`]).
    fn round_trips(&self, _path: &str) -> Option<u32> {
        None
    }
    /// Creates `n` change events in the baseline's own structure, when it has one.
    async fn seed_feed(&self, _conv: &str, _n: u64) -> R<()> {
        Ok(())
    }
}

/// The same job as imstore's path with the same guarantees, written by hand with the raw driver
/// in the fewest round trips its author could manage: the fair baseline.
///
/// Each method states what it guarantees and how many round trips its happy path takes
/// ([`Fair::round_trips`]); `benches/README.md` explains each backend's statements. It writes
/// and reads imstore's own tables, so its rows are the rows imstore would have written.
#[async_trait]
pub trait Fair: Send + Sync {
    /// Round trips of `path`'s happy path, by construction ("send", "point_read",
    /// "latest_page", "recall", "feed_page", "batch_send_1000"; "mixed" has none of its own).
    fn round_trips(&self, path: &str) -> Option<u32>;
    /// Stores `m` unless its id exists; an id that exists with other content is a conflict
    /// (an error), with the same content a retry (success).
    async fn send(&self, m: &NewMessage) -> R<()>;
    /// Stores `ms` as [`Fair::send`] does each.
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()>;
    /// The message as `viewer` sees it: lifecycle read with the content, content shown only
    /// when the viewer may see it; an error if absent.
    async fn get(&self, conv: &str, id: i64, viewer: &str) -> R<()>;
    /// The newest `limit` messages as `viewer` sees them, and whether older ones exist; returns
    /// how many came back.
    async fn latest(&self, conv: &str, limit: u32, viewer: &str) -> R<usize>;
    /// Recalls `id` by its sender `by` under request id `request`: a replay of `request`
    /// answers from its record; otherwise the message must be normal, sent by `by` and within
    /// the recall window, and the change, the conversation's next feed seq, its event and the
    /// request record commit together or not at all. An error when it did not apply.
    async fn recall(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()>;
    /// Restores `id`, recalled by its sender `by`, under request id `request`: a replay answers
    /// from its record; otherwise the message must be recalled by `by`, its sender, within the
    /// restore window (`window_ms` from the recall), and the change (recall time cleared, restore
    /// time set), the next feed seq, its event and the record commit together or not at all. An
    /// error when it did not apply.
    async fn restore(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()>;
    /// Up to `limit` change events after `after`, with the feed's head and purge mark read in
    /// the same snapshot (what a device needs to see a gap); returns how many events came back.
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize>;
}

/// A store handle; `close` releases its connections (so that server-side counters flush).
pub struct Handle {
    /// The store.
    pub store: Arc<dyn MessageStore>,
    /// Closes the handle's own connections, when it has any.
    pub close: Option<BoxFuture<'static, ()>>,
}

/// Requests a store has sent to its server so far (each answered before the next on one
/// connection: a round trip).
pub type RequestCounter = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The stores of the device-sync path, over the same data: one timed, one whose requests to the
/// server are counted (through a counting proxy or command monitoring, which would skew timings).
pub struct SyncStores {
    /// The store that is timed.
    pub timed: Arc<dyn MessageStore>,
    /// The store whose requests are counted (the timed one when there is nothing to count).
    pub counted: Arc<dyn MessageStore>,
    /// Requests `counted` has sent so far; `None` for an in-process store (no round trips).
    pub requests: Option<RequestCounter>,
    /// How the requests are counted, in words.
    pub method: String,
}

/// Data sizes of one backend's run.
#[derive(Clone, Debug)]
pub struct Scale {
    /// Messages in the "small" conversation (10 thousand).
    pub small: u64,
    /// Messages in the "big" conversation (1 million; less in quick mode or on a slow server).
    pub big: u64,
    /// Why `big` is not 1 million, when it is not.
    pub big_note: Option<String>,
    /// Messages per codec conversation for point reads.
    pub read_pool: u64,
    /// Messages per side that recalls (and the mixed workload) consume.
    pub recall_pool: u64,
    /// Change events in the feed conversation.
    pub feed_events: u64,
    /// Conversations a device follows in the device-sync path (500).
    pub sync_conversations: u64,
    /// Of those, conversations that changed since the device's cursors (20).
    pub sync_changed: u64,
    /// Events per change-feed page read.
    pub feed_page: u32,
    /// Recalls counted per conversation in the write-count measurement.
    pub counted_recalls: u64,
    /// Members of the big group.
    pub members_big: u64,
    /// Workers of the mixed workload.
    pub mixed_concurrency: usize,
    /// Bytes of content per message.
    pub content_len: usize,
    /// At most this many messages written per side and round by the write paths (the memory
    /// backend: at ~300k sends/s a full run would otherwise hold tens of millions of messages).
    pub write_cap: Option<u64>,
    /// Recalled messages past their retention the purge path starts with.
    pub purge_backlog: u64,
}

/// One backend under test, over a namespace of its own.
#[async_trait]
pub trait Target: Send + Sync {
    /// "memory", "postgres", "mongodb", "scylla".
    fn name(&self) -> &'static str;
    /// The namespace (schema, database, keyspace) this run created.
    fn namespace(&self) -> String;
    /// The server's version string, when there is a server.
    fn server_version(&self) -> Option<String>;
    /// A store over the namespace with these settings, sharing connections with earlier ones.
    async fn open(&self, settings: StoreSettings) -> R<Handle>;
    /// A store with connections of its own, closed by `Handle::close` (MongoDB: in a database of
    /// its own, so the write count does not read through the whole run's data).
    async fn open_isolated(&self, settings: StoreSettings) -> R<Handle> {
        self.open(settings).await
    }
    /// A store with connections of its own, as many as `open`'s, closed by `Handle::close`: a
    /// group that loads the store with many workers (the purge) leaves no extra connections in
    /// the pool that later groups share, one connection per call in turn, against a baseline
    /// whose pool stayed small.
    async fn open_group(&self, settings: StoreSettings) -> R<Handle> {
        self.open(settings).await
    }
    /// The stores of the device-sync path (over a namespace of their own on MongoDB, where
    /// FerretDB reads cost the collection's size). The default, for an in-process store: one
    /// store, nothing to count.
    async fn open_sync(&self, settings: StoreSettings) -> R<SyncStores> {
        let store = self.open(settings).await?.store;
        Ok(SyncStores {
            timed: store.clone(),
            counted: store,
            requests: None,
            method: "in process: no server, no round trips".into(),
        })
    }
    /// The raw-driver baseline.
    fn raw(&self) -> Arc<dyn Raw>;
    /// The fair baseline, when one is written for this backend.
    fn fair(&self) -> Option<Arc<dyn Fair>> {
        None
    }
    /// How writes are counted ("pg_stat_user_tables n_tup_ins+n_tup_upd+n_tup_del", ...).
    fn write_method(&self) -> String;
    /// Cumulative server-side write counters of the namespace, per table/operation; `None` when
    /// the backend has no server.
    async fn write_counters(&self) -> R<Option<BTreeMap<String, u64>>>;
    /// Closes the connections shared by `open`'s stores and the baseline (before counting
    /// writes, so that nothing else writes and every counter is flushed).
    async fn quiesce(&self) -> R<()> {
        Ok(())
    }
    /// Lets the server finish the upkeep a path group left behind (PostgreSQL: the dead rows
    /// of a purge, which autovacuum would clear some minutes later), so that the next group
    /// measures the steady state and not a vacuum in progress; what it found, for the report.
    async fn settle(&self) -> R<Option<String>> {
        Ok(None)
    }
    /// The sizes of the connection pools that imstore's stores and the baselines share (each
    /// `{"size", "idle"}`), when the target pools connections.
    fn pools(&self) -> Option<Value> {
        None
    }
    /// Removes the namespace and everything in it.
    async fn drop_namespace(&self) -> R<()>;
}

/// The codec variants: off, compression, encryption, both.
pub fn codecs() -> Vec<(&'static str, ContentCodec)> {
    use imstore_core::codec::Compression;
    use imstore_core::{EncryptionKey, KeyId, KeyRing};
    let ring = || KeyRing::new(EncryptionKey::new(KeyId(1), [0x42; 32]));
    vec![
        ("off", ContentCodec::plain()),
        (
            "zstd",
            ContentCodec::plain().with_compression(Some(Compression::default())),
        ),
        ("aes", ContentCodec::plain().with_encryption(ring())),
        (
            "zstd+aes",
            ContentCodec::plain()
                .with_compression(Some(Compression::default()))
                .with_encryption(ring()),
        ),
    ]
}
