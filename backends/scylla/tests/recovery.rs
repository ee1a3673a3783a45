//! Crash recovery specific to this backend's multi-step purge, replayed with raw CQL: a purger
//! that dies between its steps leaves state that the next purge completes, counting nothing
//! twice and never showing a half-purged message; stale queue entries; request-record lifetime;
//! and the latest page's lifecycle slice, which reads the purge sentinel's mirror.

use std::time::Duration;

use imstore_conformance::fixtures::Cast;
use imstore_conformance::{Harness, Setup};
use imstore_core::{
    Action, Clock, ErrorKind, FeedCursor, MessageStore, MessageStoreExt, MsgId, PurgeOptions,
    Status,
};
use imstore_scylla::testing::{ScyllaFactory, queue_shard};

type H<'f> = Harness<'f, ScyllaFactory>;

const PAST_RETENTION: Duration = Duration::from_secs(31 * 24 * 3600);

/// Recalls a file message, lets its retention pass, and returns (harness, cast, msg_id).
async fn recalled_and_expired(f: &ScyllaFactory) -> (H<'_>, Cast, MsgId) {
    let h = Harness::start(f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let m = c.file("blob-1");
    h.store.insert(m.clone()).await.unwrap();
    let out = h
        .store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .unwrap();
    assert_eq!((out.status, out.version), (Status::Recalled, 2));
    h.clock.advance(PAST_RETENTION);
    (h, c, m.msg_id)
}

/// Moves the clock past the retention window and purges everything then due.
async fn purge_expired(h: &H<'_>) -> imstore_core::PurgeReport {
    h.clock.advance(PAST_RETENTION);
    h.store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap()
}

/// Runs `stmt` (with `{ks}` replaced) on the store's session.
async fn cql(h: &H<'_>, stmt: &str, values: impl scylla::serialize::row::SerializeRow) {
    let stmt = stmt.replace("{ks}", h.namespace());
    h.store
        .inner()
        .session()
        .query_unpaged(stmt, values)
        .await
        .expect("raw CQL");
}

/// Step (1) of a purger that then died: the commit batch (marker, sentinel, events).
async fn commit_purge_of(h: &H<'_>, id: MsgId, key: &str) {
    let bucket = h.store.inner().bucket_of(id);
    cql(
        h,
        "UPDATE {ks}.conversation_state SET purging = true, release_key = ? WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '' IF version = 2",
        (key, id.as_i64()),
    )
    .await;
    mark_purged(h, bucket).await;
    cql(
        h,
        "DELETE FROM {ks}.conversation_state WHERE conversation_id = 'group-1' AND kind = 1 AND k = 1 AND request_id = ''",
        (),
    )
    .await;
}

/// The bucket's purge sentinel and its mirror, as a purge commit writes them.
async fn mark_purged(h: &H<'_>, bucket: i32) {
    cql(
        h,
        "UPDATE {ks}.conversation_state SET at_ms = 42 WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = ''",
        (-i64::from(bucket) - 1,),
    )
    .await;
    cql(
        h,
        "UPDATE {ks}.conversation_state SET at_ms = 42 WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '~sentinel'",
        (h.store.inner().bucket_ids(bucket).1,),
    )
    .await;
}

/// The epoch of `bucket`'s sentinel mirror in group-1, if a purge wrote one.
async fn mirror_of(h: &H<'_>, bucket: i32) -> Option<i64> {
    let stmt = format!(
        "SELECT at_ms FROM {}.conversation_state WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '~sentinel'",
        h.namespace()
    );
    h.store
        .inner()
        .session()
        .query_unpaged(stmt, (h.store.inner().bucket_ids(bucket).1,))
        .await
        .expect("raw CQL")
        .into_rows_result()
        .expect("rows")
        .maybe_first_row::<(Option<i64>,)>()
        .expect("one row")
        .and_then(|(at,)| at)
}

async fn assert_gone(h: &H<'_>, c: &Cast, id: MsgId) {
    assert_eq!(
        h.store.get(&c.conv, id, &c.alice).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        h.store.audit(&c.conv, id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(
        h.store
            .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_completes_after_a_purger_died_after_committing() {
    let f = ScyllaFactory::from_env();
    let (h, c, id) = recalled_and_expired(&f).await;
    commit_purge_of(&h, id, "blob-1").await;
    // Committed: gone for every reader, though the message row is still there.
    assert!(h.raw_content(&c.conv, id).await.is_some());
    assert_gone(&h, &c, id).await;
    assert_eq!(
        h.store
            .transition(c.request(Action::Delete, &c.alice, id))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound,
        "a committed purge fences transitions"
    );
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(
        (report.messages, report.events),
        (1, 0),
        "the events went with the dead purger's commit"
    );
    assert_eq!(report.released_attachments, vec!["blob-1".to_string()]);
    assert_eq!(h.raw_content(&c.conv, id).await, None);
    let feed = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .unwrap();
    assert!(feed.events.is_empty());
    let again = h
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.events), (0, 0));
    assert!(again.released_attachments.is_empty());
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_completes_after_a_purger_died_after_deleting_the_message() {
    let f = ScyllaFactory::from_env();
    let (h, c, id) = recalled_and_expired(&f).await;
    commit_purge_of(&h, id, "blob-1").await;
    // Step (2) too: the message row is gone, counted by nobody, its key reported by nobody.
    let bucket = h.store.inner().bucket_of(id);
    cql(
        &h,
        "DELETE FROM {ks}.messages WHERE conversation_id = 'group-1' AND bucket = ? AND msg_id = ? IF EXISTS",
        (bucket, id.as_i64()),
    )
    .await;
    assert_gone(&h, &c, id).await;
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(
        (report.messages, report.events),
        (0, 0),
        "the message was removed (and would have been counted) by the dead purger"
    );
    assert_eq!(
        report.released_attachments,
        vec!["blob-1".to_string()],
        "the key the dead purger never reported is reported by the one that finishes"
    );
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_committed_before_a_legal_hold_is_finished_and_stays_purged() {
    let f = ScyllaFactory::from_env();
    let (h, c, id) = recalled_and_expired(&f).await;
    commit_purge_of(&h, id, "blob-1").await;
    h.store.set_legal_hold(&c.conv, true).await.unwrap();
    assert_gone(&h, &c, id).await;
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(report.messages, 1);
    assert_eq!(h.raw_content(&c.conv, id).await, None);
    assert_gone(&h, &c, id).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legal_hold_placed_before_the_commit_keeps_the_message_auditable() {
    let f = ScyllaFactory::from_env();
    let (h, c, id) = recalled_and_expired(&f).await;
    // A purger read the message as purgeable, then the hold was placed, then it tried to commit.
    h.store.set_legal_hold(&c.conv, true).await.unwrap();
    cql(
        &h,
        "UPDATE {ks}.conversation_state SET purging = true WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '' IF version = 2 AND purging = null AND legal_hold != true",
        (id.as_i64(),),
    )
    .await;
    let audit = h.store.audit(&c.conv, id).await.expect("still auditable");
    assert_eq!(audit.message.lifecycle.status, Status::Recalled);
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(report.messages, 0);
    assert!(h.store.audit(&c.conv, id).await.is_ok());
    h.store.set_legal_hold(&c.conv, false).await.unwrap();
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(report.messages, 1, "purged once the hold is lifted");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_purge_entry_never_purges_a_live_message() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let m = c.text("still here");
    h.store.insert(m.clone()).await.unwrap();
    // The queue entry of a transition whose batch then failed: due now, message still Normal.
    let now = h.clock.now().as_millis();
    let day = (now.div_euclid(86_400_000)) as i32;
    cql(
        &h,
        "INSERT INTO {ks}.purge_days (shard, day) VALUES (0, ?)",
        (day,),
    )
    .await;
    cql(
        &h,
        "INSERT INTO {ks}.purge_queue (day, due, conversation_id, msg_id, request_id) VALUES (?, ?, 'group-1', ?, '')",
        (day, now, m.msg_id.as_i64()),
    )
    .await;
    let report = h
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(report.messages, 0);
    let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.body.unwrap().content, b"still here");
    let ks = h.namespace().to_string();
    let left = h
        .store
        .inner()
        .session()
        .query_unpaged(
            format!("SELECT msg_id FROM {ks}.purge_queue WHERE day = ?"),
            (day,),
        )
        .await
        .unwrap()
        .into_rows_result()
        .unwrap()
        .rows_num();
    assert_eq!(left, 0, "the stale entry is dropped");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_changed_message_in_a_purged_bucket_reads_as_normal() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let gone = c.text("gone");
    let kept = c.text("kept");
    h.store.insert(gone.clone()).await.unwrap();
    h.store.insert(kept.clone()).await.unwrap();
    assert_eq!(
        h.store.inner().bucket_of(gone.msg_id),
        h.store.inner().bucket_of(kept.msg_id)
    );
    h.store
        .transition(c.request(Action::Delete, &c.alice, gone.msg_id))
        .await
        .unwrap();
    let report = purge_expired(&h).await;
    assert_eq!(report.messages, 1);
    // The bucket's sentinel is set now: an absent lifecycle is re-checked, and still Normal.
    let v = h.store.get(&c.conv, kept.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.status, Status::Normal);
    assert_eq!(v.body.unwrap().content, b"kept");
    let page = h
        .store
        .list(&c.conv, &c.bob, imstore_core::ListOptions::newest(10))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].msg_id, kept.msg_id);
    // And a transition of it passes the sentinel's fence.
    let out = h
        .store
        .transition(c.moderator_request(Action::Delete, &c.mia, kept.msg_id))
        .await
        .unwrap();
    assert_eq!((out.status, out.version), (Status::Deleted, 2));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_records_live_until_a_purge_removes_them_except_under_legal_hold() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let held = Cast::in_conversation(&h.settings, "held-group");
    let m = c.text("in the open group");
    let k = held.text("in the held group");
    h.store.insert(m.clone()).await.unwrap();
    h.store.insert(k.clone()).await.unwrap();
    h.store.set_legal_hold(&held.conv, true).await.unwrap();
    let recall = c.request(Action::Recall, &c.alice, m.msg_id);
    let recall_held = held.request(Action::Recall, &held.alice, k.msg_id);
    h.store.transition(recall.clone()).await.unwrap();
    h.store.transition(recall_held.clone()).await.unwrap();
    for (cast, id) in [(&c, m.msg_id), (&held, k.msg_id)] {
        h.store
            .transition(cast.request(Action::Restore, &cast.alice, id))
            .await
            .unwrap();
    }
    h.clock.advance(PAST_RETENTION);
    let replay = |r: &imstore_core::TransitionRequest| imstore_core::TransitionRequest {
        client_ts: h.clock.now(),
        ..r.clone()
    };
    // No purge yet: the first outcome is still the answer, as in the reference store.
    let out = h.store.transition(replay(&recall)).await.unwrap();
    assert!(out.replayed && out.status == Status::Recalled);
    h.store
        .purge_all(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    // Purged record: the request is decided afresh, and the recall window is long closed.
    assert_eq!(
        h.store
            .transition(replay(&recall))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::WindowExpired
    );
    // Under legal hold the record stays.
    let out = h.store.transition(replay(&recall_held)).await.unwrap();
    assert!(out.replayed);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_messages_being_purged_does_not_end_the_walk() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let oldest = c.text("oldest");
    h.store.insert(oldest.clone()).await.unwrap();
    let mut doomed = Vec::new();
    for i in 0..3 {
        let m = c.text(&format!("doomed {i}"));
        h.store.insert(m.clone()).await.unwrap();
        h.store
            .transition(c.request(Action::Delete, &c.alice, m.msg_id))
            .await
            .unwrap();
        doomed.push(m.msg_id);
    }
    let newest = c.text("newest");
    h.store.insert(newest.clone()).await.unwrap();
    // A purger committed the purge of the three deleted messages and has not removed them yet:
    // they fill whole pages of the walk.
    for id in &doomed {
        cql(
            &h,
            "UPDATE {ks}.conversation_state SET purging = true WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '' IF version = 2",
            (id.as_i64(),),
        )
        .await;
    }
    for (opts, want) in [
        (
            imstore_core::ListOptions::newest(1),
            vec![newest.msg_id, oldest.msg_id],
        ),
        (
            imstore_core::ListOptions::oldest(1),
            vec![oldest.msg_id, newest.msg_id],
        ),
    ] {
        let mut seen = Vec::new();
        let mut opts = opts;
        loop {
            let page = h.store.list(&c.conv, &c.bob, opts.clone()).await.unwrap();
            seen.extend(page.items.iter().map(|v| v.msg_id));
            match page.next {
                Some(next) => opts = opts.after(next),
                None => break,
            }
        }
        assert_eq!(seen, want);
    }
    h.finish().await;
}

/// One conversation with `n` messages, every one recalled by its sender; every third a file
/// (`file-<i>`), and messages 1 and 4 share the file `shared`. Returns the ids in send order.
async fn recalled_many(h: &H<'_>, c: &Cast, n: usize) -> Vec<MsgId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m = match i {
            1 | 4 => c.file("shared"),
            i if i % 3 == 0 => c.file(&format!("file-{i}")),
            i => c.text(&format!("text {i}")),
        };
        h.store.insert(m.clone()).await.unwrap();
        h.store
            .transition(c.request(Action::Recall, &c.alice, m.msg_id))
            .await
            .unwrap();
        ids.push(m.msg_id);
    }
    ids
}

// The purge commits the purgeable messages of one conversation together (one commit, one
// delete per bucket, one marker delete): the group must still remove exactly the purgeable
// ones, with their events and the files no other message references, once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_purge_removes_exactly_the_purgeable_messages_once() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let ids = recalled_many(&h, &c, 60).await;
    // Restored: Normal again, never purgeable by retention; its two events stay.
    h.store
        .transition(c.request(Action::Restore, &c.alice, ids[4]))
        .await
        .unwrap();
    h.clock.advance(PAST_RETENTION);
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!((report.messages, report.events), (59, 59));
    let mut released = report.released_attachments.clone();
    released.sort();
    let mut expected: Vec<String> = (0..60)
        .filter(|i| i % 3 == 0 && *i != 1 && *i != 4)
        .map(|i| format!("file-{i}"))
        .collect();
    expected.sort();
    assert_eq!(
        released, expected,
        "`shared` is still referenced by message 4"
    );
    let page = h
        .store
        .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
        .await
        .unwrap();
    assert_eq!(
        page.items.iter().map(|m| m.msg_id).collect::<Vec<_>>(),
        vec![ids[4]]
    );
    let feed = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .unwrap();
    // What is left is the restored message's: its restore (its recall, below the feed's purge
    // low-water mark, is hidden like every event under it).
    assert_eq!(
        feed.events
            .iter()
            .map(|e| (e.msg_id, e.status, e.version))
            .collect::<Vec<_>>(),
        vec![(ids[4], Status::Normal, 3)]
    );
    for id in ids.iter().filter(|id| **id != ids[4]) {
        assert_eq!(h.raw_content(&c.conv, *id).await, None);
    }
    let again = h
        .store
        .purge(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.events), (0, 0));
    assert!(!again.more);
    h.finish().await;
}

// One commit could take 50 messages; a call still removes at most its batch, says there is
// more, and the next calls take the rest without counting anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_purge_keeps_to_the_batch_size() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    recalled_many(&h, &c, 40).await;
    h.clock.advance(PAST_RETENTION);
    let mut total = 0;
    let mut calls = 0;
    loop {
        let r = h.store.purge(PurgeOptions { batch_size: 7 }).await.unwrap();
        assert!(
            r.messages <= 7,
            "a call removed {} of a batch of 7",
            r.messages
        );
        total += r.messages;
        calls += 1;
        assert!(calls <= 40, "the purge never finished");
        if !r.more {
            break;
        }
        assert_eq!(r.messages, 7, "a call that says more removed a full batch");
    }
    assert_eq!(total, 40);
    assert!(
        h.store
            .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    h.finish().await;
}

// A timeout can hide whether a conditional write applied. When it hides the outcome of one of
// a group's three conditional steps (the commit, the row delete, the marker delete), the purge
// settles it and must still remove and count each message once and report each file once: a
// retry that finds its own hidden effect ("not applied") is not somebody else's doing.

/// Ten recalled file messages of one conversation, past their retention; the purge of all of
/// them with the outcome of the next batch containing `needle` hidden.
async fn purge_with_hidden(needle: &str) {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for i in 0..10 {
        let m = c.file(&format!("hidden-{i}"));
        h.store.insert(m.clone()).await.unwrap();
        h.store
            .transition(c.request(Action::Recall, &c.alice, m.msg_id))
            .await
            .unwrap();
        keys.push(format!("hidden-{i}"));
        ids.push(m.msg_id);
    }
    h.clock.advance(PAST_RETENTION);
    imstore_scylla::testing::hide_outcomes(h.store.inner(), needle, 1);
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!(
        imstore_scylla::testing::hidden_pending(h.store.inner()),
        0,
        "the purge sent a batch with `{needle}`, and its outcome was hidden"
    );
    assert_eq!(
        (report.messages, report.events),
        (10, 10),
        "every message and event counted once ({needle})"
    );
    let mut released = report.released_attachments.clone();
    released.sort();
    keys.sort();
    assert_eq!(released, keys, "every file reported once ({needle})");
    for id in &ids {
        assert_gone(&h, &c, *id).await;
    }
    let again = h
        .store
        .purge(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.released_attachments.len()), (0, 0));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_marker_delete_whose_outcome_a_timeout_hid_still_reports_its_files() {
    purge_with_hidden("IF purging = true").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_row_delete_whose_outcome_a_timeout_hid_still_counts_its_messages() {
    purge_with_hidden("messages WHERE").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_commit_whose_outcome_a_timeout_hid_is_finished_by_its_owner() {
    purge_with_hidden("SET purging = true").await;
}

/// Six conversations whose queue entries share one shard (so a queue page holds all of them),
/// each with `per` messages sent in turns and recalled: the first message of conversations 0
/// and 1 references the file `across` (two conversations, one file), every fourth another file
/// of its own. Returns the casts and the files each conversation alone references.
async fn side_by_side(h: &H<'_>, per: usize) -> (Vec<Cast>, Vec<String>) {
    let first = Cast::in_conversation(&h.settings, "side-0");
    let shard = queue_shard(&first.conv);
    let mut casts = vec![first];
    let mut n = 1;
    while casts.len() < 6 {
        let c = Cast::in_conversation(&h.settings, &format!("side-{n}"));
        if queue_shard(&c.conv) == shard {
            casts.push(c);
        }
        n += 1;
    }
    let mut own = Vec::new();
    for round in 0..per {
        for (k, c) in casts.iter().enumerate() {
            let m = match round {
                0 if k < 2 => c.file("across"),
                r if r % 4 == 1 => {
                    own.push(format!("own-{k}-{r}"));
                    c.file(&format!("own-{k}-{r}"))
                }
                r => c.text(&format!("text {k} {r}")),
            };
            h.store.insert(m.clone()).await.unwrap();
            h.store
                .transition(c.request(Action::Recall, &c.alice, m.msg_id))
                .await
                .unwrap();
        }
    }
    own.sort();
    (casts, own)
}

// The conversations of one queue page are purged side by side, each in a run of its own: the
// call still removes every purgeable message once, reports a file two of them shared once,
// and a second call finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_of_one_queue_page_purge_side_by_side_once_each() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let (casts, own) = side_by_side(&h, 12).await;
    h.clock.advance(PAST_RETENTION);
    let report = h
        .store
        .purge_all(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!((report.messages, report.events), (72, 72));
    let mut released = report.released_attachments.clone();
    released.sort();
    let mut expected = own.clone();
    expected.push("across".to_string());
    expected.sort();
    assert_eq!(
        released, expected,
        "each file released once, when its last message went"
    );
    for c in &casts {
        let page = h
            .store
            .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
            .await
            .unwrap();
        assert!(page.items.is_empty(), "{} kept {:?}", c.conv, page.items);
        let feed = h
            .store
            .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
            .await
            .unwrap();
        assert!(feed.events.is_empty(), "{} kept {:?}", c.conv, feed.events);
    }
    let again = h
        .store
        .purge(PurgeOptions { batch_size: 500 })
        .await
        .unwrap();
    assert_eq!((again.messages, again.events, again.more), (0, 0, false));
    h.finish().await;
}

// Conversations purged side by side share the call's batch: no call removes more than it, a
// call that says there is more removed a full batch, and over all calls every message and
// every file goes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_purged_side_by_side_keep_to_the_batch_size() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let (casts, own) = side_by_side(&h, 8).await;
    h.clock.advance(PAST_RETENTION);
    let (mut total, mut calls) = (0, 0);
    let mut released = Vec::new();
    loop {
        let r = h
            .store
            .purge(PurgeOptions { batch_size: 10 })
            .await
            .unwrap();
        assert!(
            r.messages <= 10,
            "a call removed {} of a batch of 10",
            r.messages
        );
        total += r.messages;
        released.extend(r.released_attachments);
        calls += 1;
        assert!(calls <= 48, "the purge never finished");
        if !r.more {
            break;
        }
        assert_eq!(r.messages, 10, "a call that says more removed a full batch");
    }
    assert_eq!(total, 48);
    released.sort();
    let mut expected = own;
    expected.push("across".to_string());
    expected.sort();
    assert_eq!(released, expected);
    for c in &casts {
        assert!(
            h.store
                .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }
    h.finish().await;
}

// A commit whose outcome a timeout hid, in a call whose batch the other conversations then
// fill: the call ends before its own SERIAL re-read settles that marker. Every later call
// would leave the marker (younger than the ownership window) to an owner that has ended, and
// the messages stayed marked and uncounted; the call now says there is more, and the next
// call of the handle adopts the marker and finishes it as the owner would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hidden_commit_left_unsettled_by_its_call_is_finished_by_the_next_call() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let (casts, _) = side_by_side(&h, 8).await;
    h.clock.advance(PAST_RETENTION);
    imstore_scylla::testing::hide_outcomes(h.store.inner(), "SET purging = true", 1);
    let (mut total, mut calls) = (0, 0);
    loop {
        let r = h
            .store
            .purge(PurgeOptions { batch_size: 10 })
            .await
            .unwrap();
        total += r.messages;
        calls += 1;
        assert!(calls <= 60, "the purge never finished");
        if !r.more {
            break;
        }
    }
    assert_eq!(imstore_scylla::testing::hidden_pending(h.store.inner()), 0);
    assert_eq!(total, 48, "every message removed and counted once");
    for c in &casts {
        let left = h
            .store
            .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
            .await
            .unwrap()
            .items;
        assert!(left.is_empty(), "{} kept {} messages", c.conv, left.len());
    }
    h.finish().await;
}

// A stray token carries more markers than the call that adopts it reaches: a group commit of
// 10 recalled messages whose outcome a timeout hid, in a call whose batch the other 50 cut
// short before it settled them; the calls after it have a batch of 3. The adopting call hands
// the token back when it ends, so the next one finishes the other markers; without that, they
// stayed marked and uncounted and the purge ended early (52 of 60).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_commit_larger_than_the_adopting_batch_is_finished_over_several_calls() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::in_conversation(&h.settings, "stray-large");
    for i in 0..60 {
        let m = c.text(&format!("text {i}"));
        h.store.insert(m.clone()).await.unwrap();
        h.store
            .transition(c.request(Action::Recall, &c.alice, m.msg_id))
            .await
            .unwrap();
    }
    h.clock.advance(PAST_RETENTION);
    imstore_scylla::testing::hide_outcomes(h.store.inner(), "SET purging = true", 1);
    let first = h
        .store
        .purge(PurgeOptions { batch_size: 10 })
        .await
        .unwrap();
    assert_eq!(imstore_scylla::testing::hidden_pending(h.store.inner()), 0);
    assert!(
        first.more && first.messages < 10,
        "the batch is cut short with the hidden group unsettled: {first:?}"
    );
    let (mut total, mut calls) = (first.messages, 1);
    loop {
        let r = h.store.purge(PurgeOptions { batch_size: 3 }).await.unwrap();
        assert!(
            r.messages <= 3,
            "a call removed {} of a batch of 3",
            r.messages
        );
        total += r.messages;
        calls += 1;
        assert!(calls <= 60, "the purge never finished");
        if !r.more {
            break;
        }
    }
    assert_eq!(total, 60, "every message removed and counted once");
    let left = h
        .store
        .list(&c.conv, &c.alice, imstore_core::ListOptions::newest(100))
        .await
        .unwrap()
        .items;
    assert!(left.is_empty(), "kept {} messages", left.len());
    h.finish().await;
}

// The re-key's content swap is one conditional write, and a timeout can hide its outcome; the
// SERIAL read that settles it is a Paxos round that can time out too. Every message must still
// end up under the new key and be counted once, as rewritten: never written again blind (which
// would find its own bytes and call the swap lost), never failed while an attempt remains.

const SWAP: &str = "SET content = ?";
const SETTLE: &str = "SELECT content FROM";

/// `n` messages sealed under key 1, and a handle whose ring rotated to key 2.
async fn sealed_then_rotated(
    f: &ScyllaFactory,
    n: usize,
) -> (H<'_>, Cast, Vec<MsgId>, imstore_scylla::ScyllaStore) {
    use imstore_core::{ContentCodec, EncryptionKey, KeyId, KeyRing};
    let key1 = || EncryptionKey::new(KeyId(1), [0x61; 32]);
    let setup = Setup {
        codec: ContentCodec::default().with_encryption(KeyRing::new(key1())),
        ..Setup::default()
    };
    let h = Harness::start(f, setup).await;
    let c = Cast::in_conversation(&h.settings, "rekey-settle");
    let mut ids = Vec::new();
    for i in 0..n {
        let m = c.text(&format!("sealed {i}"));
        h.store.insert(m.clone()).await.unwrap();
        ids.push(m.msg_id);
    }
    let ring = KeyRing::new(key1())
        .rotate_to(EncryptionKey::new(KeyId(2), [0x62; 32]))
        .unwrap();
    let rotated = h
        .reopen_with_codec(ContentCodec::default().with_encryption(ring))
        .await;
    (h, c, ids, rotated)
}

/// Re-keys everything with `rotated`, and checks that every message was rewritten once, is
/// under key 2 and reads as sent, and that every fault asked for happened.
async fn rekey_and_check(h: H<'_>, c: &Cast, ids: &[MsgId], rotated: &imstore_scylla::ScyllaStore) {
    use imstore_core::{KeyId, RekeyOptions};
    let report = rotated.rekey_all(RekeyOptions::batch(4)).await.unwrap();
    assert_eq!(imstore_scylla::testing::hidden_pending(rotated.inner()), 0);
    assert_eq!(
        (report.scanned, report.rewritten, report.skipped),
        (ids.len() as u64, ids.len() as u64, 0),
        "{report:?}"
    );
    let usage = rotated.key_usage().await.unwrap();
    assert_eq!(usage.needing_other_than(KeyId(2)), 0, "{usage:?}");
    for (i, id) in ids.iter().enumerate() {
        let v = rotated.get(&c.conv, *id, &c.alice).await.unwrap();
        assert_eq!(v.body.unwrap().content, format!("sealed {i}").as_bytes());
    }
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_swap_whose_outcome_a_timeout_hid_counts_as_rewritten() {
    let f = ScyllaFactory::from_env();
    let (h, c, ids, rotated) = sealed_then_rotated(&f, 6).await;
    imstore_scylla::testing::hide_outcomes(rotated.inner(), SWAP, 3);
    rekey_and_check(h, &c, &ids, &rotated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_settling_read_that_times_out_is_read_again() {
    let f = ScyllaFactory::from_env();
    let (h, c, ids, rotated) = sealed_then_rotated(&f, 6).await;
    imstore_scylla::testing::hide_outcomes(rotated.inner(), SWAP, 2);
    imstore_scylla::testing::refuse(rotated.inner(), SETTLE, 5);
    rekey_and_check(h, &c, &ids, &rotated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rekey_swap_that_timed_out_before_running_is_made_after_settling() {
    let f = ScyllaFactory::from_env();
    let (h, c, ids, rotated) = sealed_then_rotated(&f, 6).await;
    imstore_scylla::testing::refuse(rotated.inner(), SWAP, 4);
    imstore_scylla::testing::refuse(rotated.inner(), SETTLE, 1);
    rekey_and_check(h, &c, &ids, &rotated).await;
}

/// Sends `n` texts "m0".."m<n-1>" to group-1, in order; their ids.
async fn texts(h: &H<'_>, c: &Cast, n: usize) -> Vec<MsgId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let m = c.text(&format!("m{i}"));
        h.store.insert(m.clone()).await.unwrap();
        ids.push(m.msg_id);
    }
    ids
}

/// Each shown text of `ids` (sent by `texts`) is recalled, without content, exactly when
/// `recalled(its index)`, and normal with its own content otherwise.
fn assert_shown(
    items: &[imstore_core::MessageView],
    ids: &[MsgId],
    recalled: impl Fn(usize) -> bool,
    ctx: &str,
) {
    for v in items {
        let i = ids.iter().position(|&id| id == v.msg_id).unwrap();
        if recalled(i) {
            assert_eq!(v.status, Status::Recalled, "{ctx}: m{i}");
            assert!(v.body.is_none(), "{ctx}: m{i} shows no content");
        } else {
            assert_eq!(v.status, Status::Normal, "{ctx}: m{i}");
            assert_eq!(
                v.body.as_ref().map(|b| b.content.clone()),
                Some(format!("m{i}").into_bytes()),
                "{ctx}: m{i}"
            );
        }
    }
}

// A purge commit marks its bucket twice: the sentinel below every lifecycle (read with the
// lifecycles a read names) and its mirror at the top of the bucket's ids (read first by the
// newest-first slice a latest page reads beside its rows). Both commit paths: one message, and
// a group of one conversation's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_commit_marks_its_bucket_at_the_top_of_its_ids() {
    let f = ScyllaFactory::from_env();
    for n in [1, 7] {
        let h = Harness::start(&f, Setup::default()).await;
        let c = Cast::new(&h.settings);
        let ids = recalled_many(&h, &c, n).await;
        let bucket = h.store.inner().bucket_of(ids[0]);
        assert_eq!(mirror_of(&h, bucket).await, None, "{n}: never purged yet");
        let report = purge_expired(&h).await;
        assert_eq!(report.messages, n as u64);
        assert!(
            mirror_of(&h, bucket).await.is_some(),
            "{n}: the commit wrote the mirror"
        );
        h.finish().await;
    }
}

// The slice a latest page reads beside its rows holds a bounded number of lifecycles, from
// the bucket's top down to the last latest page's bottom. Here purge markers whose rows a dead
// purger already deleted fill it, so it never reaches the page's rows: their lifecycles must
// still be read (recalled ones shown as tombstones), and the never-changed ones of the purged
// bucket re-checked and shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_page_reads_the_lifecycles_its_slice_did_not_reach() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let ids = texts(&h, &c, 30).await;
    let bucket = h.store.inner().bucket_of(ids[0]);
    assert_eq!(bucket, h.store.inner().bucket_of(ids[29]));
    for &id in ids[..10].iter().chain(&ids[15..]) {
        h.store
            .transition(c.request(Action::Recall, &c.alice, id))
            .await
            .unwrap();
    }
    let newest = imstore_core::ListOptions::newest(10);
    // The first latest page notes the conversation's first bucket: the next ones read it (and
    // its lifecycle slice) beside the bucket index.
    let first = h.store.list(&c.conv, &c.bob, newest.clone()).await.unwrap();
    assert_eq!(first.items[0].msg_id, ids[29]);
    // A purger committed the purge of the newest 15 and deleted their rows, then died.
    for &id in &ids[15..] {
        cql(
            &h,
            "UPDATE {ks}.conversation_state SET purging = true WHERE conversation_id = 'group-1' AND kind = 0 AND k = ? AND request_id = '' IF version = 2",
            (id.as_i64(),),
        )
        .await;
        cql(
            &h,
            "DELETE FROM {ks}.messages WHERE conversation_id = 'group-1' AND bucket = ? AND msg_id = ?",
            (bucket, id.as_i64()),
        )
        .await;
    }
    mark_purged(&h, bucket).await;
    // Each latest page notes its bottom, the next one's slice floor: the last page's slice
    // (floor m4) is full of markers long before it reaches the rows.
    for (round, size) in [(0, 10), (1, 10), (2, 5)] {
        let opts = imstore_core::ListOptions::newest(size);
        let page = h.store.list(&c.conv, &c.bob, opts).await.unwrap();
        let shown: Vec<MsgId> = page.items.iter().map(|v| v.msg_id).collect();
        let want: Vec<MsgId> = ids[15 - size as usize..15].iter().rev().copied().collect();
        assert_eq!(shown, want, "round {round}");
        assert_shown(&page.items, &ids, |i| i < 10, &format!("round {round}"));
    }
    h.finish().await;
}

// Read right after a write, on the latest page's one-round-trip path: every acknowledged
// recall and restore is on the next latest page (the slice read beside the rows is the only
// lifecycle read there), for the messages under the page's floor as for those above it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_page_shows_every_change_acknowledged_before_it() {
    let f = ScyllaFactory::from_env();
    let h = Harness::start(&f, Setup::default()).await;
    let c = Cast::new(&h.settings);
    let ids = texts(&h, &c, 12).await;
    let newest = imstore_core::ListOptions::newest(12);
    h.store.list(&c.conv, &c.bob, newest.clone()).await.unwrap();
    let mut recalled = vec![false; ids.len()];
    for step in 0..24 {
        // Each message in turn, newest first: recalled, then restored.
        let i = ids.len() - 1 - (step / 2) % ids.len();
        let action = if recalled[i] {
            Action::Restore
        } else {
            Action::Recall
        };
        h.store
            .transition(c.request(action, &c.alice, ids[i]))
            .await
            .unwrap();
        recalled[i] = !recalled[i];
        let page = h.store.list(&c.conv, &c.bob, newest.clone()).await.unwrap();
        assert_eq!(page.items.len(), ids.len(), "step {step}");
        assert_shown(&page.items, &ids, |j| recalled[j], &format!("step {step}"));
    }
    h.finish().await;
}
