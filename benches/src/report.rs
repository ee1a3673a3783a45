//! The outputs: a table for the terminal, JSON, and an SVG chart of imstore vs baseline.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::harness::R;
use crate::suite::{BackendReport, PathResult};

/// The goal: imstore at this fraction of the raw driver's throughput, codec off.
pub const OVERHEAD_GOAL: f64 = 0.95;
/// The goal: imstore at this fraction of the fair baseline's throughput (the same guarantees
/// written by hand), codec off.
pub const FAIR_GOAL: f64 = 0.95;
/// The goal: the latest page at the big history no slower than this multiple of the small one.
pub const PAGE_GROWTH_GOAL: f64 = 1.5;
/// The goal: 64 senders into one conversation at this fraction of the same load spread.
pub const HOT_GROUP_GOAL: f64 = 0.8;
/// The goal: 32 recalls at once in one conversation at this fraction of the same storm spread.
pub const RECALL_STORM_GOAL: f64 = 0.5;

/// The contention goals, by path: the busy side at this fraction of the spread side.
fn contention_goal(path: &str) -> Option<f64> {
    match path {
        "hot_group" => Some(HOT_GROUP_GOAL),
        "recall_storm" => Some(RECALL_STORM_GOAL),
        _ => None,
    }
}

/// Machine facts for the JSON header.
pub fn machine() -> Value {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse::<u64>().ok());
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_owned()
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1).map(|v| v.trim().to_owned()))
    });
    json!({
        "cores": cores,
        "cpu": cpu,
        "memory_gib": mem_kib.map(|k| ((k as f64 / 1024.0 / 1024.0) * 10.0).round() / 10.0),
        "os": os,
        "kernel": kernel,
        "arch": std::env::consts::ARCH,
    })
}

/// The checked-out commit, with "-dirty" when the tree has uncommitted changes.
pub fn git_commit() -> Option<String> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = std::process::Command::new("git")
        .args(["-C", dir, "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;
    let dirty = std::process::Command::new("git")
        .args(["-C", dir, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// UTC now as (RFC 3339, compact file stamp).
pub fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    (
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
        format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z"),
    )
}

fn find<'a>(r: &'a BackendReport, path: &str, codec: &str) -> Option<&'a PathResult> {
    r.paths.iter().find(|p| p.path == path && p.codec == codec)
}

/// The design goals, checked against one backend's figures.
pub fn goals(r: &BackendReport) -> Value {
    let misses: Vec<Value> = r
        .paths
        .iter()
        .filter(|p| p.codec == "off" && p.ratio() < OVERHEAD_GOAL)
        .map(|p| {
            json!({"path": p.path, "concurrency": p.concurrency, "ratio": (p.ratio() * 1000.0).round() / 1000.0})
        })
        .collect();
    let fair_misses: Vec<Value> = r
        .paths
        .iter()
        .filter_map(|p| {
            let f = p.fair_ratio()?;
            (p.codec == "off" && f < FAIR_GOAL).then(|| {
                json!({"path": p.path, "concurrency": p.concurrency, "fair_ratio": (f * 1000.0).round() / 1000.0})
            })
        })
        .collect();
    let fair_paths = r.paths.iter().filter(|p| p.fair.is_some()).count();
    let page = match (
        find(r, "latest_page_small", "off"),
        find(r, "latest_page_big", "off"),
    ) {
        (Some(s), Some(b)) => {
            let p50 = b.imstore.quantile_us(0.5) as f64 / s.imstore.quantile_us(0.5).max(1) as f64;
            let tput = s.imstore.throughput() / b.imstore.throughput().max(1e-9);
            json!({
                "small_messages": r.scale.small,
                "big_messages": r.scale.big,
                "big_note": r.scale.big_note,
                "p50_big_over_small": (p50 * 100.0).round() / 100.0,
                "time_per_page_big_over_small": (tput * 100.0).round() / 100.0,
                "goal": PAGE_GROWTH_GOAL,
                "met": tput <= PAGE_GROWTH_GOAL,
            })
        }
        _ => Value::Null,
    };
    json!({
        "overhead_goal": OVERHEAD_GOAL,
        "overhead_met": misses.is_empty(),
        "overhead_misses": misses,
        "fair_goal": FAIR_GOAL,
        "fair_paths": fair_paths,
        "fair_met": (fair_paths > 0).then_some(fair_misses.is_empty()),
        "fair_misses": fair_misses,
        "page_growth": page,
        "recall_same_writes": r.recall_writes["same_writes"],
        "device_sync": r.device_sync.as_ref().map(|d| d["goal"].clone()),
        "contention": r.contention.iter().filter_map(|p| contention_goal(&p.path).map(|g| json!({
            "path": p.path,
            "busy_over_spread": (p.ratio() * 1000.0).round() / 1000.0,
            "goal": g,
            "met": p.ratio() >= g,
        }))).collect::<Vec<_>>(),
    })
}

/// The JSON document of a run.
pub fn to_json(header: Value, reports: &[BackendReport], failures: &[(String, String)]) -> Value {
    let backends: Vec<Value> = reports
        .iter()
        .map(|r| {
            json!({
                "backend": r.backend,
                "namespace": r.namespace,
                "server": r.server,
                "load_seconds": (r.load_seconds * 10.0).round() / 10.0,
                "phase_seconds": r.phases.iter().map(|(k, v)| (k.to_string(), json!((v * 10.0).round() / 10.0))).collect::<serde_json::Map<_, _>>(),
                "scale": {
                    "small_conversation_messages": r.scale.small,
                    "big_conversation_messages": r.scale.big,
                    "big_note": r.scale.big_note,
                    "point_read_messages_per_codec": r.scale.read_pool,
                    "recall_pool_per_side": r.scale.recall_pool,
                    "feed_events": r.scale.feed_events,
                    "content_bytes": r.scale.content_len,
                    "members_big": r.scale.members_big,
                    "write_cap_messages_per_side_per_round": r.scale.write_cap,
                    "sync_conversations": r.scale.sync_conversations,
                    "sync_changed": r.scale.sync_changed,
                },
                "paths": r.paths.iter().map(PathResult::to_json).collect::<Vec<_>>(),
                "recall_writes": r.recall_writes,
                "device_sync": r.device_sync,
                "contention": r.contention.iter().map(PathResult::to_json).collect::<Vec<_>>(),
                "purge": r.purge,
                "goals": goals(r),
            })
        })
        .collect();
    let mut doc = header;
    doc["backends"] = Value::Array(backends);
    doc["failures"] = failures
        .iter()
        .map(|(b, e)| json!({"backend": b, "error": e}))
        .collect();
    doc
}

/// The table printed on the terminal (and saved as .txt).
pub fn table(header: &Value, reports: &[BackendReport], failures: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "imstore bench, mode {}, {} · commit {} · {} cores, {} GiB, {}",
        header["mode"].as_str().unwrap_or("?"),
        header["date"].as_str().unwrap_or("?"),
        header["git_commit"].as_str().unwrap_or("?"),
        header["machine"]["cores"],
        header["machine"]["memory_gib"],
        header["machine"]["os"].as_str().unwrap_or("?"),
    );
    if let Some(n) = header["note"].as_str() {
        let _ = writeln!(s, "{n}");
    }
    let _ = writeln!(
        s,
        "throughput in ops/s, latency in µs; ratio = imstore ops/s ÷ baseline ops/s (same run, alternating rounds)"
    );
    for r in reports {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "== {} ({}){}",
            r.backend,
            r.namespace,
            r.server
                .as_deref()
                .map(|v| format!(" · {}", v.chars().take(60).collect::<String>()))
                .unwrap_or_default()
        );
        if let Some(d) = &r.device_sync {
            device_sync_lines(&mut s, d);
        }
        if !r.contention.is_empty() {
            contention_lines(&mut s, r);
        }
        if let Some(p) = &r.purge {
            let side = |v: &Value| {
                format!(
                    "{} ops/s, p50 {} µs, p99 {} µs",
                    v["ops_per_s"], v["p50_us"], v["p99_us"]
                )
            };
            let _ = writeln!(
                s,
                "purge: backlog {} in {} conversations: {} removed in {} s = {} msg/s ({} calls of {}, p99 {} µs{}) · sends+pages alone {} · beside the purge {}",
                p["backlog_messages"],
                p["conversations"],
                p["removed"],
                p["purge_seconds"],
                p["removed_per_s"],
                p["calls"],
                p["batch_size"],
                p["call_p99_us"],
                if p["drained"] == true {
                    ", backlog drained"
                } else {
                    ""
                },
                side(&p["sends_and_pages_alone"]),
                side(&p["sends_and_pages_beside_the_purge"]),
            );
        }
        if !r.paths.is_empty() {
            standard_lines(&mut s, r);
        } else {
            let _ = writeln!(
                s,
                "wall time {}",
                r.phases
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.1}s"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for (b, e) in failures {
        let _ = writeln!(s, "\n!! {b} FAILED: {e}");
    }
    s
}

/// The contention pairs of one backend: the busy side (one conversation) and the spread side.
fn contention_lines(s: &mut String, r: &BackendReport) {
    let _ = writeln!(
        s,
        "{:<18} {:>4} | {:>11} {:>8} {:>8} | {:>11} {:>8} {:>8} | {:>6}  goal",
        "contention", "conc", "busy/s", "p50", "p99", "spread/s", "p50", "p99", "ratio"
    );
    for p in &r.contention {
        let goal = match contention_goal(&p.path) {
            Some(g) if p.ratio() >= g => format!("≥ {g}: met"),
            Some(g) => format!("≥ {g}: missed"),
            None => "(the raw driver's own figure)".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<18} {:>4} | {:>11.0} {:>8} {:>8} | {:>11.0} {:>8} {:>8} | {:>6.3}  {goal}",
            p.path,
            p.concurrency,
            p.imstore.throughput(),
            p.imstore.quantile_us(0.5),
            p.imstore.quantile_us(0.99),
            p.baseline.throughput(),
            p.baseline.quantile_us(0.5),
            p.baseline.quantile_us(0.99),
            p.ratio(),
        );
    }
}

/// A goal's verdict from its list of misses (`path`, `concurrency` and the `field` ratio each):
/// `met` when there are none.
fn verdict(misses: &Value, field: &str, met: &str) -> String {
    let misses: Vec<String> = misses
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    format!(
                        "{} c{} {}",
                        m["path"].as_str().unwrap_or("?"),
                        m["concurrency"],
                        m[field]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if misses.is_empty() {
        met.to_owned()
    } else {
        format!("missed on {}", misses.join(", "))
    }
}

/// The standard pairs' rows and the goal lines of one backend.
fn standard_lines(s: &mut String, r: &BackendReport) {
    let _ = writeln!(
        s,
        "{:<18} {:<9} {:>4} | {:>11} {:>8} {:>8} | {:>11} {:>8} {:>8} | {:>6} | {:>11} {:>8} {:>6} | {:>7}",
        "path",
        "codec",
        "conc",
        "imstore/s",
        "p50",
        "p99",
        "baseline/s",
        "p50",
        "p99",
        "ratio",
        "fair/s",
        "p50",
        "fair",
        "ops"
    );
    for p in &r.paths {
        let (fair_s, fair_p50, fair_ratio) = match (&p.fair, p.fair_ratio()) {
            (Some(f), Some(x)) => (
                format!("{:.0}", f.throughput()),
                f.quantile_us(0.5).to_string(),
                format!("{x:.3}"),
            ),
            _ => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<18} {:<9} {:>4} | {:>11.0} {:>8} {:>8} | {:>11.0} {:>8} {:>8} | {:>6.3} | {fair_s:>11} {fair_p50:>8} {fair_ratio:>6} | {:>7}",
            p.path,
            p.codec,
            p.concurrency,
            p.imstore.throughput(),
            p.imstore.quantile_us(0.5),
            p.imstore.quantile_us(0.99),
            p.baseline.throughput(),
            p.baseline.quantile_us(0.5),
            p.baseline.quantile_us(0.99),
            p.ratio(),
            p.imstore.ops,
        );
    }
    let g = goals(r);
    let _ = writeln!(
        s,
        "scale: small {} msgs, big {} msgs{}; wall time {}",
        r.scale.small,
        r.scale.big,
        r.scale
            .big_note
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        r.phases
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "goal imstore ≥ {OVERHEAD_GOAL} × raw (codec off): {}",
        verdict(&g["overhead_misses"], "ratio", "met on every path")
    );
    if g["fair_paths"].as_u64().unwrap_or(0) > 0 {
        let _ = writeln!(
            s,
            "goal imstore ≥ {FAIR_GOAL} × fair baseline (same guarantees by hand, codec off): {}",
            verdict(
                &g["fair_misses"],
                "fair_ratio",
                "met on every path with a fair baseline"
            )
        );
    } else {
        let _ = writeln!(s, "fair baseline: none written for this backend");
    }
    let pg = &g["page_growth"];
    let _ = writeln!(
        s,
        "goal latest page at {} ≤ {PAGE_GROWTH_GOAL} × at {}: time per page ×{} (p50 ×{}) → {}",
        r.scale.big,
        r.scale.small,
        pg["time_per_page_big_over_small"],
        pg["p50_big_over_small"],
        if pg["met"].as_bool() == Some(true) {
            "met"
        } else {
            "missed"
        }
    );
    let rw = &r.recall_writes;
    let groups = rw["groups"].as_array().cloned().unwrap_or_default();
    let show = |g: &Value| {
        format!(
            "{} members: {} writes/recall {}",
            g["members"], g["writes_per_recall"], g["writes_per_recall_by_counter"]
        )
    };
    let _ = writeln!(
        s,
        "goal same writes per recall at 2 and {} members: {} · {} · method: {}",
        r.scale.members_big,
        match rw["same_writes"].as_bool() {
            Some(true) => "met",
            Some(false) => "missed",
            None => "not measurable",
        },
        groups.iter().map(show).collect::<Vec<_>>().join(" · "),
        rw["method"].as_str().unwrap_or("?")
    );
}

/// The device-sync path's lines of one backend.
fn device_sync_lines(s: &mut String, d: &Value) {
    let _ = writeln!(
        s,
        "device sync: {} conversations, {} changed ({} events each); round trips by {}",
        d["conversations"],
        d["changed"],
        d["events_per_changed"],
        d["round_trip_method"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        s,
        "{:<34} | {:>6} {:>7} {:>9} {:>9} | {:>6} {:>7} {:>9} {:>9} | {:>8}",
        "", "calls", "trips", "p50 µs", "p99 µs", "calls", "trips", "p50 µs", "p99 µs", "×faster"
    );
    for (k, what) in [
        ("learn", "learn: 1 call | single calls"),
        ("sync", "sync: 1 call + pulls | single"),
    ] {
        let (a, b) = (&d[k]["one_call"], &d[k]["single_calls"]);
        // serde_json's Display ignores widths: format the figures as strings first.
        let t = |v: &Value| {
            v["round_trips"]
                .as_u64()
                .map_or("-".to_owned(), |n| n.to_string())
        };
        let f = |v: &Value| v.to_string();
        let _ = writeln!(
            s,
            "{:<34} | {:>6} {:>7} {:>9} {:>9} | {:>6} {:>7} {:>9} {:>9} | {:>8}",
            what,
            f(&a["calls"]),
            t(a),
            f(&a["p50_us"]),
            f(&a["p99_us"]),
            f(&b["calls"]),
            t(b),
            f(&b["p50_us"]),
            f(&b["p99_us"]),
            f(&d[k]["speedup_p50"])
        );
    }
    let g = &d["goal"];
    let _ = writeln!(
        s,
        "goal learn with one call ≥ {} faster than single calls (p50): {}",
        g["required_speedup"]
            .as_f64()
            .map_or("(none set for this backend)".to_owned(), |v| format!(
                "{v}×"
            )),
        match g["met"].as_bool() {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "no goal",
        }
    );
}

/// Colours of the chart, each named in its legend.
const MET: &str = "#2f6fdf";
const MISSED: &str = "#d9534f";
const CODEC: &str = "#9ec1f0";
const SYNC: &str = "#2a9d8f";

/// The chart: (1) per backend and path, imstore's throughput over the raw driver's on one shared
/// axis with the goal line; (2) when the device-sync path ran, how many times faster one call
/// is than one call per conversation, on a log axis with each backend's goal. Every colour is
/// in the legend, every bar carries its figure.
pub fn svg(header: &Value, reports: &[BackendReport]) -> String {
    let (left, plot_w, row_h) = (300.0, 560.0, 20.0);
    let width = left + plot_w + 460.0;
    let mut body = String::new();
    let mut y = 70.0;

    // ---- Panel 1: ratio imstore ÷ raw driver ----
    let ratio_rows: usize = reports
        .iter()
        .filter(|r| !r.paths.is_empty())
        .map(|r| r.paths.len() + 1)
        .sum();
    if ratio_rows > 0 {
        let max_ratio = reports
            .iter()
            .flat_map(|r| r.paths.iter().map(PathResult::ratio))
            .fold(1.2_f64, f64::max);
        let axis_max = (max_ratio * 4.0).ceil() / 4.0;
        let x = |v: f64| left + plot_w * (v / axis_max).clamp(0.0, 1.0);
        let _ = writeln!(
            body,
            r##"<text x="10" y="{y}" font-size="14" font-weight="bold">imstore throughput ÷ raw driver throughput (same run, alternating rounds; higher is better, 1 = as fast as the driver)</text>"##
        );
        y += 18.0;
        let legend = [
            (MET, "codec off, at or above the goal"),
            (MISSED, "codec off, below the goal"),
            (
                CODEC,
                "with a codec (compression / encryption: the goal does not apply)",
            ),
        ];
        let mut lx = 10.0;
        for (c, t) in legend {
            let _ = writeln!(
                body,
                r##"<rect x="{lx}" y="{}" width="14" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"##,
                y - 9.0,
                lx + 18.0,
                y,
                esc(t)
            );
            lx += 30.0 + 6.8 * t.chars().count() as f64;
        }
        let _ = writeln!(
            body,
            r##"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="black" stroke-width="2" stroke-dasharray="5,3"/><text x="{}" y="{y}">goal {OVERHEAD_GOAL}</text>"##,
            y - 4.0,
            lx + 22.0,
            y - 4.0,
            lx + 26.0
        );
        y += 14.0;
        let top = y;
        let bottom = top + ratio_rows as f64 * row_h + 6.0;
        axis(&mut body, top, bottom, axis_max, &x, false);
        y = top + 4.0;
        for r in reports.iter().filter(|r| !r.paths.is_empty()) {
            let _ = writeln!(
                body,
                r##"<text x="10" y="{}" font-weight="bold">{}</text>"##,
                y + 14.0,
                esc(&r.backend)
            );
            y += row_h;
            for p in &r.paths {
                let ratio = p.ratio();
                let color = if p.codec != "off" {
                    CODEC
                } else if ratio < OVERHEAD_GOAL {
                    MISSED
                } else {
                    MET
                };
                let label = format!("{} · {} · c{}", p.path, p.codec, p.concurrency);
                let _ = writeln!(
                    body,
                    r##"<text x="24" y="{}">{}</text><rect x="{left}" y="{}" width="{:.1}" height="13" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">{:.2}  ({:.0} vs {:.0} ops/s)</text>"##,
                    y + 13.0,
                    esc(&label),
                    y + 3.0,
                    x(ratio) - left,
                    x(ratio).max(left) + 4.0,
                    y + 13.0,
                    ratio,
                    p.imstore.throughput(),
                    p.baseline.throughput()
                );
                y += row_h;
            }
        }
        let gx = x(OVERHEAD_GOAL);
        let _ = writeln!(
            body,
            r##"<line x1="{gx:.1}" y1="{top}" x2="{gx:.1}" y2="{bottom}" stroke="black" stroke-width="2" stroke-dasharray="5,3"/>"##
        );
        y = bottom + 40.0;
    }

    // ---- Panel 2: device sync speedups ----
    let synced: Vec<(&BackendReport, &Value)> = reports
        .iter()
        .filter_map(|r| r.device_sync.as_ref().map(|d| (r, d)))
        .collect();
    if !synced.is_empty() {
        let max = synced
            .iter()
            .flat_map(|(_, d)| {
                ["learn", "sync"]
                    .into_iter()
                    .map(|k| d[k]["speedup_p50"].as_f64().unwrap_or(1.0))
            })
            .fold(100.0_f64, f64::max);
        let decades = max.log10().ceil().max(1.0);
        let axis_max = 10f64.powf(decades);
        let x = |v: f64| left + plot_w * (v.max(1.0).log10() / decades).clamp(0.0, 1.0);
        let d0 = &synced[0].1;
        let _ = writeln!(
            body,
            r##"<text x="10" y="{y}" font-size="14" font-weight="bold">device sync, {} conversations of which {} changed: one changed_conversations call vs one changes_since per conversation</text>"##,
            d0["conversations"], d0["changed"]
        );
        y += 16.0;
        let _ = writeln!(
            body,
            r##"<text x="10" y="{y}">times faster (p50 of the single calls ÷ p50 of the one call; log axis; higher is better). FerretDB and quick runs may use fewer conversations: see the JSON.</text>"##
        );
        y += 18.0;
        let legend = [
            (MET, "learn which changed: goal met, or no goal set"),
            (MISSED, "learn which changed: goal missed"),
            (SYNC, "full sync: learn + pull the changed (no goal)"),
        ];
        let mut lx = 10.0;
        for (c, t) in legend {
            let _ = writeln!(
                body,
                r##"<rect x="{lx}" y="{}" width="14" height="10" fill="{c}"/><text x="{}" y="{}">{}</text>"##,
                y - 9.0,
                lx + 18.0,
                y,
                esc(t)
            );
            lx += 30.0 + 6.8 * t.chars().count() as f64;
        }
        // The goal mark on a line of its own: the legend above fills the width.
        let _ = lx;
        y += 16.0;
        let _ = writeln!(
            body,
            r##"<line x1="14" y1="{}" x2="14" y2="{}" stroke="black" stroke-width="2" stroke-dasharray="3,2"/><text x="28" y="{y}">goal of the backend, on its learn bar (PostgreSQL 20×, Cassandra 5×; none for memory and MongoDB)</text>"##,
            y - 11.0,
            y + 2.0
        );
        y += 14.0;
        let top = y;
        let bottom = top + synced.len() as f64 * (3.0 * row_h) + 6.0;
        axis(&mut body, top, bottom, axis_max, &x, true);
        y = top + 4.0;
        for (r, d) in synced {
            let _ = writeln!(
                body,
                r##"<text x="10" y="{}" font-weight="bold">{}</text>"##,
                y + 24.0,
                esc(&r.backend)
            );
            let goal = d["goal"]["required_speedup"].as_f64();
            let met = d["goal"]["met"].as_bool();
            for (k, label) in [("learn", "learn"), ("sync", "full sync")] {
                let v = d[k]["speedup_p50"].as_f64().unwrap_or(0.0);
                let color = match (k, met) {
                    ("sync", _) => SYNC,
                    (_, Some(false)) => MISSED,
                    _ => MET,
                };
                let one = &d[k]["one_call"];
                let single = &d[k]["single_calls"];
                let trips = |s: &Value| {
                    s["round_trips"]
                        .as_u64()
                        .map_or("in process".to_owned(), |t| format!("{t} round trips"))
                };
                let _ = writeln!(
                    body,
                    r##"<text x="120" y="{}">{label}</text><rect x="{left}" y="{}" width="{:.1}" height="13" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">×{v}  ({} µs, {} calls, {} vs {} µs, {} calls, {})</text>"##,
                    y + 13.0,
                    y + 3.0,
                    x(v) - left,
                    x(v) + 4.0,
                    y + 13.0,
                    one["p50_us"],
                    one["calls"],
                    trips(one),
                    single["p50_us"],
                    single["calls"],
                    trips(single)
                );
                y += row_h;
            }
            if let Some(g) = goal {
                let gx = x(g);
                let _ = writeln!(
                    body,
                    r##"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{}" stroke="black" stroke-width="2" stroke-dasharray="3,2"/><text x="{:.1}" y="{}" font-size="10">goal {g}×</text>"##,
                    y - 2.0 * row_h,
                    y - row_h + 2.0,
                    gx + 3.0,
                    y - 2.0 * row_h - 1.0
                );
            }
            y += row_h;
        }
        y = bottom + 20.0;
    }

    let height = y + 10.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="24" font-size="16" font-weight="bold">imstore bench, mode {}, {}, commit {}</text>"##,
        esc(header["mode"].as_str().unwrap_or("?")),
        esc(header["date"].as_str().unwrap_or("?")),
        esc(&header["git_commit"]
            .as_str()
            .unwrap_or("?")
            .chars()
            .take(12)
            .collect::<String>()),
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="44" font-size="11">{} cores, {} GiB · figures on every bar · the table and JSON beside this file hold the latencies</text>"##,
        header["machine"]["cores"], header["machine"]["memory_gib"]
    );
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}

/// An x axis over `top..bottom` with grid lines and tick labels above and below: linear from 0
/// to `max` in quarters, or (`log`) the decades and their 2 and 5 up to `max`.
fn axis(body: &mut String, top: f64, bottom: f64, max: f64, x: &dyn Fn(f64) -> f64, log: bool) {
    let ticks: Vec<f64> = if log {
        let mut t = Vec::new();
        let mut d = 1.0;
        while d <= max * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                if d * m <= max * 1.0001 {
                    t.push(d * m);
                }
            }
            d *= 10.0;
        }
        t
    } else {
        (0..=((max / 0.25).round() as usize))
            .map(|i| i as f64 * 0.25)
            .collect()
    };
    let _ = writeln!(
        body,
        r##"<line x1="{:.1}" y1="{bottom}" x2="{:.1}" y2="{bottom}" stroke="#444"/><line x1="{:.1}" y1="{top}" x2="{:.1}" y2="{bottom}" stroke="#444"/>"##,
        x(if log { 1.0 } else { 0.0 }),
        x(max),
        x(if log { 1.0 } else { 0.0 }),
        x(if log { 1.0 } else { 0.0 }),
    );
    for t in ticks {
        let tx = x(t);
        let label = if log {
            format!("{t}×")
        } else {
            format!("{t:.2}")
        };
        let _ = writeln!(
            body,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{bottom}" stroke="#ddd"/><line x1="{tx:.1}" y1="{bottom}" x2="{tx:.1}" y2="{}" stroke="#444"/><text x="{tx:.1}" y="{}" font-size="10" text-anchor="middle">{label}</text>"##,
            bottom + 4.0,
            bottom + 15.0
        );
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `<dir>/<stem>.{json,txt,svg}` and `<dir>/latest.{json,txt,svg}`.
pub fn write_all(dir: &Path, stem: &str, json: &Value, txt: &str, svg: &str) -> R<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let body = serde_json::to_string_pretty(json)? + "\n";
    for name in [stem, "latest"] {
        for (ext, content) in [("json", body.as_str()), ("txt", txt), ("svg", svg)] {
            let p = dir.join(format!("{name}.{ext}"));
            std::fs::write(&p, content)?;
            written.push(p.display().to_string());
        }
    }
    Ok(written)
}
