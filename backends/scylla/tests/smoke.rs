//! Proves the server is a real CQL server: prints its version, writes and reads a message.

mod common;

use imstore_conformance::unique_namespace;
use imstore_core::{
    ConversationId, InsertOutcome, MessageStore, MsgId, NewMessage, StoreSettings, Timestamp,
    UserId,
};
use imstore_scylla::{ScyllaStore, schema};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reports_its_version_and_round_trips_a_message() {
    let ns = unique_namespace("sc_smoke");
    let store = ScyllaStore::connect(common::config(&ns), StoreSettings::default())
        .await
        .expect("connect and create the schema");
    let info = store.server().clone();
    println!(
        "CQL server: {:?}, release_version {}",
        info.flavour, info.release_version
    );
    assert!(!info.release_version.is_empty());

    let conv = ConversationId::new("smoke").unwrap();
    let id = MsgId::from_parts(Timestamp::from_millis(1_750_000_000_000), 1, 1).unwrap();
    let msg = NewMessage::text(
        id,
        conv.clone(),
        UserId::new("alice").unwrap(),
        "hello, cql",
    );
    assert_eq!(
        store.insert(msg.clone()).await.unwrap(),
        InsertOutcome::Inserted
    );
    let seen = store
        .get(&conv, id, &UserId::new("bob").unwrap())
        .await
        .unwrap();
    assert_eq!(seen.body.unwrap().content, b"hello, cql");
    let raw = store.raw_content(&conv, id).await.unwrap().unwrap();
    assert_ne!(
        raw,
        b"hello, cql".to_vec(),
        "content is stored through the codec"
    );

    schema::drop_keyspace(store.session(), &ns).await.unwrap();
}
