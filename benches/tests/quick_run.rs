//! The bench command end to end against the real servers: a shortened `--quick` run of every
//! backend compiled in writes the table, the JSON and the chart, and the JSON holds, per backend
//! and path, imstore's and the baseline's throughput, p50 and p99, and their ratio.
//!
//! Needs the servers of `scripts/servers.sh` (`source .servers/env`); a compiled-in backend whose
//! server variable is unset makes the bench refuse to start, and this test fail.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// Every (path, codec, concurrency) the bench reports for each backend.
const PATHS: &[(&str, &str)] = &[
    ("point_read", "off"),
    ("point_read", "zstd"),
    ("point_read", "aes"),
    ("point_read", "zstd+aes"),
    ("latest_page_small", "off"),
    ("latest_page_big", "off"),
    ("recall", "off"),
    ("feed_page", "off"),
    ("send", "off"),
    ("send", "zstd"),
    ("send", "aes"),
    ("send", "zstd+aes"),
    ("batch_send_1000", "off"),
    ("mixed", "off"),
];

fn out_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("imstore-bench-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn side_is_measured(side: &Value, what: &str) {
    let ops_per_s = side["ops_per_s"].as_f64().unwrap_or(0.0);
    let p50 = side["p50_us"].as_u64().unwrap_or(0);
    let p99 = side["p99_us"].as_u64().unwrap_or(0);
    assert!(ops_per_s > 0.0, "{what}: no throughput in {side}");
    assert!(
        side["ops"].as_u64().unwrap_or(0) > 0,
        "{what}: no ops in {side}"
    );
    assert!(p50 > 0 && p99 >= p50, "{what}: percentiles {p50} / {p99}");
}

#[test]
fn quick_run_writes_table_json_and_chart_for_every_backend() {
    let out = out_dir();
    let run = Command::new(env!("CARGO_BIN_EXE_imstore-bench"))
        .args(["--quick", "--quiet", "--rounds", "1", "--round-ms", "30"])
        .args(["--big", "2000", "--out"])
        .arg(&out)
        .output()
        .expect("the bench command starts");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench failed: {stderr}");

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("latest.json")).expect("latest.json written"),
    )
    .expect("latest.json is JSON");
    let table = std::fs::read_to_string(out.join("latest.txt")).expect("latest.txt written");
    let chart = std::fs::read_to_string(out.join("latest.svg")).expect("latest.svg written");
    assert!(chart.trim_start().starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    let stamped: Vec<_> = std::fs::read_dir(&out)
        .expect("out dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("quick-"))
        .collect();
    assert_eq!(
        stamped.len(),
        3,
        "quick-<stamp>.{{json,txt,svg}}: {stamped:?}"
    );

    assert_eq!(json["mode"], "quick");
    assert_eq!(json["failures"].as_array().map(Vec::len), Some(0));
    let compiled: Vec<&str> = imstore_bench::KNOWN
        .iter()
        .filter(|k| k.2)
        .map(|k| k.0)
        .collect();
    let backends = json["backends"].as_array().expect("backends");
    assert_eq!(
        backends
            .iter()
            .map(|b| b["backend"].as_str().unwrap_or("?"))
            .collect::<Vec<_>>(),
        compiled
    );
    for b in backends {
        let name = b["backend"].as_str().unwrap_or("?");
        assert!(table.contains(&format!("== {name} ")), "table lacks {name}");
        let paths = b["paths"].as_array().expect("paths");
        for (path, codec) in PATHS {
            let p = paths
                .iter()
                .find(|p| p["path"] == *path && p["codec"] == *codec)
                .unwrap_or_else(|| panic!("{name}: no {path} ({codec})"));
            let what = format!("{name} {path} {codec}");
            side_is_measured(&p["imstore"], &format!("{what} imstore"));
            side_is_measured(&p["baseline"], &format!("{what} baseline"));
            let expect = p["imstore"]["ops_per_s"].as_f64().unwrap()
                / p["baseline"]["ops_per_s"].as_f64().unwrap();
            let ratio = p["ratio"].as_f64().expect("ratio");
            assert!(
                (ratio - expect).abs() <= 0.01 * expect.max(1.0),
                "{what}: ratio {ratio}, throughputs give {expect}"
            );
            // Every backend has a fair baseline on every path with the
            // codec off: measured, its ratio what the throughputs give; on a server its round
            // trips stated (the mixed path's are its jobs', none of its own).
            let fair_expected = *codec == "off";
            if fair_expected {
                side_is_measured(&p["fair"], &format!("{what} fair"));
                let expect = p["imstore"]["ops_per_s"].as_f64().unwrap()
                    / p["fair"]["ops_per_s"].as_f64().unwrap();
                let fair = p["fair_ratio"].as_f64().expect("fair_ratio");
                assert!(
                    (fair - expect).abs() <= 0.01 * expect.max(1.0),
                    "{what}: fair_ratio {fair}, throughputs give {expect}"
                );
                if name == "memory" || *path == "mixed" {
                    assert_eq!(p["round_trips"]["fair"], Value::Null, "{what}: round trips");
                } else {
                    assert!(
                        p["round_trips"]["fair"].as_u64().is_some_and(|n| n >= 1),
                        "{what}: the fair side's round trips are not stated"
                    );
                }
            } else {
                assert_eq!(p["fair"], Value::Null, "{what}: a fair side nobody wrote");
                assert_eq!(p["fair_ratio"], Value::Null, "{what}");
            }
        }
        assert!(
            paths
                .iter()
                .any(|p| p["path"] == "send" && p["concurrency"] == 64),
            "{name}: no send at concurrency 64"
        );
        // The recall write count: on a server, the same writes at 2 and at 2,000 members.
        let rw = &b["recall_writes"];
        if name == "memory" {
            assert_eq!(rw["same_writes"], Value::Null);
        } else {
            let groups = rw["groups"].as_array().expect("groups");
            let members: Vec<_> = groups.iter().map(|g| g["members"].as_u64()).collect();
            assert_eq!(members, vec![Some(2), Some(2000)]);
            let writes: Vec<f64> = groups
                .iter()
                .map(|g| g["writes_per_recall"].as_f64().expect("writes counted"))
                .collect();
            assert!(writes[0] > 0.0, "{name}: no write counted for a recall");
            assert_eq!(writes[0], writes[1], "{name}: writes grow with members");
            assert_eq!(rw["same_writes"], true);
        }
        device_sync_is_measured(name, &b["device_sync"]);
        contention_is_measured(name, b, &table);
        purge_is_measured(name, &b["purge"]);
    }
    // The chart has an axis, the goal line and a legend naming each of its colours.
    assert!(chart.contains("goal 0.95") && chart.contains("stroke-dasharray"));
    for colour in ["#2f6fdf", "#d9534f", "#9ec1f0", "#2a9d8f"] {
        assert!(
            chart.matches(colour).count() >= 1,
            "chart lacks the legend colour {colour}"
        );
    }
    assert!(
        chart.contains(">1.00<"),
        "chart lacks the ratio axis' ticks"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The device-sync record: both sides timed, one call against one per conversation, the calls
/// and (on a server) the round trips counted, the one call's fewer than the single calls'.
/// The contention pairs: both sides measured at their concurrency, and a goal judged for the
/// imstore ones.
fn contention_is_measured(name: &str, b: &Value, table: &str) {
    let pairs = b["contention"].as_array().expect("contention pairs");
    for (path, conc) in [
        ("hot_group", 64),
        ("hot_group_raw", 64),
        ("recall_storm", 32),
        ("recall_storm_raw", 32),
    ] {
        let p = pairs
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("{name}: no {path}"));
        assert_eq!(p["concurrency"], conc, "{name} {path}");
        side_is_measured(&p["imstore"], &format!("{name} {path} busy side"));
        side_is_measured(&p["baseline"], &format!("{name} {path} spread side"));
        assert!(table.contains(path), "table lacks {name} {path}");
    }
    let goals = b["goals"]["contention"]
        .as_array()
        .expect("contention goals");
    let judged: Vec<_> = goals.iter().map(|g| g["path"].as_str()).collect();
    assert_eq!(judged, [Some("hot_group"), Some("recall_storm")], "{name}");
}

/// The purge path: a backlog loaded, some of it removed at a rate, the load measured alone and
/// beside the purge.
fn purge_is_measured(name: &str, p: &Value) {
    let backlog = p["backlog_messages"].as_u64().expect("backlog");
    let removed = p["removed"].as_u64().expect("removed");
    assert!(
        removed > 0 && removed <= backlog,
        "{name}: removed {removed} of {backlog}"
    );
    assert!(
        p["removed_per_s"].as_f64().expect("rate") > 0.0,
        "{name}: no purge rate"
    );
    assert!(
        p["calls"].as_u64().expect("calls") >= 1,
        "{name}: no purge call"
    );
    for side in ["sends_and_pages_alone", "sends_and_pages_beside_the_purge"] {
        let s = &p[side];
        assert!(
            s["ops"].as_u64().expect("ops") >= 1,
            "{name} {side}: no operation"
        );
        assert!(
            s["p50_us"].as_u64() <= s["p99_us"].as_u64(),
            "{name} {side}: p50 above p99"
        );
    }
}

fn device_sync_is_measured(name: &str, d: &Value) {
    let n = d["conversations"].as_u64().expect("conversations");
    let k = d["changed"].as_u64().expect("changed");
    assert!(
        n > 0 && k > 0 && k <= n,
        "{name}: {n} conversations, {k} changed"
    );
    for part in ["learn", "sync"] {
        let (one, single) = (&d[part]["one_call"], &d[part]["single_calls"]);
        for side in [one, single] {
            assert!(
                side["ops"].as_u64().unwrap_or(0) > 0,
                "{name} {part}: {side}"
            );
            assert!(
                side["p50_us"].as_u64().unwrap_or(0) > 0,
                "{name} {part}: {side}"
            );
        }
        assert_eq!(single["calls"].as_u64(), Some(n), "{name} {part}: {single}");
        let one_calls = one["calls"].as_u64().expect("calls");
        assert_eq!(
            one_calls,
            if part == "learn" { 1 } else { 1 + k },
            "{name} {part}"
        );
        match (one["round_trips"].as_u64(), single["round_trips"].as_u64()) {
            (Some(a), Some(b)) => {
                assert!(name != "memory", "memory has no round trips");
                assert!(
                    a >= 1 && b >= n && a < b,
                    "{name} {part}: round trips {a} vs {b}"
                );
            }
            (None, None) => assert_eq!(name, "memory", "{name}: round trips not counted"),
            other => panic!("{name} {part}: round trips {other:?}"),
        }
        assert!(d[part]["speedup_p50"].as_f64().unwrap_or(0.0) > 0.0);
    }
}

#[test]
fn help_exits_zero_and_lists_every_option() {
    let run = Command::new(env!("CARGO_BIN_EXE_imstore-bench"))
        .arg("--help")
        .output()
        .expect("the bench command starts");
    assert!(run.status.success(), "--help exit status {:?}", run.status);
    let help = String::from_utf8_lossy(&run.stdout);
    for option in [
        "--quick",
        "--backends",
        "--paths",
        "--out",
        "--rounds",
        "--round-ms",
        "--big",
        "--sync-conversations",
        "--sync-changed",
        "--quiet",
        "--drop-leftovers",
        "--parallel",
        "--sequential",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_imstore-bench"))
        .args(["--paths", "nonsense"])
        .output()
        .expect("the bench command starts");
    assert_eq!(bad.status.code(), Some(2), "a bad --paths is a usage error");
}
