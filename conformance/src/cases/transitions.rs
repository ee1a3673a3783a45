//! Transitions: recall, restore, delete, their windows and authorities, replay protection and the request order (CONTRACT.md, "Transitions" and "Requests").

use super::*;

/// The sender recalls within the window: Recalled, version 2, recalled_at and recalled_by set.
pub async fn sender_recalls_within_the_window<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("oops")).await;
    h.clock.advance(h.settings.policy.recall_window());
    let out = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        (out.status, out.version, out.changed, out.replayed),
        (Status::Recalled, 2, true, false)
    );
    let audit = h.store.audit(&c.conv, id).await.unwrap().message.lifecycle;
    assert_eq!(audit.status, Status::Recalled);
    assert_eq!(audit.recalled_at, Some(h.clock.now()));
    assert_eq!(audit.recalled_by, Some(c.alice.clone()));
    h.finish().await;
}

/// The sender's recall one millisecond after the window is WindowExpired and changes nothing.
pub async fn sender_recall_after_the_window_is_window_expired<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("too late")).await;
    h.clock
        .advance(h.settings.policy.recall_window() + std::time::Duration::from_millis(1));
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Recall, &c.alice, id))
                .await
        ),
        ErrorKind::WindowExpired
    );
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Normal, 1));
    assert!(all_events(&h, &c.conv).await.is_empty());
    h.finish().await;
}

/// A configured recall window (5 minutes) replaces the default.
pub async fn configured_recall_window_is_honoured<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder().recall_window(MINUTE * 5).build().unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let early = sent(&h, c.text("a")).await;
    let late = sent(&h, c.text("b")).await;
    h.clock.advance(MINUTE * 4);
    assert!(
        h.store
            .transition(c.request(Action::Recall, &c.alice, early))
            .await
            .is_ok()
    );
    h.clock.advance(MINUTE * 2);
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Recall, &c.alice, late))
                .await
        ),
        ErrorKind::WindowExpired
    );
    h.finish().await;
}

/// A member who is not the sender may not recall or delete: Forbidden, nothing changes.
pub async fn non_sender_member_may_not_recall_or_delete<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("mine")).await;
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Recall, &c.bob, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Delete, &c.bob, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(h.store.get(&c.conv, id, &c.bob).await.unwrap().version, 1);
    assert!(all_events(&h, &c.conv).await.is_empty());
    h.finish().await;
}

/// A moderator recalls any message long after the sender's window (unlimited by default).
pub async fn moderator_recalls_after_the_senders_window<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("spam")).await;
    h.clock.advance(DAY * 3);
    let out = h
        .store
        .transition(c.moderator_request(Action::Recall, &c.mia, id))
        .await
        .unwrap();
    assert_eq!(out.status, Status::Recalled);
    let t = h
        .store
        .get(&c.conv, id, &c.bob)
        .await
        .unwrap()
        .tombstone
        .unwrap();
    assert_eq!((t.status, t.by), (Status::Recalled, c.mia.clone()));
    h.finish().await;
}

/// A configured moderator window is enforced: WindowExpired after it.
pub async fn moderator_recall_window_is_enforced_when_configured<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .moderator_recall_window(Some(DAY))
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let id = sent(&h, c.text("spam")).await;
    h.clock.advance(DAY + MINUTE);
    assert_eq!(
        kind(
            h.store
                .transition(c.moderator_request(Action::Recall, &c.mia, id))
                .await
        ),
        ErrorKind::WindowExpired
    );
    h.finish().await;
}

/// The sender restores within the restore window: Normal, version 3, recalled_at cleared.
pub async fn sender_restores_within_the_restore_window<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("wait, I meant it")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.restore_window());
    let out = h
        .store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        (out.status, out.version, out.changed),
        (Status::Normal, 3, true)
    );
    let life = h.store.audit(&c.conv, id).await.unwrap().message.lifecycle;
    assert_eq!(life.recalled_at, None);
    assert_eq!(life.restored_at, Some(h.clock.now()));
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!(v.body.unwrap().content, b"wait, I meant it");
    h.finish().await;
}

/// A restore after the restore window (counted from the recall, not the send) is WindowExpired.
pub async fn restore_after_the_window_is_window_expired<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("gone")).await;
    h.clock.advance(MINUTE);
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.clock
        .advance(h.settings.policy.restore_window() + std::time::Duration::from_millis(1));
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::WindowExpired
    );
    assert_eq!(
        h.store.get(&c.conv, id, &c.alice).await.unwrap().status,
        Status::Recalled
    );
    h.finish().await;
}

/// Only the sender may restore: another member or a moderator is Forbidden.
pub async fn only_the_sender_may_restore<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.bob, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(
            h.store
                .transition(c.moderator_request(Action::Restore, &c.mia, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    h.finish().await;
}

/// The sender cannot undo a moderator's recall: Forbidden.
pub async fn sender_cannot_restore_a_moderators_recall<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("abuse")).await;
    h.store
        .transition(c.moderator_request(Action::Recall, &c.mia, id))
        .await
        .unwrap();
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    h.finish().await;
}

/// Restoring a message that was never recalled is InvalidState.
pub async fn restore_of_a_normal_message_is_invalid_state<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("fine")).await;
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::InvalidState
    );
    h.finish().await;
}

/// A deleted message is terminal: recall and restore are InvalidState, delete again is a no-op.
pub async fn deleted_is_terminal<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("bye")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let out = h
        .store
        .transition(c.request(Action::Delete, &c.alice, id))
        .await
        .unwrap();
    assert_eq!((out.status, out.version), (Status::Deleted, 3));
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::InvalidState
    );
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Recall, &c.alice, id))
                .await
        ),
        ErrorKind::InvalidState
    );
    let again = h
        .store
        .transition(c.request(Action::Delete, &c.alice, id))
        .await
        .unwrap();
    assert_eq!(
        (again.status, again.version, again.changed),
        (Status::Deleted, 3, false)
    );
    assert_eq!(all_events(&h, &c.conv).await.len(), 2);
    h.finish().await;
}

/// Sender and moderator may delete at any time, Normal or Recalled; deleted_at and deleted_by are set.
pub async fn sender_and_moderator_may_delete<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.text("a")).await;
    let b = sent(&h, c.text("b")).await;
    h.clock.advance(DAY * 20);
    h.store
        .transition(c.request(Action::Delete, &c.alice, a))
        .await
        .unwrap();
    h.store
        .transition(c.moderator_request(Action::Delete, &c.mia, b))
        .await
        .unwrap();
    let la = h.store.audit(&c.conv, a).await.unwrap().message.lifecycle;
    let lb = h.store.audit(&c.conv, b).await.unwrap().message.lifecycle;
    assert_eq!(
        (la.status, la.deleted_by, la.deleted_at),
        (Status::Deleted, Some(c.alice.clone()), Some(h.clock.now()))
    );
    assert_eq!(
        (lb.status, lb.deleted_by),
        (Status::Deleted, Some(c.mia.clone()))
    );
    h.finish().await;
}

/// A request whose client timestamp is too far behind or ahead of the store's clock is StaleRequest.
pub async fn stale_client_timestamp_is_refused<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let skew = h.settings.policy.max_clock_skew() + std::time::Duration::from_millis(1);
    for client_ts in [
        h.clock.now().saturating_sub(skew),
        h.clock.now().saturating_add(skew),
    ] {
        let req = TransitionRequest {
            client_ts,
            ..c.request(Action::Recall, &c.alice, id)
        };
        assert_eq!(kind(h.store.transition(req).await), ErrorKind::StaleRequest);
    }
    assert_eq!(
        h.store.get(&c.conv, id, &c.bob).await.unwrap().status,
        Status::Normal
    );
    h.finish().await;
}

/// A recall captured and replayed after the sender restored does not recall the message again.
pub async fn replayed_recall_after_restore_is_not_applied_again<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let recall = c.request(Action::Recall, &c.alice, id);
    h.store.transition(recall.clone()).await.unwrap();
    h.store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    h.clock.advance(MINUTE);
    let replay = TransitionRequest {
        client_ts: h.clock.now(),
        ..recall
    };
    let out = h.store.transition(replay).await.unwrap();
    assert!(out.replayed);
    assert_eq!(
        (out.status, out.version),
        (Status::Recalled, 2),
        "the first outcome, replayed"
    );
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Normal, 3));
    assert_eq!(all_events(&h, &c.conv).await.len(), 2);
    h.finish().await;
}

/// A second device's recall that found the message already recalled, replayed after a restore, is not applied.
pub async fn replayed_no_op_recall_after_restore_is_not_applied<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let second_device = c.request(Action::Recall, &c.alice, id);
    assert!(
        !h.store
            .transition(second_device.clone())
            .await
            .unwrap()
            .changed
    );
    h.store
        .transition(c.request(Action::Restore, &c.alice, id))
        .await
        .unwrap();
    let out = h.store.transition(second_device).await.unwrap();
    assert!(out.replayed && !out.changed);
    assert_eq!(
        h.store.get(&c.conv, id, &c.bob).await.unwrap().status,
        Status::Normal
    );
    assert_eq!(all_events(&h, &c.conv).await.len(), 2);
    h.finish().await;
}

/// A request id reused for a different message or action is a Conflict, and applies nothing.
pub async fn reused_request_id_for_another_request_is_a_conflict<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let a = sent(&h, c.text("a")).await;
    let b = sent(&h, c.text("b")).await;
    let first = c.request(Action::Recall, &c.alice, a);
    h.store.transition(first.clone()).await.unwrap();
    let other_msg = TransitionRequest {
        msg_id: b,
        ..first.clone()
    };
    assert_eq!(
        kind(h.store.transition(other_msg).await),
        ErrorKind::Conflict
    );
    let other_action = TransitionRequest {
        action: Action::Delete,
        ..first
    };
    assert_eq!(
        kind(h.store.transition(other_action).await),
        ErrorKind::Conflict
    );
    assert_eq!(
        h.store.get(&c.conv, b, &c.bob).await.unwrap().status,
        Status::Normal
    );
    assert_eq!(
        h.store.get(&c.conv, a, &c.bob).await.unwrap().status,
        Status::Recalled
    );
    h.finish().await;
}

/// A transition on a message that does not exist is NotFound.
pub async fn transition_of_a_missing_message_is_not_found<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    sent(&h, c.text("x")).await;
    for action in [Action::Recall, Action::Restore, Action::Delete] {
        assert_eq!(
            kind(
                h.store
                    .transition(c.request(action, &c.alice, c.next_id()))
                    .await
            ),
            ErrorKind::NotFound
        );
    }
    let elsewhere = Cast::in_conversation(&h.settings, "no-such-conversation");
    assert_eq!(
        kind(
            h.store
                .transition(elsewhere.request(Action::Recall, &c.alice, c.next_id()))
                .await
        ),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// A refused restore is recorded: replayed after the sender recalls, it is refused again and the
/// recall stands.
pub async fn refused_restore_replayed_after_a_recall_is_refused_again<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let restore = c.request(Action::Restore, &c.alice, id);
    assert_eq!(
        kind(h.store.transition(restore.clone()).await),
        ErrorKind::InvalidState
    );
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.clock.advance(MINUTE);
    assert_eq!(
        kind(h.store.transition(restore).await),
        ErrorKind::InvalidState,
        "the captured restore is answered with its first outcome"
    );
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Recalled, 2));
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}

/// The identical retry of an applied recall that arrives after the skew window is answered with
/// its outcome, not refused as stale (the replay lookup comes before the staleness check).
pub async fn retry_of_an_applied_recall_after_the_skew_window_is_replayed<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let recall = c.request(Action::Recall, &c.alice, id);
    h.store.transition(recall.clone()).await.unwrap();
    h.clock
        .advance(h.settings.policy.max_clock_skew() + std::time::Duration::from_secs(1));
    let out = h.store.transition(recall).await.unwrap();
    assert!(out.replayed && out.changed);
    assert_eq!((out.status, out.version), (Status::Recalled, 2));
    h.finish().await;
}

/// A request refused as stale because its client clock ran ahead stays refused when retried once
/// the store's clock has caught up: the refusal was its first outcome.
pub async fn stale_refusal_is_the_first_outcome_of_its_request_id<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let mut recall = c.request(Action::Recall, &c.alice, id);
    recall.client_ts = h
        .clock
        .now()
        .saturating_add(h.settings.policy.max_clock_skew() + MINUTE);
    assert_eq!(
        kind(h.store.transition(recall.clone()).await),
        ErrorKind::StaleRequest
    );
    h.clock.advance(MINUTE + MINUTE);
    assert_eq!(
        kind(h.store.transition(recall).await),
        ErrorKind::StaleRequest
    );
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Normal, 1));
    assert!(all_events(&h, &c.conv).await.is_empty());
    h.finish().await;
}

/// A recall of a message that did not exist yet is refused as not found, and its retry after the
/// message arrives is refused the same way: a request id is judged once.
pub async fn not_found_refusal_is_the_first_outcome_of_its_request_id<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = c.text("late");
    let recall = c.request(Action::Recall, &c.alice, m.msg_id);
    assert_eq!(
        kind(h.store.transition(recall.clone()).await),
        ErrorKind::NotFound
    );
    sent(&h, m.clone()).await;
    assert_eq!(kind(h.store.transition(recall).await), ErrorKind::NotFound);
    let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.status, Status::Normal);
    // A fresh request id recalls it.
    let out = h
        .store
        .transition(c.request(Action::Recall, &c.alice, m.msg_id))
        .await
        .unwrap();
    assert!(out.changed);
    h.finish().await;
}

/// A bystander's refused recall is recorded: the same request id then used for another request
/// is a conflict, and replaying the refused one is refused again.
pub async fn refused_request_ids_are_taken<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let bystander = c.request(Action::Recall, &c.bob, id);
    assert_eq!(
        kind(h.store.transition(bystander.clone()).await),
        ErrorKind::Forbidden
    );
    let mut reuse = c.request(Action::Recall, &c.alice, id);
    reuse.request_id = bystander.request_id.clone();
    let e = h.store.transition(reuse).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::Conflict, Some("request_id"))
    );
    assert_eq!(
        kind(h.store.transition(bystander).await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        h.store.get(&c.conv, id, &c.bob).await.unwrap().status,
        Status::Normal
    );
    h.finish().await;
}

/// A moderator's recall of a message its sender had recalled stands: it is applied with its
/// event, and the sender can no longer restore it.
pub async fn moderator_recall_takes_over_the_senders_recall<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("abuse")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    h.clock.advance(MINUTE);
    let out = h
        .store
        .transition(c.moderator_request(Action::Recall, &c.mia, id))
        .await
        .unwrap();
    assert!(out.changed && !out.replayed, "{out:?}");
    assert_eq!((out.status, out.version), (Status::Recalled, 3));
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Recalled, 3));
    assert!(v.body.is_none());
    assert_eq!(v.tombstone.unwrap().by, c.mia);
    // The sender no longer sees re-edit content: the recall is not theirs to restore.
    assert!(
        h.store
            .get(&c.conv, id, &c.alice)
            .await
            .unwrap()
            .body
            .is_none()
    );
    let events = all_events(&h, &c.conv).await;
    assert_eq!(
        events
            .iter()
            .map(|e| (e.version, e.by.clone()))
            .collect::<Vec<_>>(),
        vec![(2, c.alice.clone()), (3, c.mia.clone())]
    );
    h.finish().await;
}

/// A sender's recall of a message a moderator already recalled changes nothing, and the sender
/// still cannot restore it.
pub async fn sender_recall_after_a_moderators_recall_changes_nothing<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.moderator_request(Action::Recall, &c.mia, id))
        .await
        .unwrap();
    let out = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert!(!out.changed);
    assert_eq!((out.status, out.version), (Status::Recalled, 2));
    assert_eq!(
        kind(
            h.store
                .transition(c.request(Action::Restore, &c.alice, id))
                .await
        ),
        ErrorKind::Forbidden
    );
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}
