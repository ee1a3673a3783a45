//! Proves the server is a real PostgreSQL: prints its version, writes and reads a message; and
//! that configuration mistakes are the caller's `InvalidInput`, naming the setting.

use imstore_core::{
    ConversationId, ErrorKind, InsertOutcome, MessageStore, MsgIdGenerator, NewMessage,
    StoreSettings, UserId,
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
    let settings = StoreSettings::default();
    // Minted from the store's clock: an id outside the insert window is refused as stale.
    let ids = MsgIdGenerator::new(1, settings.clock.clone()).unwrap();
    let id = ids.next_id().unwrap();
    let store = PostgresStore::connect(config, settings)
        .await
        .expect("connect");
    // migrate_on_connect(false): the tables appear only with the explicit call.
    let conv = ConversationId::new("smoke").unwrap();
    let alice = UserId::new("alice").unwrap();
    let msg = NewMessage::text(id, conv.clone(), alice.clone(), "hi");
    assert!(store.insert(msg.clone()).await.is_err());
    store.inner().migrate().await.expect("migrate");
    store
        .inner()
        .migrate()
        .await
        .expect("migrating twice is a no-op");
    assert_eq!(store.insert(msg).await.unwrap(), InsertOutcome::Inserted);
    let got = store.get(&conv, id, &alice).await.unwrap();
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
async fn configuration_mistakes_are_invalid_input_naming_the_setting() {
    let factory = PgFactory::from_env();
    let url = factory.url().to_owned();
    let connect = |config| PostgresStore::connect(config, StoreSettings::default());

    // A schema name PostgreSQL refuses or would truncate, and one that does not exist.
    for schema in [
        "pg_toast_x",
        "Chat",
        "a.b",
        "",
        &"a".repeat(64),
        "information_schema",
    ] {
        let err = connect(factory.config(schema)).await.unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ErrorKind::InvalidInput, Some("schema")),
            "{schema:?}: {err}"
        );
    }
    let missing = imstore_conformance::unique_namespace("imspg_missing");
    let err = connect(factory.config(&missing)).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("schema")),
        "{err}"
    );

    // A wrong password, a database that does not exist: the URL's fault.
    let mut parsed: Vec<&str> = url.rsplitn(2, '/').collect();
    parsed.reverse();
    let base = parsed[0];
    let no_db = format!("{base}/imstore_no_such_database");
    let err = connect(imstore_postgres::PostgresConfig::new(no_db))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("url")),
        "{err}"
    );
    let (scheme_user, rest) = url.split_once("://").unwrap();
    let (creds, host) = rest
        .split_once('@')
        .expect("the test URL carries credentials");
    // The test server trusts every local user it knows, so an unknown user is what it refuses.
    let _ = creds;
    let bad_user = format!("{scheme_user}://imstore_no_such_user:wrong-password@{host}");
    let err = connect(imstore_postgres::PostgresConfig::new(bad_user))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("url")),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong-password"));
    let err = connect(imstore_postgres::PostgresConfig::new("postgres://[bad"))
        .await
        .unwrap_err();
    assert_eq!(err.field(), Some("url"), "{err}");
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
