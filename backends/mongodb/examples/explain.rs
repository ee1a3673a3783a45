//! Prints how the server behind `IMSTORE_MONGODB_URL` plans every query shape the backend sends.
//!
//! Builds a store in a fresh database, loads a conversation with a long history (thousands of
//! messages, recalls, restores, deletes, a purge) beside other conversations (one held), then
//! runs `explain` (verbosity `queryPlanner`) on each shape of `imstore_mongodb::queries`, the
//! module the backend itself builds its queries with, and prints: the command, whether FerretDB
//! pushed the filter, sort and limit down, and the plan's access path (index or scan).
//!
//! ```sh
//! source .servers/env
//! cargo run -p imstore-mongodb --features testing --example explain            # 3,000 messages
//! EXPLAIN_MESSAGES=20000 cargo run -p imstore-mongodb --features testing --example explain
//! ```
//!
//! The database is dropped at the end unless `EXPLAIN_KEEP=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use imstore_conformance::StoreFactory;
use imstore_core::{
    Authority, Clock, ConversationId, FeedCursor, ManualClock, MessageStore, MessageStoreExt,
    MsgIdGenerator, NewMessage, Policy, PurgeOptions, RequestId, StoreSettings, UserId,
};
use imstore_mongodb::queries::{self, Highest, Pipeline, Query};
use imstore_mongodb::testing::MongoFactory;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, Document, doc};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The access path of a plan: FerretDB over PostgreSQL answers PostgreSQL's JSON plan
/// (`Node Type`, `Index Name`), MongoDB its winning plan (`stage`, `indexName`).
fn access_path(v: &Bson, out: &mut Vec<String>) {
    match v {
        Bson::Document(d) => {
            if let Ok(node) = d.get_str("Node Type") {
                let mut s = node.to_string();
                if let Ok(i) = d.get_str("Index Name") {
                    s.push_str(&format!(" using {i}"));
                } else if let Ok(r) = d.get_str("Relation Name") {
                    s.push_str(&format!(" on {r}"));
                }
                if let Ok(c) = d.get_str("Index Cond") {
                    s.push_str(&format!(" [{c}]"));
                }
                out.push(s);
            }
            if let Ok(stage) = d.get_str("stage") {
                let mut s = stage.to_string();
                if let Ok(i) = d.get_str("indexName") {
                    s.push_str(&format!(" {i}"));
                }
                out.push(s);
            }
            for (k, inner) in d {
                if k != "rejectedPlans" {
                    access_path(inner, out);
                }
            }
        }
        Bson::Array(a) => a.iter().for_each(|i| access_path(i, out)),
        _ => {}
    }
}

/// One shape the backend sends: a `find` or an `aggregate`.
enum Shape {
    Find(Box<Query>),
    Aggregate(Pipeline),
}

impl Shape {
    /// The command to explain.
    fn command(&self) -> Document {
        match self {
            Shape::Find(q) => q.find_command(),
            Shape::Aggregate(p) => p.aggregate_command(),
        }
    }

    /// Prints the shape as the README's plan table shows it.
    fn print(&self) {
        match self {
            Shape::Find(q) => {
                println!("  {}.find({})", q.collection, q.filter);
                if let Some(s) = &q.sort {
                    println!("    sort {s}");
                }
                if let Some(l) = q.limit {
                    println!("    limit {l}");
                }
            }
            Shape::Aggregate(p) => println!(
                "  {}.aggregate({})",
                p.collection,
                Bson::from(p.stages.clone())
            ),
        }
    }
}

fn flag(plan: &Document, key: &str) -> String {
    match plan.get(key) {
        Some(Bson::Boolean(b)) => b.to_string(),
        Some(other) => other.to_string(),
        None => "-".to_string(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = env_usize("EXPLAIN_MESSAGES", 3000);
    let factory = MongoFactory::from_env().with_prefix("mgexplain");
    // EXPLAIN_DB=<database>: explain over a database a previous run kept, without loading.
    let reuse = std::env::var("EXPLAIN_DB").ok();
    let ns = match &reuse {
        Some(name) => name.clone(),
        None => factory.create_namespace().await,
    };
    let clock = ManualClock::starting_now();
    let policy = Policy::builder()
        .retention(Duration::from_secs(30 * 24 * 3600))
        .history_limit(Some(Duration::from_secs(365 * 24 * 3600)))
        .build()
        .expect("policy");
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        policy,
        ..StoreSettings::default()
    };
    let store = factory.open(&ns, settings).await;
    let ids = MsgIdGenerator::new(3, Arc::new(clock.clone())).expect("ids");
    let alice = UserId::new("alice").expect("user");
    let moderator = UserId::new("mod").expect("user");
    let big = ConversationId::new("big").expect("conversation");
    let started = Instant::now();

    let mut purged = 0;
    if reuse.is_none() {
        // The long conversation: messages (every 10th with an attachment), then recalls, restores
        // and deletes, so the log holds thousands of events and records.
        let mut msg_ids = Vec::with_capacity(messages);
        let mut batch = Vec::new();
        for i in 0..messages {
            let id = ids.next_id().expect("id");
            msg_ids.push(id);
            let mut m =
                NewMessage::text(id, big.clone(), alice.clone(), format!("m{i}").into_bytes());
            if i % 10 == 0 {
                m.attachment = Some(imstore_core::Attachment {
                    key: format!("files/{i}"),
                    size: 10,
                    mime: "image/png".into(),
                });
            }
            batch.push(m);
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
        let transitions = |pick: fn(usize) -> bool, what: u8| {
            let store = &store;
            let (alice, moderator, big, clock) = (&alice, &moderator, &big, &clock);
            let chosen: Vec<_> = msg_ids
                .iter()
                .enumerate()
                .filter(|(i, _)| pick(*i))
                .map(|(i, id)| (i, *id))
                .collect();
            async move {
                futures::stream::iter(chosen)
                    .map(|(i, id)| async move {
                        // Retried with the same request id while the server is restarted (the
                        // fault tests of the workspace kill it): a retry is a replay.
                        let mut tries = 0;
                        loop {
                            let rid = RequestId::new(format!("r{what}-{i}")).expect("request id");
                            let now = clock.now();
                            let r = match what {
                                0 => {
                                    store
                                        .recall(alice, Authority::Member, big, id, now, rid)
                                        .await
                                }
                                1 => store.restore(alice, big, id, now, rid).await,
                                _ => {
                                    store
                                        .delete(moderator, Authority::Moderator, big, id, now, rid)
                                        .await
                                }
                            };
                            match r {
                                Err(e)
                                    if tries < 60
                                        && e.kind() != imstore_core::ErrorKind::InvalidInput =>
                                {
                                    tries += 1;
                                    tokio::time::sleep(Duration::from_secs(1)).await;
                                }
                                other => break other,
                            }
                        }
                    })
                    .buffer_unordered(2)
                    .try_collect::<Vec<_>>()
                    .await
                    .expect("transition")
            }
        };
        transitions(|i| i % 4 == 0, 0).await;
        transitions(|i| i % 12 == 0, 1).await;
        transitions(|i| i % 7 == 0, 2).await;

        // Other conversations, one of them under legal hold with expired messages.
        for c in 0..20 {
            let conv = ConversationId::new(format!("c{c}")).expect("conversation");
            let batch: Vec<NewMessage> = (0..50)
                .map(|i| {
                    NewMessage::text(
                        ids.next_id().expect("id"),
                        conv.clone(),
                        alice.clone(),
                        vec![i],
                    )
                })
                .collect();
            let first = batch[0].msg_id;
            store.insert_batch(batch).await.expect("insert");
            let rid = RequestId::new(format!("d{c}")).expect("request id");
            store
                .delete(
                    &moderator,
                    Authority::Moderator,
                    &conv,
                    first,
                    clock.now(),
                    rid,
                )
                .await
                .expect("delete");
        }
        let held = ConversationId::new("c0").expect("conversation");
        store.set_legal_hold(&held, true).await.expect("hold");

        // Past retention: purge batches remove part of the deleted and recalled messages (8
        // purgers of one conversation race for its feed position: small batches, retried).
        clock.advance(31 * DAY);
        for _ in 0..3 {
            for _ in 0..10 {
                match store.purge(PurgeOptions { batch_size: 25 }).await {
                    Ok(r) => {
                        purged += r.messages;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
    } else {
        clock.advance(31 * DAY);
    }
    let top = factory
        .client()
        .await
        .database(&ns)
        .collection::<Document>("log")
        .find_one(doc! {"conversation_id": "big", "kind": {"$in": ["event", "gone"]}})
        .sort(doc! {"seq": -1})
        .await
        .expect("head")
        .expect("an event");
    let head = FeedCursor(u64::try_from(top.get_i64("seq").expect("seq")).unwrap_or(0));
    println!(
        "database {ns}: `big` with {messages} messages (feed head {}), 20 other conversations \
         (c0 held), {purged} purged now; loaded in {:.1} s\n",
        head.0,
        started.elapsed().as_secs_f64()
    );

    // Real values for the parameters.
    let client = factory.client().await;
    let db = client.database(&ns);
    let any = |coll: &str, filter: Document| {
        let db = db.clone();
        let coll = coll.to_string();
        async move {
            db.collection::<Document>(&coll)
                .find_one(filter)
                .await
                .expect("find")
                .expect("a document")
        }
    };
    let msg_doc = any("messages", doc! {"conversation_id": "big"}).await;
    let msg = msg_doc.get_object_id("_id").expect("_id");
    let version = msg_doc.get_i64("version").expect("version");
    let mid = msg_doc.get_i64("msg_id").expect("msg_id");
    let event = any("log", doc! {"conversation_id": "big", "kind": "event"}).await;
    let entry = event.get_object_id("_id").expect("_id");
    let request = event.get_str("request_id").expect("request_id").to_string();
    let page_rows: Vec<(ObjectId, i64)> = db
        .collection::<Document>("messages")
        .find(doc! {"conversation_id": "big"})
        .limit(50)
        .await
        .expect("find")
        .map(|d| {
            let d = d.expect("doc");
            (
                d.get_object_id("_id").expect("_id"),
                d.get_i64("version").expect("v"),
            )
        })
        .collect()
        .await;
    let events: Vec<ObjectId> = page_rows.iter().take(3).map(|r| r.0).collect();
    let now = clock.now().as_millis();
    let cutoff = now - 30 * DAY.as_millis() as i64;
    let old = now - DAY.as_millis() as i64;
    let after = i64::try_from(head.0).unwrap_or(0).saturating_sub(100);

    let shapes: Vec<(&str, &str, Query)> = vec![
        (
            "point read (get, transition, insert duplicate)",
            "conversation_msg_id",
            queries::message_by_key("big", mid),
        ),
        (
            "latest page",
            "conversation_msg_id",
            queries::page("big", None, true, 51),
        ),
        (
            "next page, newest first",
            "conversation_msg_id",
            queries::page("big", Some(mid), true, 51),
        ),
        (
            "page, oldest first",
            "conversation_msg_id",
            queries::page("big", Some(mid), false, 51),
        ),
        (
            "log probe of one message (every read)",
            "msg_version",
            queries::commits_after(&[(msg, version)]),
        ),
        (
            "log probe of a page (50 $or branches)",
            "msg_version (one IXSCAN per branch, OR)",
            queries::commits_after(&page_rows),
        ),
        (
            "transition: request record",
            "conversation_request",
            queries::request_record("big", &request),
        ),
        (
            "transition/purge/fence: next feed position",
            "conversation_seq (backward)",
            queries::highest("big", Highest::Position),
        ),
        (
            "feed head",
            "conversation_kind_seq (two ranges, SORT_MERGE)",
            queries::highest("big", Highest::Head),
        ),
        (
            "purge mark (gone)",
            "conversation_kind_seq (backward)",
            queries::highest("big", Highest::Gone),
        ),
        (
            "purge mark (unfinished purges' events)",
            "conversation_kind_seq or msg_version",
            queries::highest("big", Highest::EventsOf(events.clone())),
        ),
        (
            "feed pull",
            "conversation_kind_seq",
            queries::feed_pull("big", after, 100),
        ),
        (
            "unfinished purges of a conversation (feed, heads)",
            "todo_conversation",
            queries::purging("big"),
        ),
        (
            "transition: write the document (update_one)",
            "_id_",
            queries::message_by_id(msg, Some(version + 1)),
        ),
        (
            "clear a todo (update_one)",
            "_id_",
            queries::entry_by_id(entry),
        ),
        (
            "purge: events of the message turned gone (update_many)",
            "msg_version (prefix)",
            queries::events_of(msg),
        ),
        (
            "purge: delete the document (delete_one)",
            "_id_",
            queries::message_by_id(msg, None),
        ),
        (
            "purge: attachment key still referenced?",
            "attachment_key",
            queries::attachment_referenced("files/10"),
        ),
        (
            "purge: request records past retention (delete_many)",
            "kind_at",
            queries::expired_records(cutoff),
        ),
        (
            "purge: unfinished purges",
            "todo_conversation (prefix)",
            queries::unfinished("finish", 500),
        ),
        (
            "purge: documents behind their log",
            "todo_conversation (prefix)",
            queries::unfinished("cache", 500),
        ),
        (
            "purge: candidates (not parked)",
            "parked_retired_at / parked_created_at (OR of two IXSCANs)",
            queries::purge_candidates(cutoff, Some(cutoff - 300 * DAY.as_millis() as i64), 500),
        ),
        (
            "purge: park a held conversation's candidates (update_many)",
            "_id_ ($in)",
            queries::messages_by_ids(&events),
        ),
        (
            "release a hold: un-park (update_many)",
            "parked_retired_at (prefix)",
            queries::parked("c0"),
        ),
        (
            "purge: is the conversation held?",
            "_id_",
            queries::hold("c0"),
        ),
        (
            "set_legal_hold (update_one, upsert)",
            "_id_",
            queries::hold_document("c0"),
        ),
        (
            "sweep: old tombstones and gone events",
            "kind_wall / kind_at (OR)",
            queries::sweepable(old, cutoff, 500),
        ),
        (
            "sweep: delete them (delete_many)",
            "_id_",
            queries::entries_below(&[entry], 1_000_000),
        ),
        (
            "sweep: re-arm the kept highest (update_many)",
            "_id_",
            queries::entries_from(&[entry], 0),
        ),
        (
            "re-key scan, first page",
            "_id_",
            queries::content_scan(None, 101),
        ),
        (
            "re-key scan, next page",
            "_id_",
            queries::content_scan(Some(msg), 101),
        ),
        (
            "device sync heads: unfinished purges of many conversations",
            "todo_conversation",
            queries::purging_in(&["big", "c0", "c1"]),
        ),
    ];
    let pipelines: Vec<(&str, &str, Pipeline)> = vec![
        (
            "device sync heads: highest event per conversation",
            "conversation_kind_seq (DISTINCT_SCAN, one seek per conversation)",
            queries::highest_of_kind_in(&["big", "c0", "c1"], "event"),
        ),
        (
            "device sync heads: highest gone entry per conversation",
            "conversation_kind_seq (DISTINCT_SCAN, one seek per conversation)",
            queries::highest_of_kind_in(&["big", "c0", "c1"], "gone"),
        ),
        (
            "device sync heads: highest event of messages being purged",
            "msg_version",
            queries::highest_events_of(&events),
        ),
    ];
    let all = shapes
        .into_iter()
        .map(|(name, mongo, q)| (name, mongo, Shape::Find(Box::new(q))))
        .chain(
            pipelines
                .into_iter()
                .map(|(name, mongo, p)| (name, mongo, Shape::Aggregate(p))),
        );
    for (name, mongo, shape) in all {
        let plan = db
            .run_command(doc! {"explain": shape.command(), "verbosity": "queryPlanner"})
            .await
            .expect("explain");
        let mut path = Vec::new();
        access_path(&Bson::Document(plan.clone()), &mut path);
        path.dedup();
        println!("## {name}");
        shape.print();
        if let Shape::Find(_) = shape {
            println!(
                "  pushdown: filter {} sort {} limit {}",
                flag(&plan, "filterPushdown"),
                flag(&plan, "sortPushdown"),
                flag(&plan, "limitPushdown")
            );
        }
        println!("  plan: {}", path.join(" <- "));
        println!("  MongoDB would use: {mongo}");
        if std::env::var("EXPLAIN_RAW").is_ok() {
            println!("  raw: {plan}");
        }
        println!();
    }
    if std::env::var("EXPLAIN_KEEP").is_err() && reuse.is_none() {
        factory.drop_namespace(&ns).await;
    } else {
        println!("kept database {ns}");
    }
}
