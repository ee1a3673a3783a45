//! Evidence for the tombstone bounds of a busy conversation after large purges: one
//! conversation of `IMSTORE_TRACE_MESSAGES` messages (default 1,000,000, one every 30 s, ~35
//! ten-day buckets), of which 1,000 are deleted and purged through the store and
//! `IMSTORE_TRACE_PURGED` more (default 100,000) leave what their purge leaves, written directly
//! (their message rows, lifecycles, events and request records deleted, the feed's low-water mark
//! above their events): the store's own purge of 100,000 messages would take too long here (the
//! queue's side of it is `tests/purge_queue.rs`). Then the statements a recall,
//! a page, a feed pull, the legal-hold read and the purge queue's scan run are run once more with
//! server tracing, and what Cassandra/ScyllaDB says each read is printed; and a purge of another
//! conversation runs beside it.
//!
//! `source .servers/env && cargo run --release -p imstore-scylla --features testing --example state_trace`
//! (the keyspace comes from the testing factory, and is dropped at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use imstore_conformance::StoreFactory;
use imstore_core::{
    Authority, Clock, ConversationId, FeedCursor, ListOptions, ManualClock, MessageStore,
    MessageStoreExt, MsgId, NewMessage, Policy, PurgeOptions, RequestId, StoreSettings, Timestamp,
    UserId,
};
use imstore_scylla::testing::ScyllaFactory;
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};

const STEP_MS: i64 = 30_000;
const REAL_PURGES: usize = 1_000;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `cql` once per value, in unlogged single-partition batches of 500, 4 in flight.
async fn bury<V>(
    session: &Session,
    cql: String,
    values: Vec<V>,
) -> Result<(), Box<dyn std::error::Error>>
where
    V: SerializeRow + Clone + Send + Sync,
{
    let st = session.prepare(cql).await?;
    stream::iter(values.chunks(500).map(<[V]>::to_vec))
        .map(|chunk| {
            let st = st.clone();
            async move {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in &chunk {
                    batch.append_statement(st.clone());
                }
                session.batch(&batch, chunk).await.map(|_| ())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Runs `cql` with `values` traced, and prints what the replica says it read.
async fn traced(
    session: &Session,
    label: &str,
    cql: String,
    values: impl SerializeRow,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut st = session.prepare(cql).await?;
    st.set_tracing(true);
    let res = session.execute_unpaged(&st, values).await?;
    let id = res.tracing_id();
    let rows = res.into_rows_result().map_or(0, |r| r.rows_num());
    let Some(id) = id else {
        println!("{label}: no trace");
        return Ok(());
    };
    let info = session.get_tracing_info(&id).await?;
    let reads: Vec<String> = info
        .events
        .iter()
        .filter_map(|e| e.activity.clone())
        .filter(|a| a.contains("live rows") || a.contains("tombstone"))
        .collect();
    println!("{label}: {rows} rows returned; server: {reads:?}");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = env_count("IMSTORE_TRACE_MESSAGES", 1_000_000);
    let purged = env_count("IMSTORE_TRACE_PURGED", 100_000);
    assert!(
        purged + REAL_PURGES + 1_000 < n,
        "too few messages for the purges"
    );
    let factory = ScyllaFactory::from_env()
        .with_prefix("sctrace")
        .with_reuse(false);
    let ks = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        policy: Policy::default(),
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open_store(&ks, settings.clone()).await?;
    let s = store.inner().session().clone();
    println!(
        "server: {:?} {}",
        store.inner().server().flavour,
        store.inner().server().release_version
    );
    let conv = ConversationId::new("busy-group")?;
    let alice = UserId::new("alice")?;
    let bob = UserId::new("bob")?;
    let start = clock.now().as_millis() - i64::try_from(n)? * STEP_MS;
    let ids: Vec<MsgId> = (0..n)
        .map(|i| {
            MsgId::from_parts(
                Timestamp::from_millis(start + i64::try_from(i).unwrap() * STEP_MS),
                1,
                0,
            )
        })
        .collect::<Result<_, _>>()?;

    // The footprint of `purged` purges first, as the oldest messages and the lowest seqs.
    let t = Instant::now();
    let doomed = &ids[..purged];
    let c = conv.as_str();
    bury(
        &s,
        format!("DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = ''"),
        doomed.iter().map(|id| (c, id.as_i64())).collect(),
    )
    .await?;
    bury(
        &s,
        format!("DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 1 AND k = ? AND request_id = ''"),
        (1..=i64::try_from(purged)?).map(|k| (c, k)).collect(),
    )
    .await?;
    bury(
        &s,
        format!("DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ?"),
        (0..purged).map(|i| (c, format!("gone-{i}"))).collect(),
    )
    .await?;
    s.query_unpaged(
        format!("INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id, feed_head, purged_through) VALUES (?, -1, 0, '', ?, ?)"),
        (c, i64::try_from(purged)?, i64::try_from(purged)?),
    )
    .await?;
    println!("footprint of {purged} purges written in {:?}", t.elapsed());

    // The history, inserted as it happened (the clock follows it), then the purged rows deleted.
    let t = Instant::now();
    // Four batches of 500 in flight, the clock at the newest of them (the oldest is 17 hours
    // older: well inside the retention, which is the store's horizon for inserts); a batch that
    // times out is sent again (an insert retry is idempotent).
    for group in ids.chunks(2_000) {
        clock.set(group[group.len() - 1].timestamp());
        futures::future::try_join_all(group.chunks(500).map(|chunk| {
            let batch: Vec<NewMessage> = chunk
                .iter()
                .map(|id| {
                    NewMessage::text(*id, conv.clone(), alice.clone(), format!("message {id}"))
                })
                .collect();
            let store = &store;
            async move {
                loop {
                    match store.insert_batch(batch.clone()).await {
                        Err(e) if e.is_temporary() => {
                            tokio::time::sleep(Duration::from_millis(200)).await
                        }
                        r => return r,
                    }
                }
            }
        }))
        .await?;
    }
    println!("inserted {n} messages in {:?}", t.elapsed());
    let bucket_of = |id: &MsgId| store.inner().bucket_of(*id);
    bury(
        &s,
        format!(
            "DELETE FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?"
        ),
        doomed
            .iter()
            .map(|id| (c, bucket_of(id), id.as_i64()))
            .collect(),
    )
    .await?;

    // 1,000 deleted and purged through the store, and another conversation's 1,000 beside them.
    let other = ConversationId::new("quiet-group")?;
    let other_ids: Vec<MsgId> = (0..REAL_PURGES)
        .map(|i| MsgId::from_parts(clock.now(), 2, u16::try_from(i).unwrap()))
        .collect::<Result<_, _>>()?;
    store
        .insert_batch(
            other_ids
                .iter()
                .map(|id| NewMessage::text(*id, other.clone(), alice.clone(), "x"))
                .collect(),
        )
        .await?;
    let t = Instant::now();
    for (i, id) in ids[purged..purged + REAL_PURGES]
        .iter()
        .chain(&other_ids)
        .enumerate()
    {
        let conversation = if i < REAL_PURGES { &conv } else { &other };
        store
            .delete(
                &alice,
                Authority::Member,
                conversation,
                *id,
                clock.now(),
                RequestId::new(format!("d{i}"))?,
            )
            .await?;
    }
    println!("{} deletes in {:?}", 2 * REAL_PURGES, t.elapsed());
    clock.advance(settings.policy.retention() + Duration::from_secs(86_400));
    let t = Instant::now();
    let report = store.purge_all(PurgeOptions { batch_size: 500 }).await?;
    println!(
        "purged {} messages ({} events) of both conversations in {:?}",
        report.messages,
        report.events,
        t.elapsed()
    );
    // Three messages sent just now, the newest of which is recalled below.
    let fresh: Vec<MsgId> = (0..3)
        .map(|i| MsgId::from_parts(clock.now(), 3, i))
        .collect::<Result<_, _>>()?;
    for id in &fresh {
        store
            .insert(NewMessage::text(*id, conv.clone(), alice.clone(), "fresh"))
            .await?;
    }
    let head = store
        .changes_since(&conv, &bob, FeedCursor::START, 1)
        .await?
        .next;

    // Traced: what each hot statement reads, with the values the store uses.
    println!("--- traced statements of {conv}");
    traced(
        &s,
        "head and low-water mark (every transition, every empty pull)",
        format!("SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = -1 AND k = 0 AND request_id = ''"),
        (c,),
    )
    .await?;
    traced(
        &s,
        "legal hold (every purge commit's conversation)",
        format!("SELECT legal_hold, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = -1 AND k = 0 AND request_id = ''"),
        (c,),
    )
    .await?;
    let newest = fresh[2];
    let sentinel = -i64::from(bucket_of(&newest)) - 1;
    traced(
        &s,
        "lifecycle with its bucket's sentinel (a recall's read)",
        format!("SELECT k, status, version, purging, at_ms, purged_through, call_token FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k IN ? AND request_id = ''"),
        (c, vec![sentinel, newest.as_i64()]),
    )
    .await?;
    traced(
        &s,
        "request record (a recall's replay check)",
        format!("SELECT action, msg_id FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ?"),
        (c, "never-seen"),
    )
    .await?;
    let mark = i64::try_from(head.position())?;
    traced(
        &s,
        "feed window of 100 from the mark (a device that is up to date)",
        format!("SELECT k, msg_id, status FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 1 AND k > ? AND k <= ? LIMIT ?"),
        (c, mark, mark + 100, 100i32),
    )
    .await?;
    traced(
        &s,
        "feed window of 100 from seq 0 (a device below the mark: told to resync)",
        format!("SELECT k, msg_id, status FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 1 AND k > ? AND k <= ? LIMIT ?"),
        (c, 0i64, 100i64, 100i32),
    )
    .await?;
    traced(
        &s,
        "newest page of 51 in the newest bucket",
        format!("SELECT msg_id, content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT ?"),
        (c, bucket_of(&newest), 51i32),
    )
    .await?;
    traced(
        &s,
        "for comparison, the old layout's head read: the first row after the head row",
        format!("SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind >= 0 LIMIT 1"),
        (c,),
    )
    .await
    .unwrap_or_else(|e| println!("the old layout's head read: refused: {e}"));

    // Through the store: a recall, a page, a pull, and the purge of the other conversation.
    println!("--- through the store");
    let t = Instant::now();
    store
        .recall(
            &alice,
            Authority::Member,
            &conv,
            newest,
            clock.now(),
            RequestId::new("trace-recall")?,
        )
        .await?;
    println!("recall: {:?}", t.elapsed());
    let t = Instant::now();
    let page = store.list(&conv, &bob, ListOptions::newest(50)).await?;
    println!(
        "newest page: {} items in {:?}",
        page.items.len(),
        t.elapsed()
    );
    let t = Instant::now();
    let pull = store.changes_since(&conv, &bob, head, 100).await?;
    println!(
        "pull from the mark: {} events in {:?}",
        pull.events.len(),
        t.elapsed()
    );
    factory.drop_namespace(&ks).await;
    Ok(())
}
