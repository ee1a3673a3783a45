//! The device-sync path: a device follows `sync_conversations` conversations (500), of which
//! `sync_changed` (20) changed since its cursors. It learns which, with one
//! `changed_conversations` call or with one `changes_since(limit 1)` per conversation, and it
//! syncs: learns, then pulls the changed conversations' events, or pulls every conversation.
//!
//! Both sides are imstore; the pair runs in alternating rounds like every other path, one call
//! sequence at a time (a device syncs one call after another). Calls and round trips are counted
//! on a second store over the same data whose requests are counted on the wire.

use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use imstore_core::{
    Action, Authority, ContentCodec, ConversationId, FeedCursor, MessageStore, MsgIdGenerator,
    NewMessage, RequestId, SyncCursor, SystemClock, TransitionRequest, UserId,
};
use serde_json::{Value, json};

use crate::harness::{R, Runner, Side, Timing, measure_pair, op};
use crate::suite::{chat_text, recall_request, settings};
use crate::target::{RequestCounter, Scale, Target};

/// Events each changed conversation gets: a recall, a restore and a recall again.
pub const EVENTS_PER_CHANGED: u64 = 3;

/// The page a device pulls a changed conversation's events with.
const PULL_PAGE: u32 = 50;

/// The required speedup of learning with one call over the single calls, where the issue sets
/// one: PostgreSQL 20×, Cassandra 5× (its per-partition read is the floor).
pub fn required_speedup(backend: &str) -> Option<f64> {
    match backend {
        "postgres" => Some(20.0),
        "scylla" => Some(5.0),
        _ => None,
    }
}

fn conv(i: u64) -> ConversationId {
    ConversationId::new(format!("sync-{i:04}")).expect("valid conversation id")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// The device's state: its cursors, and what it must find.
struct Device {
    cursors: Arc<Vec<SyncCursor>>,
    viewer: UserId,
    changed: u64,
}

/// One `changed_conversations` call; returns the calls made (1).
async fn learn_batch(store: &dyn MessageStore, d: &Device) -> R<u64> {
    let changed = store.changed_conversations(&d.cursors).await?;
    if changed.len() as u64 != d.changed {
        return Err(format!(
            "changed_conversations found {} changed, expected {}",
            changed.len(),
            d.changed
        )
        .into());
    }
    Ok(1)
}

/// One `changes_since(limit 1)` per conversation, one after another; returns the calls made.
async fn learn_single(store: &dyn MessageStore, d: &Device) -> R<u64> {
    let mut found = 0;
    for c in d.cursors.iter() {
        let page = store
            .changes_since(&c.conversation, &d.viewer, c.cursor, 1)
            .await?;
        found += u64::from(!page.events.is_empty());
    }
    if found != d.changed {
        return Err(format!("single calls found {found} changed, expected {}", d.changed).into());
    }
    Ok(d.cursors.len() as u64)
}

/// `changed_conversations`, then every changed conversation pulled up to its head; returns the
/// calls made.
async fn sync_batch(store: &dyn MessageStore, d: &Device) -> R<u64> {
    let changed = store.changed_conversations(&d.cursors).await?;
    let mut calls = 1;
    let mut events = 0;
    for ch in &changed {
        let mut cursor = d
            .cursors
            .iter()
            .find(|c| c.conversation == ch.conversation)
            .map(|c| c.cursor)
            .ok_or("a changed conversation the device does not follow")?;
        while cursor < ch.head {
            let page = store
                .changes_since(&ch.conversation, &d.viewer, cursor, PULL_PAGE)
                .await?;
            calls += 1;
            events += page.events.len() as u64;
            if page.next == cursor {
                return Err(format!("{} stopped before its head", ch.conversation).into());
            }
            cursor = page.next;
        }
    }
    if events != d.changed * EVENTS_PER_CHANGED {
        return Err(format!(
            "pulled {events} events, expected {}",
            d.changed * EVENTS_PER_CHANGED
        )
        .into());
    }
    Ok(calls)
}

/// One `changes_since(limit 50)` per conversation, one after another; returns the calls made.
async fn sync_single(store: &dyn MessageStore, d: &Device) -> R<u64> {
    let mut events = 0;
    for c in d.cursors.iter() {
        let page = store
            .changes_since(&c.conversation, &d.viewer, c.cursor, PULL_PAGE)
            .await?;
        events += page.events.len() as u64;
    }
    if events != d.changed * EVENTS_PER_CHANGED {
        return Err(format!(
            "pulled {events} events, expected {}",
            d.changed * EVENTS_PER_CHANGED
        )
        .into());
    }
    Ok(d.cursors.len() as u64)
}

type Seq = for<'a> fn(&'a dyn MessageStore, &'a Device) -> futures::future::BoxFuture<'a, R<u64>>;

fn boxed_learn_batch<'a>(
    s: &'a dyn MessageStore,
    d: &'a Device,
) -> futures::future::BoxFuture<'a, R<u64>> {
    Box::pin(learn_batch(s, d))
}
fn boxed_learn_single<'a>(
    s: &'a dyn MessageStore,
    d: &'a Device,
) -> futures::future::BoxFuture<'a, R<u64>> {
    Box::pin(learn_single(s, d))
}
fn boxed_sync_batch<'a>(
    s: &'a dyn MessageStore,
    d: &'a Device,
) -> futures::future::BoxFuture<'a, R<u64>> {
    Box::pin(sync_batch(s, d))
}
fn boxed_sync_single<'a>(
    s: &'a dyn MessageStore,
    d: &'a Device,
) -> futures::future::BoxFuture<'a, R<u64>> {
    Box::pin(sync_single(s, d))
}

/// Calls and round trips of one run of `f` on the counting store: the fewest of three runs after
/// a warm-up (so a prepared statement or a driver's metadata refresh is not counted).
async fn count(
    f: Seq,
    store: &dyn MessageStore,
    d: &Device,
    requests: &Option<RequestCounter>,
) -> R<(u64, Option<u64>)> {
    f(store, d).await?;
    let mut calls = 0;
    let mut fewest: Option<u64> = None;
    for _ in 0..3 {
        let before = requests.as_ref().map(|r| r());
        calls = f(store, d).await?;
        if let (Some(b), Some(r)) = (before, requests.as_ref()) {
            let trips = r() - b;
            if trips == 0 {
                return Err(
                    "no request reached the counting proxy: the count would be wrong".into(),
                );
            }
            fewest = Some(fewest.map_or(trips, |f| f.min(trips)));
        }
    }
    Ok((calls, fewest))
}

fn side_json(s: &Side, calls: u64, trips: Option<u64>) -> Value {
    json!({
        "calls": calls,
        "round_trips": trips,
        "p50_us": s.quantile_us(0.5),
        "p99_us": s.quantile_us(0.99),
        "ops": s.ops,
        "ops_per_s": (s.throughput() * 100.0).round() / 100.0,
    })
}

/// Times one pair (batch first in the first round) and counts its calls and round trips.
#[allow(clippy::too_many_arguments)] // the two sides, their stores and the device
async fn pair(
    name: &str,
    batch: Seq,
    single: Seq,
    timed: &Arc<dyn MessageStore>,
    counted: &Arc<dyn MessageStore>,
    requests: &Option<RequestCounter>,
    device: &Arc<Device>,
    timing: Timing,
) -> R<Value> {
    let (bc, bt) = count(batch, counted.as_ref(), device, requests).await?;
    let (sc, st) = count(single, counted.as_ref(), device, requests).await?;
    let runner = |f: Seq| {
        let (store, device) = (timed.clone(), device.clone());
        Runner::new(op(move |_| {
            let (store, device) = (store.clone(), device.clone());
            async move {
                f(store.as_ref(), &device).await?;
                Ok(())
            }
        }))
    };
    let (a, b) = measure_pair(&runner(batch), &runner(single), 1, timing)
        .await
        .map_err(|e| format!("device_sync {name}: {e}"))?;
    let p50 = |s: &Side| s.quantile_us(0.5).max(1) as f64;
    Ok(json!({
        "one_call": side_json(&a, bc, bt),
        "single_calls": side_json(&b, sc, st),
        "speedup_p50": ((p50(&b) / p50(&a)) * 10.0).round() / 10.0,
        "speedup_throughput": ((a.throughput() / b.throughput().max(1e-9)) * 10.0).round() / 10.0,
    }))
}

/// Loads the conversations, moves `sync_changed` of them past the device's cursors, and
/// measures learning and syncing both ways; the JSON record of the path.
pub async fn run(target: &Arc<dyn Target>, scale: &Scale, timing: Timing, quiet: bool) -> R<Value> {
    let started = Instant::now();
    let n = scale.sync_conversations;
    let k = scale.sync_changed.min(n);
    let stores = target.open_sync(settings(ContentCodec::plain())).await?;
    let store = stores.timed.clone();
    let ids = MsgIdGenerator::new(11, Arc::new(SystemClock))?;
    let content = chat_text(scale.content_len, 7);
    let alice = user("alice");
    // Every conversation: two messages, the first recalled (head 1): a device that has pulled
    // it holds cursor 1 everywhere.
    let mut firsts = Vec::with_capacity(n as usize);
    let mut seconds = Vec::with_capacity(n as usize);
    let mut batches = Vec::with_capacity(n as usize);
    for i in 0..n {
        let ms: Vec<NewMessage> = (0..2)
            .map(|_| {
                NewMessage::text(
                    ids.next_id().expect("the clock is within the msg_id range"),
                    conv(i),
                    alice.clone(),
                    content.as_slice(),
                )
            })
            .collect();
        firsts.push(ms[0].msg_id);
        seconds.push(ms[1].msg_id);
        batches.push(ms);
    }
    futures::stream::iter(batches)
        .map(|ms| {
            let store = store.clone();
            async move { R::Ok(store.insert_batch(ms).await.map(|_| ())?) }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    futures::stream::iter(firsts.iter().copied().enumerate())
        .map(|(i, id)| {
            let (store, by) = (store.clone(), alice.clone());
            async move {
                let c = conv(i as u64);
                store
                    .transition(recall_request(&c, id, &by, i as u64, "sync"))
                    .await?;
                R::Ok(())
            }
        })
        .buffer_unordered(8)
        .try_collect::<Vec<()>>()
        .await?;
    let cursors: Vec<SyncCursor> = (0..n)
        .map(|i| SyncCursor {
            cursor: FeedCursor::at(&conv(i), 1).expect("position 1"),
            conversation: conv(i),
        })
        .collect();
    // The changed ones, spread over the list: a recall, a restore and a recall of the second.
    let step = (n / k.max(1)).max(1);
    futures::stream::iter((0..k).map(|j| j * step))
        .map(|i| {
            let (store, by, id) = (store.clone(), alice.clone(), seconds[i as usize]);
            async move {
                let c = conv(i);
                for (e, action) in [Action::Recall, Action::Restore, Action::Recall]
                    .into_iter()
                    .enumerate()
                {
                    store
                        .transition(TransitionRequest {
                            action,
                            requester: by.clone(),
                            authority: Authority::Member,
                            conversation_id: c.clone(),
                            msg_id: id,
                            client_ts: imstore_core::Clock::now(&SystemClock),
                            request_id: RequestId::new(format!("sync-change-{i}-{e}"))?,
                        })
                        .await?;
                }
                R::Ok(())
            }
        })
        .buffer_unordered(4)
        .try_collect::<Vec<()>>()
        .await?;
    let load_seconds = started.elapsed().as_secs_f64();
    let device = Arc::new(Device {
        cursors: Arc::new(cursors),
        viewer: user("bob"),
        changed: k,
    });
    // A 500-call side takes a second or more an op on a server: a few warm-up ops are enough.
    let timing = Timing {
        warmup_ops: timing.warmup_ops.min(2),
        ..timing
    };
    let mut out = json!({
        "conversations": n,
        "changed": k,
        "events_per_changed": EVENTS_PER_CHANGED,
        "pull_page": PULL_PAGE,
        "round_trip_method": stores.method,
        "load_seconds": (load_seconds * 10.0).round() / 10.0,
    });
    for (name, batch, single) in [
        ("learn", boxed_learn_batch as Seq, boxed_learn_single as Seq),
        ("sync", boxed_sync_batch as Seq, boxed_sync_single as Seq),
    ] {
        let t = Instant::now();
        let r = pair(
            name,
            batch,
            single,
            &stores.timed,
            &stores.counted,
            &stores.requests,
            &device,
            timing,
        )
        .await?;
        if !quiet {
            eprintln!(
                "  {:>9} device_sync {name:<6} one call: {} calls {} round trips p50 {} µs · single: {} calls {} round trips p50 {} µs · ×{} ({:.1}s)",
                target.name(),
                r["one_call"]["calls"],
                r["one_call"]["round_trips"],
                r["one_call"]["p50_us"],
                r["single_calls"]["calls"],
                r["single_calls"]["round_trips"],
                r["single_calls"]["p50_us"],
                r["speedup_p50"],
                t.elapsed().as_secs_f64()
            );
        }
        out[name] = r;
    }
    let required = required_speedup(target.name());
    let got = out["learn"]["speedup_p50"].as_f64().unwrap_or(0.0);
    out["goal"] = json!({
        "what": "learning which conversations changed: one call at least this many times faster (p50) than the single calls",
        "required_speedup": required,
        "met": required.map(|r| got >= r),
    });
    out["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    Ok(out)
}
