//! What the server would refuse is refused before it: database names as `InvalidInput` on
//! `database` when the backend connects, content beyond the 16 MiB document when the store is
//! built. And the largest content the store accepts is stored and read back. Runs against the
//! server named by `IMSTORE_MONGODB_URL`.

use std::sync::Arc;

use imstore_conformance::StoreFactory;
use imstore_conformance::fixtures::Cast;
use imstore_core::{
    Backend, ErrorKind, ManualClock, MessageStore, Operation, Policy, StoreSettings,
};
use imstore_mongodb::testing::MongoFactory;
use imstore_mongodb::{MongoBackend, MongoConfig, MongoStore};

/// Database names MongoDB refuses are `InvalidInput` naming `database`, from `connect` and
/// from `with_client` alike, never a `Backend` error from the server.
#[tokio::test]
async fn database_names_the_server_refuses_are_invalid_input() {
    let f = MongoFactory::from_env();
    let long = "d".repeat(100);
    for bad in ["", "a.b", "$cmd", "a b", "x/y", long.as_str()] {
        let config = MongoConfig::new(f.url(), bad);
        let e = MongoStore::connect(config.clone(), StoreSettings::default())
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.field(), e.operation(), e.backend()),
            (
                ErrorKind::InvalidInput,
                Some("database"),
                Some(Operation::Connect),
                Some("mongodb")
            ),
            "{bad:?}: {e}"
        );
        let e = MongoBackend::with_client(f.client().await.clone(), config)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidInput, Some("database"))
        );
    }
}

/// A content limit whose encoded form would not fit one BSON document is refused when the store
/// is built, naming `max_content_bytes`; the largest one that fits is stored and read back.
#[tokio::test]
async fn content_beyond_the_document_limit_is_refused_at_build() {
    let f = MongoFactory::from_env().with_prefix("mglimits");
    let ns = f.create_namespace().await;
    let backend = f.backend(&ns).await;
    let limit = backend.limits().max_stored_content_bytes;
    assert!(
        limit < 16 * 1024 * 1024 && limit > 15 * 1024 * 1024,
        "{limit}"
    );
    let policy = |bytes| {
        Policy::builder()
            .max_content_bytes(bytes)
            .build()
            .expect("a valid policy")
    };
    let settings = |bytes| StoreSettings {
        policy: policy(bytes),
        ..StoreSettings::default()
    };
    let e = MongoStore::with_backend(backend.clone(), settings(17 * 1024 * 1024)).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidInput, Some("max_content_bytes"))
    );

    let codec = StoreSettings::default().codec;
    let largest = (0..=limit)
        .rev()
        .find(|n| codec.max_encoded_len(*n) <= limit)
        .unwrap();
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock),
        ..settings(largest)
    };
    let store = MongoStore::with_backend(backend, settings.clone()).unwrap();
    let c = Cast::new(&settings);
    // Incompressible, so the stored form is as large as the codec makes it.
    let mut content = vec![0u8; largest];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in content.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut m = c.text("");
    m.content = content.clone();
    store.insert(m.clone()).await.unwrap();
    let v = store.get(&c.conv, m.msg_id, &c.alice).await.unwrap();
    assert_eq!(v.body.expect("the sender sees the body").content, content);
    f.drop_namespace(&ns).await;
}
