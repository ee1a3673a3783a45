//! A probe of one PostgreSQL read path, imstore against the fair statement (`PgFair`), for
//! profiling: 500-call rounds at concurrency 1, the sides alternating which goes first, each
//! round's mean per call printed and the medians at the end. Run it under `perf record -g` to
//! see where a side's time goes.
//!
//! ```sh
//! source .servers/env
//! cargo run --release -p imstore-bench --example pg_probe -- page 30   # get | page | feed | batch, rounds
//! ```

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use imstore_bench::backends::postgres::PgTarget;
use imstore_bench::suite::{chat_text, recall_request, settings};
use imstore_bench::target::Target;
use imstore_core::{
    ContentCodec, ConversationId, FeedCursor, ListOptions, MessageStore, MsgIdGenerator,
    NewMessage, SystemClock, UserId,
};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const CALLS: usize = 500;
/// Calls per round of `batch` (each inserts 1,000 messages of 300 B, as the bench's batch path).
const BATCH_CALLS: usize = 20;

/// This process's CPU time so far (every thread, user + system), in microseconds.
fn cpu_us() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    if rc != 0 {
        return 0;
    }
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> R<()> {
    let what = std::env::args().nth(1).unwrap_or_else(|| "page".into());
    if !["get", "page", "feed", "batch"].contains(&what.as_str()) {
        return Err(format!("unknown path {what:?}: get, page, feed or batch").into());
    }
    let rounds: usize = std::env::args().nth(2).map_or(Ok(12), |s| s.parse())?;
    let url = std::env::var("IMSTORE_POSTGRES_URL")?;
    let schema = format!("bench_pg_probe_{}", std::process::id());
    let target = PgTarget::connect(&url, schema).await?;
    let result = run(&target, &what, rounds).await;
    target.drop_namespace().await?;
    result
}

async fn run(target: &PgTarget, what: &str, rounds: usize) -> R<()> {
    let store: Arc<dyn MessageStore> = target.open(settings(ContentCodec::plain())).await?.store;
    let fair = target.fair().ok_or("no fair side")?;
    let ids_gen = MsgIdGenerator::new(1, Arc::new(SystemClock))?;
    let (alice, bob, viewer) = (
        UserId::new("alice")?,
        UserId::new("bob")?,
        UserId::new("carol")?,
    );
    // The bench's small history: 10,000 messages of 300 B from two senders.
    let c = ConversationId::new("hist-small")?;
    let mut ids = Vec::new();
    for _ in 0..10 {
        let batch = (0..1000)
            .map(|j| {
                let sender = if j % 2 == 0 { &alice } else { &bob };
                Ok(NewMessage::text(
                    ids_gen.next_id()?,
                    c.clone(),
                    sender.clone(),
                    chat_text(300, j),
                ))
            })
            .collect::<R<Vec<_>>>()?;
        ids.extend(batch.iter().map(|m| m.msg_id));
        store.insert_batch(batch).await?;
    }
    // A feed of 3,000 events: 3,000 messages, each recalled by its sender.
    let fc = ConversationId::new("feed")?;
    const EVENTS: usize = 3000;
    if what == "feed" {
        let mut recallable = Vec::new();
        for _ in 0..EVENTS / 1000 {
            let batch = (0..1000)
                .map(|j| {
                    Ok(NewMessage::text(
                        ids_gen.next_id()?,
                        fc.clone(),
                        alice.clone(),
                        chat_text(300, j),
                    ))
                })
                .collect::<R<Vec<_>>>()?;
            recallable.extend(batch.iter().map(|m| m.msg_id));
            store.insert_batch(batch).await?;
        }
        futures::stream::iter(recallable.into_iter().enumerate())
            .map(|(i, id)| {
                let (store, fc, alice) = (store.clone(), fc.clone(), alice.clone());
                async move {
                    store
                        .transition(recall_request(&fc, id, &alice, i as u64, "p"))
                        .await
                }
            })
            .buffer_unordered(8)
            .try_collect::<Vec<_>>()
            .await?;
    }
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    let mut cpu = [0u64; 2];
    let calls = if what == "batch" { BATCH_CALLS } else { CALLS };
    let content = chat_text(300, 0);
    for r in 0..rounds {
        for side in [r % 2, 1 - r % 2] {
            let (started, cpu_before) = (Instant::now(), cpu_us());
            for i in 0..calls {
                let id = ids[(i * 7919) % ids.len()];
                let after = ((i * 7919) % (EVENTS - 50)) as u64;
                // A batch of 1,000 into one of 16 conversations per side, as the bench's.
                let batch = || {
                    let bc = ConversationId::new(format!("batch-{side}-{}", i % 16))?;
                    (0..1000)
                        .map(|_| {
                            Ok(NewMessage::text(
                                ids_gen.next_id()?,
                                bc.clone(),
                                alice.clone(),
                                content.as_slice(),
                            ))
                        })
                        .collect::<R<Vec<_>>>()
                };
                match (what, side) {
                    ("batch", 0) => drop(store.insert_batch(batch()?).await?),
                    ("batch", _) => fair.send_batch(&batch()?).await?,
                    ("get", 0) => drop(std::hint::black_box(store.get(&c, id, &viewer).await?)),
                    ("get", _) => fair.get(c.as_str(), id.as_i64(), "carol").await?,
                    ("page", 0) => {
                        let page = store.list(&c, &viewer, ListOptions::newest(50)).await?;
                        drop(std::hint::black_box(page));
                    }
                    ("page", _) => drop(fair.latest(c.as_str(), 50, "carol").await?),
                    ("feed", 0) => {
                        let cursor = FeedCursor::at(&fc, after)?;
                        let page = store.changes_since(&fc, &viewer, cursor, 50).await?;
                        drop(std::hint::black_box(page));
                    }
                    (_, _) => drop(fair.feed(fc.as_str(), after, 50).await?),
                }
            }
            let us = started.elapsed().as_secs_f64() * 1e6 / calls as f64;
            cpu[side] += cpu_us() - cpu_before;
            let name = if side == 0 { "imstore" } else { "fair" };
            println!("round {r} {name}: {us:.0} µs");
            if side == 0 { &mut mine } else { &mut theirs }.push(us);
        }
    }
    let (a, b) = (median(mine), median(theirs));
    let per_call = |c: u64| c as f64 / (rounds * calls) as f64;
    println!(
        "{what}: imstore {a:.0} µs, fair {b:.0} µs per call (medians); fair_ratio {:.2}; \
         client CPU per call: imstore {:.0} µs, fair {:.0} µs",
        b / a,
        per_call(cpu[0]),
        per_call(cpu[1])
    );
    Ok(())
}
