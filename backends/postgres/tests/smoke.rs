//! Proves the server is a real PostgreSQL: prints its version, writes and reads a message; and
//! that the testing factory's sweeper drops only old leftovers.

use imstore_core::{
    ConversationId, InsertOutcome, MessageStore, MsgId, NewMessage, StoreSettings, UserId,
};
use imstore_postgres::PostgresStore;
use imstore_postgres::testing::PgFactory;

#[tokio::test]
async fn real_server_reports_its_version_and_round_trips_a_message() {
    let factory = PgFactory::from_env().with_prefix("imspg_smoke");
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(factory.admin().await)
        .await
        .expect("version");
    println!("server: {version}");
    assert!(version.starts_with("PostgreSQL "), "{version}");

    let schema = imstore_conformance::unique_namespace(factory.prefix());
    factory.create_schema(&schema).await;
    let config = factory
        .config(&schema)
        .with_max_connections(2)
        .with_migrate_on_connect(false);
    let store = PostgresStore::connect(config, StoreSettings::default())
        .await
        .expect("connect");
    // migrate_on_connect(false): the tables appear only with the explicit call.
    let conv = ConversationId::new("smoke").unwrap();
    let alice = UserId::new("alice").unwrap();
    let msg = NewMessage::text(MsgId::new(42).unwrap(), conv.clone(), alice.clone(), "hi");
    assert!(store.insert(msg.clone()).await.is_err());
    store.inner().migrate().await.expect("migrate");
    store
        .inner()
        .migrate()
        .await
        .expect("migrating twice is a no-op");
    assert_eq!(store.insert(msg).await.unwrap(), InsertOutcome::Inserted);
    let got = store
        .get(&conv, MsgId::new(42).unwrap(), &alice)
        .await
        .unwrap();
    assert_eq!(got.body.unwrap().content, b"hi");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
    )
    .bind(&schema)
    .fetch_one(factory.admin().await)
    .await
    .unwrap();
    println!("schema {schema}: {tables} tables");
    assert!(
        tables >= 5,
        "messages, conversations, change_events, requests, _sqlx_migrations"
    );
    factory.drop_schema(&schema).await;
}

#[tokio::test]
async fn the_sweeper_drops_old_leftovers_and_keeps_young_schemas() {
    // The conformance prefix: whatever crashed runs left more than an hour ago goes.
    let swept = PgFactory::from_env().sweep_leftovers().await;
    println!("swept {} leftover schemas: {swept:?}", swept.len());

    let factory = PgFactory::from_env().with_prefix("imspg_sweep");
    let young = imstore_conformance::unique_namespace(factory.prefix());
    factory.create_schema(&young).await;
    assert!(!factory.sweep_leftovers().await.contains(&young));
    let all = PgFactory::from_env()
        .with_prefix("imspg_sweep")
        .with_leftover_age(std::time::Duration::ZERO);
    assert!(all.sweep_leftovers().await.contains(&young));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(&young)
        .fetch_one(factory.admin().await)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
