//! Tombstones at scale, on the running Cassandra.
//!
//! * The reads every transition, purge and pull makes (the feed head and the legal hold, read by
//!   name from the head row; the feed in windows of `limit` seqs) pass none of the tombstones a
//!   purge of more than `tombstone_failure_threshold` messages leaves in a conversation's state
//!   partition. Before the head row, the recall and the purge failed with
//!   READ_TOO_MANY_TOMBSTONES behind purged lifecycles, and the pull behind purged events.
//! * A read that does pass more tombstones than the threshold (a page walk through a bucket
//!   whose newer rows were all purged) is a permanent failure, never a temporary one: the store
//!   reports it through the backend's one error mapping as `Backend` with the threshold named,
//!   so callers do not retry it forever.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{
    Action, ErrorKind, FeedCursor, ListOptions, MessageStore, MessageStoreExt, PurgeOptions,
    Status, SyncCursor,
};
use imstore_scylla::testing::ScyllaFactory;
use scylla::statement::batch::{Batch, BatchType};

/// Row deletes per unlogged batch: one partition, about 15 KB of mutation, under the default
/// `batch_size_fail_threshold` (50 KiB).
const PER_BATCH: i64 = 500;

/// The running node's `tombstone_failure_threshold` (Cassandra 4+ exposes it in
/// `system_views.settings`; Cassandra's default, 100,000, when it does not).
async fn failure_threshold(h: &Harness<'_, ScyllaFactory>) -> i64 {
    let session = h.store.inner().session();
    let rows = session
        .query_unpaged(
            "SELECT value FROM system_views.settings WHERE name = 'tombstone_failure_threshold'",
            (),
        )
        .await
        .ok()
        .and_then(|r| r.into_rows_result().ok());
    let threshold = rows
        .and_then(|r| {
            r.maybe_first_row::<(Option<String>,)>()
                .ok()
                .flatten()
                .and_then(|(v,)| v)
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            eprintln!("tombstone_failure_threshold not readable: assuming the default, 100000");
            100_000
        });
    assert!(
        threshold <= 1_000_000,
        "tombstone_failure_threshold is {threshold}: too many deletes for this test"
    );
    threshold
}

/// Where `bury` writes its row tombstones.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Rows of `kind` in a conversation's state partition, `k` from the range (lifecycles,
    /// events; for request records `k` stands in for the id: the same clustering range).
    State(&'a str, i8),
    /// Message rows of one bucket, msg ids from the range.
    Messages(&'a str, i32),
}

/// Deletes one row per `k` of `ks` (a row tombstone is the same whether it covers a row that
/// existed), in single-partition unlogged batches; returns the time it took.
async fn bury(
    h: &Harness<'_, ScyllaFactory>,
    rows: Rows<'_>,
    ks: std::ops::Range<i64>,
) -> Duration {
    let started = Instant::now();
    let session = h.store.inner().session();
    let ns = h.namespace();
    let cql = match rows {
        Rows::State(..) => format!(
            "DELETE FROM {ns}.conversation_state WHERE conversation_id = ? AND kind = ? AND k = ? AND request_id = ''"
        ),
        Rows::Messages(..) => format!(
            "DELETE FROM {ns}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?"
        ),
    };
    let delete = session.prepare(cql).await.unwrap();
    let chunks: Vec<std::ops::Range<i64>> = ks
        .clone()
        .step_by(PER_BATCH as usize)
        .map(|first| first..(first + PER_BATCH).min(ks.end))
        .collect();
    stream::iter(chunks)
        .map(|chunk| {
            let delete = delete.clone();
            async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                match rows {
                    Rows::State(conv, kind) => {
                        let mut values = Vec::new();
                        for k in chunk {
                            batch.append_statement(delete.clone());
                            values.push((conv, kind, k));
                        }
                        session.batch(&batch, values).await.map(|_| ())
                    }
                    Rows::Messages(conv, bucket) => {
                        let mut values = Vec::new();
                        for k in chunk {
                            batch.append_statement(delete.clone());
                            values.push((conv, bucket, k));
                        }
                        session.batch(&batch, values).await.map(|_| ())
                    }
                }
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    started.elapsed()
}

/// Sets the feed statics as a purge of every event up to `through` leaves them.
async fn mark_purged_through(h: &Harness<'_, ScyllaFactory>, conv: &str, through: i64) {
    let session = h.store.inner().session();
    session
        .query_unpaged(
            format!(
                "UPDATE {}.conversation_state SET feed_head = ?, purged_through = ? WHERE conversation_id = ?",
                h.namespace()
            ),
            (through, through, conv),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_pulls_and_the_purge_pass_no_purged_tombstones() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let threshold = failure_threshold(&h).await;
    let total = threshold + 1;

    // What a purge of `total` messages leaves in the state partition: their lifecycles (k =
    // older msg ids, in front of every live row), their events (seqs 1..=total, the mark at
    // total) and their request records; the head row is there, as every batch writes it.
    let m = c.text("hello");
    h.store.insert(m.clone()).await.unwrap();
    let probe = c.text("probe");
    h.store.insert(probe.clone()).await.unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, probe.msg_id))
        .await
        .unwrap();
    let conv = c.conv.as_str();
    let mut written = bury(&h, Rows::State(conv, 0), 1..1 + total).await;
    written += bury(&h, Rows::State(conv, 1), 1..1 + total).await;
    written += bury(&h, Rows::State(conv, 2), 1..1 + total).await;
    mark_purged_through(&h, conv, total).await;
    eprintln!("threshold {threshold}: 3 x {total} tombstones written in {written:?}");

    // A recall: its head read passes no lifecycle tombstone; its event is seq total + 1.
    let started = Instant::now();
    let out = h
        .store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .expect("the recall reads the head by name");
    assert!(out.changed);
    eprintln!("recall in {:?}", started.elapsed());

    // A device at the mark pulls the new event; one below it is told to resync and gets it.
    let at_mark = FeedCursor::at(&c.conv, u64::try_from(total).unwrap()).unwrap();
    let page = h
        .store
        .changes_since(&c.conv, &c.bob, at_mark, 100)
        .await
        .expect("a pull from the mark passes no event tombstone");
    assert!(page.resync.is_none());
    assert_eq!(
        page.events
            .iter()
            .map(|e| (e.msg_id, e.status))
            .collect::<Vec<_>>(),
        vec![(m.msg_id, Status::Recalled)]
    );
    let stale = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .expect("a pull from below the mark passes one window of tombstones at most");
    assert!(stale.resync.is_some());
    assert_eq!(stale.events.len(), 1);
    assert_eq!(stale.next, page.next);

    // The batch call reads the head rows by name.
    let changed = h
        .store
        .changed_conversations(&[SyncCursor {
            conversation: c.conv.clone(),
            cursor: at_mark,
        }])
        .await
        .unwrap();
    assert_eq!(changed.len(), 1);
    assert!(!changed[0].resync);

    // The purge reads the hold by name, and removes both recalled messages.
    h.clock
        .advance(h.settings.policy.retention() + Duration::from_secs(86_400));
    let report = h
        .store
        .purge_all(PurgeOptions::default())
        .await
        .expect("the purge reads the legal hold by name");
    assert_eq!(report.messages, 2);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_walk_over_the_tombstone_threshold_is_permanent_and_names_it() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let threshold = failure_threshold(&h).await;

    // One live message, and `threshold + 1` purged rows newer than it in its bucket: the newest
    // page reads the bucket from its top and passes every one before reaching the live row.
    let m = c.text("hello");
    h.store.insert(m.clone()).await.unwrap();
    let bucket = h.store.inner().bucket_of(m.msg_id);
    let first = m.msg_id.as_i64() + 1;
    let written = bury(
        &h,
        Rows::Messages(c.conv.as_str(), bucket),
        first..first + threshold + 1,
    )
    .await;

    let read_started = Instant::now();
    let err = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(20))
        .await
        .expect_err("a page passing more tombstones than the threshold must be refused");
    eprintln!(
        "threshold {threshold}: tombstones written in {written:?}, refused in {:?}: {err}",
        read_started.elapsed()
    );
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        err.message().contains("tombstone_failure_threshold"),
        "the message names the limit: {err}"
    );
    // The driver's own error carries the server's reason (protocol v4 has it only in the text).
    let chain = format!("{:?}", std::error::Error::source(&err));
    assert!(chain.contains("READ_TOO_MANY_TOMBSTONES"), "{chain}");
    h.finish().await;
}
