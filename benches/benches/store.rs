//! Criterion benchmarks of the store paths on every selected backend, each next to the raw
//! driver doing the minimal statement on the same tables (the bench command's baselines).
//!
//! ```text
//! source .servers/env
//! cargo bench -p imstore-bench --bench store                       # every backend compiled in
//! IMSTORE_BENCH_BACKENDS=memory,postgres cargo bench -p imstore-bench --bench store
//! ```
//!
//! Groups are `<backend>/<path>`, functions `imstore`, `imstore zstd+aes` (where the codec
//! matters) and `raw`; criterion keeps the history under `target/criterion`, so a later run
//! reports the change per function. A compiled-in backend whose server variable is unset stops
//! the bench with the command to start the servers (never a silent skip). For the side-by-side
//! ratios measured in alternating rounds, and the write counts, use the bench command
//! (`cargo run --release -p imstore-bench -- --quick`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use imstore_bench::harness::R;
use imstore_bench::suite::{chat_text, recall_request, settings, write_batch};
use imstore_bench::target::{Raw, Target, codecs};
use imstore_bench::{connect, select_backends};
use imstore_core::{
    ConversationId, FeedCursor, ListOptions, MessageStore, MsgId, MsgIdGenerator, NewMessage,
    SystemClock, UserId,
};
use tokio::runtime::Runtime;

/// Messages in the history the reads and pages run on.
const HISTORY: u64 = 10_000;
/// FerretDB v1 over SQLite scans the collection on every read: a smaller history keeps a run short.
const HISTORY_FERRETDB: u64 = 1_000;
/// Events in the feed conversation; pages of 50 are read from its start.
const FEED_EVENTS: u64 = 100;

fn conv(s: &str) -> ConversationId {
    ConversationId::new(s).expect("valid conversation id")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// One backend's stores, baseline and data.
struct Bed {
    target: Arc<dyn Target>,
    plain: Arc<dyn MessageStore>,
    sealed: Arc<dyn MessageStore>,
    raw: Arc<dyn Raw>,
    ids: MsgIdGenerator,
    content: Arc<Vec<u8>>,
    history: Arc<Vec<MsgId>>,
    sealed_history: Arc<Vec<MsgId>>,
}

impl Bed {
    fn message(&self, c: &ConversationId) -> NewMessage {
        NewMessage::text(
            self.ids
                .next_id()
                .expect("the clock is within the msg_id range"),
            c.clone(),
            user("alice"),
            self.content.as_slice(),
        )
    }

    /// Writes `n` messages into `c` through `store` (or, for a history the baseline can write
    /// as the backend lays it out, directly), mirrored into the baseline's own structure.
    async fn load(
        &self,
        store: &Arc<dyn MessageStore>,
        c: &str,
        n: u64,
        history: bool,
    ) -> R<Vec<MsgId>> {
        let c = conv(c);
        let mut ids = Vec::with_capacity(n as usize);
        let mut left = n;
        while left > 0 {
            let batch: Vec<NewMessage> = (0..left.min(1_000)).map(|_| self.message(&c)).collect();
            left -= batch.len() as u64;
            ids.extend(batch.iter().map(|m| m.msg_id));
            write_batch(&self.raw, store, batch, history).await?;
        }
        Ok(ids)
    }
}

async fn prepare(name: &str) -> R<Bed> {
    let target = connect(name).await?;
    let mut stores = codecs()
        .into_iter()
        .filter(|(label, _)| *label == "off" || *label == "zstd+aes");
    let (_, off) = stores.next().ok_or("no plain codec")?;
    let (_, both) = stores.next().ok_or("no zstd+aes codec")?;
    let plain = target.open(settings(off)).await?.store;
    let sealed = target.open(settings(both)).await?.store;
    let mut bed = Bed {
        raw: target.raw(),
        target,
        plain: plain.clone(),
        sealed: sealed.clone(),
        ids: MsgIdGenerator::new(9, Arc::new(SystemClock))?,
        content: Arc::new(chat_text(300, 1)),
        history: Arc::default(),
        sealed_history: Arc::default(),
    };
    let n = if name == "mongodb" {
        HISTORY_FERRETDB
    } else {
        HISTORY
    };
    bed.history = Arc::new(bed.load(&plain, "history", n, true).await?);
    bed.sealed_history = Arc::new(bed.load(&sealed, "history-sealed", 1_000, false).await?);
    bed.raw.seed_feed("feed", FEED_EVENTS).await?;
    let feed = bed.load(&plain, "feed", FEED_EVENTS, false).await?;
    let c = conv("feed");
    for (i, id) in feed.into_iter().enumerate() {
        plain
            .transition(recall_request(&c, id, &user("alice"), i as u64, "feed"))
            .await?;
    }
    Ok(bed)
}

fn store_paths(c: &mut Criterion) {
    let list = std::env::var("IMSTORE_BENCH_BACKENDS").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let backends = select_backends(list).unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new().expect("a tokio runtime");
    for name in backends {
        let bed = Arc::new(
            rt.block_on(prepare(&name))
                .unwrap_or_else(|e| panic!("{name}: preparing the bench data failed: {e}")),
        );
        let (samples, time) = if name == "mongodb" {
            (10, Duration::from_secs(6))
        } else {
            (20, Duration::from_secs(3))
        };
        let configure = |g: &mut criterion::BenchmarkGroup<'_, _>| {
            g.sample_size(samples)
                .measurement_time(time)
                .warm_up_time(Duration::from_secs(1));
        };
        let history = conv("history");
        let viewer = user("carol");

        // Single send, codec off and zstd+aes, against one plain INSERT.
        let mut g = c.benchmark_group(format!("{name}/send"));
        configure(&mut g);
        let sends = conv("sends");
        for (label, store) in [
            ("imstore", bed.plain.clone()),
            ("imstore zstd+aes", bed.sealed.clone()),
        ] {
            g.bench_function(label, |b| {
                b.to_async(&rt).iter(|| {
                    let (store, m) = (store.clone(), bed.message(&sends));
                    async move { store.insert(m).await.expect("insert") }
                })
            });
        }
        g.bench_function("raw", |b| {
            b.to_async(&rt).iter(|| {
                let (raw, m) = (bed.raw.clone(), bed.message(&sends));
                async move { raw.send(&m).await.expect("raw send") }
            })
        });
        g.finish();

        // Point read for a viewer (decode + render), against one SELECT of the content.
        let mut g = c.benchmark_group(format!("{name}/point_read"));
        configure(&mut g);
        let k = Arc::new(AtomicU64::new(0));
        for (label, store, c, ids) in [
            (
                "imstore",
                bed.plain.clone(),
                history.clone(),
                bed.history.clone(),
            ),
            (
                "imstore zstd+aes",
                bed.sealed.clone(),
                conv("history-sealed"),
                bed.sealed_history.clone(),
            ),
        ] {
            g.bench_function(label, |b| {
                b.to_async(&rt).iter(|| {
                    let i = k.fetch_add(7919, Ordering::Relaxed) as usize % ids.len();
                    let (store, c, v, id) = (store.clone(), c.clone(), viewer.clone(), ids[i]);
                    async move { store.get(&c, id, &v).await.expect("get") }
                })
            });
        }
        g.bench_function("raw", |b| {
            b.to_async(&rt).iter(|| {
                let i = k.fetch_add(7919, Ordering::Relaxed) as usize % bed.history.len();
                let (raw, id) = (bed.raw.clone(), bed.history[i]);
                async move { raw.get("history", id.as_i64()).await.expect("raw get") }
            })
        });
        g.finish();

        // The newest page of 50 in the history.
        let mut g = c.benchmark_group(format!("{name}/latest_page_50"));
        configure(&mut g);
        g.bench_function("imstore", |b| {
            b.to_async(&rt).iter(|| {
                let (store, c, v) = (bed.plain.clone(), history.clone(), viewer.clone());
                async move {
                    let page = store
                        .list(&c, &v, ListOptions::newest(50))
                        .await
                        .expect("list");
                    assert_eq!(page.items.len(), 50);
                }
            })
        });
        g.bench_function("raw", |b| {
            b.to_async(&rt).iter(|| {
                let raw = bed.raw.clone();
                async move { assert_eq!(raw.latest("history", 50).await.expect("raw page"), 50) }
            })
        });
        g.finish();

        // Recall of a fresh message each time: the messages are written outside the timing.
        let mut g = c.benchmark_group(format!("{name}/recall"));
        configure(&mut g);
        let round = Arc::new(AtomicU64::new(0));
        g.bench_function("imstore", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (bed, r) = (bed.clone(), round.fetch_add(1, Ordering::Relaxed));
                async move {
                    let c = format!("recall-i-{r}");
                    let plain = bed.plain.clone();
                    let ids = bed.load(&plain, &c, iters, false).await.expect("load");
                    let cc = conv(&c);
                    let started = Instant::now();
                    for (i, id) in ids.into_iter().enumerate() {
                        let req = recall_request(&cc, id, &user("alice"), i as u64, "i");
                        assert!(plain.transition(req).await.expect("recall").changed);
                    }
                    started.elapsed()
                }
            })
        });
        g.bench_function("raw", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (bed, r) = (bed.clone(), round.fetch_add(1, Ordering::Relaxed));
                async move {
                    let c = format!("recall-b-{r}");
                    let plain = bed.plain.clone();
                    let ids = bed.load(&plain, &c, iters, false).await.expect("load");
                    let started = Instant::now();
                    for id in ids {
                        let at = imstore_bench::now_ms();
                        bed.raw
                            .recall(&c, id.as_i64(), "alice", at)
                            .await
                            .expect("raw recall");
                    }
                    started.elapsed()
                }
            })
        });
        g.finish();

        // A page of 50 change events from the start of the feed.
        let mut g = c.benchmark_group(format!("{name}/feed_page_50"));
        configure(&mut g);
        g.bench_function("imstore", |b| {
            b.to_async(&rt).iter(|| {
                let store = bed.plain.clone();
                async move {
                    let page = store
                        .changes_since(&conv("feed"), &user("bob"), FeedCursor::START, 50)
                        .await
                        .expect("changes");
                    assert_eq!(page.events.len(), 50);
                }
            })
        });
        g.bench_function("raw", |b| {
            b.to_async(&rt).iter(|| {
                let raw = bed.raw.clone();
                async move { assert_eq!(raw.feed("feed", 0, 50).await.expect("raw feed"), 50) }
            })
        });
        g.finish();

        if let Err(e) = rt.block_on(bed.target.drop_namespace()) {
            eprintln!(
                "warning: {name}: could not drop {}: {e}",
                bed.target.namespace()
            );
        }
    }
}

criterion_group!(benches, store_paths);
criterion_main!(benches);
