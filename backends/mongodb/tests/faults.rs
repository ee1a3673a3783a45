//! The fault tests (their own test binary, so that no other test of the crate runs against the
//! server while it is down).
//!
//! `acknowledged_writes_survive_a_server_crash`: sixteen writers send and recall messages,
//! retrying every error with the same request, while FerretDB (the MongoDB stand-in) is killed
//! with SIGKILL and started again on its data; then every acknowledged write is accounted for
//! through the same store handle. FerretDB over SQLite scans whole collections, so the load is
//! small (16 writers x 10 messages, 320 acknowledged writes): the test takes well under a few
//! minutes, most of it the load itself, while the server is down for about two seconds.
//!
//! ```sh
//! cargo test -p imstore-mongodb --all-features --test faults -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use imstore_conformance::faults::{Load, assert_writes_survive_a_server_kill};
use imstore_mongodb::testing::MongoFactory;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_server_crash() {
    let factory = MongoFactory::from_env().with_prefix("mgfault");
    let mut load = Load::default();
    load.messages_per_writer = 10;
    load.retry_for = Duration::from_secs(120);
    assert_writes_survive_a_server_kill(
        &factory,
        &repo_root(),
        "ferretdb",
        load,
        Duration::from_secs(2),
    )
    .await;
}
