//! The conformance suite against the MongoDB-compatible server named by `IMSTORE_MONGODB_URL`
//! (FerretDB v1 from `scripts/servers.sh`), one test per case, each in its own database built
//! by the crate's shipped factory: directly, and through `Arc<dyn MessageStore>`; then the
//! history checker.

use imstore_mongodb::testing::MongoFactory;

mod direct {
    imstore_conformance::conformance_tests!(imstore_mongodb::testing::MongoFactory::from_env());
}

mod through_arc_dyn {
    imstore_conformance::conformance_tests!(imstore_conformance::DynFactory(
        imstore_mongodb::testing::MongoFactory::from_env()
    ));
}

/// The linearizability checker over recorded concurrent histories (two runs of 1,500 calls; on
/// FerretDB over SQLite this takes about 12 minutes).
mod history {
    imstore_conformance::history_tests!(imstore_mongodb::testing::MongoFactory::from_env());
}

/// The sweeper drops only databases of its prefix older than its age: a fresh one (a run in
/// progress) stays, an old one (a crashed run) goes.
#[tokio::test]
async fn sweeper_drops_only_old_leftovers() {
    use imstore_conformance::StoreFactory;
    let factory = MongoFactory::from_env().with_prefix("mgsweep");
    let fresh = factory.create_namespace().await;
    let client = factory.client().await;
    client
        .database(&fresh)
        .collection::<mongodb::bson::Document>("messages")
        .insert_one(mongodb::bson::doc! {"x": 1})
        .await
        .unwrap();
    let old = format!("mgsweep_1000000000_{}_0_0", std::process::id());
    client
        .database(&old)
        .collection::<mongodb::bson::Document>("messages")
        .insert_one(mongodb::bson::doc! {"x": 1})
        .await
        .unwrap();
    let dropped = factory.sweep_leftovers().await;
    assert!(dropped.contains(&old), "{dropped:?}");
    assert!(!dropped.contains(&fresh), "{dropped:?}");
    factory.drop_namespace(&fresh).await;
}
