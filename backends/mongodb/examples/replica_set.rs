//! A check of what only a real replica set can show, so not a test of the CI run (FerretDB, the
//! stand-in, accepts and ignores write concerns): run it against a replica set with
//!
//! ```sh
//! IMSTORE_MONGODB_URL='mongodb://h1,h2,h3/?replicaSet=rs0' \
//!   cargo run -p imstore-mongodb --features testing --example replica_set
//! ```
//!
//! It exits non-zero when the check fails, and given a URL that names no replica set it fails
//! rather than passing vacuously.

use std::sync::Arc;
use std::time::{Duration, Instant};

use imstore_conformance::StoreFactory;
use imstore_core::{
    ConversationId, ErrorKind, ManualClock, MessageStore, MsgIdGenerator, NewMessage,
    StoreSettings, UserId,
};
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::doc;
use mongodb::options::{Acknowledgment, WriteConcern};

fn replica_set_url() -> String {
    let url = std::env::var("IMSTORE_MONGODB_URL").expect("IMSTORE_MONGODB_URL is set");
    assert!(
        url.contains("replicaSet="),
        "this test needs a replica set: IMSTORE_MONGODB_URL must name one (?replicaSet=)"
    );
    url
}

/// A write no majority can acknowledge (more nodes than the set has) fails as `Unavailable`
/// once its `wtimeout` is spent, instead of blocking: the behaviour with a data node down.
#[tokio::main]
async fn main() {
    an_unreachable_write_concern_is_unavailable_within_its_wtimeout().await;
    println!("ok: a write concern no majority meets is Unavailable within its wtimeout");
}

async fn an_unreachable_write_concern_is_unavailable_within_its_wtimeout() {
    let url = replica_set_url();
    let base = MongoFactory::new(url.clone()).with_prefix("mgrs");
    let hello = base
        .client()
        .await
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .expect("hello");
    let set = hello
        .get_str("setName")
        .expect("the server is a replica set member");
    let members = hello.get_array("hosts").map_or(1, |h| h.len()) as u32;
    println!("replica set {set}, {members} data-bearing members");

    let ns = base.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = || StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    // Open once with the defaults, which builds the indexes.
    drop(base.open(&ns, settings()).await);
    let strict = MongoFactory::new(url)
        .with_prefix("mgrs")
        .with_config(move |c| {
            c.with_write_concern(
                WriteConcern::builder()
                    .w(Acknowledgment::Nodes(members + 1))
                    .w_timeout(Duration::from_secs(2))
                    .build(),
            )
        });
    let store = strict.open(&ns, settings()).await;
    let ids = MsgIdGenerator::new(9, Arc::new(clock.clone())).expect("ids");
    let m = NewMessage::text(
        ids.next_id().expect("id"),
        ConversationId::new("rs").expect("conversation"),
        UserId::new("alice").expect("user"),
        b"hi".to_vec(),
    );
    let started = Instant::now();
    let e = store
        .insert(m)
        .await
        .expect_err("no majority of that size exists");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the write blocked"
    );
    base.drop_namespace(&ns).await;
}
