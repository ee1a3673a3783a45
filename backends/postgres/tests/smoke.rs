//! Proves the server is a real PostgreSQL: prints its version, writes and reads a message.

use imstore_conformance::{require_env, unique_namespace};
use imstore_core::{
    ConversationId, InsertOutcome, MessageStore, MsgId, NewMessage, StoreSettings, UserId,
};
use imstore_postgres::{PostgresConfig, PostgresStore};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn real_server_reports_its_version_and_round_trips_a_message() {
    let url = require_env("IMSTORE_POSTGRES_URL");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&admin)
        .await
        .expect("version");
    println!("server: {version}");
    assert!(version.starts_with("PostgreSQL "), "{version}");

    let schema = unique_namespace("imspg_smoke");
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    let config = PostgresConfig::new(&url)
        .with_schema(&schema)
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
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrating twice is a no-op");
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
    .fetch_one(&admin)
    .await
    .unwrap();
    println!("schema {schema}: {tables} tables");
    assert!(
        tables >= 5,
        "messages, conversations, change_events, requests, _sqlx_migrations"
    );
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .expect("drop schema");
}
