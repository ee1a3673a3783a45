//! Released attachment keys, checked in the tables: the reference counts stay exact while
//! inserts and purges of the same keys race, and a key whose reporting call failed after its
//! commit is reported again by a later purge call (at least once), then never again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use imstore_conformance::StoreFactory;
use imstore_conformance::fixtures::Cast;
use imstore_core::{
    Action, ManualClock, MessageStore, MessageStoreExt, Policy, PurgeOptions, StoreSettings,
};
use imstore_postgres::PostgresStore;
use imstore_postgres::testing::PgFactory;
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;

struct Scratch {
    factory: PgFactory,
    admin: PgPool,
    schema: String,
    store: PostgresStore,
    settings: StoreSettings,
    clock: ManualClock,
}

async fn scratch(pool_size: u32) -> Scratch {
    let factory = PgFactory::from_env()
        .with_prefix("imspg_att")
        .with_pool_size(pool_size);
    let schema = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        policy: Policy::default(),
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open(&schema, settings.clone()).await;
    let admin = factory.admin().await.clone();
    Scratch {
        factory,
        admin,
        schema,
        store,
        settings,
        clock,
    }
}

impl Scratch {
    async fn sql(&self, statement: &str) {
        sqlx::raw_sql(AssertSqlSafe(statement.replace("{s}", &self.schema)))
            .execute(&self.admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }

    async fn outbox(&self) -> Vec<String> {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT attachment_key FROM {}.released_attachments ORDER BY 1",
            self.schema
        )))
        .fetch_all(&self.admin)
        .await
        .unwrap()
    }

    async fn drop_schema(self) {
        self.store.inner().pool().close().await;
        self.factory.drop_namespace(&self.schema).await;
    }
}

/// A purge call whose outbox cleanup fails after its commit (here: a trigger refuses the
/// delete, as a dropped connection would) still returns its keys; the entries stay, are
/// reported again by the first purge call after the lease, and then are gone for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_report_may_have_been_lost_is_reported_again_after_the_lease() {
    let s = scratch(2).await;
    let c = Cast::new(&s.settings);
    let m = c.file("blobs/report-me.pdf");
    s.store.insert(m.clone()).await.unwrap();
    s.store
        .transition(c.request(Action::Delete, &c.alice, m.msg_id))
        .await
        .unwrap();
    s.clock.advance(s.settings.policy.retention());

    s.sql(
        "CREATE FUNCTION {s}.refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$BEGIN RAISE EXCEPTION 'the cleanup is lost'; END$$; \
         CREATE TRIGGER refuse BEFORE DELETE ON {s}.released_attachments \
         FOR EACH ROW EXECUTE FUNCTION {s}.refuse();",
    )
    .await;
    let first = s.store.purge(PurgeOptions::default()).await.unwrap();
    assert_eq!(first.messages, 1);
    assert_eq!(first.released_attachments, vec!["blobs/report-me.pdf"]);
    assert_eq!(s.outbox().await, vec!["blobs/report-me.pdf"]);
    s.sql("DROP TRIGGER refuse ON {s}.released_attachments")
        .await;

    // Within the lease the entry belongs to the call that released it: not reported twice.
    let within = s.store.purge(PurgeOptions::default()).await.unwrap();
    assert!(within.released_attachments.is_empty(), "{within:?}");

    s.clock.advance(Duration::from_secs(6 * 60));
    let after = s.store.purge(PurgeOptions::default()).await.unwrap();
    assert_eq!(
        (after.messages, after.released_attachments.clone()),
        (0, vec!["blobs/report-me.pdf".to_string()])
    );
    assert!(s.outbox().await.is_empty(), "reported and removed");
    s.clock.advance(Duration::from_secs(6 * 60));
    let done = s.store.purge(PurgeOptions::default()).await.unwrap();
    assert!(done.released_attachments.is_empty(), "{done:?}");
    s.drop_schema().await;
}

/// Messages of three conversations sharing ten keys are inserted while two workers purge the
/// deleted ones: afterwards every key's count equals the messages that reference it, every key
/// no message references was reported released, and no key still referenced without a later
/// insert was (a released key may only come back through an insert after its release).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reference_counts_stay_exact_while_inserts_race_purges() {
    let s = scratch(8).await;
    let casts: Vec<Cast> = (0..3)
        .map(|i| Cast::in_conversation(&s.settings, &format!("share-{i}")))
        .collect();
    let key = |i: usize| format!("blobs/shared-{}", i % 10);
    // Round one: 60 messages, all deleted and due for purge.
    for (n, c) in casts.iter().enumerate() {
        let batch: Vec<_> = (0..20).map(|i| c.file(&key(i + n))).collect();
        s.store.insert_batch(batch.clone()).await.unwrap();
        for m in &batch {
            s.store
                .transition(c.request(Action::Delete, &c.alice, m.msg_id))
                .await
                .unwrap();
        }
    }
    s.clock.advance(s.settings.policy.retention());

    // Round two, racing the purge: 60 more messages on the same keys, one at a time.
    let inserters: Vec<_> = casts
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let store = s.store.clone();
            let messages: Vec<_> = (0..20).map(|i| c.file(&key(3 * i + n))).collect();
            tokio::spawn(async move {
                for m in messages {
                    store.insert(m).await.unwrap();
                }
            })
        })
        .collect();
    let purgers: Vec<_> = (0..2)
        .map(|_| {
            let store = s.store.clone();
            tokio::spawn(async move {
                let mut released = Vec::new();
                loop {
                    let r = store.purge(PurgeOptions { batch_size: 4 }).await.unwrap();
                    released.extend(r.released_attachments);
                    if !r.more {
                        return released;
                    }
                }
            })
        })
        .collect();
    for t in inserters {
        t.await.unwrap();
    }
    let mut released = Vec::new();
    for t in purgers {
        released.extend(t.await.unwrap());
    }
    // Whatever round one left (a purger may have finished before the last deletes were due).
    released.extend(
        s.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .released_attachments,
    );

    let referenced: BTreeMap<String, i64> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT attachment_key, count(*) FROM {}.messages \
         WHERE attachment_key IS NOT NULL GROUP BY 1",
        s.schema
    )))
    .fetch_all(&s.admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let counted: BTreeMap<String, i64> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT attachment_key, refs FROM {}.attachments",
        s.schema
    )))
    .fetch_all(&s.admin)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(counted, referenced, "reference counts drifted");
    assert_eq!(referenced.values().sum::<i64>(), 60, "round two is stored");
    let all: BTreeSet<String> = (0..10).map(key).collect();
    let released: BTreeSet<String> = released.into_iter().collect();
    for k in &all {
        assert!(
            referenced.contains_key(k) || released.contains(k),
            "{k} is referenced by no message and was never released"
        );
    }
    assert!(s.outbox().await.is_empty());
    let feed = s
        .store
        .drain_changes(&casts[0].conv, &casts[0].bob, Default::default(), 100)
        .await
        .unwrap();
    assert!(feed.resync.is_some(), "round one's events were purged");
    s.drop_schema().await;
}
