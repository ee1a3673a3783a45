//! Reading: `get`, `list` pages and cursors, tombstones, re-edit, restore visibility, audit, attachment access (CONTRACT.md, "Reading").

use super::*;

pub(crate) async fn page_all<F: StoreFactory>(
    h: &Harness<'_, F>,
    c: &Cast,
    first: ListOptions,
) -> (Vec<MsgId>, usize) {
    let mut ids = Vec::new();
    let mut opts = first;
    let mut pages = 0;
    loop {
        let page = h.store.list(&c.conv, &c.bob, opts.clone()).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= opts.limit as usize);
        ids.extend(page.items.iter().map(|v| v.msg_id));
        match page.next {
            Some(next) => opts = opts.after(next),
            None => return (ids, pages),
        }
        assert!(pages < 1_000, "paging does not terminate");
    }
}

/// Newest-first paging by cursor returns every message once, in descending id order.
pub async fn list_newest_first_pages_through_everything_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..95).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    let (ids, pages) = page_all(&h, &c, ListOptions::newest(10)).await;
    let mut want: Vec<_> = msgs.iter().map(|m| m.msg_id).collect();
    want.reverse();
    assert_eq!(ids, want);
    assert_eq!(pages, 10);
    h.finish().await;
}

/// Oldest-first paging by cursor returns every message once, in ascending id order.
pub async fn list_oldest_first_pages_through_everything_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..95).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs.clone()).await.unwrap();
    let (ids, _) = page_all(&h, &c, ListOptions::oldest(7)).await;
    assert_eq!(ids, msgs.iter().map(|m| m.msg_id).collect::<Vec<_>>());
    h.finish().await;
}

/// A cursor excludes itself, works from any id, and the last page (even an exactly full one) ends the walk.
pub async fn list_cursor_is_exclusive_and_the_last_page_has_no_next<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let ids: Vec<_> = (0..10).map(|_| c.next_id()).collect();
    let msgs: Vec<_> = ids
        .iter()
        .map(|id| NewMessage::text(*id, c.conv.clone(), c.alice.clone(), b"x".to_vec()))
        .collect();
    h.store.insert_batch(msgs).await.unwrap();
    let p = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(3).after(ids[5]))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        vec![ids[4], ids[3], ids[2]]
    );
    assert_eq!(p.next, Some(ids[2]));
    let p = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(4).after(ids[5]))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        ids[6..10].to_vec()
    );
    assert_eq!(
        p.next, None,
        "an exactly full last page must not promise more"
    );
    let p = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(5).after(ids[0]))
        .await
        .unwrap();
    assert!(p.items.is_empty() && p.next.is_none());
    // A cursor between stored ids (a message purged meanwhile) still pages correctly.
    let gap = c.next_id();
    let p = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(2).after(gap))
        .await
        .unwrap();
    assert_eq!(
        p.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        vec![ids[9], ids[8]]
    );
    h.finish().await;
}

/// An unknown conversation lists as an empty page with no cursor.
pub async fn list_of_an_empty_conversation_is_an_empty_page<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let p = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(20))
        .await
        .unwrap();
    assert!(p.items.is_empty());
    assert_eq!(p.next, None);
    h.finish().await;
}

/// A page size of zero or above the policy's maximum is InvalidInput naming `limit`, never clamped.
pub async fn list_page_size_zero_or_huge_is_invalid_input<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    sent(&h, c.text("x")).await;
    for limit in [0, h.settings.policy.max_page_size() + 1, u32::MAX] {
        let err = h
            .store
            .list(&c.conv, &c.bob, ListOptions::newest(limit))
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ErrorKind::InvalidInput, Some("limit"))
        );
        let err = h
            .store
            .changes_since(&c.conv, &c.bob, FeedCursor::START, limit)
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind(), err.field()),
            (ErrorKind::InvalidInput, Some("limit"))
        );
    }
    let max = h.settings.policy.max_page_size();
    assert!(
        h.store
            .list(&c.conv, &c.bob, ListOptions::newest(max))
            .await
            .is_ok()
    );
    h.finish().await;
}

/// Conversations are isolated: listing one never returns another's messages.
pub async fn list_is_isolated_per_conversation<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = Cast::in_conversation(&h.settings, "group-2");
    h.store
        .insert_batch((0..5).map(|i| c.text(&format!("a{i}"))).collect())
        .await
        .unwrap();
    h.store
        .insert_batch((0..3).map(|i| other.text(&format!("b{i}"))).collect())
        .await
        .unwrap();
    let p = h
        .store
        .list(&other.conv, &c.bob, ListOptions::newest(50))
        .await
        .unwrap();
    assert_eq!(p.items.len(), 3);
    assert!(p.items.iter().all(|v| v.conversation_id == other.conv));
    h.finish().await;
}

/// Paging spans messages sent far apart in time (months), in both directions.
pub async fn list_spans_messages_sent_months_apart<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(sent(&h, c.text(&format!("month {i}"))).await);
        h.clock.advance(DAY * 31);
    }
    let (newest, _) = page_all(&h, &c, ListOptions::newest(5)).await;
    assert_eq!(newest, ids.iter().rev().copied().collect::<Vec<_>>());
    let (oldest, _) = page_all(&h, &c, ListOptions::oldest(5)).await;
    assert_eq!(oldest, ids);
    h.finish().await;
}

/// Recipients see a recalled message as a tombstone (who, when) with no content or attachment.
pub async fn recipients_see_a_recall_tombstone_without_content<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.file("blobs/secret.pdf")).await;
    h.clock.advance(MINUTE);
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    for viewer in [&c.bob, &c.carol, &c.mia] {
        let v = h.store.get(&c.conv, id, viewer).await.unwrap();
        assert_eq!(v.status, Status::Recalled);
        assert!(v.body.is_none());
        assert_eq!(
            v.tombstone,
            Some(Tombstone {
                status: Status::Recalled,
                by: c.alice.clone(),
                at: h.clock.now()
            })
        );
    }
    h.finish().await;
}

/// The sender still sees a recalled message's content while it can be restored (re-edit), not after.
pub async fn sender_sees_recalled_content_only_while_restorable<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("let me rephrase")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
    assert_eq!(v.status, Status::Recalled);
    assert!(v.tombstone.is_some());
    assert_eq!(v.body.unwrap().content, b"let me rephrase");
    h.clock.advance(h.settings.policy.restore_window() + MINUTE);
    let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
    assert!(
        v.body.is_none(),
        "no re-edit once the restore window closed"
    );
    h.finish().await;
}

/// A deleted message never shows content, to anyone, sender included.
pub async fn deleted_message_never_shows_content<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("private")).await;
    h.store
        .transition(c.request(Action::Delete, &c.alice, id))
        .await
        .unwrap();
    for viewer in [&c.alice, &c.bob, &c.mia] {
        let v = h.store.get(&c.conv, id, viewer).await.unwrap();
        assert_eq!(v.status, Status::Deleted);
        assert!(v.body.is_none());
        assert_eq!(v.tombstone.unwrap().by, c.alice);
    }
    h.finish().await;
}

/// With restore visibility Everyone, a restored message reappears for every viewer.
pub async fn restored_message_reappears_for_everyone_by_default<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("back")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    for viewer in [&c.alice, &c.bob] {
        let v = h.store.get(&c.conv, id, viewer).await.unwrap();
        assert_eq!(v.status, Status::Normal);
        assert!(v.tombstone.is_none());
        assert_eq!(v.body.unwrap().content, b"back");
    }
    h.finish().await;
}

/// With restore visibility SenderOnly, the sender sees the restored message, others the recall notice.
pub async fn restored_message_sender_only_visibility<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .restore_visibility(RestoreVisibility::SenderOnly)
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let id = sent(&h, c.file("blobs/a.png")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    let mine = h.store.get(&c.conv, id, &c.alice).await.unwrap();
    assert_eq!(mine.status, Status::Normal);
    assert!(mine.body.is_some());
    let theirs = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!(theirs.status, Status::Recalled);
    assert!(theirs.body.is_none());
    assert_eq!(theirs.tombstone.unwrap().by, c.alice);
    assert!(matches!(
        h.store
            .attachment_access(&c.conv, id, &c.bob)
            .await
            .unwrap(),
        AttachmentAccess::Denied { .. }
    ));
    h.finish().await;
}

/// A page shows recalled and deleted messages in place, as tombstones, for each viewer.
pub async fn list_shows_tombstones_in_place<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.text("a")).await;
    let b = sent(&h, c.text("b")).await;
    let d = sent(&h, c.text("c")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, b))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, d))
        .await
        .unwrap();
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(10))
        .await
        .unwrap();
    let got: Vec<_> = page
        .items
        .iter()
        .map(|v| (v.msg_id, v.status, v.body.is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            (a, Status::Normal, true),
            (b, Status::Recalled, false),
            (d, Status::Deleted, false)
        ]
    );
    let page = h
        .store
        .list(&c.conv, &c.alice, ListOptions::oldest(10))
        .await
        .unwrap();
    assert!(page.items[1].body.is_some(), "the sender's re-edit copy");
    h.finish().await;
}

/// The audit read returns the stored content of recalled and deleted messages until they are purged.
pub async fn audit_returns_content_of_recalled_and_deleted_messages<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.text("evidence one")).await;
    let b = sent(&h, c.text("evidence two")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(c.request(Action::Delete, &c.alice, b))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.restore_window() + DAY);
    let ra = h.store.audit(&c.conv, a).await.unwrap().message;
    let rb = h.store.audit(&c.conv, b).await.unwrap().message;
    assert_eq!(ra.message.content, b"evidence one");
    assert_eq!(ra.message.sender_id, c.alice);
    assert_eq!(rb.message.content, b"evidence two");
    assert_eq!(rb.lifecycle.status, Status::Deleted);
    h.clock.advance(h.settings.policy.retention());
    h.store.purge_all(PurgeOptions::default()).await.unwrap();
    assert_eq!(kind(h.store.audit(&c.conv, a).await), ErrorKind::NotFound);
    h.finish().await;
}

/// Recall and delete deny recipients the attachment but keep the file; only the purge releases it.
pub async fn attachment_access_follows_visibility<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.file("blobs/q3.pdf")).await;
    let plain = sent(&h, c.text("no file")).await;
    let allowed = AttachmentAccess::Allowed {
        key: "blobs/q3.pdf".into(),
    };
    assert_eq!(
        h.store
            .attachment_access(&c.conv, id, &c.bob)
            .await
            .unwrap(),
        allowed
    );
    assert_eq!(
        h.store
            .attachment_access(&c.conv, plain, &c.bob)
            .await
            .unwrap(),
        AttachmentAccess::NoAttachment
    );
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        h.store
            .attachment_access(&c.conv, id, &c.bob)
            .await
            .unwrap(),
        AttachmentAccess::Denied {
            status: Status::Recalled
        }
    );
    assert_eq!(
        h.store
            .attachment_access(&c.conv, id, &c.alice)
            .await
            .unwrap(),
        allowed,
        "re-edit"
    );
    h.store
        .transition(c.request(Action::Delete, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        h.store
            .attachment_access(&c.conv, id, &c.alice)
            .await
            .unwrap(),
        AttachmentAccess::Denied {
            status: Status::Deleted
        }
    );
    let audit = h.store.audit(&c.conv, id).await.unwrap();
    assert_eq!(
        audit.message.message.attachment.unwrap().key,
        "blobs/q3.pdf"
    );
    assert_eq!(
        kind(
            h.store
                .attachment_access(&c.conv, c.next_id(), &c.bob)
                .await
        ),
        ErrorKind::NotFound
    );
    h.finish().await;
}
