//! PostgreSQL-specific guarantees beyond the shared suite, checked in the tables themselves:
//! concurrent purge workers split the work exactly; a history-limit purge racing deletes leaves
//! no change event of a purged message; every answer to a request id racing state changes is
//! the one its request record holds; a connection killed by the server mid-transition is a
//! temporary error that leaves nothing half-applied; and a connection killed while idle costs
//! a read nothing and a write one temporary failure at most (none with the ping before acquire).

use std::sync::Arc;
use std::time::Duration;

use imstore_conformance::StoreFactory;
use imstore_conformance::fixtures::Cast;
use imstore_core::{
    Action, ErrorKind, FeedCursor, ManualClock, MessageStore, MessageStoreExt, Policy,
    PurgeOptions, Status, StoreSettings,
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
    scratch_with(pool_size, Policy::default()).await
}

async fn scratch_with(pool_size: u32, policy: Policy) -> Scratch {
    let factory = PgFactory::from_env()
        .with_prefix("imspg_conc")
        .with_pool_size(pool_size);
    let schema = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        policy,
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
    async fn drop_schema(self) {
        self.store.inner().pool().close().await;
        self.factory.drop_namespace(&self.schema).await;
    }
}

/// Two purge workers running at once remove every expired message exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_purge_workers_split_the_work_without_double_counting() {
    let s = scratch(6).await;
    let c = Cast::new(&s.settings);
    let n = 300;
    let messages: Vec<_> = (0..n).map(|i| c.file(&format!("blob-{i}"))).collect();
    let outcome = s.store.insert_batch(messages.clone()).await.unwrap();
    assert_eq!(outcome.inserted, n as u64);
    for m in &messages {
        let req = c.request(Action::Delete, &c.alice, m.msg_id);
        assert!(s.store.transition(req).await.unwrap().changed);
    }
    s.clock
        .advance(s.settings.policy.retention() + Duration::from_millis(1));

    let options = PurgeOptions { batch_size: 7 };
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(s.store.purge_all(options), s.store.purge_all(options))
    })
    .await
    .expect("purge workers never block each other for long");
    let (a, b) = (a.unwrap(), b.unwrap());
    println!(
        "worker a purged {}, worker b purged {}",
        a.messages, b.messages
    );
    assert_eq!(a.messages + b.messages, n as u64, "{a:?} {b:?}");
    assert_eq!(a.events + b.events, n as u64);
    let mut released: Vec<_> = a
        .released_attachments
        .into_iter()
        .chain(b.released_attachments)
        .collect();
    released.sort();
    released.dedup();
    assert_eq!(released.len(), n, "every attachment released exactly once");

    let again = s.store.purge(options).await.unwrap();
    assert_eq!((again.messages, again.more), (0, false));
    let feed = s
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 500)
        .await
        .unwrap();
    assert!(feed.events.is_empty());
    s.drop_schema().await;
}

/// A server-side kill of the connection mid-transition is `Unavailable`, applies nothing, and a
/// retry of the same request applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connection_killed_mid_transition_is_temporary_and_atomic() {
    let s = scratch(2).await;
    let c = Cast::new(&s.settings);
    let m = c.text("hello");
    s.store.insert(m.clone()).await.unwrap();

    // Hold the message row so the store's compare-and-set waits inside its transaction.
    let mut blocker = s.admin.begin().await.unwrap();
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *blocker)
        .await
        .unwrap();
    sqlx::query(AssertSqlSafe(format!(
        "SELECT 1 FROM {}.messages WHERE conversation_id = $1 AND msg_id = $2 FOR UPDATE",
        s.schema
    )))
    .bind(c.conv.as_str())
    .bind(m.msg_id.as_i64())
    .execute(&mut *blocker)
    .await
    .unwrap();

    let req = c.request(Action::Recall, &c.alice, m.msg_id);
    let store = s.store.clone();
    let pending = tokio::spawn({
        let req = req.clone();
        async move { store.transition(req).await }
    });
    let mut victim = None;
    for _ in 0..200 {
        victim = sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(blocker_pid)
        .fetch_optional(&s.admin)
        .await
        .unwrap();
        if victim.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let victim = victim.expect("the store's transaction waits on the held row");
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(victim)
        .fetch_one(&s.admin)
        .await
        .unwrap();
    assert!(killed);
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    blocker.rollback().await.unwrap();

    // Nothing of the killed transaction survived: still Normal, version 1, no event.
    let v = s.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Normal, 1));
    let feed = s
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 10)
        .await
        .unwrap();
    assert!(feed.events.is_empty());

    // The client's retry (same request id) applies it once.
    let done = s.store.transition(req.clone()).await.unwrap();
    assert!(done.changed && !done.replayed);
    let again = s.store.transition(req).await.unwrap();
    assert!(again.replayed);
    let other = c.request(Action::Recall, &c.alice, m.msg_id);
    assert!(!s.store.transition(other).await.unwrap().changed);
    s.drop_schema().await;
}

const DAY: Duration = Duration::from_secs(24 * 3600);

/// With a history limit, moderators deleting messages while two purge workers remove them leave
/// no `change_events` row whose message is gone: the purge deletes a message's events in the
/// same transaction, after it holds the message's row lock (see `src/purge.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_purge_racing_deletes_leaves_no_orphan_event_rows() {
    let policy = Policy::builder()
        .history_limit(Some(40 * DAY))
        .build()
        .unwrap();
    let s = scratch_with(8, policy).await;
    let mut orphans_seen = 0;
    for round in 0..8 {
        let c = Cast::in_conversation(&s.settings, &format!("round-{round}"));
        let messages: Vec<_> = (0..200).map(|i| c.text(&format!("m{i}"))).collect();
        s.store.insert_batch(messages.clone()).await.unwrap();
        s.clock.advance(41 * DAY);
        let deletes = messages.chunks(25).map(|chunk| {
            let store = s.store.clone();
            let reqs: Vec<_> = chunk
                .iter()
                .map(|m| c.moderator_request(Action::Delete, &c.mia, m.msg_id))
                .collect();
            tokio::spawn(async move {
                for r in reqs {
                    if let Err(e) = store.transition(r).await {
                        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
                    }
                }
            })
        });
        let deletes: Vec<_> = deletes.collect();
        let purgers: Vec<_> = (0..2)
            .map(|_| {
                let store = s.store.clone();
                tokio::spawn(async move {
                    loop {
                        let r = store.purge(PurgeOptions { batch_size: 3 }).await.unwrap();
                        if !r.more {
                            break;
                        }
                    }
                })
            })
            .collect();
        for t in deletes.into_iter().chain(purgers) {
            t.await.unwrap();
        }
        let orphans: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT count(*) FROM {0}.change_events e WHERE NOT EXISTS \
             (SELECT 1 FROM {0}.messages m \
              WHERE m.conversation_id = e.conversation_id AND m.msg_id = e.msg_id)",
            s.schema
        )))
        .fetch_one(&s.admin)
        .await
        .unwrap();
        orphans_seen += orphans;
    }
    assert_eq!(
        orphans_seen, 0,
        "change events outlived their purged messages"
    );
    s.drop_schema().await;
}

/// Copies of one request racing a sender who keeps recalling and restoring the message all get
/// one answer, and it is the one the request record in the table holds (a no-op is recorded
/// only if the message is still at the version it was decided at). The copies go through three
/// handles over the same schema, each with its own state cache, so most of them decide first
/// on a state another handle has already changed (the one-statement guess must then fail its
/// guard); the feed still holds one event per version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_to_a_racing_request_is_the_recorded_one() {
    let s = scratch(8).await;
    let c = Arc::new(Cast::new(&s.settings));
    let m = c.text("flip");
    s.store.insert(m.clone()).await.unwrap();
    let handles = vec![
        s.store.clone(),
        s.factory.open(&s.schema, s.settings.clone()).await,
        s.factory.open(&s.schema, s.settings.clone()).await,
    ];
    for h in &handles {
        // Every handle knows the message as sent.
        h.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    }
    let flipper = {
        let (store, c, id) = (s.store.clone(), c.clone(), m.msg_id);
        tokio::spawn(async move {
            for _ in 0..40 {
                for action in [Action::Recall, Action::Restore] {
                    // A restore of a message the racing copies left Normal is refused.
                    if let Err(e) = store.transition(c.request(action, &c.alice, id)).await {
                        assert_eq!(e.kind(), ErrorKind::InvalidState, "{e}");
                    }
                }
            }
        })
    };
    for i in 0..40 {
        let action = if i % 2 == 0 {
            Action::Recall
        } else {
            Action::Restore
        };
        let req = c.request(action, &c.alice, m.msg_id);
        let copies: Vec<_> = (0..3)
            .map(|k| {
                let (store, req) = (handles[(i + k) % 3].clone(), req.clone());
                tokio::spawn(async move { store.transition(req).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in copies {
            answers.push(match t.await.unwrap() {
                Ok(o) => Ok((o.status, o.version, o.changed)),
                Err(e) => Err(e.kind()),
            });
        }
        let (status, version, changed, refusal): (i16, i64, bool, Option<String>) =
            sqlx::query_as(AssertSqlSafe(format!(
                "SELECT status, version, changed, refusal FROM {}.requests \
                 WHERE conversation_id = $1 AND request_id = $2",
                s.schema
            )))
            .bind(c.conv.as_str())
            .bind(req.request_id.as_str())
            .fetch_one(&s.admin)
            .await
            .expect("every decided request is recorded");
        let recorded = match refusal {
            Some(kind) => Err(ErrorKind::parse(&kind).unwrap()),
            None => Ok((Status::from_code(status).unwrap(), version as u32, changed)),
        };
        for a in &answers {
            assert_eq!(a, &recorded, "request {i}: answers {answers:?}");
        }
    }
    flipper.await.unwrap();
    let last = s
        .store
        .audit(&c.conv, m.msg_id)
        .await
        .unwrap()
        .message
        .lifecycle;
    let feed = s
        .store
        .drain_changes(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .unwrap();
    let versions: Vec<u32> = feed.events.iter().map(|e| e.version).collect();
    assert_eq!(versions, (2..=last.version).collect::<Vec<_>>());
    s.drop_schema().await;
}

/// The pool does not ping before handing out a connection: one the server closed while it sat
/// idle fails its first statement, and the read runs again on a fresh connection instead of
/// failing the caller; a transition after it goes through too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_killed_while_idle_costs_the_next_read_nothing() {
    let s = scratch(1).await;
    let c = Cast::new(&s.settings);
    let m = c.text("still here");
    s.store.insert(m.clone()).await.unwrap();
    for round in 0..3 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(s.store.inner().pool())
            .await
            .unwrap();
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .fetch_one(&s.admin)
            .await
            .unwrap();
        assert!(killed);
        // Let the server finish closing the socket.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v = s.store.get(&c.conv, m.msg_id, &c.bob).await;
        assert!(v.is_ok(), "round {round}: {v:?}");
    }
    let done = s
        .store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .unwrap();
    assert!(done.changed);
    s.drop_schema().await;
}

/// Kills the only connection of `store`'s pool while it is idle, and waits for the server to
/// close its socket.
async fn kill_idle_connection(store: &PostgresStore, admin: &PgPool) {
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.inner().pool())
        .await
        .unwrap();
    // sqlx pings a released connection in a background task; a kill during that ping would
    // have the pool discard the connection before the test uses it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .unwrap();
    assert!(killed);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Without the ping before acquire (the default), a write on a connection the server closed
/// while idle fails once, as a temporary `Unavailable`, and its retry goes through on a fresh
/// connection. With `with_ping_before_acquire(true)` the pool finds the dead connection first
/// and the write goes through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_idle_connection_fails_one_write_at_most_and_none_with_the_ping_on() {
    let s = scratch(1).await;
    let c = Cast::new(&s.settings);
    let pinging = PostgresStore::connect(
        s.factory
            .config(&s.schema)
            .with_max_connections(1)
            .with_migrate_on_connect(false)
            .with_ping_before_acquire(true),
        s.settings.clone(),
    )
    .await
    .unwrap();
    for round in 0..3 {
        kill_idle_connection(&s.store, &s.admin).await;
        let m = c.text(&format!("after kill {round}"));
        let first = s.store.insert(m.clone()).await;
        let err = first.expect_err("the dead connection's write, no ping");
        assert!(
            err.kind() == ErrorKind::Unavailable && err.is_temporary(),
            "round {round}: {err:?}"
        );
        // The retry may find the first attempt committed (it never is: the server had closed
        // the session) or not: either way it is stored now, exactly once.
        assert!(s.store.insert(m.clone()).await.is_ok(), "round {round}");

        kill_idle_connection(&pinging, &s.admin).await;
        let n = c.text(&format!("after kill {round}, pinged"));
        let done = pinging.insert(n).await;
        assert!(done.is_ok(), "round {round}, ping on: {done:?}");
    }
    pinging.inner().pool().close().await;
    s.drop_schema().await;
}
