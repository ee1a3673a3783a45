//! Evidence that a page costs the page, not the history: fills one conversation with 3,000
//! messages over ~100 buckets, purges 900 of them (tombstones), then traces the statements a
//! `list` page runs and prints what Cassandra/ScyllaDB says they read.
//!
//! `source .servers/env && cargo run -p imstore-scylla --features testing --example page_trace`
//! (the keyspace comes from the testing factory, and is dropped at the end).

use std::sync::Arc;
use std::time::{Duration, Instant};

use imstore_conformance::StoreFactory;
use imstore_core::{
    Authority, Clock, ConversationId, ListOptions, ManualClock, MessageStore, MessageStoreExt,
    MsgId, NewMessage, Policy, PurgeOptions, RequestId, StoreSettings, Timestamp, UserId,
};
use imstore_scylla::testing::ScyllaFactory;
use scylla::statement::prepared::PreparedStatement;

const N: i64 = 3_000;
const HOUR: i64 = 3_600_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let factory = ScyllaFactory::from_env()
        .with_prefix("sctrace")
        .with_reuse(false);
    let ks = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let policy = Policy::builder()
        // Longer than one insert batch spans (500 messages, ~167 days): the store refuses
        // inserts minted before its purge horizon, so the history is written as it happened,
        // the clock following it.
        .retention(Duration::from_secs(200 * 86_400))
        .restore_window(Duration::from_secs(3_600))
        .build()?;
    let settings = StoreSettings {
        policy,
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open_store(&ks, settings).await?;
    println!(
        "server: {:?} {}",
        store.inner().server().flavour,
        store.inner().server().release_version
    );
    let conv = ConversationId::new("big-group")?;
    let alice = UserId::new("alice")?;
    let bob = UserId::new("bob")?;
    let now = clock.now().as_millis();
    // One message every 8 hours: 3,000 messages over 1,000 days, ~30 per 10-day bucket.
    let ids: Vec<MsgId> = (0..N)
        .map(|i| MsgId::from_parts(Timestamp::from_millis(now - (N - i) * 8 * HOUR), 1, 0))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for chunk in ids.chunks(500) {
        clock.set(chunk[chunk.len() - 1].timestamp());
        let batch = chunk
            .iter()
            .map(|id| NewMessage::text(*id, conv.clone(), alice.clone(), format!("message {id}")))
            .collect();
        store.insert_batch(batch).await?;
    }
    println!("inserted {N} messages in {:?}", t.elapsed());
    clock.set(Timestamp::from_millis(now));
    // Delete the oldest 600 (whole buckets empty out) and every 8th of the rest.
    let doomed: Vec<MsgId> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| *i < 600 || i % 8 == 0)
        .map(|(_, id)| *id)
        .collect();
    for (n, id) in doomed.iter().enumerate() {
        store
            .delete(
                &alice,
                Authority::Member,
                &conv,
                *id,
                clock.now(),
                RequestId::new(format!("d{n}"))?,
            )
            .await?;
    }
    clock.advance(Duration::from_secs(201 * 86_400));
    let report = store.purge_all(PurgeOptions { batch_size: 500 }).await?;
    println!(
        "deleted and purged {} messages ({} events)",
        report.messages, report.events
    );

    let s = store.inner().session();
    let trace = |cql: String| async move {
        let mut p: PreparedStatement = s.prepare(cql).await?;
        p.set_tracing(true);
        Ok::<_, Box<dyn std::error::Error>>(p)
    };
    let buckets = trace(format!(
        "SELECT bucket FROM {ks}.buckets WHERE conversation_id = ? AND bucket <= ? LIMIT ?"
    ))
    .await?;
    let page = trace(format!(
        "SELECT msg_id, content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT ?"
    ))
    .await?;
    let states = trace(format!("SELECT k, status, at_ms FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k IN ? AND request_id = ''")).await?;
    // A latest page's slice, read beside its rows: the bucket's lifecycles from the top of its
    // ids down, the sentinel's mirror first.
    let top = trace(format!("SELECT k, request_id, status, at_ms FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k >= ? AND k <= ? ORDER BY kind DESC, k DESC, request_id DESC LIMIT ?")).await?;

    let newest_bucket = store.inner().bucket_of(ids[ids.len() - 1]);
    let oldest_live_bucket = store.inner().bucket_of(ids[600]);
    let mut all = Vec::new();
    for (label, bucket) in [
        ("newest bucket", newest_bucket),
        ("oldest listed bucket", oldest_live_bucket),
    ] {
        let r = s
            .execute_unpaged(&buckets, (conv.as_str(), bucket, 8i32))
            .await?;
        all.push((format!("bucket index from the {label}"), r.tracing_id()));
        let r = s
            .execute_unpaged(&page, (conv.as_str(), bucket, 51i32))
            .await?;
        all.push((format!("messages of the {label}"), r.tracing_id()));
    }
    // The page's lifecycle rows with their bucket's purge sentinel, as `list` reads them.
    let mut keys: Vec<i64> = ids[2_950..].iter().map(|id| id.as_i64()).collect();
    keys.push(-i64::from(newest_bucket) - 1);
    let r = s.execute_unpaged(&states, (conv.as_str(), keys)).await?;
    all.push(("lifecycle rows of the newest page".into(), r.tracing_id()));
    for (label, bucket) in [
        ("newest bucket", newest_bucket),
        ("bucket below it", store.inner().bucket_of(ids[2_960])),
    ] {
        let (low, high) = store.inner().bucket_ids(bucket);
        let r = s
            .execute_unpaged(&top, (conv.as_str(), low, high, 53i32))
            .await?;
        all.push((format!("lifecycle slice of the {label}"), r.tracing_id()));
    }
    for (label, id) in all {
        let Some(id) = id else { continue };
        let info = s.get_tracing_info(&id).await?;
        let reads: Vec<String> = info
            .events
            .iter()
            .filter_map(|e| e.activity.clone())
            .filter(|a| {
                a.contains("live rows") || a.contains("tombstone") || a.contains("partition")
            })
            .collect();
        println!("{label}: {reads:?}");
    }

    for (label, opts) in [
        ("newest page of 50", ListOptions::newest(50)),
        ("oldest page of 50", ListOptions::oldest(50)),
    ] {
        let t = Instant::now();
        let p = store.list(&conv, &bob, opts).await?;
        println!("{label}: {} items in {:?}", p.items.len(), t.elapsed());
    }
    factory.drop_namespace(&ks).await;
    Ok(())
}
