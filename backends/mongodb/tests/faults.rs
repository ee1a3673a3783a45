//! The fault tests (their own test binary, so that no other test of the crate runs against the
//! server while it is down).
//!
//! `acknowledged_writes_survive_a_server_crash`: sixteen writers send and recall messages,
//! retrying every error with the same request, while FerretDB (the MongoDB stand-in) is killed
//! with SIGKILL together with the PostgreSQL it stores in (both are the "database server" here;
//! over SQLite FerretDB alone is) and started again on its data; then every acknowledged write is accounted for
//! through the same store handle. FerretDB scans whole collections, so the load is small (16
//! writers x 10 messages, 320 acknowledged writes): about a minute on FerretDB 1.24 over
//! PostgreSQL (the servers script's default), two to three over SQLite, while the server is
//! down for about three seconds.
//!
//! `a_killed_client_leaves_every_message_consistent`: the test binary runs itself again as a
//! client doing a burst of concurrent recalls, restores and deletes, is killed with SIGKILL in the
//! middle of it, and a fresh store finds every message consistent. Here a transition commits with
//! one log insert and then writes the message document (a cache) and clears the entry's `todo`
//! mark; a client dying between the two leaves a document behind its log, which every read
//! already looks past, and which the design has the next purge batch write. The repair is that
//! purge batch (nothing is due yet, so it only completes), after which no `todo` mark is left
//! and every document is at its message's version. The two tests take turns.
//!
//! ```sh
//! cargo test -p imstore-mongodb --all-features --test faults -- --nocapture
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use imstore_conformance::faults::{self, Burst, Found, Load, assert_writes_survive_a_server_kill};
use imstore_core::{MessageStore, PurgeOptions};
use imstore_mongodb::MongoStore;
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::{Document, doc};

/// Held by each test for its whole run: a client burst must not run into the server's crash.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_server_crash() {
    let _turn = SERIAL.lock().await;
    // A short operation timeout, so that callers waiting through the outage see `Unavailable`
    // and retry: with the suite's 120 s, FerretDB (which waits for its PostgreSQL) held every
    // call through the 4 s outage, no writer saw an error, and the guard that the crash reached
    // a caller failed the run (the PostgreSQL backend's test shortens its acquire timeout alike).
    let factory = MongoFactory::from_env()
        .with_prefix("mgfault")
        .with_config(|c| c.with_operation_timeout(Duration::from_secs(3)));
    let mut load = Load::default();
    load.messages_per_writer = 10;
    load.retry_for = Duration::from_secs(120);
    // The storage is killed too: FerretDB alone holds nothing a crash could lose.
    let servers = match std::env::var("IMSTORE_FERRETDB_HANDLER").as_deref() {
        Ok("sqlite") => "ferretdb",
        _ => "ferretdb postgres",
    };
    assert_writes_survive_a_server_kill(
        &factory,
        &repo_root(),
        servers,
        load,
        Duration::from_secs(2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_client_leaves_every_message_consistent() {
    let _turn = SERIAL.lock().await;
    let factory = MongoFactory::from_env().with_prefix("mgckill");
    let mut burst = Burst::default();
    burst.kill_after = 60;
    let f = &factory;
    faults::a_killed_client_leaves_every_message_consistent(
        f,
        "a_killed_client_leaves_every_message_consistent",
        burst,
        async |store: &MongoStore, namespace: &str, found: &Found| {
            complete_dead_commits(f, store, namespace, found).await
        },
    )
    .await;
}

/// The design's repair of a dead writer's commits (a purge batch), then the check that it left
/// nothing unfinished: no `todo` mark in the log, every document at its message's version.
async fn complete_dead_commits(
    f: &MongoFactory,
    store: &MongoStore,
    namespace: &str,
    found: &Found,
) -> Vec<String> {
    let db = f.client().await.database(namespace);
    let log = db.collection::<Document>("log");
    let unfinished = doc! {"todo": {"$exists": true}};
    let before = log
        .count_documents(unfinished.clone())
        .await
        .expect("count");
    let mut problems = Vec::new();
    match store.purge(PurgeOptions { batch_size: 1000 }).await {
        Ok(r) if r.messages == 0 => {}
        Ok(r) => problems.push(format!("a purge before any retention removed {r:?}")),
        Err(e) => problems.push(format!("the repairing purge fails: {e}")),
    }
    let after = log.count_documents(unfinished).await.expect("count");
    eprintln!("faults: the dead client left {before} unfinished commits; {after} after the purge");
    if after != 0 {
        problems.push(format!("{after} log entries still carry a todo mark"));
    }
    for (id, (status, version)) in found {
        let d = db
            .collection::<Document>("messages")
            .find_one(doc! {"msg_id": id.as_i64()})
            .await
            .expect("find");
        let stored = d.as_ref().and_then(|d| d.get_i64("version").ok());
        let code = d.as_ref().and_then(|d| d.get_i32("status").ok());
        if stored != Some(i64::from(*version)) || code != Some(i32::from(status.code())) {
            problems.push(format!(
                "the document of {id} is at {code:?} v{stored:?}, its log at {status:?} v{version}"
            ));
        }
    }
    problems
}
