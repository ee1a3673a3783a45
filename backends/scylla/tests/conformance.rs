//! Every conformance case against the CQL server named by `IMSTORE_SCYLLA_NODES` (Apache
//! Cassandra 5 from `scripts/servers.sh`), each in a keyspace of its own, on the store directly
//! and through `Arc<dyn MessageStore>`. The two runs share the process's pool of emptied
//! keyspaces (see `imstore_scylla::testing`), so the second costs no DDL.

use imstore_scylla::testing::ScyllaFactory;

mod direct {
    imstore_conformance::conformance_tests!(super::ScyllaFactory::from_env());
}

mod through_arc_dyn {
    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(
        super::ScyllaFactory::from_env()
    ));
}

/// Keyspaces of this factory's prefix older than a day are left by crashed or finished runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_earlier_runs_are_swept() {
    let f = ScyllaFactory::from_env();
    let dropped = f
        .sweep_leftovers(std::time::Duration::from_secs(24 * 3600))
        .await
        .expect("sweep");
    println!("swept {} leftover keyspaces", dropped.len());
}

/// The history checker: concurrent clients, then a linearizability check of what they saw.
mod history {
    imstore_conformance::history_tests!(super::ScyllaFactory::from_env());
}
