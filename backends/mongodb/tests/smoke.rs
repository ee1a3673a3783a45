//! Proves the server behind `IMSTORE_MONGODB_URL` is a real MongoDB-compatible server: prints its
//! `buildInfo` version, writes and reads a message through the store, and prints how the server
//! plans the hot reads.

use std::sync::Arc;

use imstore_conformance::StoreFactory;
use imstore_core::{
    ConversationId, ManualClock, MessageStore, MsgIdGenerator, NewMessage, StoreSettings, UserId,
};
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::doc;

#[tokio::test]
async fn server_version_and_round_trip() {
    let factory = MongoFactory::from_env().with_prefix("mgsmoke");
    let client = factory.client().await;
    let info = client
        .database("admin")
        .run_command(doc! {"buildInfo": 1})
        .await
        .expect("buildInfo");
    let version = info.get_str("version").expect("buildInfo.version");
    println!("server buildInfo.version = {version}");
    if let Ok(ferret) = info.get_str("ferretdbVersion") {
        println!("server buildInfo.ferretdbVersion = {ferret}");
    }
    assert!(!version.is_empty());

    let ns = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open(&ns, settings).await;
    let ids = MsgIdGenerator::new(7, Arc::new(clock)).unwrap();
    let conv = ConversationId::new("smoke").unwrap();
    let alice = UserId::new("alice").unwrap();
    let m = NewMessage::text(
        ids.next_id().unwrap(),
        conv.clone(),
        alice.clone(),
        b"hi".to_vec(),
    );
    store.insert(m.clone()).await.expect("insert");
    let v = store.get(&conv, m.msg_id, &alice).await.expect("get");
    assert_eq!(v.body.expect("body").content, b"hi");

    // How the server runs the hot reads: a newest-first page, the log probe every read of a
    // message makes, a feed pull and the feed head.
    for (name, cmd) in [
        (
            "list page",
            doc! {"find": "messages",
            "filter": {"conversation_id": "smoke", "msg_id": {"$lt": i64::MAX}},
            "sort": {"msg_id": -1}, "limit": 51},
        ),
        (
            "log probe",
            doc! {"find": "log", "filter": {"msg": mongodb::bson::oid::ObjectId::new(), "version": {"$gt": 1_i64}}},
        ),
        (
            "feed pull",
            doc! {"find": "log",
            "filter": {"conversation_id": "smoke", "seq": {"$gt": 0_i64}, "kind": "event"},
            "sort": {"seq": 1}, "limit": 100},
        ),
        (
            "feed head",
            doc! {"find": "log",
            "filter": {"conversation_id": "smoke", "seq": {"$gt": 0_i64}},
            "sort": {"seq": -1}, "limit": 1},
        ),
    ] {
        let plan = client
            .database(&ns)
            .run_command(doc! {"explain": cmd, "verbosity": "queryPlanner"})
            .await
            .expect("explain");
        println!("explain {name}: {plan}");
    }
    factory.drop_namespace(&ns).await;
}
