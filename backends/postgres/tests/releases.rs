//! How often a call hands a connection back to the pool. sqlx pings every connection it takes
//! back (`PoolConnection::return_to_pool`, in a task after the caller has its answer): one more
//! exchange on the wire per release, with no setting to turn it off. So a transition takes one
//! connection for all the statements of an attempt, and gives it back once.
//!
//! Releases are counted by the pool's `after_release` hook, which sqlx runs on every release
//! before that ping.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imstore_conformance::StoreFactory;
use imstore_conformance::fixtures::Cast;
use imstore_core::{Action, ManualClock, MessageStore, StoreSettings};
use imstore_postgres::testing::PgFactory;
use imstore_postgres::{PostgresBackend, PostgresStore};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The releases `counted` saw while `f` ran, once the release tasks it spawned have run.
async fn releases_during<T>(
    counted: &AtomicUsize,
    f: impl std::future::Future<Output = T>,
) -> (T, usize) {
    let before = counted.load(Ordering::SeqCst);
    let out = f.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    (out, counted.load(Ordering::SeqCst) - before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_hands_its_connection_back_once() {
    let factory = PgFactory::from_env().with_prefix("imspg_rel");
    let schema = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let counted = Arc::new(AtomicUsize::new(0));
    let hook = Arc::clone(&counted);
    let options: PgConnectOptions = factory.url().parse().unwrap();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .after_release(move |_, _| {
            hook.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(true) })
        })
        .connect_with(options.options([("search_path", schema.as_str())]))
        .await
        .unwrap();
    let backend = PostgresBackend::with_pool(pool);
    backend.migrate().await.unwrap();
    let store = PostgresStore::with_backend(backend, settings.clone()).unwrap();
    // Another handle sends, so `store` has never seen the messages: its transitions read first.
    let sender = factory.open(&schema, settings.clone()).await;
    let c = Cast::new(&settings);

    let m = c.text("cold");
    sender.insert(m.clone()).await.unwrap();
    let recall = c.request(Action::Recall, &c.alice, m.msg_id);
    let (done, n) = releases_during(&counted, store.transition(recall.clone())).await;
    assert!(done.unwrap().changed);
    assert_eq!(n, 1, "a cold recall: a read and a write on one connection");

    // Now known to `store`: one statement, one release.
    let (done, n) = releases_during(
        &counted,
        store.transition(c.request(Action::Restore, &c.alice, m.msg_id)),
    )
    .await;
    assert!(done.unwrap().changed);
    assert_eq!(n, 1, "a warm restore");

    // A refusal (bob may not recall alice's message) is read, then recorded: one release.
    let other = c.text("refused");
    sender.insert(other.clone()).await.unwrap();
    let (done, n) = releases_during(
        &counted,
        store.transition(c.request(Action::Recall, &c.bob, other.msg_id)),
    )
    .await;
    assert!(done.is_err());
    assert_eq!(n, 1, "a recorded refusal");

    store.inner().pool().close().await;
    sender.inner().pool().close().await;
    factory.drop_namespace(&schema).await;
}
