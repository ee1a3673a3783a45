//! The retention purge, legal hold and released attachments (CONTRACT.md, "Purge").

use super::*;

/// Recalled and deleted messages past retention are purged; unexpired ones and normal ones stay.
pub async fn purge_removes_only_expired_recalled_and_deleted_messages<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let normal = sent(&h, c.text("keep")).await;
    let recalled = sent(&h, c.text("recalled")).await;
    let deleted = sent(&h, c.text("deleted")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, recalled))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, deleted))
        .await
        .unwrap();
    h.clock.advance(DAY * 10);
    let late = sent(&h, c.text("late")).await;
    h.store
        .transition(c.request(Action::Delete, &c.alice, late))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() - DAY * 10);
    let report = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(report.messages, 2);
    for gone in [recalled, deleted] {
        assert_eq!(
            kind(h.store.get(&c.conv, gone, &c.bob).await),
            ErrorKind::NotFound
        );
    }
    for kept in [normal, late] {
        assert!(h.store.get(&c.conv, kept, &c.bob).await.is_ok());
    }
    h.clock.advance(DAY * 10);
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    assert!(
        h.store.get(&c.conv, normal, &c.bob).await.is_ok(),
        "normal messages are never purged by retention"
    );
    h.finish().await;
}

/// Purge removes the change events of the messages it removes, and leaves the others' events.
pub async fn purge_removes_the_events_of_purged_messages<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.text("a")).await;
    let b = sent(&h, c.text("b")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Recall, &c.alice, b))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Restore, &c.alice, b))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention());
    let report = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!((report.messages, report.events), (1, 2));
    let left = all_events(&h, &c.conv).await;
    assert_eq!(
        left.iter()
            .map(|e| (e.msg_id, e.version))
            .collect::<Vec<_>>(),
        vec![(b, 2), (b, 3)]
    );
    h.finish().await;
}

/// Conversations under legal hold are never purged, until the hold is released.
pub async fn purge_skips_conversations_under_legal_hold<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = Cast::in_conversation(&h.settings, "group-2");
    let held = sent(&h, c.text("evidence")).await;
    let free = sent(&h, other.text("chatter")).await;
    h.store.set_legal_hold(&c.conv, true).await.unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, held))
        .await
        .unwrap();
    h.store
        .transition(other.request(Action::Delete, &c.alice, free))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() * 3);
    let report = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(report.messages, 1);
    assert_eq!(
        h.store
            .audit(&c.conv, held)
            .await
            .unwrap()
            .message
            .message
            .content,
        b"evidence"
    );
    assert_eq!(
        kind(h.store.audit(&other.conv, free).await),
        ErrorKind::NotFound
    );
    h.store.set_legal_hold(&c.conv, false).await.unwrap();
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    assert_eq!(
        kind(h.store.audit(&c.conv, held).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// Purge reports the attachment keys it released, once, and only of purged messages.
pub async fn purge_reports_released_attachment_keys<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.file("blobs/a.pdf")).await;
    let b = sent(&h, c.file("blobs/b.pdf")).await;
    let _kept = sent(&h, c.file("blobs/kept.pdf")).await;
    let _plain = sent(&h, c.text("no file")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, b))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention());
    let mut keys = h
        .store
        .purge_all(PurgeOptions::default())
        .await
        .unwrap()
        .released_attachments;
    keys.sort();
    assert_eq!(
        keys,
        vec!["blobs/a.pdf".to_string(), "blobs/b.pdf".to_string()]
    );
    assert!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .released_attachments
            .is_empty()
    );
    h.finish().await;
}

/// Purge works in bounded batches that resume where the last stopped until nothing is left.
pub async fn purge_runs_in_bounded_resumable_batches<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..23).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    for m in &msgs {
        h.store
            .transition(c.request(Action::Delete, &c.alice, m.msg_id))
            .await
            .unwrap();
    }
    h.clock.advance(h.settings.policy.retention());
    let mut sizes = Vec::new();
    loop {
        let r = h.store.purge(PurgeOptions { batch_size: 5 }).await.unwrap();
        assert!(r.messages <= 5);
        sizes.push(r.messages);
        if !r.more {
            break;
        }
        assert!(sizes.len() < 20, "purge does not terminate");
    }
    assert_eq!(sizes.iter().sum::<u64>(), 23);
    assert_eq!(&sizes[..4], &[5, 5, 5, 5]);
    assert!(
        h.store
            .list(&c.conv, &c.bob, ListOptions::newest(50))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        kind(h.store.purge(PurgeOptions { batch_size: 0 }).await),
        ErrorKind::InvalidInput
    );
    h.finish().await;
}

/// Two purge workers running at once remove each message once and never double-count.
pub async fn concurrent_purges_never_double_count<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..40).map(|i| c.file(&format!("blobs/{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    for m in &msgs {
        h.store
            .transition(c.request(Action::Delete, &c.alice, m.msg_id))
            .await
            .unwrap();
    }
    h.clock.advance(h.settings.policy.retention());
    let opts = PurgeOptions { batch_size: 7 };
    let (a, b) = futures::join!(h.store.purge_all(opts), h.store.purge_all(opts));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.messages + b.messages, 40);
    let mut keys: Vec<_> = a
        .released_attachments
        .into_iter()
        .chain(b.released_attachments)
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 40);
    h.finish().await;
}

/// With a history limit, the purge also removes normal messages older than the limit.
pub async fn purge_applies_the_history_limit<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .history_limit(Some(DAY * 90))
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let old = sent(&h, c.file("blobs/old.jpg")).await;
    h.clock.advance(DAY * 60);
    let young = sent(&h, c.text("young")).await;
    h.clock.advance(DAY * 31);
    let report = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(report.messages, 1);
    assert_eq!(
        report.released_attachments,
        vec!["blobs/old.jpg".to_string()]
    );
    assert_eq!(
        kind(h.store.get(&c.conv, old, &c.bob).await),
        ErrorKind::NotFound
    );
    assert!(h.store.get(&c.conv, young, &c.bob).await.is_ok());
    h.finish().await;
}

/// A transition on a purged message is NotFound.
pub async fn transitions_on_purged_messages_are_not_found<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Delete, &c.alice, id))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention());
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Delete, &c.alice, id))
                .await
        ),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// Every message of `cast`'s conversation as bob sees it, walking pages from `first`.
async fn walk<F: StoreFactory>(
    h: &Harness<'_, F>,
    cast: &Cast,
    first: ListOptions,
) -> Vec<MessageView> {
    let mut views = Vec::new();
    let mut opts = first;
    for _ in 0..1_000 {
        let page = h
            .store
            .list(&cast.conv, &cast.bob, opts.clone())
            .await
            .unwrap();
        views.extend(page.items);
        match page.next {
            Some(next) => opts = opts.after(next),
            None => return views,
        }
    }
    panic!("paging does not terminate");
}

/// How many of `ids` the audit read still finds in `cast`'s conversation.
async fn remaining<F: StoreFactory>(h: &Harness<'_, F>, cast: &Cast, ids: &[MsgId]) -> usize {
    let mut n = 0;
    for id in ids {
        if h.store.audit(&cast.conv, *id).await.is_ok() {
            n += 1;
        }
    }
    n
}

/// Deletes `n` messages of `cast`'s conversation and moves the clock past retention, so the purge
/// may remove them; returns their ids.
async fn expired_deletes<F: StoreFactory>(h: &Harness<'_, F>, cast: &Cast, n: usize) -> Vec<MsgId> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = sent(h, cast.text(&format!("old {i}"))).await;
        h.store
            .transition(cast.request(Action::Delete, &cast.alice, id))
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Inserts acknowledged while the purge empties the same conversation are never lost: each reads
/// back and appears in a page walk.
pub async fn purge_racing_inserts_loses_no_acknowledged_message<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    expired_deletes(&h, &c, 40).await;
    h.clock.advance(h.settings.policy.retention() + DAY);
    let purge = async {
        let mut total = 0;
        loop {
            let r = h.store.purge(PurgeOptions { batch_size: 3 }).await.unwrap();
            total += r.messages;
            tokio::task::yield_now().await;
            if !r.more {
                return total;
            }
        }
    };
    let inserts = async {
        let mut acked = Vec::new();
        for i in 0..20 {
            let m = c.text(&format!("new {i}"));
            if h.store.insert(m.clone()).await.unwrap() == InsertOutcome::Inserted {
                acked.push(m.msg_id);
            }
            tokio::task::yield_now().await;
        }
        acked
    };
    let (purged, acked) = futures::join!(purge, inserts);
    assert_eq!(purged, 40);
    assert_eq!(acked.len(), 20);
    for id in &acked {
        let v = h.store.get(&c.conv, *id, &c.bob).await.unwrap();
        assert_eq!(v.status, Status::Normal);
    }
    let listed: Vec<MsgId> = walk(&h, &c, ListOptions::newest(7))
        .await
        .into_iter()
        .map(|v| v.msg_id)
        .collect();
    let mut want = acked.clone();
    want.reverse();
    assert_eq!(
        listed, want,
        "every acknowledged message is listed once, newest first"
    );
    h.finish().await;
}

/// While the purge removes deleted messages, every read of one sees it deleted without content
/// or not at all; never a torn message.
pub async fn purge_racing_reads_never_shows_a_torn_message<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let ids = expired_deletes(&h, &c, 30).await;
    h.clock.advance(h.settings.policy.retention() + DAY);
    let purge = async {
        loop {
            let r = h.store.purge(PurgeOptions { batch_size: 2 }).await.unwrap();
            tokio::task::yield_now().await;
            if !r.more {
                break;
            }
        }
    };
    let reads = async {
        let mut gone = 0;
        for round in 0..4 {
            for id in &ids {
                match h.store.get(&c.conv, *id, &c.alice).await {
                    Ok(v) => {
                        assert_eq!(v.status, Status::Deleted, "round {round}: {v:?}");
                        assert!(v.body.is_none(), "a deleted message shows no content");
                    }
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::NotFound);
                        gone += 1;
                    }
                }
                let page = h
                    .store
                    .list(&c.conv, &c.alice, ListOptions::newest(5))
                    .await
                    .unwrap();
                assert!(
                    page.items
                        .iter()
                        .all(|v| v.status == Status::Deleted && v.body.is_none())
                );
            }
            tokio::task::yield_now().await;
        }
        gone
    };
    futures::join!(purge, reads);
    for id in &ids {
        assert_eq!(
            kind(h.store.get(&c.conv, *id, &c.alice).await),
            ErrorKind::NotFound
        );
    }
    h.finish().await;
}

/// A legal hold placed while purge batches run is honoured from the moment it is acknowledged:
/// nothing of the held conversation is purged after `set_legal_hold` returned.
pub async fn legal_hold_placed_during_a_purge_is_honoured<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = Cast::in_conversation(&h.settings, "group-2");
    let held = expired_deletes(&h, &c, 30).await;
    expired_deletes(&h, &other, 30).await;
    h.clock.advance(h.settings.policy.retention() + DAY);
    let purge = async {
        loop {
            let r = h.store.purge(PurgeOptions { batch_size: 4 }).await.unwrap();
            tokio::task::yield_now().await;
            if !r.more {
                break;
            }
        }
    };
    let hold = async {
        tokio::task::yield_now().await;
        h.store.set_legal_hold(&c.conv, true).await.unwrap();
        remaining(&h, &c, &held).await
    };
    let ((), at_hold) = futures::join!(purge, hold);
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(
        remaining(&h, &c, &held).await,
        at_hold,
        "messages of a held conversation were purged after the hold was acknowledged"
    );
    h.finish().await;
}

/// A page walk after a partial purge visits every remaining message exactly once, even where a
/// whole page's worth of neighbours was purged.
pub async fn page_walk_over_partly_purged_history_visits_every_remaining_message<
    F: StoreFactory,
>(
    f: &F,
) {
    let (h, c) = start(f).await;
    let mut keep = Vec::new();
    for round in 0..4 {
        keep.push(sent(&h, c.text(&format!("keep {round}"))).await);
        expired_deletes(&h, &c, 7).await;
    }
    h.clock.advance(h.settings.policy.retention() + DAY);
    // One partial batch: some purged, some still marked or due.
    h.store.purge(PurgeOptions { batch_size: 9 }).await.unwrap();
    for opts in [ListOptions::newest(2), ListOptions::oldest(2)] {
        let newest = opts.direction == Direction::NewestFirst;
        let live: Vec<MsgId> = walk(&h, &c, opts)
            .await
            .into_iter()
            .filter(|v| v.status == Status::Normal)
            .map(|v| v.msg_id)
            .collect();
        let mut want = keep.clone();
        if newest {
            want.reverse();
        }
        assert_eq!(live, want);
    }
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    let all: Vec<MsgId> = walk(&h, &c, ListOptions::oldest(2))
        .await
        .into_iter()
        .map(|v| v.msg_id)
        .collect();
    assert_eq!(all, keep);
    h.finish().await;
}

/// With a history limit, deletes racing the purge leave no change event whose message is gone.
pub async fn history_purge_racing_deletes_leaves_no_orphan_events<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .history_limit(Some(40 * DAY))
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(sent(&h, c.text(&format!("m{i}"))).await);
    }
    h.clock.advance(41 * DAY);
    let deletes = async {
        let reqs = ids
            .iter()
            .map(|id| c.moderator_request(Action::Delete, &c.mia, *id))
            .collect();
        race(&h, reqs).await
    };
    let purge = async {
        loop {
            let r = h.store.purge(PurgeOptions { batch_size: 3 }).await.unwrap();
            tokio::task::yield_now().await;
            if !r.more {
                break;
            }
        }
    };
    let (results, ()) = futures::join!(deletes, purge);
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.kind(), ErrorKind::NotFound, "{results:?}");
        }
    }
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    for e in all_events(&h, &c.conv).await {
        assert!(
            h.store.audit(&c.conv, e.msg_id).await.is_ok(),
            "event {} refers to purged message {}",
            e.seq,
            e.msg_id
        );
    }
    h.finish().await;
}

/// A file forwarded into another conversation under the same key is released only when its last
/// message is purged: the purge never reports a key that a stored message still grants.
pub async fn a_forwarded_attachment_is_released_with_its_last_message<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = Cast::in_conversation(&h.settings, "forwarded-to");
    let original = sent(&h, c.file("blobs/shared.pdf")).await;
    let forward = sent(&h, other.file("blobs/shared.pdf")).await;
    h.store
        .transition(c.request(Action::Delete, &c.alice, original))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() + DAY);
    let first = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(first.messages, 1);
    assert!(
        first.released_attachments.is_empty(),
        "the forward still grants the file: {:?}",
        first.released_attachments
    );
    assert_eq!(
        h.store
            .attachment_access(&other.conv, forward, &other.bob)
            .await
            .unwrap(),
        AttachmentAccess::Allowed {
            key: "blobs/shared.pdf".to_string()
        }
    );
    h.store
        .transition(other.request(Action::Delete, &other.alice, forward))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() + DAY);
    let last = h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(
        last.released_attachments,
        vec!["blobs/shared.pdf".to_string()]
    );
    h.finish().await;
}
