//! The purge against what races it, on MongoDB specifically: a legal hold placed in the middle of
//! one large purge batch (the conformance case places it between small batches), and the head of
//! the feed, which the purge must never free. Runs against `IMSTORE_MONGODB_URL`.

use std::time::Duration;

use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{Action, MessageStore, PurgeOptions};
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::{Document, doc};

const N: usize = 120;

async fn purge_entries(h: &Harness<'_, MongoFactory>, f: &MongoFactory, c: &Cast) -> u64 {
    f.client()
        .await
        .database(h.namespace())
        .collection::<Document>("log")
        .count_documents(doc! {"conversation_id": c.conv.as_str(), "kind": "purge"})
        .await
        .unwrap()
}

/// A hold placed while one batch is purging its conversation stops that batch: no purge of the
/// conversation commits after `set_legal_hold` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hold_placed_mid_batch_stops_that_batch() {
    let f = MongoFactory::from_env().with_prefix("mgrace");
    let mut landed_mid_batch = false;
    for _ in 0..3 {
        let h = Harness::start(&f, Setup::default()).await;
        let c = Cast::new(&h.settings);
        let batch: Vec<_> = (0..N).map(|i| c.text(&format!("old {i}"))).collect();
        let ids: Vec<_> = batch.iter().map(|m| m.msg_id).collect();
        h.store.insert_batch(batch).await.unwrap();
        for id in &ids {
            h.store
                .transition(c.request(Action::Delete, &c.alice, *id))
                .await
                .unwrap();
        }
        h.clock
            .advance(h.settings.policy.retention() + Duration::from_secs(86_400));
        let purge = h.store.purge(PurgeOptions {
            batch_size: N as u32,
        });
        let hold = async {
            while purge_entries(&h, &f, &c).await == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            h.store.set_legal_hold(&c.conv, true).await.unwrap();
            purge_entries(&h, &f, &c).await
        };
        let (report, at_hold) = futures::join!(purge, hold);
        let report = report.unwrap();
        assert_eq!(
            purge_entries(&h, &f, &c).await,
            at_hold,
            "a purge committed after the hold was acknowledged"
        );
        assert_eq!(report.messages, at_hold);
        landed_mid_batch = at_hold < N as u64;
        h.finish().await;
        if landed_mid_batch {
            break;
        }
    }
    assert!(landed_mid_batch, "the hold never landed inside the batch");
}

/// Purging every message of a conversation keeps its feed position: the next event gets a seq
/// above every seq handed out before, and a cursor at the old head stays valid.
#[tokio::test]
async fn purging_everything_never_lowers_the_feed_head() {
    let f = MongoFactory::from_env().with_prefix("mgrace");
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    for i in 0..3 {
        let m = c.text(&format!("m{i}"));
        let id = m.msg_id;
        h.store.insert(m).await.unwrap();
        h.store
            .transition(c.request(Action::Delete, &c.alice, id))
            .await
            .unwrap();
    }
    let page = h
        .store
        .changes_since(&c.conv, &c.bob, imstore_core::FeedCursor::START, 10)
        .await
        .unwrap();
    let last = page.next.position();
    h.clock
        .advance(h.settings.policy.retention() + Duration::from_secs(86_400));
    let r = h
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(r.messages, 3);
    // The old cursor is still a cursor of this feed, and nothing is before it any more.
    let after = h
        .store
        .changes_since(&c.conv, &c.bob, page.next, 10)
        .await
        .unwrap();
    assert!(after.events.is_empty());
    let m = c.text("new");
    let id = m.msg_id;
    h.store.insert(m).await.unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let fresh = h
        .store
        .changes_since(&c.conv, &c.bob, page.next, 10)
        .await
        .unwrap();
    assert_eq!(fresh.events.len(), 1);
    assert!(fresh.events[0].seq > last);
    h.finish().await;
}
