//! What a purge batch reads grows with what it removes, not with what it must keep: a held
//! conversation's expired backlog is parked (out of the candidate indexes) by the first batches
//! that meet it, then never read again until the hold is released. Runs against
//! `IMSTORE_MONGODB_URL`.

use std::time::Duration;

use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{Action, MessageStore, PurgeOptions};
use imstore_mongodb::queries;
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::Document;

const HELD: usize = 30;

/// How many documents the backend's own candidate query returns now.
async fn candidates(h: &Harness<'_, MongoFactory>, f: &MongoFactory, cutoff: i64) -> u64 {
    let q = queries::purge_candidates(cutoff, None, 10_000);
    f.client()
        .await
        .database(h.namespace())
        .collection::<Document>(q.collection)
        .count_documents(q.filter)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_backlog_is_parked_once_and_purged_after_release() {
    let f = MongoFactory::from_env().with_prefix("mgcost");
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let batch: Vec<_> = (0..HELD).map(|i| c.text(&format!("held {i}"))).collect();
    let ids: Vec<_> = batch.iter().map(|m| m.msg_id).collect();
    h.store.insert_batch(batch).await.unwrap();
    for id in &ids {
        h.store
            .transition(c.request(Action::Delete, &c.alice, *id))
            .await
            .unwrap();
    }
    h.store.set_legal_hold(&c.conv, true).await.unwrap();
    h.clock
        .advance(h.settings.policy.retention() + Duration::from_secs(86_400));
    let cutoff = i64::MAX;
    assert_eq!(candidates(&h, &f, cutoff).await, HELD as u64);

    // Batches of 10 park the 30 held messages: nothing removed, and then nothing left to read.
    let mut calls = 0;
    loop {
        let r = h
            .store
            .purge(PurgeOptions { batch_size: 10 })
            .await
            .unwrap();
        assert_eq!(r.messages, 0, "a held message was purged");
        calls += 1;
        if !r.more {
            break;
        }
        assert!(calls <= 4, "the purge keeps finding the held backlog");
    }
    assert_eq!(
        candidates(&h, &f, cutoff).await,
        0,
        "the held backlog is still in the candidate index"
    );

    // Released: the backlog is a candidate again and is purged.
    h.store.set_legal_hold(&c.conv, false).await.unwrap();
    assert_eq!(candidates(&h, &f, cutoff).await, HELD as u64);
    let mut removed = 0;
    loop {
        let r = h
            .store
            .purge(PurgeOptions { batch_size: 10 })
            .await
            .unwrap();
        removed += r.messages;
        if !r.more {
            break;
        }
    }
    assert_eq!(removed, HELD as u64);
    h.finish().await;
}

/// The sweep keeps each conversation's highest tombstone and highest former event forever; a
/// kept entry must not be found again by the next sweeps, or, once there are as many of them as
/// a batch's limit, no sweep ever reaches a deletable entry. Batches of 1 make the limit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_tombstones_do_not_stall_the_sweep() {
    let f = MongoFactory::from_env().with_prefix("mgcost");
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let batch: Vec<_> = (0..4).map(|i| c.text(&format!("old {i}"))).collect();
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
    let r = h
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(r.messages, 4);
    let log = f
        .client()
        .await
        .database(h.namespace())
        .collection::<Document>("log");
    // A day of wall clock, without waiting for it.
    log.update_many(
        mongodb::bson::doc! {"kind": {"$in": ["purge", "gone"]}},
        mongodb::bson::doc! {"$set": {"wall": 0_i64}},
    )
    .await
    .unwrap();
    let guards = mongodb::bson::doc! {"kind": {"$in": ["purge", "gone"]}};
    assert_eq!(log.count_documents(guards.clone()).await.unwrap(), 8);
    for _ in 0..12 {
        h.store.purge(PurgeOptions { batch_size: 1 }).await.unwrap();
    }
    // Left: the highest position (the last purge) and the highest former event.
    assert_eq!(log.count_documents(guards).await.unwrap(), 2);
    h.finish().await;
}
