//! Proves the server is a real CQL server and the production paths work on it: prints its
//! version, connects the way an application does, migrates a keyspace made by an older version,
//! round-trips a message, and sweeps leftover keyspaces.

use std::time::Duration;

use imstore_conformance::StoreFactory;
use imstore_core::{
    ConversationId, InsertOutcome, MessageStore, MsgId, NewMessage, StoreSettings, Timestamp,
    UserId,
};
use imstore_scylla::testing::ScyllaFactory;
use imstore_scylla::{ScyllaBackend, ScyllaStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_reports_its_version_and_round_trips_a_message() {
    let f = ScyllaFactory::from_env().with_reuse(false);
    let ns = f.create_namespace().await;
    // The application's path: its own session, the schema ensured at start-up (idempotent).
    let config = f.config(&ns).with_create_schema(true);
    let store = ScyllaStore::connect(config, StoreSettings::default())
        .await
        .expect("connect and ensure the schema");
    let info = store.inner().server().clone();
    println!(
        "CQL server: {:?}, release_version {}",
        info.flavour, info.release_version
    );
    assert!(!info.release_version.is_empty());
    println!(
        "largest stored content: {} bytes",
        imstore_core::Backend::limits(store.inner()).max_stored_content_bytes
    );

    let conv = ConversationId::new("smoke").unwrap();
    // A fresh id: the store refuses inserts older than its purge horizon.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let id = MsgId::from_parts(Timestamp::from_millis(now), 1, 1).unwrap();
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
    let raw = store.inner().raw_content(&conv, id).await.unwrap().unwrap();
    assert_ne!(
        raw,
        b"hello, cql".to_vec(),
        "content is stored through the codec"
    );
    f.drop_namespace(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyspace_made_before_the_request_refusals_is_migrated() {
    let f = ScyllaFactory::from_env().with_reuse(false);
    let ns = f.create_namespace().await;
    let session = f.session().await;
    // What an older version created: conversation_state without the columns added since.
    for column in ["refusal", "call_token", "release_key"] {
        session
            .query_unpaged(
                format!("ALTER TABLE {ns}.conversation_state DROP {column}"),
                &[],
            )
            .await
            .expect("drop a column");
    }
    let backend =
        ScyllaBackend::with_session(session.clone(), f.config(&ns).with_create_schema(true))
            .await
            .expect("start-up migrates the keyspace");
    let columns = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'conversation_state'",
            (ns.as_str(),),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows::<(String,)>()
        .unwrap()
        .map(|r| r.unwrap().0)
        .collect::<Vec<_>>();
    for column in ["refusal", "call_token", "release_key"] {
        assert!(columns.iter().any(|c| c == column), "{column}: {columns:?}");
    }
    backend.migrate().await.expect("migrating again is a no-op");
    f.drop_namespace(&ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_drops_only_old_keyspaces_of_its_prefix() {
    let f = ScyllaFactory::from_env()
        .with_prefix("scsweep")
        .with_reuse(false);
    let old = format!("scsweep_{:x}_{}_old", 1_000_000u64, std::process::id());
    f.create_keyspace(&old).await.unwrap();
    let young = f.create_namespace().await;
    let dropped = f.sweep_leftovers(Duration::from_secs(3600)).await.unwrap();
    assert!(dropped.contains(&old), "{dropped:?}");
    assert!(!dropped.contains(&young), "{dropped:?}");
    f.drop_namespace(&young).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_the_node_cannot_hold_is_refused_when_the_store_is_built() {
    let f = ScyllaFactory::from_env();
    let ns = f.create_namespace().await;
    let backend = ScyllaBackend::with_session(f.session().await, f.config(&ns))
        .await
        .unwrap();
    let limit = imstore_core::Backend::limits(&backend).max_stored_content_bytes;
    // Cassandra 5 defaults: half of the 32 MiB commitlog segment, and 16 MiB request frames.
    assert!(limit < 16 << 20 && limit > 15 << 20, "{limit}");
    let policy = |bytes: usize| StoreSettings {
        policy: imstore_core::Policy::builder()
            .max_content_bytes(bytes)
            .build()
            .unwrap(),
        ..StoreSettings::default()
    };
    // Under the codec's 16 MiB decode limit, over what one mutation of this node can carry.
    let err = f
        .open_store(&ns, policy((16 << 20) - (16 << 10)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), imstore_core::ErrorKind::InvalidInput, "{err}");
    assert_eq!(err.field(), Some("max_content_bytes"));
    assert!(f.open_store(&ns, policy(1 << 20)).await.is_ok());
    f.drop_namespace(&ns).await;
}
