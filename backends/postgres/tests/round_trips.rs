//! How many statements (each one round trip) a transition costs, counted from sqlx's own
//! statement log (`sqlx::query` tracing events) by a subscriber installed for this binary:
//! one when the handle knows the message's state and it is still the stored one, two when it
//! does not (cold, or changed by another handle), and a replay is one read.
//!
//! Its own test binary, with one test, because the subscriber is process-wide.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use imstore_conformance::StoreFactory;
use imstore_conformance::fixtures::Cast;
use imstore_core::{Action, ErrorKind, ManualClock, MessageStore, StoreSettings};
use imstore_postgres::testing::PgFactory;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Counts the statements sqlx logs, and keeps their one-line summaries.
#[derive(Default)]
struct Statements {
    next_span: AtomicU64,
    seen: Mutex<Vec<String>>,
}

struct Summary(String);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            self.0 = value.to_owned();
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Statements {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        if event.metadata().target() == "sqlx::query" {
            let mut s = Summary(String::new());
            event.record(&mut s);
            self.seen.lock().unwrap().push(s.0);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Counter(Arc<Statements>);

impl Counter {
    /// The statements logged while `f` ran.
    async fn during<T>(&self, f: impl std::future::Future<Output = T>) -> (T, Vec<String>) {
        let before = self.0.seen.lock().unwrap().len();
        let out = f.await;
        let seen = self.0.seen.lock().unwrap()[before..].to_vec();
        (out, seen)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_transition_on_a_known_state_is_one_statement_and_on_an_unknown_one_two() {
    let statements = Arc::new(Statements::default());
    tracing::subscriber::set_global_default(Arc::clone(&statements))
        .expect("no other subscriber in this binary");
    let counter = Counter(statements);

    let factory = PgFactory::from_env()
        .with_prefix("imspg_rt")
        .with_pool_size(2);
    let schema = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let a = factory.open(&schema, settings.clone()).await;
    let b = factory.open(&schema, settings.clone()).await;
    let c = Cast::new(&settings);

    // Sent through `a`: `a` knows its state.
    let m = c.text("known");
    a.insert(m.clone()).await.unwrap();
    let recall = c.request(Action::Recall, &c.alice, m.msg_id);
    let (done, seen) = counter.during(a.transition(recall.clone())).await;
    assert!(done.unwrap().changed);
    assert_eq!(seen.len(), 1, "a recall of a known message: {seen:?}");
    let (done, seen) = counter
        .during(a.transition(c.request(Action::Restore, &c.alice, m.msg_id)))
        .await;
    assert!(done.unwrap().changed);
    assert_eq!(seen.len(), 1, "the restore after it: {seen:?}");

    // A replay of the recall: its record answers, read in one statement, nothing written.
    let (done, seen) = counter.during(a.transition(recall)).await;
    assert!(done.unwrap().replayed);
    assert_eq!(seen.len(), 1, "a replay: {seen:?}");

    // Sent through `a`, recalled through `b`, which has never seen it: read, then apply.
    let n = c.text("unknown to b");
    a.insert(n.clone()).await.unwrap();
    let (done, seen) = counter
        .during(b.transition(c.request(Action::Recall, &c.alice, n.msg_id)))
        .await;
    let done = done.unwrap();
    assert!(done.changed && done.version == 2);
    assert_eq!(seen.len(), 2, "a cold recall: {seen:?}");

    // `a` still holds the state before `b`'s recall: its guess fails the guard, the same
    // statement's read shows the recall, and the second recall is a recorded no-op.
    let (done, seen) = counter
        .during(a.transition(c.request(Action::Recall, &c.alice, n.msg_id)))
        .await;
    let done = done.unwrap();
    assert!(!done.changed && done.version == 2, "{done:?}");
    assert_eq!(
        seen.len(),
        2,
        "a stale guess, then the no-op's record: {seen:?}"
    );
    // And a restore by someone else, on `a`'s now refreshed state: a recorded refusal.
    let (done, _) = counter
        .during(a.transition(c.request(Action::Restore, &c.bob, n.msg_id)))
        .await;
    assert_eq!(done.unwrap_err().kind(), ErrorKind::Forbidden);
    let (done, seen) = counter
        .during(a.transition(c.request(Action::Restore, &c.alice, n.msg_id)))
        .await;
    assert!(done.unwrap().changed);
    assert_eq!(
        seen.len(),
        1,
        "the state `a` read is current again: {seen:?}"
    );

    factory.drop_namespace(&schema).await;
}
