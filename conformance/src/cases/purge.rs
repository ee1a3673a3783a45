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
