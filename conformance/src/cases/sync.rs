//! Sync across devices: the change feed (CONTRACT.md, "Sync across devices").

use super::*;

/// Every status change appends one event carrying message, status, version, time and actor.
pub async fn every_status_change_appends_one_event<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    assert!(
        all_events(&h, &c.conv).await.is_empty(),
        "a send is not a status change"
    );
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let t1 = h.clock.now();
    h.clock.advance(MINUTE);
    h.store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    let t2 = h.clock.now();
    h.store
        .transition(c.moderator_request(Action::Delete, &c.mia, id))
        .await
        .unwrap();
    let events = all_events(&h, &c.conv).await;
    let got: Vec<_> = events
        .iter()
        .map(|e| (e.msg_id, e.status, e.version, e.at, e.by.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (id, Status::Recalled, 2, t1, c.alice.clone()),
            (id, Status::Normal, 3, t2, c.alice.clone()),
            (id, Status::Deleted, 4, t2, c.mia.clone()),
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(events.iter().all(|e| e.conversation_id == c.conv));
    h.finish().await;
}

/// Refused requests append no event.
pub async fn refused_requests_append_no_event<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let _ = h
        .store
        .transition(c.request(Action::Recall, &c.bob, id))
        .await;
    let _ = h
        .store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await;
    h.clock.advance(DAY);
    let _ = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await;
    assert!(all_events(&h, &c.conv).await.is_empty());
    h.finish().await;
}

/// Pulling the feed in small pages from the returned cursor yields every event once, in order.
pub async fn changes_since_pages_and_resumes_from_its_cursor<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let ids: Vec<_> = (0..9).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(ids.clone()).await.unwrap();
    for m in &ids {
        h.store
            .transition(c.request(Action::Recall, &c.alice, m.msg_id))
            .await
            .unwrap();
    }
    let mut cursor = FeedCursor::START;
    let mut seen = Vec::new();
    loop {
        let page = h
            .store
            .changes_since(&c.conv, &c.bob, cursor, 4)
            .await
            .unwrap();
        assert!(page.events.len() <= 4);
        if page.events.is_empty() {
            assert_eq!(page.next, cursor, "an empty pull keeps the cursor");
            break;
        }
        assert!(page.next > cursor);
        seen.extend(page.events.iter().map(|e| e.msg_id));
        cursor = page.next;
    }
    assert_eq!(seen, ids.iter().map(|m| m.msg_id).collect::<Vec<_>>());
    // Nothing new: pulling again from the end returns nothing.
    assert!(
        h.store
            .changes_since(&c.conv, &c.bob, cursor, 10)
            .await
            .unwrap()
            .events
            .is_empty()
    );
    h.finish().await;
}

/// Each conversation has its own feed; an unknown conversation's feed is empty.
pub async fn change_feeds_are_per_conversation<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = Cast::in_conversation(&h.settings, "group-2");
    let a = sent(&h, c.text("a")).await;
    let b = sent(&h, other.text("b")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(other.request(Action::Delete, &c.alice, b))
        .await
        .unwrap();
    let ea = all_events(&h, &c.conv).await;
    let eb = all_events(&h, &other.conv).await;
    assert_eq!(ea.iter().map(|e| e.msg_id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(eb.iter().map(|e| e.msg_id).collect::<Vec<_>>(), vec![b]);
    assert!(all_events(&h, &conv("silent")).await.is_empty());
    h.finish().await;
}

/// An offline device applying pulled events (ignoring versions it already has) converges to the store.
pub async fn offline_device_converges_by_applying_pulled_events<F: StoreFactory>(f: &F) {
    use std::collections::HashMap;
    let (h, c) = start(f).await;
    let ids: Vec<_> = (0..6).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(ids.clone()).await.unwrap();
    // The device saw the first two changes online.
    h.store
        .transition(c.request(Action::Recall, &c.alice, ids[0].msg_id))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, ids[1].msg_id))
        .await
        .unwrap();
    let online = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 100)
        .await
        .unwrap();
    let mut device: HashMap<MsgId, (Status, u32)> = ids
        .iter()
        .map(|m| (m.msg_id, (Status::Normal, 1)))
        .collect();
    let apply = |device: &mut HashMap<MsgId, (Status, u32)>, e: &ChangeEvent| {
        let held = device.get(&e.msg_id).map(|s| s.1).unwrap_or(0);
        if e.version > held {
            device.insert(e.msg_id, (e.status, e.version));
        }
    };
    for e in &online.events {
        apply(&mut device, e);
    }
    // Offline: more happens.
    h.store
        .transition(c.request(Action::Restore, &c.alice, ids[0].msg_id))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, ids[2].msg_id))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, ids[3].msg_id))
        .await
        .unwrap();
    // Reconnect: pull from an older cursor (replaying known events is harmless) to the end.
    let pulled = h
        .store
        .drain_changes(&c.conv, &user("bob"), FeedCursor::START, 2)
        .await
        .unwrap();
    for e in &pulled.events {
        apply(&mut device, e);
    }
    for m in &ids {
        let v = h.store.get(&c.conv, m.msg_id, &c.alice).await.unwrap();
        let stored = h
            .store
            .audit(&c.conv, m.msg_id)
            .await
            .unwrap()
            .message
            .lifecycle;
        assert_eq!(
            device[&m.msg_id],
            (stored.status, v.version),
            "{}",
            m.msg_id
        );
    }
    h.finish().await;
}

/// With several writers committing concurrently, a polling reader sees every change exactly once, in version order per message.
pub async fn polling_reader_sees_every_concurrent_change_exactly_once<F: StoreFactory>(f: &F) {
    use std::collections::{HashMap, HashSet};
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..24).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let writers = async {
        let per_writer: Vec<Vec<MsgId>> = msgs
            .chunks(6)
            .map(|ch| ch.iter().map(|m| m.msg_id).collect())
            .collect();
        futures::future::join_all(per_writer.into_iter().map(|ids| async {
            for id in ids {
                for action in [
                    Action::Recall,
                    Action::Restore,
                    Action::Recall,
                    Action::Delete,
                ] {
                    h.store
                        .transition(c.request(action, &c.alice, id))
                        .await
                        .unwrap();
                }
            }
        }))
        .await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
    };
    let reader = async {
        let mut cursor = FeedCursor::START;
        let mut seen = Vec::new();
        loop {
            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
            let page = h
                .store
                .changes_since(&c.conv, &c.bob, cursor, 7)
                .await
                .unwrap();
            seen.extend(page.events.iter().cloned());
            cursor = page.next;
            if page.events.is_empty() {
                if finished {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        }
    };
    let ((), seen) = futures::join!(writers, reader);
    let unique: HashSet<_> = seen.iter().map(|e| (e.msg_id, e.version)).collect();
    assert_eq!(unique.len(), seen.len(), "no event twice");
    assert_eq!(seen.len(), 24 * 4, "every committed change seen");
    let mut last: HashMap<MsgId, u32> = HashMap::new();
    for e in &seen {
        let prev = last.insert(e.msg_id, e.version).unwrap_or(1);
        assert_eq!(e.version, prev + 1, "version order per message");
    }
    h.finish().await;
}

/// A recall in a 2,000-member group writes one event, pulled by every member's device, as in a chat of two.
pub async fn group_recall_costs_one_event_whatever_the_group_size<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let pair = Cast::in_conversation(&h.settings, "dm-alice-bob");
    let in_group = sent(&h, c.text("to 2000 people")).await;
    let in_pair = sent(&h, pair.text("to bob")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, in_group))
        .await
        .unwrap();
    h.store
        .transition(pair.request(Action::Recall, &c.alice, in_pair))
        .await
        .unwrap();
    let group_feed = all_events(&h, &c.conv).await;
    assert_eq!(group_feed.len(), all_events(&h, &pair.conv).await.len());
    assert_eq!(group_feed.len(), 1);
    let pulls = futures::future::join_all((0..2_000).map(|_| {
        h.store
            .changes_since(&c.conv, &c.bob, FeedCursor::START, 10)
    }))
    .await;
    for p in pulls {
        assert_eq!(p.unwrap().events, group_feed);
    }
    for member in 0..2_000 {
        if member % 400 == 0 {
            let viewer = user(&format!("member-{member}"));
            assert!(
                h.store
                    .get(&c.conv, in_group, &viewer)
                    .await
                    .unwrap()
                    .body
                    .is_none()
            );
        }
    }
    h.finish().await;
}

/// Under sender-only restore visibility, what every member's device learns from the feed agrees
/// with what `get` shows that member: the sender sees the restore, the others the recall.
pub async fn feed_agrees_with_get_for_every_viewer<F: StoreFactory>(f: &F) {
    for visibility in [RestoreVisibility::SenderOnly, RestoreVisibility::Everyone] {
        let setup = Setup {
            policy: Policy::builder()
                .restore_visibility(visibility)
                .build()
                .unwrap(),
            ..Setup::default()
        };
        let (h, c) = start_with(f, setup).await;
        let restored = sent(&h, c.text("restored")).await;
        let deleted = sent(&h, c.text("deleted")).await;
        let moderated = sent(&h, c.text("moderated")).await;
        for (action, who, id, moderator) in [
            (Action::Recall, &c.alice, restored, false),
            (Action::Restore, &c.alice, restored, false),
            (Action::Recall, &c.alice, deleted, false),
            (Action::Delete, &c.alice, deleted, false),
            (Action::Recall, &c.alice, moderated, false),
            (Action::Recall, &c.mia, moderated, true),
        ] {
            let req = if moderator {
                c.moderator_request(action, who, id)
            } else {
                c.request(action, who, id)
            };
            h.store.transition(req).await.unwrap();
        }
        for viewer in [&c.alice, &c.bob, &c.carol, &c.mia] {
            let events = h
                .store
                .drain_changes(&c.conv, viewer, FeedCursor::START, 2)
                .await
                .unwrap()
                .events;
            for id in [restored, deleted, moderated] {
                let last = events.iter().rfind(|e| e.msg_id == id).unwrap();
                let v = h.store.get(&c.conv, id, viewer).await.unwrap();
                assert_eq!(
                    (last.status, last.version),
                    (v.status, v.version),
                    "{visibility:?}: the feed and get disagree for {viewer} on {id}"
                );
            }
        }
        h.finish().await;
    }
}

/// Of the conversations a device follows, one call names exactly those whose feed moved past its
/// cursor, with their heads; a device that is up to date gets nothing.
pub async fn changed_conversations_names_exactly_the_changed_ones<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let mut casts = Vec::new();
    for i in 0..12 {
        let cast = Cast::in_conversation(&h.settings, &format!("room-{i}"));
        let id = sent(&h, cast.text("hello")).await;
        h.store
            .transition(cast.request(Action::Recall, &cast.alice, id))
            .await
            .unwrap();
        casts.push((cast, id));
    }
    let quiet = Cast::in_conversation(&h.settings, "never-written");
    let mut cursors: Vec<SyncCursor> = Vec::new();
    for (cast, _) in &casts {
        let head = h
            .store
            .drain_changes(&cast.conv, &c.bob, FeedCursor::START, 10)
            .await
            .unwrap()
            .next;
        cursors.push(SyncCursor {
            conversation: cast.conv.clone(),
            cursor: head,
        });
    }
    cursors.push(SyncCursor {
        conversation: quiet.conv.clone(),
        cursor: FeedCursor::START,
    });
    assert!(
        h.store
            .changed_conversations(&cursors)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(h.store.changed_conversations(&[]).await.unwrap().is_empty());
    for i in [1, 5, 9] {
        let (cast, id) = &casts[i];
        h.store
            .transition(cast.request(Action::Delete, &cast.alice, *id))
            .await
            .unwrap();
    }
    let changed = h.store.changed_conversations(&cursors).await.unwrap();
    let names: Vec<_> = changed.iter().map(|x| x.conversation.clone()).collect();
    let want: Vec<_> = [1, 5, 9].iter().map(|i| casts[*i].0.conv.clone()).collect();
    assert_eq!(names, want);
    for x in &changed {
        let before = cursors
            .iter()
            .find(|c| c.conversation == x.conversation)
            .unwrap();
        assert_eq!(x.head.position(), before.cursor.position() + 1);
        assert!(!x.resync);
    }
    h.finish().await;
}

/// Cursors are bound to their conversation: one taken from another conversation, whether its
/// position is beyond this feed's head or within it (it would skip events), and one forged
/// ahead of the head, are invalid input, in a single pull and in the batch call.
pub async fn a_cursor_from_another_conversation_is_refused<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let quiet = Cast::in_conversation(&h.settings, "quiet");
    let q = sent(&h, quiet.text("x")).await;
    h.store
        .transition(quiet.request(Action::Recall, &quiet.alice, q))
        .await
        .unwrap();
    let quiet_cursor = h
        .store
        .drain_changes(&quiet.conv, &c.bob, FeedCursor::START, 10)
        .await
        .unwrap()
        .next;
    assert_eq!(quiet_cursor.position(), 1);
    for _ in 0..3 {
        let id = sent(&h, c.text("busy")).await;
        h.store
            .transition(c.request(Action::Recall, &c.alice, id))
            .await
            .unwrap();
    }
    let busy = h
        .store
        .drain_changes(&c.conv, &c.bob, FeedCursor::START, 10)
        .await
        .unwrap()
        .next;
    refused_in_a_pull_and_in_the_batch(&h, &quiet.conv, &c.bob, busy).await;
    // Position 1 is within the busy feed (head 3): accepted, it would skip two events.
    refused_in_a_pull_and_in_the_batch(&h, &c.conv, &c.bob, quiet_cursor).await;
    // The same position, issued for this conversation, is a cursor of its own.
    let own = FeedCursor::at(&c.conv, quiet_cursor.position()).unwrap();
    assert_eq!(
        h.store
            .changes_since(&c.conv, &c.bob, own, 10)
            .await
            .unwrap()
            .events
            .len(),
        2
    );
    let too_many: Vec<SyncCursor> = (0..=MAX_SYNC_CONVERSATIONS)
        .map(|i| SyncCursor {
            conversation: conv(&format!("c{i}")),
            cursor: FeedCursor::START,
        })
        .collect();
    let e = h.store.changed_conversations(&too_many).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidInput, Some("cursors"))
    );
    h.finish().await;
}

/// `cursor` used in `conversation` is invalid input naming the cursor, in `changes_since` and
/// in `changed_conversations`.
async fn refused_in_a_pull_and_in_the_batch<F: StoreFactory>(
    h: &Harness<'_, F>,
    conversation: &ConversationId,
    viewer: &UserId,
    cursor: FeedCursor,
) {
    let pull = h
        .store
        .changes_since(conversation, viewer, cursor, 10)
        .await
        .unwrap_err();
    let batch = h
        .store
        .changed_conversations(&[SyncCursor {
            conversation: conversation.clone(),
            cursor,
        }])
        .await
        .unwrap_err();
    for e in [pull, batch] {
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidInput, Some("cursor")),
            "{cursor:?} in {conversation}"
        );
    }
}

/// A resync ends: a device below the mark whose missed live events lie below it too gets a page
/// of events after the mark only, with `next` at least the mark, at every page size; pulling
/// from that `next` is not told to resync again (a `next` left at the last live event below the
/// mark would resync forever).
pub async fn a_resync_moves_the_cursor_to_the_mark<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let kept = sent(&h, c.text("kept")).await;
    let gone = sent(&h, c.text("gone")).await;
    // Seqs 1 and 2: kept is recalled and restored (it stays); seq 3: gone is deleted.
    for (action, id) in [
        (Action::Recall, kept),
        (Action::Restore, kept),
        (Action::Delete, gone),
    ] {
        h.store
            .transition(c.request(action, &c.alice, id))
            .await
            .unwrap();
    }
    h.clock.advance(h.settings.policy.retention() + DAY);
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    let mark = FeedCursor::at(&c.conv, 3).unwrap();
    for limit in [1, 2, 10] {
        let page = h
            .store
            .changes_since(&c.conv, &c.bob, FeedCursor::START, limit)
            .await
            .unwrap();
        assert_eq!(
            page.resync.map(|r| r.purged_through),
            Some(mark),
            "limit {limit}"
        );
        assert!(page.events.is_empty(), "limit {limit}: {:?}", page.events);
        assert_eq!(page.next, mark, "limit {limit}");
        let after = h
            .store
            .changes_since(&c.conv, &c.bob, page.next, limit)
            .await
            .unwrap();
        assert!(after.resync.is_none(), "limit {limit}");
        assert!(after.events.is_empty(), "limit {limit}");
    }
    // A change after the purge is the first event after the mark.
    h.store
        .transition(c.request(Action::Delete, &c.alice, kept))
        .await
        .unwrap();
    let page = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::at(&c.conv, 1).unwrap(), 10)
        .await
        .unwrap();
    assert!(page.resync.is_some());
    assert_eq!(
        page.events
            .iter()
            .map(|e| (e.msg_id, e.status))
            .collect::<Vec<_>>(),
        vec![(kept, Status::Deleted)]
    );
    // Positions only increase (a backend may spend some on its own records): after the mark.
    let seq = page.events[0].seq;
    assert!(seq > 3, "seq {seq}");
    assert_eq!(page.next, FeedCursor::at(&c.conv, seq).unwrap());
    assert_eq!(
        kind(h.store.get(&c.conv, gone, &c.bob).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// A device offline while the purge removed events it had not pulled is told to resync (in the
/// pull and in the batch call); re-reading its messages shows what the purge removed. A device
/// whose cursor is past every removed event is not bothered.
pub async fn a_device_offline_across_a_purge_is_told_to_resync<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let kept = sent(&h, c.text("kept")).await;
    let gone = sent(&h, c.text("gone")).await;
    let offline = FeedCursor::START;
    h.store
        .transition(c.request(Action::Recall, &c.alice, gone))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, gone))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() + DAY);
    h.store
        .transition(c.moderator_request(Action::Recall, &c.mia, kept))
        .await
        .unwrap();
    let online = FeedCursor::at(&c.conv, 2).unwrap();
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    let page = h
        .store
        .changes_since(&c.conv, &c.bob, offline, 10)
        .await
        .unwrap();
    let resync = page.resync.expect("the device missed removed events");
    assert_eq!(resync.purged_through, online);
    assert_eq!(
        page.events
            .iter()
            .map(|e| (e.msg_id, e.version))
            .collect::<Vec<_>>(),
        vec![(kept, 2)]
    );
    // What the device does: re-read what it holds.
    assert_eq!(
        kind(h.store.get(&c.conv, gone, &c.bob).await),
        ErrorKind::NotFound
    );
    let batch = h
        .store
        .changed_conversations(&[SyncCursor {
            conversation: c.conv.clone(),
            cursor: offline,
        }])
        .await
        .unwrap();
    assert!(batch[0].resync);
    let up_to_date = h
        .store
        .changes_since(&c.conv, &c.bob, online, 10)
        .await
        .unwrap();
    assert!(up_to_date.resync.is_none());
    assert_eq!(up_to_date.events.len(), 1);
    h.finish().await;
}
