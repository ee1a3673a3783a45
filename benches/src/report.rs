//! The outputs: a table for the terminal, JSON, and an SVG chart of imstore vs baseline.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::harness::R;
use crate::suite::{BackendReport, PathResult};

/// The goal: imstore at this fraction of the raw driver's throughput, codec off.
pub const OVERHEAD_GOAL: f64 = 0.95;
/// The goal: the latest page at the big history no slower than this multiple of the small one.
pub const PAGE_GROWTH_GOAL: f64 = 1.5;

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
        "page_growth": page,
        "recall_same_writes": r.recall_writes["same_writes"],
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
                },
                "paths": r.paths.iter().map(PathResult::to_json).collect::<Vec<_>>(),
                "recall_writes": r.recall_writes,
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
        let _ = writeln!(
            s,
            "{:<18} {:<9} {:>4} | {:>11} {:>8} {:>8} | {:>11} {:>8} {:>8} | {:>6} {:>7}",
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
            "ops"
        );
        for p in &r.paths {
            let _ = writeln!(
                s,
                "{:<18} {:<9} {:>4} | {:>11.0} {:>8} {:>8} | {:>11.0} {:>8} {:>8} | {:>6.3} {:>7}",
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
        let misses: Vec<String> = g["overhead_misses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        format!(
                            "{} c{} {}",
                            m["path"].as_str().unwrap_or("?"),
                            m["concurrency"],
                            m["ratio"]
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "goal imstore ≥ {OVERHEAD_GOAL} × raw (codec off): {}",
            if misses.is_empty() {
                "met on every path".to_owned()
            } else {
                format!("missed on {}", misses.join(", "))
            }
        );
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
    for (b, e) in failures {
        let _ = writeln!(s, "\n!! {b} FAILED: {e}");
    }
    s
}

/// A bar chart: per backend, per path, imstore vs baseline throughput (each row scaled to its
/// larger bar, with the figures and the ratio written next to the bars).
pub fn svg(header: &Value, reports: &[BackendReport]) -> String {
    let row_h = 30.0;
    let label_w = 300.0;
    let bar_w = 520.0;
    let width = label_w + bar_w + 200.0;
    let rows: usize = reports.iter().map(|r| r.paths.len() + 2).sum();
    let height = 70.0 + rows as f64 * row_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="10" y="22" font-size="15" font-weight="bold">imstore vs raw driver: throughput (ops/s), mode {}, {}, commit {}</text>"##,
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
        r##"<rect x="10" y="34" width="14" height="10" fill="#2f6fdf"/><text x="30" y="43">imstore</text><rect x="100" y="34" width="14" height="10" fill="#9a9a9a"/><text x="120" y="43">baseline (raw driver, minimal statement)</text><text x="420" y="43">bars scaled per row; ratio = imstore ÷ baseline</text>"##
    );
    let mut y = 60.0;
    for r in reports {
        y += row_h;
        let _ = writeln!(
            s,
            r##"<text x="10" y="{}" font-size="14" font-weight="bold">{}</text>"##,
            y - 8.0,
            esc(&r.backend)
        );
        for p in &r.paths {
            let (a, b) = (p.imstore.throughput(), p.baseline.throughput());
            let max = a.max(b).max(1e-9);
            let label = format!("{} · {} · c{}", p.path, p.codec, p.concurrency);
            let _ = writeln!(
                s,
                r##"<text x="20" y="{}">{}</text>"##,
                y + 14.0,
                esc(&label)
            );
            let (wa, wb) = (bar_w * a / max, bar_w * b / max);
            let color = if p.codec == "off" && p.ratio() < OVERHEAD_GOAL {
                "#d9534f"
            } else {
                "#2f6fdf"
            };
            let _ = writeln!(
                s,
                r##"<rect x="{label_w}" y="{}" width="{wa:.1}" height="11" fill="{color}"/><text x="{:.1}" y="{}" font-size="10">{:.0}</text>"##,
                y + 2.0,
                label_w + wa + 4.0,
                y + 11.0,
                a
            );
            let _ = writeln!(
                s,
                r##"<rect x="{label_w}" y="{}" width="{wb:.1}" height="11" fill="#9a9a9a"/><text x="{:.1}" y="{}" font-size="10">{:.0}</text>"##,
                y + 14.0,
                label_w + wb + 4.0,
                y + 23.0,
                b
            );
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" font-weight="bold">{:.2}</text>"##,
                label_w + bar_w + 110.0,
                y + 17.0,
                p.ratio()
            );
            y += row_h;
        }
        y += row_h / 2.0;
    }
    s.push_str("</svg>\n");
    s
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
