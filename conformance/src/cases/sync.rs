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
        let page = h.store.changes_since(&c.conv, cursor, 4).await.unwrap();
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
            .changes_since(&c.conv, cursor, 10)
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
        .changes_since(&c.conv, FeedCursor::START, 100)
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
        .drain_changes(&c.conv, FeedCursor::START, 2)
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
            let page = h.store.changes_since(&c.conv, cursor, 7).await.unwrap();
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
    let pulls = futures::future::join_all(
        (0..2_000).map(|_| h.store.changes_since(&c.conv, FeedCursor::START, 10)),
    )
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
