//! Proves the server behind `IMSTORE_MONGODB_URL` is a real MongoDB-compatible server: prints its
//! `buildInfo` version, then writes and reads a message through the store.

use std::sync::Arc;

use imstore_conformance::{require_env, unique_namespace};
use imstore_core::{
    ConversationId, ManualClock, MessageStore, MsgIdGenerator, NewMessage, StoreSettings, UserId,
};
use imstore_mongodb::{MongoConfig, MongoStore};
use mongodb::Client;
use mongodb::bson::doc;

#[tokio::test]
async fn server_version_and_round_trip() {
    let url = require_env("IMSTORE_MONGODB_URL");
    let client = Client::with_uri_str(&url).await.expect("valid url");
    let ns = unique_namespace("mg_smoke");
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

    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = MongoStore::with_client(client.clone(), MongoConfig::new(&url, &ns), settings)
        .await
        .expect("open");
    let ids = MsgIdGenerator::new(7, Arc::new(clock)).unwrap();
    let conv = ConversationId::new("smoke").unwrap();
    let alice = UserId::new("alice").unwrap();
    let m = NewMessage::text(ids.next_id(), conv.clone(), alice.clone(), b"hi".to_vec());
    store.insert(m.clone()).await.expect("insert");
    let v = store.get(&conv, m.msg_id, &alice).await.expect("get");
    assert_eq!(v.body.expect("body").content, b"hi");

    // How the server runs the two hot reads: a newest-first page and a feed pull.
    for (name, cmd) in [
        (
            "list page",
            doc! {"find": "messages",
            "filter": {"conversation_id": "smoke", "msg_id": {"$lt": i64::MAX}},
            "sort": {"msg_id": -1}, "limit": 51},
        ),
        (
            "feed pull",
            doc! {"find": "events",
            "filter": {"conversation_id": "smoke", "seq": {"$gt": 0_i64}, "hollow": {"$ne": true}},
            "sort": {"seq": 1}, "limit": 100},
        ),
    ] {
        let plan = client
            .database(&ns)
            .run_command(doc! {"explain": cmd, "verbosity": "queryPlanner"})
            .await
            .expect("explain");
        println!("explain {name}: {plan}");
    }
    client.database(&ns).drop().await.expect("drop");
}
