//! A read that passes more tombstones than the server's `tombstone_failure_threshold` is a
//! permanent failure, never a temporary one: the running Cassandra really refuses it
//! (READ_FAILURE, READ_TOO_MANY_TOMBSTONES), and the store reports it through the backend's one
//! error mapping as `Backend` with the threshold named, so callers do not retry it forever.

use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};
use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{Action, ErrorKind, FeedCursor, MessageStore};
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
    rows.and_then(|r| {
        r.maybe_first_row::<(Option<String>,)>()
            .ok()
            .flatten()
            .and_then(|(v,)| v)
    })
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or_else(|| {
        eprintln!("tombstone_failure_threshold not readable: assuming the default, 100000");
        100_000
    })
}

/// Deletes the rows `kind`, `ks` of `conversation`'s state partition (rows that never existed:
/// a row tombstone is the same whether it covers one), in single-partition batches; returns the
/// time it took.
async fn bury(
    h: &Harness<'_, ScyllaFactory>,
    conversation: &str,
    kind: i8,
    ks: std::ops::Range<i64>,
) -> std::time::Duration {
    let started = Instant::now();
    let session = h.store.inner().session();
    let delete = session
        .prepare(format!(
            "DELETE FROM {}.conversation_state WHERE conversation_id = ? AND kind = ? AND k = ? AND request_id = ''",
            h.namespace()
        ))
        .await
        .unwrap();
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
                let mut values = Vec::new();
                for k in chunk {
                    batch.append_statement(delete.clone());
                    values.push((conversation, kind, k));
                }
                session.batch(&batch, values).await.map(|_| ())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_read_over_the_tombstone_threshold_is_permanent_and_names_it() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let threshold = failure_threshold(&h).await;
    assert!(
        threshold <= 1_000_000,
        "tombstone_failure_threshold is {threshold}: too many deletes for this test"
    );

    // One live message and its recall: the feed has one event (seq 1).
    let m = c.text("hello");
    h.store.insert(m.clone()).await.unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .unwrap();

    // Row tombstones in the feed's clustering range, as a purge of `threshold + 1` events
    // leaves them; seqs after the live event's, so a pull from the start reads the event, then
    // passes every tombstone looking for more.
    let total = threshold + 1;
    let written = bury(&h, c.conv.as_str(), 1, 2..2 + total).await;

    let read_started = Instant::now();
    let err = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .expect_err("a pull passing more tombstones than the threshold must be refused");
    eprintln!(
        "threshold {threshold}: {total} tombstones written in {written:?}, refused in {:?}: {err}",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_behind_purged_lifecycles_over_the_threshold_is_permanent() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let threshold = failure_threshold(&h).await;
    let m = c.text("hello");
    h.store.insert(m.clone()).await.unwrap();
    // The lifecycle rows of `threshold + 1` older messages, purged: the head of the partition,
    // which the recall's `feed_head ... LIMIT 1` read passes before reaching a live row.
    let written = bury(&h, c.conv.as_str(), 0, 1..2 + threshold).await;
    let err = h
        .store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .expect_err("a recall passing more tombstones than the threshold must be refused");
    eprintln!("threshold {threshold}: written in {written:?}: {err}");
    assert_eq!(err.kind(), ErrorKind::Backend, "{err}");
    assert!(!err.is_temporary(), "{err}");
    assert!(
        err.message().contains("tombstone_failure_threshold"),
        "{err}"
    );
    h.finish().await;
}
