//! The fault test (its own test binary, so that no other test of the crate runs against the
//! server while it is down): sixteen writers send and recall messages, retrying every error,
//! while the PostgreSQL server is killed with SIGKILL (no shutdown, no flush) and started again
//! on its data; then every acknowledged write is accounted for through the same store handle.
//!
//! The server is shared with other work on this machine, so the killed window is kept short:
//! kill, two seconds down, start (which waits until the server accepts connections again).
//!
//! ```sh
//! cargo test -p imstore-postgres --all-features --test faults -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imstore_conformance::faults::{Load, servers_script, writes_survive_a_crash};
use imstore_conformance::{Harness, Setup};
use imstore_postgres::testing::PgFactory;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_server_crash() {
    let factory = PgFactory::from_env().with_prefix("imspg_fault");
    let h = Harness::start(&factory, Setup::default()).await;
    let root = repo_root();
    let mut load = Load::default();
    // 16 writers x 30 messages, each sent then recalled: about 1,000 acknowledged writes,
    // a few seconds of load on either side of the crash, well under a minute in all.
    load.messages_per_writer = 30;
    let started = Instant::now();
    let crash = async {
        let t = Instant::now();
        servers_script(&root, &["kill", "postgres"]).await;
        eprintln!("faults: postgres killed ({:?})", t.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let t = Instant::now();
        servers_script(&root, &["start", "postgres"]).await;
        eprintln!("faults: postgres started again ({:?})", t.elapsed());
    };
    let report = writes_survive_a_crash(&h, load.clone(), crash).await;
    eprintln!(
        "faults: {} writers x {} messages in {:?}: acknowledged inserts {}, acknowledged recalls \
         {}, abandoned {}, errors seen {:?}",
        load.writers,
        load.messages_per_writer,
        started.elapsed(),
        report.acked_inserts,
        report.acked_transitions,
        report.abandoned,
        report.errors
    );
    for line in report
        .lost
        .iter()
        .chain(&report.duplicated)
        .chain(&report.inconsistent)
    {
        eprintln!("faults: {line}");
    }
    assert!(report.clean(), "{report:#?}");
    let all = load.writers * load.messages_per_writer;
    assert_eq!(
        (
            report.acked_inserts,
            report.acked_transitions,
            report.abandoned
        ),
        (all, all, 0),
        "every request is acknowledged once the server is back: {report:#?}"
    );
    assert!(
        !report.errors.is_empty(),
        "the crash was not seen by any writer: the test proved nothing"
    );
    h.finish().await;
}
