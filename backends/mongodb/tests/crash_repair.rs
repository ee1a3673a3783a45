//! What happens when a process dies between a commit (a transition's or a purge's log entry) and
//! its follow-up writes: simulated by writing the log entry by hand, exactly as the store writes
//! it, and never doing the rest. Runs against the server named by `IMSTORE_MONGODB_URL`.

use std::sync::Arc;
use std::time::Duration;

use imstore_conformance::StoreFactory;
use imstore_core::{
    Action, Attachment, Authority, Clock, ConversationId, ErrorKind, FeedCursor, ListOptions,
    ManualClock, MessageStore, MessageType, MsgId, MsgIdGenerator, NewMessage, PurgeOptions,
    RequestId, Status, StoreSettings, TransitionRequest, UserId,
};
use imstore_mongodb::MongoStore;
use imstore_mongodb::testing::MongoFactory;
use mongodb::Database;
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

struct Fixture {
    factory: MongoFactory,
    ns: String,
    db: Database,
    store: MongoStore,
    clock: ManualClock,
    conv: ConversationId,
    alice: UserId,
    ids: MsgIdGenerator,
}

async fn fixture() -> Fixture {
    let factory = MongoFactory::from_env().with_prefix("mgcrash");
    let ns = factory.create_namespace().await;
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = factory.open(&ns, settings).await;
    Fixture {
        db: factory.client().await.database(&ns),
        factory,
        ns,
        store,
        ids: MsgIdGenerator::new(3, Arc::new(clock.clone())).unwrap(),
        clock,
        conv: ConversationId::new("crash").unwrap(),
        alice: UserId::new("alice").unwrap(),
    }
}

/// A transition's commit as a dead writer left it.
struct DeadCommit<'a> {
    seq: i64,
    version: i64,
    rid: &'a str,
    action: &'a str,
    next: Document,
    /// Whether the entry still carries its `todo: "cache"` mark.
    todo: bool,
}

impl Fixture {
    async fn send(&self) -> (MsgId, ObjectId) {
        let m = NewMessage {
            msg_type: MessageType::File,
            attachment: Some(Attachment {
                key: "blobs/crash.bin".into(),
                size: 3,
                mime: "application/octet-stream".into(),
            }),
            ..NewMessage::text(
                self.ids.next_id().unwrap(),
                self.conv.clone(),
                self.alice.clone(),
                b"x".to_vec(),
            )
        };
        self.store.insert(m.clone()).await.unwrap();
        let d = self
            .db
            .collection::<Document>("messages")
            .find_one(doc! {"msg_id": m.msg_id.as_i64()})
            .await
            .unwrap()
            .unwrap();
        (m.msg_id, d.get_object_id("_id").unwrap())
    }

    async fn created_ms(&self, id: MsgId) -> i64 {
        self.store
            .audit(&self.conv, id)
            .await
            .unwrap()
            .message
            .lifecycle
            .created_at
            .as_millis()
    }

    /// The log entry a transition by alice commits (as the store writes it, follow-ups pending).
    async fn dead_commit(&self, id: MsgId, msg: ObjectId, c: DeadCommit<'_>) {
        let now = self.clock.now().as_millis();
        let status = c.next.get_i32("status").unwrap();
        let mut entry = doc! {
            "_id": ObjectId::new(), "kind": "event", "conversation_id": self.conv.as_str(),
            "seq": c.seq, "msg": msg, "version": c.version, "next": c.next,
            "request_id": c.rid, "msg_id": id.as_i64(), "at": now,
            "record": {"action": c.action, "requester": "alice", "status": status,
                       "version": c.version, "changed": true},
        };
        if c.todo {
            entry.insert("todo", "cache");
        }
        self.db
            .collection::<Document>("log")
            .insert_one(entry)
            .await
            .unwrap();
    }

    async fn dead_recall(&self, id: MsgId, msg: ObjectId, rid: &str) {
        let now = self.clock.now().as_millis();
        let next = doc! {"status": 1, "version": 2_i64, "created_at": self.created_ms(id).await,
        "recalled_at": now, "recalled_by": "alice", "retired_at": now};
        let commit = DeadCommit {
            seq: 1,
            version: 2,
            rid,
            action: "recall",
            next,
            todo: true,
        };
        self.dead_commit(id, msg, commit).await;
    }

    fn request(&self, action: Action, msg_id: MsgId, rid: &str) -> TransitionRequest {
        TransitionRequest {
            action,
            requester: self.alice.clone(),
            authority: Authority::Member,
            conversation_id: self.conv.clone(),
            msg_id,
            client_ts: self.clock.now(),
            request_id: RequestId::new(rid).unwrap(),
        }
    }

    async fn versions_in_feed(&self) -> Vec<(u32, Status)> {
        self.store
            .changes_since(&self.conv, &self.alice, FeedCursor::START, 100)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| (e.version, e.status))
            .collect()
    }

    async fn document_version(&self, id: MsgId) -> Option<i64> {
        self.db
            .collection::<Document>("messages")
            .find_one(doc! {"msg_id": id.as_i64()})
            .await
            .unwrap()
            .map(|d| d.get_i64("version").unwrap())
    }

    async fn finish(self) {
        self.factory.drop_namespace(&self.ns).await;
    }
}

/// A transition whose writer died right after its commit is seen by every reader at once (get,
/// list, feed), its retry is a replay, and the next transition builds on it.
#[tokio::test]
async fn a_commit_whose_writer_died_is_seen_by_every_reader() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.dead_recall(id, oid, "r-dead").await;
    assert_eq!(f.document_version(id).await, Some(1), "the document trails");
    let v = f.store.get(&f.conv, id, &f.alice).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Recalled, 2));
    let page = f
        .store
        .list(&f.conv, &f.alice, ListOptions::newest(10))
        .await
        .unwrap();
    assert_eq!(page.items[0].status, Status::Recalled);
    assert_eq!(f.versions_in_feed().await, vec![(2, Status::Recalled)]);
    let retry = f
        .store
        .transition(f.request(Action::Recall, id, "r-dead"))
        .await
        .unwrap();
    assert!(retry.replayed && retry.changed && retry.version == 2);
    let restored = f
        .store
        .transition(f.request(Action::Restore, id, "r-restore"))
        .await
        .unwrap();
    assert_eq!((restored.status, restored.version), (Status::Normal, 3));
    assert_eq!(
        f.versions_in_feed().await,
        vec![(2, Status::Recalled), (3, Status::Normal)]
    );
    assert_eq!(f.document_version(id).await, Some(3));
    f.finish().await;
}

/// The next purge batch writes what a dead committer left, so a message its commit made
/// purgeable is purged on time.
#[tokio::test]
async fn the_next_purge_writes_what_a_dead_committer_left() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.dead_recall(id, oid, "r-dead").await;
    f.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let report = f
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!((report.messages, report.events), (1, 1));
    assert_eq!(
        report.released_attachments,
        vec!["blobs/crash.bin".to_string()]
    );
    assert_eq!(
        f.store.get(&f.conv, id, &f.alice).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(f.versions_in_feed().await, vec![]);
    f.finish().await;
}

/// A document that claims a purgeable state its log has moved on from (a restore whose writer
/// died and left no mark) is corrected by the purge, not purged, and does not keep every later
/// batch reporting `more` while purging nothing.
#[tokio::test]
async fn a_dead_transition_does_not_keep_the_purge_busy() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.store
        .transition(f.request(Action::Recall, id, "r-recall"))
        .await
        .unwrap();
    let now = f.clock.now().as_millis();
    let next = doc! {"status": 0, "version": 3_i64, "created_at": f.created_ms(id).await,
    "restored_at": now};
    // No `todo` mark: as if the mark itself were lost, the document is all the purge has.
    let commit = DeadCommit {
        seq: 2,
        version: 3,
        rid: "r-restore",
        action: "restore",
        next,
        todo: false,
    };
    f.dead_commit(id, oid, commit).await;
    f.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let mut reports = Vec::new();
    for _ in 0..3 {
        let r = f.store.purge(PurgeOptions { batch_size: 1 }).await.unwrap();
        reports.push((r.messages, r.more));
        if !r.more {
            break;
        }
    }
    assert_eq!(reports.last(), Some(&(0, false)), "{reports:?}");
    assert!(reports.len() <= 2, "{reports:?}");
    let v = f.store.get(&f.conv, id, &f.alice).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Normal, 3));
    assert_eq!(f.document_version(id).await, Some(3));
    f.finish().await;
}

/// A purge whose purger died after committing hides the message at once (reads and transitions
/// answer NotFound, the feed no longer shows its events), and the next purge finishes it and
/// reports its attachment, once counted.
#[tokio::test]
async fn a_purge_whose_purger_died_is_finished_by_the_next() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.store
        .transition(f.request(Action::Delete, id, "r-del"))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(31 * 24 * 3600));
    let pid = ObjectId::new();
    f.db.collection::<Document>("log")
        .insert_one(doc! {
            "_id": pid, "kind": "purge", "conversation_id": f.conv.as_str(), "seq": 2_i64,
            "msg": oid, "version": 3_i64, "request_id": format!("\u{1}purge:{}", pid.to_hex()),
            "msg_id": id.as_i64(), "wall": 0_i64, "todo": "finish",
            "attachment": "blobs/crash.bin",
        })
        .await
        .unwrap();
    assert_eq!(
        f.store.get(&f.conv, id, &f.alice).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(f.versions_in_feed().await, vec![]);
    let e = f
        .store
        .transition(f.request(Action::Delete, id, "r-del-2"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let report = f
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!((report.messages, report.events), (1, 1));
    assert_eq!(
        report.released_attachments,
        vec!["blobs/crash.bin".to_string()]
    );
    assert_eq!(f.document_version(id).await, None);
    let again = f
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.more), (0, false));
    f.finish().await;
}
