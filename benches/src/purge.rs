//! The purge-throughput path: a backlog of `purge_backlog` recalled messages past their
//! retention, spread over `PURGE_CONVERSATIONS` conversations, removed by `purge` calls of
//! `PURGE_BATCH`, while 8 workers send and page in other conversations of the same store.
//!
//! The store runs on a manual clock: the backlog is recalled "now", the clock then moves past
//! the retention, and everything after runs at that time. Measured: messages removed per second
//! of purging (for at most the measuring window, or until the backlog is gone), and the p50 /
//! p99 of the sends and pages, first without the purge (same window, same workers) and then
//! while it runs. There is no raw-driver side: what a purge must do per message is the
//! backend's own design, explained in its README.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use imstore_core::{
    ContentCodec, ConversationId, ListOptions, ManualClock, MessageStore, MsgIdGenerator,
    NewMessage, PurgeOptions, StoreSettings, UserId,
};
use serde_json::{Value, json};

use crate::harness::{R, Timing};
use crate::suite::{chat_text, recall_request};
use crate::target::{Scale, Target};

/// Conversations the backlog is spread over.
pub const PURGE_CONVERSATIONS: u64 = 100;
/// Messages one purge call may remove.
pub const PURGE_BATCH: u32 = 500;
/// Workers sending and paging beside the purge.
const WORKERS: usize = 8;

fn conv(s: String) -> ConversationId {
    ConversationId::new(s).expect("valid conversation id")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// Sends (even ops) and newest pages (odd ops) from `WORKERS` workers until `stop`; their
/// latencies in µs.
async fn load(
    store: Arc<dyn MessageStore>,
    ids: MsgIdGenerator,
    content: Arc<Vec<u8>>,
    stop: Arc<AtomicBool>,
    cap: Option<u64>,
) -> R<Histogram<u64>> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (store, ids, content, stop, counter) = (
            store.clone(),
            ids.clone(),
            content.clone(),
            stop.clone(),
            counter.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
            let viewer = user("carol");
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let c = conv(format!("purge-live-{}", i % 16));
                let t = Instant::now();
                if i % 2 == 0 {
                    let m = NewMessage::text(ids.next_id()?, c, user("alice"), content.as_slice());
                    store.insert(m).await?;
                } else {
                    store.list(&c, &viewer, ListOptions::newest(50)).await?;
                }
                hist.record(t.elapsed().as_micros().max(1) as u64)?;
                if cap.is_some_and(|cap| i >= cap) {
                    break;
                }
                // An in-process store answers without ever yielding: without this the workers
                // would hold every runtime thread and the timer that stops them never runs.
                tokio::task::yield_now().await;
            }
            R::Ok(hist)
        }));
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok(all)
}

fn quantiles(h: &Histogram<u64>, seconds: f64) -> Value {
    json!({
        "ops": h.len(),
        "ops_per_s": if seconds > 0.0 { (h.len() as f64 / seconds * 10.0).round() / 10.0 } else { 0.0 },
        "p50_us": if h.is_empty() { 0 } else { h.value_at_quantile(0.5) },
        "p99_us": if h.is_empty() { 0 } else { h.value_at_quantile(0.99) },
    })
}

/// Runs the path on `target`: loads and recalls the backlog, moves the clock past the
/// retention, measures the load alone, then the purge with the load beside it.
pub async fn run(target: &Arc<dyn Target>, scale: &Scale, timing: Timing, quiet: bool) -> R<Value> {
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..crate::suite::settings(ContentCodec::plain())
    };
    let retention = settings.policy.retention();
    let handle = target.open_group(settings).await?;
    let store = handle.store.clone();
    let ids = MsgIdGenerator::new(11, Arc::new(clock.clone()))?;
    let content = Arc::new(chat_text(scale.content_len, 3));
    let backlog = scale.purge_backlog;
    let per_conv = backlog.div_ceil(PURGE_CONVERSATIONS);

    // ---- The backlog: inserted in batches, then every message recalled by its sender ----
    let load_started = Instant::now();
    let mut messages = Vec::with_capacity(backlog as usize);
    let mut batches = Vec::new();
    for k in 0..PURGE_CONVERSATIONS {
        let c = conv(format!("purge-old-{k:03}"));
        let mut batch = Vec::new();
        for _ in 0..per_conv {
            if messages.len() as u64 >= backlog {
                break;
            }
            let m = NewMessage::text(ids.next_id()?, c.clone(), user("alice"), content.as_slice());
            messages.push((c.clone(), m.msg_id));
            batch.push(m);
            if batch.len() == 1000 {
                batches.push(std::mem::take(&mut batch));
            }
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
    }
    futures::stream::iter(batches)
        .map(|b| {
            let store = store.clone();
            async move {
                store.insert_batch(b).await?;
                R::Ok(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    let alice = user("alice");
    let requests: Vec<_> = messages
        .iter()
        .enumerate()
        .map(|(i, (c, id))| recall_request(c, *id, &alice, i as u64, "purge"))
        .collect();
    futures::stream::iter(requests)
        .map(|req| {
            let store = store.clone();
            async move {
                if !store.transition(req).await?.changed {
                    return Err("a backlog recall did not change its message".into());
                }
                R::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await?;
    let load_seconds = load_started.elapsed().as_secs_f64();
    clock.advance(retention + Duration::from_secs(86_400));
    if !quiet {
        eprintln!(
            "  {:>9} purge backlog: {backlog} recalled messages in {PURGE_CONVERSATIONS} conversations, loaded in {load_seconds:.1}s",
            target.name()
        );
    }

    let window = timing.per_round * timing.rounds;
    // ---- The load alone ----
    // The memory backend keeps every message: its load stops at the write cap.
    let cap = scale.write_cap;
    let stop = Arc::new(AtomicBool::new(false));
    let alone = tokio::spawn(load(
        store.clone(),
        ids.clone(),
        content.clone(),
        stop.clone(),
        cap,
    ));
    tokio::time::sleep(window).await;
    stop.store(true, Ordering::Relaxed);
    let alone = alone.await??;

    // ---- The purge, with the load beside it ----
    let stop = Arc::new(AtomicBool::new(false));
    let beside = tokio::spawn(load(
        store.clone(),
        ids.clone(),
        content.clone(),
        stop.clone(),
        cap,
    ));
    let started = Instant::now();
    let (mut removed, mut calls, mut call_hist) = (
        0u64,
        0u64,
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
    );
    let mut drained = false;
    while started.elapsed() < window {
        let t = Instant::now();
        let r = store
            .purge(PurgeOptions {
                batch_size: PURGE_BATCH,
            })
            .await?;
        call_hist.record(t.elapsed().as_micros().max(1) as u64)?;
        calls += 1;
        removed += r.messages;
        if !r.more {
            drained = true;
            break;
        }
    }
    let purge_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let beside = beside.await??;
    let rate = removed as f64 / purge_seconds.max(1e-9);
    drop(store);
    if let Some(close) = handle.close {
        close.await;
    }
    if !quiet {
        eprintln!(
            "  {:>9} purge: {removed} removed in {purge_seconds:.1}s = {rate:.0} msg/s ({calls} calls); sends+pages p99 {} µs alone, {} µs beside the purge",
            target.name(),
            alone.value_at_quantile(0.99),
            beside.value_at_quantile(0.99),
        );
    }
    Ok(json!({
        "backlog_messages": backlog,
        "conversations": PURGE_CONVERSATIONS,
        "batch_size": PURGE_BATCH,
        "load_seconds": (load_seconds * 10.0).round() / 10.0,
        "window_seconds": window.as_secs_f64(),
        "removed": removed,
        "purge_seconds": (purge_seconds * 100.0).round() / 100.0,
        "removed_per_s": (rate * 10.0).round() / 10.0,
        "drained": drained,
        "calls": calls,
        "call_p50_us": call_hist.value_at_quantile(0.5),
        "call_p99_us": call_hist.value_at_quantile(0.99),
        "sends_and_pages_alone": quantiles(&alone, window.as_secs_f64()),
        "sends_and_pages_beside_the_purge": quantiles(&beside, purge_seconds),
    }))
}
