//! Times a transition, a latest page and a feed pull at a small and a big history, on the server
//! behind `IMSTORE_MONGODB_URL`, and prints the medians and the ratio big / small.
//!
//! Each size gets its own database and one conversation of `messages` messages, every 10th of
//! them recalled (so the log holds `messages / 10` events), beside 20 other conversations. Then,
//! `TIMING_SAMPLES` times each (default 50): a recall of a message not touched yet (read, decide,
//! insert, cache write), a newest-first page of 50 (`list`), and a feed pull of up to 100 events
//! from 20 events before the head (`changes_since`).
//!
//! ```sh
//! source .servers/env
//! cargo run -p imstore-mongodb --features testing --example timing
//! TIMING_SMALL=1000 TIMING_BIG=50000 cargo run -p imstore-mongodb --features testing --example timing
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use imstore_conformance::StoreFactory;
use imstore_core::{
    Authority, Clock, ConversationId, FeedCursor, ListOptions, ManualClock, MessageStore,
    MessageStoreExt, MsgId, MsgIdGenerator, NewMessage, RequestId, StoreSettings, UserId,
};
use imstore_mongodb::testing::MongoFactory;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Medians of (transition, latest page, feed pull) at a history of `messages` messages.
async fn measure(factory: &MongoFactory, messages: usize, samples: usize) -> [Duration; 3] {
    let ns = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open(&ns, settings).await;
    let ids = MsgIdGenerator::new(5, Arc::new(clock.clone())).expect("ids");
    let alice = UserId::new("alice").expect("user");
    let conv = ConversationId::new("big").expect("conversation");
    let loading = Instant::now();
    let mut all: Vec<MsgId> = Vec::with_capacity(messages + samples);
    let mut batch = Vec::new();
    for i in 0..messages + samples {
        let id = ids.next_id().expect("id");
        all.push(id);
        batch.push(NewMessage::text(
            id,
            conv.clone(),
            alice.clone(),
            format!("message {i}").into_bytes(),
        ));
        if batch.len() == 1000 {
            store
                .insert_batch(std::mem::take(&mut batch))
                .await
                .expect("insert");
        }
    }
    if !batch.is_empty() {
        store.insert_batch(batch).await.expect("insert");
    }
    for c in 0..20 {
        let other = ConversationId::new(format!("other{c}")).expect("conversation");
        let batch: Vec<NewMessage> = (0..50u8)
            .map(|i| {
                NewMessage::text(
                    ids.next_id().expect("id"),
                    other.clone(),
                    alice.clone(),
                    vec![i],
                )
            })
            .collect();
        store.insert_batch(batch).await.expect("insert");
    }
    // The history: every 10th message recalled, sequentially (one writer: no lost races).
    let recalled: Vec<MsgId> = all[..messages].iter().step_by(10).copied().collect();
    let events = recalled.len();
    futures::stream::iter(recalled.into_iter().enumerate())
        .for_each_concurrent(2, |(i, id)| {
            let (store, alice, conv, clock) = (&store, &alice, &conv, &clock);
            async move {
                let rid = RequestId::new(format!("h{i}")).expect("request id");
                store
                    .recall(alice, Authority::Member, conv, id, clock.now(), rid)
                    .await
                    .expect("recall");
            }
        })
        .await;
    println!(
        "  {messages} messages, {events} events loaded in {:.1} s",
        loading.elapsed().as_secs_f64()
    );

    let fresh = &all[messages..];
    let mut transition = Vec::new();
    let mut page = Vec::new();
    let mut pull = Vec::new();
    let cursor = FeedCursor::at(&conv, events.saturating_sub(20) as u64).expect("cursor");
    for (i, id) in fresh.iter().enumerate().take(samples) {
        let rid = RequestId::new(format!("t{i}")).expect("request id");
        let t = Instant::now();
        store
            .recall(&alice, Authority::Member, &conv, *id, clock.now(), rid)
            .await
            .expect("recall");
        transition.push(t.elapsed());
        let t = Instant::now();
        let p = store
            .list(&conv, &alice, ListOptions::newest(50))
            .await
            .expect("list");
        page.push(t.elapsed());
        assert_eq!(p.items.len(), 50);
        let t = Instant::now();
        let c = store
            .changes_since(&conv, &alice, cursor, 100)
            .await
            .expect("changes_since");
        pull.push(t.elapsed());
        assert!(!c.events.is_empty());
    }
    factory.drop_namespace(&ns).await;
    [median(transition), median(page), median(pull)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let small = env_usize("TIMING_SMALL", 1000);
    let big = env_usize("TIMING_BIG", 20000);
    let samples = env_usize("TIMING_SAMPLES", 50);
    let factory = MongoFactory::from_env().with_prefix("mgtiming");
    println!("small history:");
    let s = measure(&factory, small, samples).await;
    println!("big history:");
    let b = measure(&factory, big, samples).await;
    println!("\n| operation | {small} messages | {big} messages | big / small |");
    println!("|---|---|---|---|");
    for (i, name) in [
        "transition (recall)",
        "latest page (50)",
        "feed pull (100 after head - 20)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2} |",
            s[i].as_secs_f64() * 1e3,
            b[i].as_secs_f64() * 1e3,
            b[i].as_secs_f64() / s[i].as_secs_f64()
        );
    }
}
