//! The paths measured on every backend, each as a pair: imstore and the raw-driver baseline.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use imstore_core::{
    Action, Authority, ContentCodec, ConversationId, FeedCursor, ListOptions, MessageStore, MsgId,
    MsgIdGenerator, NewMessage, Policy, RequestId, StoreSettings, SystemClock, TransitionRequest,
    UserId,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::harness::{OpFn, R, Runner, Side, Timing, measure_sides, mix, op};
use crate::target::{Fair, Raw, Scale, Target, codecs};

/// One measured pair.
pub struct PathResult {
    /// Path name ("send", "point_read", ...).
    pub path: String,
    /// Codec variant ("off", "zstd", "aes", "zstd+aes").
    pub codec: String,
    /// Concurrent workers per side.
    pub concurrency: usize,
    /// Data scale of the path, in words.
    pub scale: String,
    /// imstore's side.
    pub imstore: Side,
    /// The baseline's side.
    pub baseline: Side,
    /// The fair baseline's side (the same guarantees by hand), when one is written.
    pub fair: Option<Side>,
    /// Round trips per operation of each side's happy path, where known.
    pub round_trips: Value,
    /// The connection pools' sizes when the path started, where the target pools connections.
    pub pools: Value,
}

impl PathResult {
    /// imstore's throughput over the baseline's.
    pub fn ratio(&self) -> f64 {
        let b = self.baseline.throughput();
        if b > 0.0 {
            self.imstore.throughput() / b
        } else {
            0.0
        }
    }

    /// imstore's throughput over the fair baseline's, when there is one.
    pub fn fair_ratio(&self) -> Option<f64> {
        let f = self.fair.as_ref()?.throughput();
        (f > 0.0).then(|| self.imstore.throughput() / f)
    }

    /// The JSON record of the pair.
    pub fn to_json(&self) -> Value {
        let side = |s: &Side| {
            json!({
                "ops_per_s": round2(s.throughput()),
                "p50_us": s.quantile_us(0.5),
                "p99_us": s.quantile_us(0.99),
                "ops": s.ops,
                "seconds": round2(s.elapsed.as_secs_f64()),
            })
        };
        json!({
            "path": self.path,
            "codec": self.codec,
            "concurrency": self.concurrency,
            "scale": self.scale,
            "imstore": side(&self.imstore),
            "baseline": side(&self.baseline),
            "fair": self.fair.as_ref().map(side),
            "ratio": round3(self.ratio()),
            "fair_ratio": self.fair_ratio().map(round3),
            "round_trips": self.round_trips,
            "pools": self.pools,
        })
    }
}

/// Everything measured on one backend.
pub struct BackendReport {
    /// Backend name.
    pub backend: String,
    /// Namespace used (dropped at the end).
    pub namespace: String,
    /// Server version, if any.
    pub server: Option<String>,
    /// Data sizes.
    pub scale: Scale,
    /// Time spent loading data.
    pub load_seconds: f64,
    /// Wall time of each phase of the backend's run, in order (seconds).
    pub phases: Vec<(&'static str, f64)>,
    /// The pairs.
    pub paths: Vec<PathResult>,
    /// The recall write counts at 2 and at N members (null when the standard paths did not run).
    pub recall_writes: Value,
    /// The device-sync path's record (see [`crate::sync`]), when it ran.
    pub device_sync: Option<Value>,
    /// The contention pairs (busy side ÷ spread side, not imstore ÷ raw), when they ran.
    pub contention: Vec<PathResult>,
    /// The purge path's record (see [`crate::purge`]), when it ran.
    pub purge: Option<Value>,
}

/// Which groups of paths a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The imstore-vs-raw-driver pairs and the recall write counts.
    pub standard: bool,
    /// Learning and syncing many conversations: one call against one call per conversation.
    pub device_sync: bool,
    /// One busy conversation against the same load spread: the hot group and the recall storm.
    pub contention: bool,
    /// The purge removing a backlog, with sends and pages beside it (see [`crate::purge`]).
    pub purge: bool,
}

impl Paths {
    /// Every path.
    pub const ALL: Paths = Paths {
        standard: true,
        device_sync: true,
        contention: true,
        purge: true,
    };
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Recall allowed for a day, so that messages loaded before the measurement stay recallable.
fn bench_policy() -> Policy {
    Policy::builder()
        .recall_window(Duration::from_secs(24 * 3600))
        .build()
        .expect("a valid policy")
}

/// The settings every benched store uses: `codec`, a day's recall window, the system clock.
pub fn settings(codec: ContentCodec) -> StoreSettings {
    StoreSettings {
        policy: bench_policy(),
        codec,
        clock: Arc::new(SystemClock),
    }
}

fn conv(s: &str) -> ConversationId {
    ConversationId::new(s).expect("valid conversation id")
}

fn user(s: &str) -> UserId {
    UserId::new(s).expect("valid user id")
}

/// Chat-like text of `len` bytes (compressible, as real messages are).
pub fn chat_text(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "launch", "moves", "to", "friday", "please", "review", "plan", "and", "send",
        "notes", "before", "standup", "thanks", "ok", "see", "you", "there", "🙂", "meeting",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut i = seed;
    while out.len() < len {
        i += 1;
        out.extend_from_slice(WORDS[(mix(i) % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    // Never cut a multi-byte character in half: content is bytes, but keep it valid text.
    while std::str::from_utf8(&out).is_err() {
        out.pop();
    }
    out
}

/// Shared state of one backend's run.
struct Ctx {
    target: Arc<dyn Target>,
    raw: Arc<dyn Raw>,
    /// The fair baseline, when the backend has one.
    fair: Option<Arc<dyn Fair>>,
    ids: MsgIdGenerator,
    scale: Scale,
    content: Arc<Vec<u8>>,
    timing: Timing,
    quiet: bool,
}

impl Ctx {
    fn msg(&self, c: &str, sender: &str) -> NewMessage {
        NewMessage::text(
            self.ids
                .next_id()
                .expect("the clock is within the msg_id range"),
            conv(c),
            user(sender),
            self.content.as_slice(),
        )
    }

    fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let pb = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        pb.set_style(
            ProgressStyle::with_template(
                "  {prefix:>9} {msg:<28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_prefix(self.target.name());
        pb.set_message(what.to_owned());
        pb
    }

    /// Loads `n` messages into `c` through `store` in batches of 1,000 (4 in flight), mirroring
    /// them into the baseline's own structure when it has one; returns their ids in order.
    async fn load(
        &self,
        store: &Arc<dyn MessageStore>,
        c: &str,
        n: u64,
        senders: &[String],
    ) -> R<Vec<MsgId>> {
        self.load_with(store, c, n, senders, false).await
    }

    /// `load`, letting the baseline write the rows directly when `history` and it can.
    async fn load_with(
        &self,
        store: &Arc<dyn MessageStore>,
        c: &str,
        n: u64,
        senders: &[String],
        history: bool,
    ) -> R<Vec<MsgId>> {
        let pb = self.bar(n, &format!("load {c}"));
        let mut batches = Vec::new();
        let mut all = Vec::with_capacity(n as usize);
        let mut k = 0u64;
        while k < n {
            let len = (n - k).min(1000);
            let batch: Vec<NewMessage> = (0..len)
                .map(|j| self.msg(c, &senders[((k + j) % senders.len() as u64) as usize]))
                .collect();
            all.extend(batch.iter().map(|m| m.msg_id));
            batches.push(batch);
            k += len;
        }
        futures::stream::iter(batches)
            .map(|batch| {
                let store = store.clone();
                let raw = self.raw.clone();
                let pb = pb.clone();
                async move {
                    let len = batch.len() as u64;
                    write_batch(&raw, &store, batch, history).await?;
                    pb.inc(len);
                    R::Ok(())
                }
            })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        pb.finish_and_clear();
        Ok(all)
    }

    #[allow(clippy::too_many_arguments)] // one call per path; a struct would only rename them
    async fn pair(
        &self,
        path: &str,
        codec: &str,
        concurrency: usize,
        scale: String,
        imstore: Runner,
        baseline: Runner,
        out: &mut Vec<PathResult>,
    ) -> R<()> {
        self.sides(
            path,
            codec,
            concurrency,
            scale,
            imstore,
            baseline,
            None,
            out,
        )
        .await
    }

    /// Measures imstore, the naive baseline and, when given, the fair baseline side by side.
    #[allow(clippy::too_many_arguments)] // one call per path; a struct would only rename them
    async fn sides(
        &self,
        path: &str,
        codec: &str,
        concurrency: usize,
        scale: String,
        imstore: Runner,
        baseline: Runner,
        fair: Option<Runner>,
        out: &mut Vec<PathResult>,
    ) -> R<()> {
        let started = Instant::now();
        // Before measuring: a pool a burst grew hands its calls to many server processes in
        // turn, which a c1 path pays for (benches/README.md, "PostgreSQL feed page").
        let pools = self.target.pools().unwrap_or(Value::Null);
        let mut runners = vec![&imstore, &baseline];
        runners.extend(fair.as_ref());
        let mut measured = measure_sides(&runners, concurrency, self.timing)
            .await
            .map_err(|e| format!("{} {path} ({codec}): {e}", self.target.name()))?
            .into_iter();
        let (a, b) = (
            measured.next().ok_or("no imstore side")?,
            measured.next().ok_or("no baseline side")?,
        );
        let f = measured.next();
        // Latest pages of both sizes are one job.
        let job = path.trim_end_matches("_small").trim_end_matches("_big");
        let round_trips = json!({
            "baseline": self.raw.round_trips(job),
            "fair": f.as_ref().and(self.fair.as_ref()).and_then(|x| x.round_trips(job)),
        });
        let r = PathResult {
            path: path.into(),
            codec: codec.into(),
            concurrency,
            scale,
            imstore: a,
            baseline: b,
            fair: f,
            round_trips,
            pools,
        };
        if !self.quiet {
            let fair = match r.fair_ratio() {
                Some(x) => format!("  fair {:>5.2}", x),
                None => String::new(),
            };
            eprintln!(
                "  {:>9} {:<22} {:<9} c{:<3} imstore {:>10.0}/s  baseline {:>10.0}/s  ratio {:>5.2}{fair}  ({:.1}s)",
                self.target.name(),
                path,
                codec,
                concurrency,
                r.imstore.throughput(),
                r.baseline.throughput(),
                r.ratio(),
                started.elapsed().as_secs_f64()
            );
        }
        out.push(r);
        Ok(())
    }
}

/// Writes `batch` through `store`, mirrored into the baseline's own structure; when `history`
/// and the baseline can write the rows as the backend lays them out, it writes them instead
/// (loading a 1M history through Cassandra LWTs would take the run).
pub async fn write_batch(
    raw: &Arc<dyn Raw>,
    store: &Arc<dyn MessageStore>,
    batch: Vec<NewMessage>,
    history: bool,
) -> R<()> {
    raw.mirror(&batch).await?;
    if !(history && raw.bulk_history(&batch).await?) {
        store.insert_batch(batch).await?;
    }
    Ok(())
}

/// The runner of a write path whose op writes `per_op` messages: capped per round when the
/// backend's scale caps writes.
fn writer(op: OpFn, per_op: u64, scale: &Scale) -> Runner {
    match scale.write_cap {
        Some(cap) => Runner::capped(op, cap / per_op),
        None => Runner::new(op),
    }
}

/// A recall of `id` in `c` by `by`, with a request id unique per `side`, `i` and message.
pub fn recall_request(
    c: &ConversationId,
    id: MsgId,
    by: &UserId,
    i: u64,
    side: &str,
) -> TransitionRequest {
    TransitionRequest {
        action: Action::Recall,
        requester: by.clone(),
        authority: Authority::Member,
        conversation_id: c.clone(),
        msg_id: id,
        client_ts: imstore_core::Clock::now(&SystemClock),
        request_id: RequestId::new(format!("{side}-recall-{i}-{}", id.get())).expect("valid id"),
    }
}

/// Runs the selected paths on `target` (the device-sync and contention paths first: the standard
/// paths end by closing the shared connections to count writes); the caller drops the namespace
/// afterwards.
pub async fn run(
    target: Arc<dyn Target>,
    scale: Scale,
    timing: Timing,
    quiet: bool,
    paths: Paths,
) -> R<BackendReport> {
    // The purge first, on a fresh namespace: it removes every eligible message there, so what it
    // reports is its own backlog only.
    let mut purge = None;
    if paths.purge {
        let t = Instant::now();
        let mut record = crate::purge::run(&target, &scale, timing, quiet).await?;
        if let Some(note) = target.settle().await? {
            if !quiet {
                eprintln!("{}: after the purge: {note}", target.name());
            }
            record["settled"] = Value::String(note);
        }
        purge = Some((record, t.elapsed().as_secs_f64()));
    }
    let mut device_sync = None;
    let mut sync_seconds = None;
    if paths.device_sync {
        let t = Instant::now();
        if !quiet {
            eprintln!(
                "{}: device sync, {} conversations, {} changed",
                target.name(),
                scale.sync_conversations,
                scale.sync_changed
            );
        }
        device_sync = Some(crate::sync::run(&target, &scale, timing, quiet).await?);
        sync_seconds = Some(t.elapsed().as_secs_f64());
    }
    // Before the standard paths, which end by closing the shared connections.
    let mut contention = None;
    if paths.contention {
        let t = Instant::now();
        let pairs = run_contention(target.clone(), &scale, timing, quiet).await?;
        contention = Some((pairs, t.elapsed().as_secs_f64()));
    }
    let mut report = if paths.standard {
        run_standard(target.clone(), scale.clone(), timing, quiet).await?
    } else {
        BackendReport {
            backend: target.name().into(),
            namespace: target.namespace(),
            server: target.server_version(),
            scale,
            load_seconds: 0.0,
            phases: Vec::new(),
            paths: Vec::new(),
            recall_writes: Value::Null,
            device_sync: None,
            contention: Vec::new(),
            purge: None,
        }
    };
    if let Some((record, s)) = purge {
        report.purge = Some(record);
        report.phases.insert(0, ("purge", s));
    }
    if let Some((pairs, s)) = contention {
        report.contention = pairs;
        report.phases.insert(0, ("contention", s));
    }
    if let Some(s) = sync_seconds {
        report.phases.insert(0, ("device_sync", s));
    }
    report.device_sync = device_sync;
    Ok(report)
}

/// Runs the imstore-vs-raw-driver paths and counts a recall's writes.
async fn run_standard(
    target: Arc<dyn Target>,
    scale: Scale,
    timing: Timing,
    quiet: bool,
) -> R<BackendReport> {
    let ctx = Ctx {
        raw: target.raw(),
        fair: target.fair(),
        target: target.clone(),
        ids: MsgIdGenerator::new(7, Arc::new(SystemClock))?,
        content: Arc::new(chat_text(scale.content_len, 1)),
        scale: scale.clone(),
        timing,
        quiet,
    };
    let name = target.name();
    let mut phases: Vec<(&'static str, f64)> = Vec::new();
    let open_started = Instant::now();
    let mut stores: BTreeMap<&'static str, Arc<dyn MessageStore>> = BTreeMap::new();
    for (label, codec) in codecs() {
        stores.insert(label, target.open(settings(codec)).await?.store);
    }
    let plain = stores["off"].clone();
    let alice = vec!["alice".to_owned(), "bob".to_owned()];

    phases.push(("open", open_started.elapsed().as_secs_f64()));

    // ---- Load ----
    let load_started = Instant::now();
    if !quiet {
        eprintln!("{name}: loading into {}", target.namespace());
    }
    ctx.load_with(&plain, "hist-small", scale.small, &alice, true)
        .await?;
    ctx.load_with(&plain, "hist-big", scale.big, &alice, true)
        .await?;
    let mut read_ids = BTreeMap::new();
    for (label, _) in codecs() {
        let ids = ctx
            .load(
                &stores[label],
                &format!("read-{label}"),
                scale.read_pool,
                &alice,
            )
            .await?;
        read_ids.insert(label, Arc::new(ids));
    }
    let pool_i = Arc::new(
        ctx.load(&plain, "recall-i", scale.recall_pool, &alice)
            .await?,
    );
    let pool_b = Arc::new(
        ctx.load(&plain, "recall-b", scale.recall_pool, &alice)
            .await?,
    );
    let pool_f = match ctx.fair {
        Some(_) => Arc::new(
            ctx.load(&plain, "recall-f", scale.recall_pool, &alice)
                .await?,
        ),
        None => Arc::new(Vec::new()),
    };
    let mixed_i = Arc::new(
        ctx.load(&plain, "mixed-pool-i", scale.recall_pool, &alice)
            .await?,
    );
    let mixed_b = Arc::new(
        ctx.load(&plain, "mixed-pool-b", scale.recall_pool, &alice)
            .await?,
    );
    let mixed_f = match ctx.fair {
        Some(_) => Arc::new(
            ctx.load(&plain, "mixed-pool-f", scale.recall_pool, &alice)
                .await?,
        ),
        None => Arc::new(Vec::new()),
    };
    // The feed: every message of "feed" recalled once, so it holds feed_events events.
    let feed_ids = ctx.load(&plain, "feed", scale.feed_events, &alice).await?;
    {
        let pb = ctx.bar(feed_ids.len() as u64, "recall feed");
        let fc = conv("feed");
        futures::stream::iter(feed_ids.clone().into_iter().enumerate())
            .map(|(i, id)| {
                let store = plain.clone();
                let pb = pb.clone();
                let req = recall_request(&fc, id, &user(&alice[i % 2]), i as u64, "feed");
                async move {
                    store.transition(req).await?;
                    pb.inc(1);
                    R::Ok(())
                }
            })
            // One conversation: more in flight would only contend on its feed head.
            .buffer_unordered(2)
            .try_collect::<Vec<()>>()
            .await?;
        pb.finish_and_clear();
        ctx.raw.seed_feed("feed", scale.feed_events).await?;
    }
    let load_seconds = load_started.elapsed().as_secs_f64();
    phases.push(("load", load_seconds));
    let paths_started = Instant::now();

    let mut out = Vec::new();
    let viewer = user("carol");

    // ---- Point reads, every codec ----
    for (label, _) in codecs() {
        let ids = read_ids[label].clone();
        let c = conv(&format!("read-{label}"));
        let store = stores[label].clone();
        let (ids2, c2, v) = (ids.clone(), c.clone(), viewer.clone());
        let a = op(move |i| {
            let store = store.clone();
            let id = ids2[(mix(i) % ids2.len() as u64) as usize];
            let (c, v) = (c2.clone(), v.clone());
            async move {
                let view = store.get(&c, id, &v).await?;
                std::hint::black_box(view);
                Ok(())
            }
        });
        let raw = ctx.raw.clone();
        let (ids2, c2) = (ids.clone(), c.clone());
        let b = op(move |i| {
            let raw = raw.clone();
            let id = ids2[(mix(i) % ids2.len() as u64) as usize];
            let c = c2.clone();
            async move { raw.get(c.as_str(), id.as_i64()).await }
        });
        // The fair baseline stores content as given: it pairs with the codec off only.
        let f = ctx.fair.clone().filter(|_| label == "off").map(|fair| {
            Runner::new(op(move |i| {
                let fair = fair.clone();
                let id = ids[(mix(i) % ids.len() as u64) as usize];
                let c = c.clone();
                async move { fair.get(c.as_str(), id.as_i64(), "carol").await }
            }))
        });
        ctx.sides(
            "point_read",
            label,
            1,
            format!("{} messages", scale.read_pool),
            Runner::new(a),
            Runner::new(b),
            f,
            &mut out,
        )
        .await?;
    }

    // ---- Latest page of 50, small and big history ----
    for (path, c, n) in [
        ("latest_page_small", "hist-small", scale.small),
        ("latest_page_big", "hist-big", scale.big),
    ] {
        let cc = conv(c);
        let store = plain.clone();
        let v = viewer.clone();
        let c2 = cc.clone();
        let a = op(move |_| {
            let (store, c, v) = (store.clone(), c2.clone(), v.clone());
            async move {
                let page = store.list(&c, &v, ListOptions::newest(50)).await?;
                if page.items.len() != 50 {
                    return Err(format!("imstore page of {} items", page.items.len()).into());
                }
                Ok(())
            }
        });
        let raw = ctx.raw.clone();
        let c3 = cc.clone();
        let b = op(move |_| {
            let (raw, c) = (raw.clone(), c3.clone());
            async move {
                let n = raw.latest(c.as_str(), 50).await?;
                if n != 50 {
                    return Err(format!("baseline page of {n} rows").into());
                }
                Ok(())
            }
        });
        let f = ctx.fair.clone().map(|fair| {
            Runner::new(op(move |_| {
                let (fair, c) = (fair.clone(), cc.clone());
                async move {
                    let n = fair.latest(c.as_str(), 50, "carol").await?;
                    if n != 50 {
                        return Err(format!("fair page of {n} rows").into());
                    }
                    Ok(())
                }
            }))
        });
        let mut scale_s = format!("{n} messages in the conversation");
        if path == "latest_page_big"
            && let Some(note) = &scale.big_note
        {
            scale_s = format!("{scale_s} ({note})");
        }
        ctx.sides(
            path,
            "off",
            1,
            scale_s,
            Runner::new(a),
            Runner::new(b),
            f,
            &mut out,
        )
        .await?;
    }

    // ---- Recall ----
    {
        let cap =
            (scale.recall_pool.saturating_sub(timing.warmup_ops) / timing.rounds as u64).max(1);
        let (store, pool) = (plain.clone(), pool_i.clone());
        let ci = conv("recall-i");
        let a = op(move |i| {
            let store = store.clone();
            let id = pool.get(i as usize).copied();
            let by = user(if i % 2 == 0 { "alice" } else { "bob" });
            let ci = ci.clone();
            async move {
                let id = id.ok_or("recall pool exhausted")?;
                let o = store
                    .transition(recall_request(&ci, id, &by, i, "i"))
                    .await?;
                if !o.changed {
                    return Err("imstore recall did not change the message".into());
                }
                Ok(())
            }
        });
        let (raw, pool) = (ctx.raw.clone(), pool_b.clone());
        let b = op(move |i| {
            let raw = raw.clone();
            let id = pool.get(i as usize).copied();
            let by = if i % 2 == 0 { "alice" } else { "bob" };
            async move {
                let id = id.ok_or("recall pool exhausted")?;
                raw.recall("recall-b", id.as_i64(), by, crate::now_ms())
                    .await
            }
        });
        let f = ctx.fair.clone().map(|fair| {
            let pool = pool_f.clone();
            let window = bench_policy().recall_window().as_millis() as i64;
            Runner::capped(
                op(move |i| {
                    let fair = fair.clone();
                    let id = pool.get(i as usize).copied();
                    let by = if i % 2 == 0 { "alice" } else { "bob" };
                    async move {
                        let id = id.ok_or("recall pool exhausted")?;
                        let request = format!("f-recall-{i}-{}", id.get());
                        fair.recall("recall-f", id.as_i64(), by, &request, window)
                            .await
                    }
                }),
                cap,
            )
        });
        ctx.sides(
            "recall",
            "off",
            1,
            format!("{} messages recallable per side", scale.recall_pool),
            Runner::capped(a, cap),
            Runner::capped(b, cap),
            f,
            &mut out,
        )
        .await?;
    }

    // ---- Change feed page ----
    {
        let (span, fp) = (
            scale
                .feed_events
                .saturating_sub(scale.feed_page as u64)
                .max(1),
            scale.feed_page,
        );
        let store = plain.clone();
        let fc = conv("feed");
        let fv = viewer.clone();
        let a = op(move |i| {
            let (store, c, v) = (store.clone(), fc.clone(), fv.clone());
            async move {
                let p = store
                    .changes_since(&c, &v, FeedCursor::at(&c, mix(i) % span)?, fp)
                    .await?;
                if p.events.is_empty() {
                    return Err("imstore feed page empty".into());
                }
                Ok(())
            }
        });
        let raw = ctx.raw.clone();
        let b = op(move |i| {
            let raw = raw.clone();
            async move {
                if raw.feed("feed", mix(i) % span, fp).await? == 0 {
                    return Err("baseline feed page empty".into());
                }
                Ok(())
            }
        });
        let f = ctx.fair.clone().map(|fair| {
            Runner::new(op(move |i| {
                let fair = fair.clone();
                async move {
                    if fair.feed("feed", mix(i) % span, fp).await? == 0 {
                        return Err("fair feed page empty".into());
                    }
                    Ok(())
                }
            }))
        });
        ctx.sides(
            "feed_page",
            "off",
            1,
            format!(
                "page of {} events, {} events in the conversation's feed",
                scale.feed_page, scale.feed_events
            ),
            Runner::new(a),
            Runner::new(b),
            f,
            &mut out,
        )
        .await?;
    }

    // Writes last: on a server whose reads cost the collection's size (FerretDB v1), reads
    // are measured on the loaded data, not on it plus everything the send paths added.
    // ---- Single sends: every codec at concurrency 1, codec off at 64 ----
    for (conc, variants) in [
        (1usize, vec!["off", "zstd", "aes", "zstd+aes"]),
        (64, vec!["off"]),
    ] {
        for label in variants {
            let store = stores[label].clone();
            let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
            let a = op(move |i| {
                let store = store.clone();
                let m = NewMessage::text(
                    ids.next_id().expect("the clock is within the msg_id range"),
                    conv(&format!("send-i-{}", i % 256)),
                    user("alice"),
                    content.as_slice(),
                );
                async move {
                    store.insert(m).await?;
                    Ok(())
                }
            });
            let raw = ctx.raw.clone();
            let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
            let b = op(move |i| {
                let raw = raw.clone();
                let m = NewMessage::text(
                    ids.next_id().expect("the clock is within the msg_id range"),
                    conv(&format!("send-b-{}", i % 256)),
                    user("alice"),
                    content.as_slice(),
                );
                async move { raw.send(&m).await }
            });
            let f = ctx.fair.clone().filter(|_| label == "off").map(|fair| {
                let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
                writer(
                    op(move |i| {
                        let fair = fair.clone();
                        let m = NewMessage::text(
                            ids.next_id().expect("the clock is within the msg_id range"),
                            conv(&format!("send-f-{}", i % 256)),
                            user("alice"),
                            content.as_slice(),
                        );
                        async move { fair.send(&m).await }
                    }),
                    1,
                    &scale,
                )
            });
            ctx.sides(
                "send",
                label,
                conc,
                format!("{} B content, 256 conversations", scale.content_len),
                writer(a, 1, &scale),
                writer(b, 1, &scale),
                f,
                &mut out,
            )
            .await?;
        }
    }

    // ---- Batch sends of 1,000 ----
    {
        let batch = |side: &'static str, ids: MsgIdGenerator, content: Arc<Vec<u8>>, i: u64| {
            let c = conv(&format!("batch-{side}-{}", i % 16));
            (0..1000)
                .map(|_| {
                    NewMessage::text(
                        ids.next_id().expect("the clock is within the msg_id range"),
                        c.clone(),
                        user("alice"),
                        content.as_slice(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let store = plain.clone();
        let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
        let a = op(move |i| {
            let store = store.clone();
            let ms = batch("i", ids.clone(), content.clone(), i);
            async move {
                store.insert_batch(ms).await?;
                Ok(())
            }
        });
        let raw = ctx.raw.clone();
        let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
        let b = op(move |i| {
            let raw = raw.clone();
            let ms = batch("b", ids.clone(), content.clone(), i);
            async move { raw.send_batch(&ms).await }
        });
        let f = ctx.fair.clone().map(|fair| {
            let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
            writer(
                op(move |i| {
                    let fair = fair.clone();
                    let ms = batch("f", ids.clone(), content.clone(), i);
                    async move { fair.send_batch(&ms).await }
                }),
                1_000,
                &scale,
            )
        });
        ctx.sides(
            "batch_send_1000",
            "off",
            1,
            "1,000 messages per call".into(),
            writer(a, 1_000, &scale),
            writer(b, 1_000, &scale),
            f,
            &mut out,
        )
        .await?;
    }

    // ---- Mixed IM workload ----
    {
        let a = mixed_imstore(&ctx, plain.clone(), mixed_i.clone(), viewer.clone());
        let b = mixed_baseline(&ctx, mixed_b.clone());
        let f = ctx
            .fair
            .clone()
            .map(|fair| writer(mixed_fair(&ctx, fair, mixed_f.clone()), 1, &scale));
        ctx.sides(
            "mixed",
            "off",
            scale.mixed_concurrency,
            "60% send, 30% latest page (10k history), 5% recall, 5% restore".into(),
            writer(a, 1, &scale),
            writer(b, 1, &scale),
            f,
            &mut out,
        )
        .await?;
    }

    phases.push(("paths", paths_started.elapsed().as_secs_f64()));

    // ---- Writes of one recall at 2 and at N members ----
    let counting_started = Instant::now();
    let recall_writes = count_recall_writes(&ctx).await?;
    phases.push(("recall_writes", counting_started.elapsed().as_secs_f64()));

    Ok(BackendReport {
        backend: name.into(),
        namespace: target.namespace(),
        server: target.server_version(),
        scale,
        load_seconds,
        phases,
        paths: out,
        recall_writes,
        device_sync: None,
        contention: Vec::new(),
        purge: None,
    })
}

/// The contention paths: one busy conversation against the same load spread over many, both
/// sides imstore (`hot_group`, `recall_storm`) or both the raw driver (`hot_group_raw`,
/// `recall_storm_raw`); the ratio is busy ÷ spread.
async fn run_contention(
    target: Arc<dyn Target>,
    scale: &Scale,
    timing: Timing,
    quiet: bool,
) -> R<Vec<PathResult>> {
    const SENDERS: usize = 64;
    const RECALLERS: usize = 32;
    let ctx = Ctx {
        raw: target.raw(),
        fair: None,
        target: target.clone(),
        ids: MsgIdGenerator::new(9, Arc::new(SystemClock))?,
        content: Arc::new(chat_text(scale.content_len, 2)),
        scale: scale.clone(),
        timing,
        quiet,
    };
    let store = target.open(settings(ContentCodec::plain())).await?.store;
    let mut out = Vec::new();

    // ---- Hot group: 64 senders into one conversation, against 64 conversations ----
    let sender = |store: Arc<dyn MessageStore>, prefix: &'static str, spread: u64| {
        let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
        op(move |i| {
            let store = store.clone();
            let m = NewMessage::text(
                ids.next_id().expect("the clock is within the msg_id range"),
                conv(&format!("{prefix}-{}", i % spread)),
                user(if i % 2 == 0 { "alice" } else { "bob" }),
                content.as_slice(),
            );
            async move {
                store.insert(m).await?;
                Ok(())
            }
        })
    };
    ctx.pair(
        "hot_group",
        "off",
        SENDERS,
        format!(
            "imstore sends: {SENDERS} senders into 1 conversation ÷ the same into {SENDERS} conversations"
        ),
        writer(sender(store.clone(), "hot-one", 1), 1, scale),
        writer(sender(store.clone(), "hot-spread", SENDERS as u64), 1, scale),
        &mut out,
    )
    .await?;
    let raw_sender = |prefix: &'static str, spread: u64| {
        let (raw, ids, content) = (ctx.raw.clone(), ctx.ids.clone(), ctx.content.clone());
        op(move |i| {
            let raw = raw.clone();
            let m = NewMessage::text(
                ids.next_id().expect("the clock is within the msg_id range"),
                conv(&format!("{prefix}-{}", i % spread)),
                user("alice"),
                content.as_slice(),
            );
            async move { raw.send(&m).await }
        })
    };
    ctx.pair(
        "hot_group_raw",
        "off",
        SENDERS,
        format!(
            "raw driver's plain insert: {SENDERS} senders into 1 conversation ÷ the same into {SENDERS} conversations"
        ),
        writer(raw_sender("raw-hot-one", 1), 1, scale),
        writer(raw_sender("raw-hot-spread", SENDERS as u64), 1, scale),
        &mut out,
    )
    .await?;

    // ---- Recall storm: 32 recalls at once in one conversation, against 32 conversations ----
    // Separate pools per side (a message is recalled once); the loads alternate alice and bob,
    // so message j of a conversation is recalled by its own sender, j even by alice.
    let alice = vec!["alice".to_owned(), "bob".to_owned()];
    let per_round =
        |pool: u64| (pool.saturating_sub(timing.warmup_ops) / timing.rounds as u64).max(1);
    let pool = scale.recall_pool;
    let per_conv = pool / RECALLERS as u64 + 1;
    let mut pools = Vec::new();
    for prefix in ["storm", "raw-storm"] {
        let one = ctx
            .load(&store, &format!("{prefix}-one"), pool, &alice)
            .await?;
        let mut spread = Vec::new();
        for k in 0..RECALLERS {
            spread.push(
                ctx.load(&store, &format!("{prefix}-spread-{k}"), per_conv, &alice)
                    .await?,
            );
        }
        pools.push(Arc::new(StormPool {
            prefix,
            one,
            spread,
        }));
    }
    let imstore_recall = |pool: Arc<StormPool>, spread: bool| {
        let store = store.clone();
        op(move |i| {
            let store = store.clone();
            let target = pool.pick(i, spread);
            async move {
                let (c, id, by) = target.ok_or("recall storm pool exhausted")?;
                let o = store
                    .transition(recall_request(&conv(&c), id, &user(by), i, "storm"))
                    .await?;
                if !o.changed {
                    return Err("a storm recall did not change the message".into());
                }
                Ok(())
            }
        })
    };
    ctx.pair(
        "recall_storm",
        "off",
        RECALLERS,
        format!(
            "imstore recalls: {RECALLERS} at once in 1 conversation ÷ the same over {RECALLERS} conversations"
        ),
        Runner::capped(imstore_recall(pools[0].clone(), false), per_round(pool)),
        Runner::capped(imstore_recall(pools[0].clone(), true), per_round(pool)),
        &mut out,
    )
    .await?;
    let raw_recall = |pool: Arc<StormPool>, spread: bool| {
        let raw = ctx.raw.clone();
        op(move |i| {
            let raw = raw.clone();
            let target = pool.pick(i, spread);
            async move {
                let (c, id, by) = target.ok_or("recall storm pool exhausted")?;
                raw.recall(&c, id.as_i64(), by, crate::now_ms()).await
            }
        })
    };
    ctx.pair(
        "recall_storm_raw",
        "off",
        RECALLERS,
        format!(
            "raw driver's recall statement: {RECALLERS} at once in 1 conversation ÷ the same over {RECALLERS} conversations"
        ),
        Runner::capped(raw_recall(pools[1].clone(), false), per_round(pool)),
        Runner::capped(raw_recall(pools[1].clone(), true), per_round(pool)),
        &mut out,
    )
    .await?;
    Ok(out)
}

/// The messages a recall storm takes, in one conversation and spread over several.
struct StormPool {
    prefix: &'static str,
    one: Vec<MsgId>,
    spread: Vec<Vec<MsgId>>,
}

impl StormPool {
    /// Op `i`'s message: conversation, id, and its sender (the load alternates alice and bob).
    fn pick(&self, i: u64, spread: bool) -> Option<(String, MsgId, &'static str)> {
        let (c, j, ids) = if spread {
            let k = (i % self.spread.len() as u64) as usize;
            let j = (i / self.spread.len() as u64) as usize;
            (format!("{}-spread-{k}", self.prefix), j, &self.spread[k])
        } else {
            (format!("{}-one", self.prefix), i as usize, &self.one)
        };
        let id = *ids.get(j)?;
        Some((c, id, if j % 2 == 0 { "alice" } else { "bob" }))
    }
}

/// Shared by the mixed workload's sides: the next recallable message and the recalled ones.
struct MixState {
    pool: Arc<Vec<MsgId>>,
    next: AtomicUsize,
    recalled: Mutex<Vec<(MsgId, u64)>>,
}

impl MixState {
    fn take(&self) -> Option<(MsgId, u64)> {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        self.pool.get(k).map(|id| (*id, k as u64))
    }
}

enum Mix {
    Send,
    Page,
    Recall,
    Restore,
}

fn mix_kind(i: u64) -> Mix {
    match mix(i ^ 0x5eed) % 100 {
        0..60 => Mix::Send,
        60..90 => Mix::Page,
        90..95 => Mix::Recall,
        _ => Mix::Restore,
    }
}

fn mixed_imstore(
    ctx: &Ctx,
    store: Arc<dyn MessageStore>,
    pool: Arc<Vec<MsgId>>,
    viewer: UserId,
) -> OpFn {
    let st = Arc::new(MixState {
        pool,
        next: AtomicUsize::new(0),
        recalled: Mutex::new(Vec::new()),
    });
    let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
    let pc = conv("mixed-pool-i");
    let page_conv = conv("hist-small");
    op(move |i| {
        let (store, st, viewer, pc, page_conv) = (
            store.clone(),
            st.clone(),
            viewer.clone(),
            pc.clone(),
            page_conv.clone(),
        );
        let (ids, content) = (ids.clone(), content.clone());
        async move {
            let mut kind = mix_kind(i);
            let restore_target = match kind {
                Mix::Restore => st.recalled.lock().map_err(|_| "poisoned")?.pop(),
                _ => None,
            };
            if matches!(kind, Mix::Restore) && restore_target.is_none() {
                kind = Mix::Recall;
            }
            match kind {
                Mix::Send => {
                    let m = NewMessage::text(
                        ids.next_id().expect("the clock is within the msg_id range"),
                        conv(&format!("mixed-i-{}", i % 64)),
                        user("alice"),
                        content.as_slice(),
                    );
                    store.insert(m).await?;
                }
                Mix::Page => {
                    store
                        .list(&page_conv, &viewer, ListOptions::newest(50))
                        .await?;
                }
                Mix::Recall => {
                    if let Some((id, k)) = st.take() {
                        let by = user(if k % 2 == 0 { "alice" } else { "bob" });
                        store
                            .transition(recall_request(&pc, id, &by, i, "mix-i"))
                            .await?;
                        st.recalled.lock().map_err(|_| "poisoned")?.push((id, k));
                    } else {
                        store
                            .list(&page_conv, &viewer, ListOptions::newest(50))
                            .await?;
                    }
                }
                Mix::Restore => {
                    let (id, k) = restore_target.ok_or("no restore target")?;
                    let by = user(if k % 2 == 0 { "alice" } else { "bob" });
                    let req = TransitionRequest {
                        action: Action::Restore,
                        requester: by,
                        authority: Authority::Member,
                        conversation_id: pc.clone(),
                        msg_id: id,
                        client_ts: imstore_core::Clock::now(&SystemClock),
                        request_id: RequestId::new(format!("mix-i-restore-{i}"))?,
                    };
                    store.transition(req).await?;
                }
            }
            Ok(())
        }
    })
}

fn mixed_baseline(ctx: &Ctx, pool: Arc<Vec<MsgId>>) -> OpFn {
    let st = Arc::new(MixState {
        pool,
        next: AtomicUsize::new(0),
        recalled: Mutex::new(Vec::new()),
    });
    let raw = ctx.raw.clone();
    let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
    op(move |i| {
        let (raw, st) = (raw.clone(), st.clone());
        let (ids, content) = (ids.clone(), content.clone());
        async move {
            let mut kind = mix_kind(i);
            let restore_target = match kind {
                Mix::Restore => st.recalled.lock().map_err(|_| "poisoned")?.pop(),
                _ => None,
            };
            if matches!(kind, Mix::Restore) && restore_target.is_none() {
                kind = Mix::Recall;
            }
            match kind {
                Mix::Send => {
                    let m = NewMessage::text(
                        ids.next_id().expect("the clock is within the msg_id range"),
                        conv(&format!("mixed-b-{}", i % 64)),
                        user("alice"),
                        content.as_slice(),
                    );
                    raw.send(&m).await?;
                }
                Mix::Page => {
                    raw.latest("hist-small", 50).await?;
                }
                Mix::Recall => {
                    if let Some((id, k)) = st.take() {
                        let by = if k % 2 == 0 { "alice" } else { "bob" };
                        raw.recall("mixed-pool-b", id.as_i64(), by, crate::now_ms())
                            .await?;
                        st.recalled.lock().map_err(|_| "poisoned")?.push((id, k));
                    } else {
                        raw.latest("hist-small", 50).await?;
                    }
                }
                Mix::Restore => {
                    let (id, _) = restore_target.ok_or("no restore target")?;
                    raw.restore("mixed-pool-b", id.as_i64(), crate::now_ms())
                        .await?;
                }
            }
            Ok(())
        }
    })
}

/// The mixed workload on the fair baseline: its send, page, recall and restore, each with the
/// guarantees of imstore's (the same mix, pool and viewer as [`mixed_imstore`]).
fn mixed_fair(ctx: &Ctx, fair: Arc<dyn Fair>, pool: Arc<Vec<MsgId>>) -> OpFn {
    let st = Arc::new(MixState {
        pool,
        next: AtomicUsize::new(0),
        recalled: Mutex::new(Vec::new()),
    });
    let (ids, content) = (ctx.ids.clone(), ctx.content.clone());
    let policy = bench_policy();
    let recall_window = policy.recall_window().as_millis() as i64;
    let restore_window = policy.restore_window().as_millis() as i64;
    op(move |i| {
        let (fair, st) = (fair.clone(), st.clone());
        let (ids, content) = (ids.clone(), content.clone());
        async move {
            let mut kind = mix_kind(i);
            let restore_target = match kind {
                Mix::Restore => st.recalled.lock().map_err(|_| "poisoned")?.pop(),
                _ => None,
            };
            if matches!(kind, Mix::Restore) && restore_target.is_none() {
                kind = Mix::Recall;
            }
            match kind {
                Mix::Send => {
                    let m = NewMessage::text(
                        ids.next_id().expect("the clock is within the msg_id range"),
                        conv(&format!("mixed-f-{}", i % 64)),
                        user("alice"),
                        content.as_slice(),
                    );
                    fair.send(&m).await?;
                }
                Mix::Page => {
                    fair.latest("hist-small", 50, "carol").await?;
                }
                Mix::Recall => {
                    if let Some((id, k)) = st.take() {
                        let by = if k % 2 == 0 { "alice" } else { "bob" };
                        let request = format!("mix-f-{i}");
                        fair.recall("mixed-pool-f", id.as_i64(), by, &request, recall_window)
                            .await?;
                        st.recalled.lock().map_err(|_| "poisoned")?.push((id, k));
                    } else {
                        fair.latest("hist-small", 50, "carol").await?;
                    }
                }
                Mix::Restore => {
                    let (id, k) = restore_target.ok_or("no restore target")?;
                    let by = if k % 2 == 0 { "alice" } else { "bob" };
                    let request = format!("mix-f-restore-{i}");
                    fair.restore("mixed-pool-f", id.as_i64(), by, &request, restore_window)
                        .await?;
                }
            }
            Ok(())
        }
    })
}

/// Recalls `counted_recalls` messages in a conversation of 2 members and in one of
/// `members_big` members (each member sent one message of its history), on a store with
/// connections of its own, and reads the server's write counters around each.
async fn count_recall_writes(ctx: &Ctx) -> R<Value> {
    let k = ctx.scale.counted_recalls;
    // Nothing else may write while counting: close the shared connections first.
    ctx.target.quiesce().await?;
    let mut groups = Vec::new();
    for members in [2u64, ctx.scale.members_big] {
        let c = format!("members-{members}");
        let senders: Vec<String> = (0..members).map(|m| format!("member-{m}")).collect();
        // The history: every member has sent; at least k messages to recall.
        let n = members.max(k);
        let loader = ctx
            .target
            .open_isolated(settings(ContentCodec::plain()))
            .await?;
        let ids = ctx.load(&loader.store, &c, n, &senders).await?;
        if let Some(close) = loader.close {
            close.await;
        }
        let handle = ctx
            .target
            .open_isolated(settings(ContentCodec::plain()))
            .await?;
        let before = ctx.target.write_counters().await?;
        let cc = conv(&c);
        let mut lat = Vec::new();
        for j in 0..k as usize {
            // Spread the recalls over the history; each by the message's own sender.
            let idx = j * (n as usize / k as usize);
            let by = user(&senders[idx % senders.len()]);
            let t = Instant::now();
            let o = handle
                .store
                .transition(recall_request(&cc, ids[idx], &by, j as u64, &c))
                .await?;
            lat.push(t.elapsed().as_micros() as u64);
            if !o.changed {
                return Err(format!("recall in {c} did not change the message").into());
            }
        }
        if let Some(close) = handle.close {
            close.await;
        }
        drop(handle.store);
        let after = ctx.target.write_counters().await?;
        lat.sort_unstable();
        let per_table: Option<BTreeMap<String, f64>> = match (before, after) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .map(|(t, v)| {
                        (
                            t.clone(),
                            v.saturating_sub(*b.get(t).unwrap_or(&0)) as f64 / k as f64,
                        )
                    })
                    .filter(|(_, v)| *v > 0.0)
                    .collect(),
            ),
            _ => None,
        };
        let total = per_table.as_ref().map(|m| m.values().sum::<f64>());
        groups.push(json!({
            "members": members,
            "history_messages": n,
            "recalls": k,
            "writes_per_recall": total,
            "writes_per_recall_by_counter": per_table,
            "recall_p50_us": lat[lat.len() / 2],
        }));
    }
    let same = match (
        groups[0]["writes_per_recall"].as_f64(),
        groups[1]["writes_per_recall"].as_f64(),
    ) {
        (Some(a), Some(b)) => Value::Bool((a - b).abs() < 1e-9),
        _ => Value::Null,
    };
    if !ctx.quiet {
        eprintln!(
            "  {:>9} recall writes: 2 members {} / {} members {} ({})",
            ctx.target.name(),
            groups[0]["writes_per_recall"],
            ctx.scale.members_big,
            groups[1]["writes_per_recall"],
            ctx.target.write_method()
        );
    }
    Ok(json!({
        "method": ctx.target.write_method(),
        "groups": groups,
        "same_writes": same,
    }))
}
