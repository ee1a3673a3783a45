//! What happens when a process dies between the commit of a transition (or purge) and its
//! follow-up writes: simulated by writing the commit record by hand, exactly as `MongoStore`
//! writes it, and never completing it. Runs against the server named by `IMSTORE_MONGODB_URL`.

use std::sync::Arc;
use std::time::Duration;

use imstore_conformance::{require_env, unique_namespace};
use imstore_core::{
    Action, Attachment, Authority, Clock, ConversationId, ErrorKind, FeedCursor, ManualClock,
    MessageStore, MessageType, MsgIdGenerator, NewMessage, PurgeOptions, RequestId, Status,
    StoreSettings, TransitionRequest, UserId,
};
use imstore_mongodb::{MongoConfig, MongoStore};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use mongodb::{Client, Database};

struct Fixture {
    db: Database,
    store: MongoStore,
    clock: ManualClock,
    conv: ConversationId,
    alice: UserId,
    ids: MsgIdGenerator,
}

async fn fixture() -> Fixture {
    let url = require_env("IMSTORE_MONGODB_URL");
    let client = Client::with_uri_str(&url).await.expect("valid url");
    let ns = unique_namespace("mg_crash");
    let clock = ManualClock::starting_now();
    let settings = StoreSettings {
        clock: Arc::new(clock.clone()),
        ..StoreSettings::default()
    };
    let store = MongoStore::with_client(client.clone(), MongoConfig::new(&url, &ns), settings)
        .await
        .expect("open");
    Fixture {
        db: client.database(&ns),
        store,
        ids: MsgIdGenerator::new(3, Arc::new(clock.clone())).unwrap(),
        clock,
        conv: ConversationId::new("crash").unwrap(),
        alice: UserId::new("alice").unwrap(),
    }
}

impl Fixture {
    async fn send(&self) -> (imstore_core::MsgId, ObjectId) {
        let m = NewMessage {
            msg_type: MessageType::File,
            attachment: Some(Attachment {
                key: "blobs/crash.bin".into(),
                size: 3,
                mime: "application/octet-stream".into(),
            }),
            ..NewMessage::text(
                self.ids.next_id(),
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

    /// The records a recall by alice leaves when its process dies right after the commit insert.
    async fn dead_recall(&self, msg_id: imstore_core::MsgId, msg: ObjectId, wall: i64) {
        let now = self.clock.now().as_millis();
        let created = self
            .store
            .get(&self.conv, msg_id, &self.alice)
            .await
            .unwrap()
            .created_at
            .as_millis();
        self.db
            .collection::<Document>("requests")
            .insert_one(doc! {
                "conversation_id": self.conv.as_str(), "request_id": "r-dead", "kind": "claim",
                "msg_id": msg_id.as_i64(), "action": "recall", "requester": "alice", "at": now,
            })
            .await
            .unwrap();
        self.db
            .collection::<Document>("changes")
            .insert_one(doc! {
                "msg": msg, "conversation_id": self.conv.as_str(), "msg_id": msg_id.as_i64(),
                "version": 2_i64, "token": ObjectId::new(), "wall": wall, "done": false,
                "kind": "apply",
                "next": {"status": 1, "version": 2_i64, "created_at": created,
                         "recalled_at": now, "recalled_by": "alice", "retired_at": now},
                "request": {"request_id": "r-dead", "action": "recall", "requester": "alice",
                            "status": 1, "version": 2_i64, "changed": true, "at": now},
            })
            .await
            .unwrap();
    }

    fn request(&self, action: Action, msg_id: imstore_core::MsgId, rid: &str) -> TransitionRequest {
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
            .changes_since(&self.conv, FeedCursor::START, 100)
            .await
            .unwrap()
            .events
            .iter()
            .map(|e| (e.version, e.status))
            .collect()
    }
}

/// A commit left unfinished long ago is completed by the next feed read: the event appears once,
/// the message shows the committed state, and the dead request's retry is a replay.
#[tokio::test]
async fn overdue_commit_is_completed_by_the_next_feed_read() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.dead_recall(id, oid, 0).await;
    // The message document has not been written yet: readers still see version 1.
    assert_eq!(f.store.get(&f.conv, id, &f.alice).await.unwrap().version, 1);
    assert_eq!(f.versions_in_feed().await, vec![(2, Status::Recalled)]);
    assert_eq!(f.versions_in_feed().await, vec![(2, Status::Recalled)]);
    let v = f.store.get(&f.conv, id, &f.alice).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Recalled, 2));
    let retry = f
        .store
        .transition(f.request(Action::Recall, id, "r-dead"))
        .await
        .unwrap();
    assert!(retry.replayed && retry.changed && retry.version == 2);
    f.db.drop().await.unwrap();
}

/// The next transition of the message completes the dead commit before its own, so the feed
/// keeps version order.
#[tokio::test]
async fn overdue_commit_is_completed_by_the_next_transition() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.dead_recall(id, oid, 0).await;
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
    f.db.drop().await.unwrap();
}

/// A fresh unfinished commit belongs to a writer presumed alive: readers do not take it over
/// before `takeover_after`, and a competing transition waits for it rather than overtaking it.
#[tokio::test]
async fn fresh_commit_is_left_to_its_writer() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    f.dead_recall(id, oid, wall).await;
    assert_eq!(f.versions_in_feed().await, vec![]);
    // A competing delete cannot commit version 2; after the takeover delay it completes the
    // recall, then deletes (version 3).
    let started = std::time::Instant::now();
    let deleted = f
        .store
        .transition(f.request(Action::Delete, id, "r-delete"))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for the writer"
    );
    assert_eq!((deleted.status, deleted.version), (Status::Deleted, 3));
    assert_eq!(
        f.versions_in_feed().await,
        vec![(2, Status::Recalled), (3, Status::Deleted)]
    );
    f.db.drop().await.unwrap();
}

/// A purge that died after committing hides nothing it should not: transitions of that message
/// already answer NotFound, and the next purge finishes it and reports its attachment.
#[tokio::test]
async fn stalled_purge_is_finished_by_the_next_purge() {
    let f = fixture().await;
    let (id, oid) = f.send().await;
    f.store
        .transition(f.request(Action::Delete, id, "r-del"))
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(31 * 24 * 3600));
    f.db.collection::<Document>("changes")
        .insert_one(doc! {
            "msg": oid, "conversation_id": f.conv.as_str(), "msg_id": id.as_i64(),
            "version": 3_i64, "token": ObjectId::new(), "wall": 0_i64, "done": false,
            "kind": "purge", "attachment": "blobs/crash.bin",
        })
        .await
        .unwrap();
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
    assert_eq!(report.messages, 1);
    assert_eq!(report.events, 1);
    assert_eq!(
        report.released_attachments,
        vec!["blobs/crash.bin".to_string()]
    );
    assert_eq!(
        f.store.get(&f.conv, id, &f.alice).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let again = f
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.more), (0, false));
    f.db.drop().await.unwrap();
}
