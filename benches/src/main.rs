//! `imstore-bench`: what imstore costs on top of the raw driver, per backend and path.
//!
//! For every backend compiled in (features `postgres`, `mongodb`, `scylla`; `memory` always),
//! loads data into a fresh namespace, measures each path on imstore and on a raw-driver baseline
//! in alternating rounds, counts the writes of a recall at 2 and at 2,000 members, drops the
//! namespace, and writes a table, JSON and an SVG chart under `benches/results/`.
//!
//! ```text
//! cargo run --release -p imstore-bench -- [--quick] [--backends memory,postgres,mongodb,scylla]
//!     [--paths standard,device_sync] [--out DIR] [--rounds N] [--round-ms MS] [--big N]
//!     [--sync-conversations N] [--sync-changed N] [--quiet] [--drop-leftovers]
//!     [--parallel|--sequential]
//! ```
//! `--help` lists every option.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use serde_json::json;

use imstore_bench::harness::Timing;
use imstore_bench::suite::{self, BackendReport, Paths};
use imstore_bench::target::Scale;
use imstore_bench::{connect, drop_leftovers, report, select_backends};

/// The bench command's options.
#[derive(Parser, Debug)]
#[command(
    name = "imstore-bench",
    version,
    about = "What imstore costs on top of the raw driver, per backend and path",
    long_about = "For every selected backend: loads data into a fresh namespace, measures each \
path on imstore and on a raw-driver baseline in alternating rounds, counts the writes of a recall \
at 2 and at 2,000 members, measures a device syncing many conversations with one call against \
one call per conversation, drops the namespace, and writes a table, JSON and an SVG chart."
)]
struct Args {
    /// Small data and short rounds: every backend in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Run only these backends (default: every backend compiled in; each needs its server
    /// variable: IMSTORE_POSTGRES_URL, IMSTORE_MONGODB_URL, IMSTORE_SCYLLA_NODES).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    backends: Option<Vec<String>>,
    /// Which paths: `standard` (imstore vs raw driver, recall writes), `device_sync`,
    /// `contention` (hot group, recall storm), `purge` (a backlog's removal); any of them.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        value_name = "LIST",
        default_value = "standard,device_sync,contention,purge"
    )]
    paths: Vec<PathGroup>,
    /// Where results go.
    #[arg(long, value_name = "DIR", default_value_os_t = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results"))]
    out: PathBuf,
    /// Alternating rounds per pair (quick 2, full 6).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    rounds: Option<u32>,
    /// Time per side per round, in milliseconds (quick 150, full 1000).
    #[arg(long, value_name = "MS")]
    round_ms: Option<u64>,
    /// Messages in the big conversation (full 1,000,000, quick 100,000).
    #[arg(long, value_name = "N")]
    big: Option<u64>,
    /// Conversations the device follows in the device-sync path (default 500; FerretDB less).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    sync_conversations: Option<u64>,
    /// Of those, conversations that changed (default 20; FerretDB less).
    #[arg(long, value_name = "N")]
    sync_changed: Option<u64>,
    /// No progress bars or per-pair lines.
    #[arg(long)]
    quiet: bool,
    /// Drop the bench_* namespaces an interrupted run left on the selected servers, and exit.
    #[arg(long)]
    drop_leftovers: bool,
    /// Run the backends side by side (faster, noisy ratios).
    #[arg(long, conflicts_with = "sequential")]
    parallel: bool,
    /// Run the backends one after the other (the default).
    #[arg(long)]
    sequential: bool,
}

/// A group of paths `--paths` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PathGroup {
    /// Every imstore-vs-raw-driver pair, and the recall write counts.
    Standard,
    /// A device learning and pulling many conversations' changes.
    #[value(name = "device_sync", alias = "device-sync")]
    DeviceSync,
    /// One busy conversation against the same load spread: hot group, recall storm.
    Contention,
    /// The purge removing a backlog of expired messages, with sends and pages beside it.
    Purge,
}

/// The data sizes of `backend` in this mode.
fn scale(backend: &str, quick: bool, big: Option<u64>) -> Scale {
    let mut s = Scale {
        small: 10_000,
        big: 1_000_000,
        big_note: None,
        read_pool: if quick { 1_000 } else { 10_000 },
        recall_pool: if quick { 1_000 } else { 20_000 },
        feed_events: if quick { 300 } else { 2_000 },
        sync_conversations: 500,
        sync_changed: 20,
        counted_recalls: if quick { 20 } else { 100 },
        members_big: 2_000,
        content_len: 300,
        mixed_concurrency: 16,
        feed_page: 50,
        write_cap: None,
        purge_backlog: if quick { 2_000 } else { 100_000 },
    };
    if quick {
        s.big = 100_000;
        s.big_note = Some("quick mode: 100,000 instead of 1,000,000".into());
    }
    match backend {
        // FerretDB v1 over SQLite sorts in memory and writes slowly: smaller histories.
        // FerretDB v1 over SQLite: measured, a point read by the unique key took ~1 s with 10k
        // documents in the collection (and ~1.5 s with 30k), on the raw driver as on imstore:
        // every read costs the collection's size. Histories are kept tiny so a run ends.
        "mongodb" => {
            s.small = if quick { 300 } else { 2_000 };
            s.big = if quick { 1_500 } else { 10_000 };
            s.big_note = Some(format!(
                "FerretDB v1 over SQLite scans the collection on every read{}: {} instead of 1,000,000 (and {} instead of 10,000 for the small one)",
                if quick { ", quick mode" } else { "" },
                s.big,
                s.small
            ));
            s.read_pool = if quick { 50 } else { 300 };
            s.recall_pool = if quick { 40 } else { 300 };
            s.feed_events = if quick { 25 } else { 300 };
            s.feed_page = if quick { 20 } else { 50 };
            s.counted_recalls = if quick { 5 } else { 10 };
            s.mixed_concurrency = 2;
            s.purge_backlog = if quick { 100 } else { 1_000 };
            // Each changes_since scans the feed's collections: 500 of them one after another
            // would take minutes per operation.
            s.sync_conversations = if quick { 50 } else { 100 };
            s.sync_changed = if quick { 2 } else { 4 };
        }
        // Every imstore insert on Cassandra is a lightweight transaction (IF NOT EXISTS): about
        // 700/s on the 2 shared cores at 16 in flight, so loading bounds what a run can hold.
        "scylla" => {
            s.big = if quick { 30_000 } else { 1_000_000 };
            s.big_note = quick.then(|| {
                "quick mode: 30,000 instead of 1,000,000; histories written as imstore's rows with plain CQL (imstore's inserts are LWTs)".to_owned()
            });
            s.read_pool = if quick { 200 } else { 2_000 };
            s.recall_pool = if quick { 200 } else { 2_000 };
            s.feed_events = if quick { 100 } else { 500 };
            if !quick {
                s.big_note = Some("histories written as imstore's rows with plain CQL (imstore's inserts are LWTs)".into());
            }
        }
        // In process memory every written message stays: cap what a round may add.
        "memory" => s.write_cap = Some(20_000),
        _ => {}
    }
    if let Some(b) = big {
        s.big = b;
        s.big_note = (b != 1_000_000).then(|| format!("--big {b}"));
    }
    s
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args
        .sync_changed
        .is_some_and(|k| k > args.sync_conversations.unwrap_or(500))
    {
        eprintln!("error: --sync-changed cannot exceed --sync-conversations");
        return ExitCode::from(2);
    }
    let paths = Paths {
        standard: args.paths.contains(&PathGroup::Standard),
        device_sync: args.paths.contains(&PathGroup::DeviceSync),
        contention: args.paths.contains(&PathGroup::Contention),
        purge: args.paths.contains(&PathGroup::Purge),
    };
    // Which backends, and are their servers configured? Refuse loudly before doing anything.
    let selected = match select_backends(args.backends.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };

    if args.drop_leftovers {
        let mut code = ExitCode::SUCCESS;
        for b in &selected {
            match drop_leftovers(b).await {
                Ok(names) => eprintln!(
                    "{b}: dropped {} leftover namespace(s) {names:?}",
                    names.len()
                ),
                Err(e) => {
                    eprintln!("error: {b}: {e}");
                    code = ExitCode::from(1);
                }
            }
        }
        return code;
    }

    let mode = if args.quick { "quick" } else { "full" };
    // A run of some paths only is named after them, so it is never mistaken for a whole run.
    let stem_mode = if paths == Paths::ALL {
        mode.to_owned()
    } else {
        let mut parts = vec![mode];
        for (on, name) in [
            (paths.standard, "standard"),
            (paths.device_sync, "device-sync"),
            (paths.contention, "contention"),
            (paths.purge, "purge"),
        ] {
            if on {
                parts.push(name);
            }
        }
        parts.join("-")
    };
    let timing = Timing {
        rounds: args.rounds.unwrap_or(if args.quick { 2 } else { 6 }),
        per_round: Duration::from_millis(args.round_ms.unwrap_or(if args.quick {
            150
        } else {
            1_000
        })),
        warmup_ops: if args.quick { 1 } else { 30 },
    };
    let started = Instant::now();
    let (date, stamp) = report::now_utc();
    let mut reports: Vec<BackendReport> = Vec::new();
    let mut failures: Vec<(String, String)> = Vec::new();
    // `--parallel` runs the backends side by side (each on its own server) so that the slowest
    // one bounds the wall time. Measured on 2 shared cores it makes every ratio noise (0.1 to
    // 3.8 on the same path), so backends run one after the other unless asked.
    let parallel = args.parallel;
    let mut tasks = Vec::new();
    for b in selected.clone() {
        let mut scale = scale(&b, args.quick, args.big);
        if let Some(n) = args.sync_conversations {
            scale.sync_conversations = n;
        }
        if let Some(k) = args.sync_changed {
            scale.sync_changed = k;
        }
        scale.sync_changed = scale.sync_changed.min(scale.sync_conversations);
        let quiet = args.quiet;
        // A read on FerretDB v1 costs ~1 s per 10k documents in the collection (the raw driver's
        // as much as imstore's): 30 warm-up reads per side would take most of a full run.
        let timing = if b == "mongodb" {
            Timing {
                warmup_ops: timing.warmup_ops.min(3),
                ..timing
            }
        } else {
            timing
        };
        let task = async move {
            let t0 = Instant::now();
            let target = connect(&b).await.map_err(|e| e.to_string())?;
            let connect_seconds = t0.elapsed().as_secs_f64();
            let result = suite::run(target.clone(), scale, timing, quiet, paths).await;
            let dropping = Instant::now();
            if let Err(e) = target.drop_namespace().await {
                eprintln!("warning: {b}: could not drop {}: {e}", target.namespace());
            }
            let drop_seconds = dropping.elapsed().as_secs_f64();
            if !quiet {
                eprintln!("{b}: done in {:.1}s", t0.elapsed().as_secs_f64());
            }
            result.map_err(|e| e.to_string()).map(|mut r| {
                r.phases.insert(0, ("connect", connect_seconds));
                r.phases.push(("drop", drop_seconds));
                r.phases.push(("total", t0.elapsed().as_secs_f64()));
                r
            })
        };
        if parallel {
            tasks.push(tokio::spawn(task));
        } else {
            tasks.push(tokio::spawn(futures::future::ready(task.await)));
        }
    }
    for (b, t) in selected.iter().zip(tasks) {
        match t.await {
            Ok(Ok(r)) => reports.push(r),
            Ok(Err(e)) => {
                eprintln!("error: {b}: {e}");
                failures.push((b.clone(), e));
            }
            Err(e) => {
                eprintln!("error: {b}: panicked: {e}");
                failures.push((b.clone(), format!("panicked: {e}")));
            }
        }
    }

    let header = json!({
        "tool": "imstore-bench",
        "mode": mode,
        "paths": {"standard": paths.standard, "device_sync": paths.device_sync, "contention": paths.contention, "purge": paths.purge},
        "date": date,
        "git_commit": report::git_commit(),
        "machine": report::machine(),
        "timing": {
            "rounds": timing.rounds,
            "seconds_per_side_per_round": timing.per_round.as_secs_f64(),
            "warmup_ops": timing.warmup_ops,
            "alternating": true,
        },
        "wall_seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "backends_in_parallel": parallel,
        "note": if args.quick {
            Some(if parallel {
                "quick mode: big conversation scaled down (see each backend's scale), short rounds, backends run side by side on the shared cores; ratios hold (alternating rounds), absolute figures are indicative"
            } else {
                "quick mode: big conversation scaled down (see each backend's scale), short rounds; figures are indicative"
            })
        } else { None },
    });
    let doc = report::to_json(header.clone(), &reports, &failures);
    let txt = report::table(&doc, &reports, &failures);
    println!("{txt}");
    let svg = report::svg(&doc, &reports);
    match report::write_all(&args.out, &format!("{stem_mode}-{stamp}"), &doc, &txt, &svg) {
        Ok(files) => eprintln!("wrote {}", files.join(", ")),
        Err(e) => {
            eprintln!("error: cannot write results to {}: {e}", args.out.display());
            return ExitCode::from(1);
        }
    }
    eprintln!("wall time {:.1}s", started.elapsed().as_secs_f64());
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: {} backend(s) failed: {}",
            failures.len(),
            failures
                .iter()
                .map(|f| f.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        ExitCode::from(1)
    }
}
