//! The fault tests (their own test binary, so that no other test of the crate runs against the
//! server while it is down).
//!
//! `acknowledged_writes_survive_a_server_crash`: sixteen writers send and recall messages,
//! retrying every error with the same request, while the Cassandra node (the only one) is killed
//! with SIGKILL and started again on its data (commit log replay, then the CQL port: tens of
//! seconds, which the load's `retry_for` covers with room to spare); then every acknowledged
//! write is accounted for through the same store handle and session.
//!
//! ```sh
//! cargo test -p imstore-scylla --all-features --test faults -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use imstore_conformance::faults::{Load, assert_writes_survive_a_server_kill};
use imstore_scylla::testing::ScyllaFactory;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_server_crash() {
    let factory = ScyllaFactory::from_env().with_prefix("scfault");
    let mut load = Load::default();
    load.messages_per_writer = 20;
    // The script allows Cassandra 240 s to start; a writer retries for longer than that.
    load.retry_for = Duration::from_secs(300);
    assert_writes_survive_a_server_kill(
        &factory,
        &repo_root(),
        "cassandra",
        load,
        Duration::from_secs(2),
    )
    .await;
}
