//! The fault tests (their own test binary, so that no other test of the crate runs against the
//! server while it is down).
//!
//! `acknowledged_writes_survive_a_server_crash`: sixteen writers send and recall messages,
//! retrying every error with the same request, while the Cassandra node (the only one) is killed
//! with SIGKILL and started again on its data (commit log replay, then the CQL port: tens of
//! seconds, which the load's `retry_for` covers with room to spare); then every acknowledged
//! write is accounted for through the same store handle and session.
//!
//!
//! `a_killed_client_leaves_every_message_consistent`: the test binary runs itself again as a
//! client doing a burst of concurrent recalls, restores and deletes, is killed with SIGKILL in the
//! middle of it, and a fresh store finds every message consistent. Here a transition's lifecycle,
//! event and request record are one conditional batch in the conversation's partition, run to
//! its end by the coordinator whether or not the client is still there, so there is nothing
//! half-done to repair; what a dead client can leave is the purge-queue entry it writes before
//! its batch, for a batch that never ran. The design has the purge drop such an entry without
//! touching the live message (`tests/recovery.rs`), which the final purge of the check shows;
//! the repair step here checks that every recalled or deleted message has its entry, so that
//! the purge will find it. The two tests take turns.
//!
//! ```sh
//! cargo test -p imstore-scylla --all-features --test faults -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::collections::BTreeSet;

use imstore_conformance::faults::{self, Burst, Found, Load, assert_writes_survive_a_server_kill};
use imstore_core::Status;
use imstore_scylla::ScyllaStore;
use imstore_scylla::testing::ScyllaFactory;

/// Held by each test for its whole run: a client burst must not run into the server's crash.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_server_crash() {
    let _turn = SERIAL.lock().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_client_leaves_every_message_consistent() {
    let _turn = SERIAL.lock().await;
    let factory = ScyllaFactory::from_env().with_prefix("scckill");
    let mut burst = Burst::default();
    burst.kill_after = 100;
    faults::a_killed_client_leaves_every_message_consistent(
        &factory,
        "a_killed_client_leaves_every_message_consistent",
        burst,
        async |store: &ScyllaStore, keyspace: &str, found: &Found| {
            queued_for_purge(store, keyspace, found).await
        },
    )
    .await;
}

/// Every recalled or deleted message has its purge-queue entry (written before the batch that
/// retired it); entries of batches that never ran are counted, not refused: the purge drops them.
async fn queued_for_purge(store: &ScyllaStore, keyspace: &str, found: &Found) -> Vec<String> {
    let rows = store
        .inner()
        .session()
        .query_unpaged(
            // The sharded retention queue (the unsharded `purge_queue` is no longer written).
            format!("SELECT msg_id, request_id FROM {keyspace}.retention_queue"),
            (),
        )
        .await
        .expect("read the purge queue")
        .into_rows_result()
        .expect("rows");
    let entries: Vec<(i64, String)> = rows
        .rows::<(i64, String)>()
        .expect("typed rows")
        .collect::<Result<_, _>>()
        .expect("decoded rows");
    let queued: BTreeSet<i64> = entries.iter().map(|(m, _)| *m).collect();
    let retired: Vec<_> = found
        .iter()
        .filter(|(_, (s, _))| *s != Status::Normal)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "faults: {} purge-queue entries for {} recalled or deleted messages",
        entries.len(),
        retired.len()
    );
    retired
        .into_iter()
        .filter(|id| !queued.contains(&id.as_i64()))
        .map(|id| format!("retired message {id} has no purge-queue entry"))
        .collect()
}
