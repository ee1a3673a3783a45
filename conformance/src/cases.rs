//! Every case of the suite. Each is a `pub async fn` whose first doc line is the behaviour it checks.

#![allow(clippy::missing_panics_doc)]

use imstore_core::*;

use crate::fixtures::*;
use crate::harness::{Harness, Setup, StoreFactory};

#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ([$($callback:tt)*] $($args:tt)*) => {
        $($callback)*!{$($args)*
            insert_then_get_returns_the_message,
            insert_same_message_twice_is_a_successful_retry,
            insert_conflicting_duplicate_is_a_conflict_and_keeps_the_original,
            concurrent_inserts_of_one_message_store_it_once,
            insert_batch_stores_every_message,
            insert_batch_retry_is_idempotent,
            insert_batch_with_a_conflict_stores_the_rest,
            insert_batch_with_invalid_input_stores_nothing,
            get_missing_message_is_not_found,
            message_types_and_attachments_round_trip,
            binary_and_empty_content_round_trip,
            list_newest_first_pages_through_everything_once,
            list_oldest_first_pages_through_everything_once,
            list_cursor_is_exclusive_and_the_last_page_has_no_next,
            list_of_an_empty_conversation_is_an_empty_page,
            list_page_size_zero_or_huge_is_invalid_input,
            list_is_isolated_per_conversation,
            list_spans_messages_sent_months_apart,
            sender_recalls_within_the_window,
            sender_recall_after_the_window_is_window_expired,
            configured_recall_window_is_honoured,
            non_sender_member_may_not_recall_or_delete,
            moderator_recalls_after_the_senders_window,
            moderator_recall_window_is_enforced_when_configured,
            sender_restores_within_the_restore_window,
            restore_after_the_window_is_window_expired,
            only_the_sender_may_restore,
            sender_cannot_restore_a_moderators_recall,
            restore_of_a_normal_message_is_invalid_state,
            deleted_is_terminal,
            sender_and_moderator_may_delete,
            stale_client_timestamp_is_refused,
            replayed_recall_after_restore_is_not_applied_again,
            replayed_no_op_recall_after_restore_is_not_applied,
            reused_request_id_for_another_request_is_a_conflict,
            transition_of_a_missing_message_is_not_found,
            repeated_recall_succeeds_twice_with_one_event,
            repeated_restore_and_delete_are_applied_once,
            recall_from_two_devices_changes_the_message_once,
            concurrent_recalls_make_exactly_one_transition,
            concurrent_retries_of_one_request_apply_it_once,
            concurrent_reuse_of_a_request_id_applies_one_request,
            recall_racing_restore_ends_consistent,
            recall_racing_delete_ends_consistent,
            recipients_see_a_recall_tombstone_without_content,
            sender_sees_recalled_content_only_while_restorable,
            deleted_message_never_shows_content,
            restored_message_reappears_for_everyone_by_default,
            restored_message_sender_only_visibility,
            list_shows_tombstones_in_place,
            audit_returns_content_of_recalled_and_deleted_messages,
            attachment_access_follows_visibility,
            every_status_change_appends_one_event,
            refused_requests_append_no_event,
            changes_since_pages_and_resumes_from_its_cursor,
            change_feeds_are_per_conversation,
            offline_device_converges_by_applying_pulled_events,
            polling_reader_sees_every_concurrent_change_exactly_once,
            group_recall_costs_one_event_whatever_the_group_size,
            purge_removes_only_expired_recalled_and_deleted_messages,
            purge_removes_the_events_of_purged_messages,
            purge_skips_conversations_under_legal_hold,
            purge_reports_released_attachment_keys,
            purge_runs_in_bounded_resumable_batches,
            concurrent_purges_never_double_count,
            purge_applies_the_history_limit,
            transitions_on_purged_messages_are_not_found,
            encrypted_content_leaves_no_plaintext_at_rest,
            tampered_stored_content_is_a_decode_error,
            ciphertext_swapped_between_messages_fails_to_decode,
            key_rotation_keeps_old_messages_readable,
            large_content_is_compressed_at_rest,
            oversized_content_is_invalid_input,
            oversized_ids_are_invalid_input,
            malformed_ids_are_refused_before_reaching_the_store,
            injection_looking_strings_are_stored_verbatim,
            attachment_with_an_empty_key_is_invalid_input,
            errors_name_their_operation_and_backend,
        }
    };
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind()
}

async fn start<F: StoreFactory>(f: &F) -> (Harness<'_, F>, Cast) {
    start_with(f, Setup::default()).await
}

async fn start_with<F: StoreFactory>(f: &F, setup: Setup) -> (Harness<'_, F>, Cast) {
    let h = Harness::start(f, setup).await;
    let c = Cast::new(&h.settings);
    (h, c)
}

async fn sent<F: StoreFactory>(h: &Harness<'_, F>, m: NewMessage) -> MsgId {
    let id = m.msg_id;
    assert_eq!(h.store.insert(m).await.unwrap(), InsertOutcome::Inserted);
    id
}

async fn all_events<F: StoreFactory>(h: &Harness<'_, F>, c: &ConversationId) -> Vec<ChangeEvent> {
    h.store
        .drain_changes(c, FeedCursor::START, 100)
        .await
        .unwrap()
        .events
}

fn sealed_codec(id: u32, key: [u8; 32]) -> ContentCodec {
    ContentCodec::default().with_encryption(KeyRing::new(EncryptionKey::new(KeyId(id), key)))
}

const MINUTE: std::time::Duration = std::time::Duration::from_secs(60);
const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);

// ---------------------------------------------------------------- inserts

/// An inserted message reads back with its fields, status Normal, version 1 and the store's time.
pub async fn insert_then_get_returns_the_message<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = c.text("hello");
    let id = sent(&h, m.clone()).await;
    let v = h.store.get(&c.conv, id, &c.bob).await.unwrap();
    assert_eq!(v.msg_id, id);
    assert_eq!(v.conversation_id, c.conv);
    assert_eq!(v.sender_id, c.alice);
    assert_eq!(v.msg_type, MessageType::Text);
    assert_eq!(v.status, Status::Normal);
    assert_eq!(v.version, 1);
    assert_eq!(v.created_at, h.clock.now());
    assert!(v.tombstone.is_none());
    assert_eq!(v.body.unwrap().content, b"hello");
    h.finish().await;
}

/// Inserting the same message twice is a successful retry that stores it once.
pub async fn insert_same_message_twice_is_a_successful_retry<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = c.text("once");
    sent(&h, m.clone()).await;
    h.clock.advance(MINUTE);
    assert_eq!(
        h.store.insert(m.clone()).await.unwrap(),
        InsertOutcome::AlreadyExists
    );
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(10))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    // The retry did not re-stamp the message.
    assert_eq!(
        page.items[0].created_at,
        h.clock.now().saturating_sub(MINUTE)
    );
    h.finish().await;
}

/// The same msg_id with different content, sender, type or attachment is a conflict; the original stays.
pub async fn insert_conflicting_duplicate_is_a_conflict_and_keeps_the_original<F: StoreFactory>(
    f: &F,
) {
    let (h, c) = start(f).await;
    let m = c.text("original");
    sent(&h, m.clone()).await;
    let variants = [
        NewMessage {
            content: b"forged".to_vec(),
            ..m.clone()
        },
        NewMessage {
            sender_id: c.bob.clone(),
            ..m.clone()
        },
        NewMessage {
            msg_type: MessageType::Image,
            ..m.clone()
        },
        NewMessage {
            attachment: Some(Attachment {
                key: "k".into(),
                size: 1,
                mime: "a/b".into(),
            }),
            ..m.clone()
        },
    ];
    for v in variants {
        assert_eq!(kind(h.store.insert(v).await), ErrorKind::Conflict);
    }
    let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.sender_id, c.alice);
    assert_eq!(v.body.unwrap().content, b"original");
    h.finish().await;
}

/// Concurrent inserts of the same message store it exactly once, each caller told it succeeded.
pub async fn concurrent_inserts_of_one_message_store_it_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = c.text("raced");
    let results = futures::future::join_all((0..16).map(|_| h.store.insert(m.clone()))).await;
    let inserted = results
        .iter()
        .filter(|r| matches!(r, Ok(InsertOutcome::Inserted)))
        .count();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(inserted, 1);
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(50))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    h.finish().await;
}

/// A batch insert stores every message, readable in id order.
pub async fn insert_batch_stores_every_message<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..200).map(|i| c.text(&format!("m{i}"))).collect();
    let out = h.store.insert_batch(msgs.clone()).await.unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            inserted: 200,
            already_existed: 0
        }
    );
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(500))
        .await
        .unwrap();
    let got: Vec<_> = page
        .items
        .iter()
        .map(|v| v.body.clone().unwrap().content)
        .collect();
    let want: Vec<_> = msgs.iter().map(|m| m.content.clone()).collect();
    assert_eq!(got, want);
    h.finish().await;
}

/// Retrying a batch, whole or partly applied, is idempotent.
pub async fn insert_batch_retry_is_idempotent<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let msgs: Vec<_> = (0..50).map(|i| c.text(&format!("m{i}"))).collect();
    h.store.insert_batch(msgs[..20].to_vec()).await.unwrap();
    let out = h.store.insert_batch(msgs.clone()).await.unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            inserted: 30,
            already_existed: 20
        }
    );
    let out = h.store.insert_batch(msgs).await.unwrap();
    assert_eq!(
        out,
        BatchOutcome {
            inserted: 0,
            already_existed: 50
        }
    );
    assert_eq!(
        h.store
            .list(&c.conv, &c.bob, ListOptions::newest(100))
            .await
            .unwrap()
            .items
            .len(),
        50
    );
    h.finish().await;
}

/// A batch holding a conflicting duplicate reports Conflict, stores the rest and keeps the original.
pub async fn insert_batch_with_a_conflict_stores_the_rest<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let original = c.text("original");
    sent(&h, original.clone()).await;
    let mut batch: Vec<_> = (0..10).map(|i| c.text(&format!("m{i}"))).collect();
    batch.insert(
        5,
        NewMessage {
            content: b"forged".to_vec(),
            ..original.clone()
        },
    );
    assert_eq!(kind(h.store.insert_batch(batch).await), ErrorKind::Conflict);
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(100))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 11);
    let v = h.store.get(&c.conv, original.msg_id, &c.bob).await.unwrap();
    assert_eq!(v.body.unwrap().content, b"original");
    h.finish().await;
}

/// A batch over the size limit, or with an invalid message, is refused whole: nothing is stored.
pub async fn insert_batch_with_invalid_input_stores_nothing<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .max_batch_size(10)
            .max_content_bytes(100)
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let too_many: Vec<_> = (0..11).map(|i| c.text(&format!("m{i}"))).collect();
    assert_eq!(
        kind(h.store.insert_batch(too_many).await),
        ErrorKind::InvalidInput
    );
    let mut one_bad: Vec<_> = (0..5).map(|i| c.text(&format!("m{i}"))).collect();
    one_bad.push(NewMessage {
        content: vec![b'x'; 101],
        ..c.text("")
    });
    let err = h.store.insert_batch(one_bad).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("content"))
    );
    assert!(
        h.store
            .list(&c.conv, &c.bob, ListOptions::newest(50))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        h.store.insert_batch(Vec::new()).await.unwrap(),
        BatchOutcome::default(),
        "an empty batch is a no-op"
    );
    h.finish().await;
}

/// Reading a message that does not exist, in a known or unknown conversation, is NotFound.
pub async fn get_missing_message_is_not_found<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    sent(&h, c.text("here")).await;
    assert_eq!(
        kind(h.store.get(&c.conv, c.next_id(), &c.bob).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(h.store.get(&conv("nowhere"), c.next_id(), &c.bob).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(h.store.audit(&c.conv, c.next_id()).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// Every message type, custom types and attachments round-trip unchanged.
pub async fn message_types_and_attachments_round_trip<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let types = [
        MessageType::Text,
        MessageType::Image,
        MessageType::File,
        MessageType::Audio,
        MessageType::Video,
        MessageType::System,
        MessageType::Custom(0),
        MessageType::Custom(u16::MAX),
    ];
    for t in types {
        let m = NewMessage {
            msg_type: t,
            attachment: Some(Attachment {
                key: format!("blobs/{t:?}/ü.bin"),
                size: u32::MAX as u64 + 7,
                mime: "image/png".into(),
            }),
            ..c.text("typed")
        };
        sent(&h, m.clone()).await;
        let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
        assert_eq!(v.msg_type, t);
        assert_eq!(v.body.unwrap().attachment, m.attachment);
    }
    h.finish().await;
}

/// Binary content (every byte value, NULs, invalid UTF-8) and empty content round-trip exactly.
pub async fn binary_and_empty_content_round_trip<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    for content in [all_bytes, Vec::new(), vec![0u8; 3], vec![0xff, 0xfe, 0x00]] {
        let m = NewMessage {
            content: content.clone(),
            ..c.text("")
        };
        sent(&h, m.clone()).await;
        let v = h.store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
        assert_eq!(v.body.unwrap().content, content);
    }
    h.finish().await;
}

// ---------------------------------------------------------------- paging

async fn page_all<F: StoreFactory>(
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
            .changes_since(&c.conv, FeedCursor::START, limit)
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

// ---------------------------------------------------------------- transitions

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

// ---------------------------------------------------------------- retries and races

/// The same recall sent twice succeeds twice, changes the message once and records one event.
pub async fn repeated_recall_succeeds_twice_with_one_event<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let req = c.request(Action::Recall, &c.alice, id);
    let first = h.store.transition(req.clone()).await.unwrap();
    let second = h.store.transition(req).await.unwrap();
    assert!(first.changed && !first.replayed);
    assert!(second.replayed);
    assert_eq!(
        (second.status, second.version),
        (first.status, first.version)
    );
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}

/// Repeated restores and deletes (same request id) are likewise applied once, with one event each.
pub async fn repeated_restore_and_delete_are_applied_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let restore = c.request(Action::Restore, &c.alice, id);
    let delete = c.request(Action::Delete, &c.alice, id);
    for req in [restore, delete] {
        let a = h.store.transition(req.clone()).await.unwrap();
        let b = h.store.transition(req).await.unwrap();
        assert_eq!((a.status, a.version), (b.status, b.version));
        assert!(b.replayed);
    }
    let events = all_events(&h, &c.conv).await;
    assert_eq!(
        events.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    h.finish().await;
}

/// Two devices recalling with their own request ids: both succeed, one transition, one event.
pub async fn recall_from_two_devices_changes_the_message_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let phone = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let laptop = h
        .store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    assert!(phone.changed && !laptop.changed && !laptop.replayed);
    assert_eq!((laptop.status, laptop.version), (Status::Recalled, 2));
    assert_eq!(all_events(&h, &c.conv).await.len(), 1);
    h.finish().await;
}

/// 16 copies of one recall request (a client retrying while the first is in flight) racing each
/// other: every copy succeeds with the first outcome, exactly one applies it, one event.
pub async fn concurrent_retries_of_one_request_apply_it_once<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let req = c.request(Action::Recall, &c.alice, id);
    let outs: Vec<_> = race(&h, vec![req; 16])
        .await
        .into_iter()
        .map(|r| r.expect("every copy of the request succeeds"))
        .collect();
    assert_eq!(
        outs.iter().filter(|o| !o.replayed).count(),
        1,
        "exactly one copy applies the request, the others replay it: {outs:?}"
    );
    assert!(
        outs.iter()
            .all(|o| o.changed && (o.status, o.version) == (Status::Recalled, 2)),
        "every copy answers with the first outcome: {outs:?}"
    );
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].msg_id, events[0].version), (id, 2));
    h.finish().await;
}

/// One request id used at the same time for recalls of two different messages: one recall
/// applies, the other is refused as a conflict, and only one message changes.
pub async fn concurrent_reuse_of_a_request_id_applies_one_request<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let x = sent(&h, c.text("x")).await;
    let y = sent(&h, c.text("y")).await;
    let on_x = c.request(Action::Recall, &c.alice, x);
    let mut on_y = c.request(Action::Recall, &c.alice, y);
    on_y.request_id = on_x.request_id.clone();
    let results = race(&h, vec![on_x, on_y]).await;
    let applied: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(applied.len(), 1, "{results:?}");
    assert!(applied[0].changed && !applied[0].replayed);
    assert_eq!(
        results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .map(Error::kind)
            .collect::<Vec<_>>(),
        vec![ErrorKind::Conflict]
    );
    let mut recalled = 0;
    for id in [x, y] {
        if h.store.get(&c.conv, id, &c.alice).await.unwrap().status == Status::Recalled {
            recalled += 1;
        }
    }
    assert_eq!(recalled, 1);
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].msg_id, applied[0].msg_id);
    h.finish().await;
}

/// 64 concurrent recalls of one message: all succeed, exactly one transition and one event, one final state.
pub async fn concurrent_recalls_make_exactly_one_transition<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    let reqs: Vec<_> = (0..64)
        .map(|_| c.request(Action::Recall, &c.alice, id))
        .collect();
    let results = futures::future::join_all(reqs.into_iter().map(|r| h.store.transition(r))).await;
    let outs: Vec<_> = results
        .into_iter()
        .map(|r| r.expect("every recall succeeds"))
        .collect();
    assert_eq!(outs.iter().filter(|o| o.changed).count(), 1);
    assert!(
        outs.iter()
            .all(|o| (o.status, o.version) == (Status::Recalled, 2))
    );
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].msg_id, events[0].version), (id, 2));
    h.finish().await;
}

async fn race<F: StoreFactory>(
    h: &Harness<'_, F>,
    reqs: Vec<TransitionRequest>,
) -> Vec<Result<TransitionOutcome>> {
    futures::future::join_all(reqs.into_iter().map(|r| h.store.transition(r))).await
}

fn assert_feed_matches(events: &[ChangeEvent], final_view: &MessageView) {
    let versions: Vec<u32> = events.iter().map(|e| e.version).collect();
    let want: Vec<u32> = (2..=final_view.version).collect();
    assert_eq!(versions, want, "one event per version, in order");
    if let Some(last) = events.last() {
        assert_eq!(
            (last.status, last.version),
            (final_view.status, final_view.version)
        );
    }
}

/// A recall racing a restore ends in one consistent state whose events match its version history.
pub async fn recall_racing_restore_ends_consistent<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for round in 0..8 {
        let id = sent(&h, c.text(&format!("round {round}"))).await;
        h.store
            .transition(c.request(Action::Recall, &c.alice, id))
            .await
            .unwrap();
        let results = race(
            &h,
            vec![
                c.request(Action::Restore, &c.alice, id),
                c.request(Action::Recall, &c.alice, id),
                c.request(Action::Restore, &c.alice, id),
            ],
        )
        .await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
        let events: Vec<_> = all_events(&h, &c.conv)
            .await
            .into_iter()
            .filter(|e| e.msg_id == id)
            .collect();
        assert_feed_matches(&events, &v);
    }
    h.finish().await;
}

/// A recall racing a delete ends Deleted or consistent, never torn, with events matching its versions.
pub async fn recall_racing_delete_ends_consistent<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for round in 0..8 {
        let id = sent(&h, c.text(&format!("round {round}"))).await;
        let results = race(
            &h,
            vec![
                c.request(Action::Recall, &c.alice, id),
                c.moderator_request(Action::Delete, &c.mia, id),
                c.request(Action::Recall, &c.alice, id),
            ],
        )
        .await;
        for r in &results {
            match r {
                Ok(_) => {}
                Err(e) => assert_eq!(
                    e.kind(),
                    ErrorKind::InvalidState,
                    "a recall that lost to the delete"
                ),
            }
        }
        let v = h.store.get(&c.conv, id, &c.alice).await.unwrap();
        assert_eq!(v.status, Status::Deleted);
        assert!(v.body.is_none());
        let events: Vec<_> = all_events(&h, &c.conv)
            .await
            .into_iter()
            .filter(|e| e.msg_id == id)
            .collect();
        assert_feed_matches(&events, &v);
    }
    h.finish().await;
}

// ---------------------------------------------------------------- reading

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

// ---------------------------------------------------------------- change feed

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

// ---------------------------------------------------------------- purge

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

// ---------------------------------------------------------------- content at rest

/// With encryption on, no 8-byte run of the plaintext content appears in what the backend stored.
pub async fn encrypted_content_leaves_no_plaintext_at_rest<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x11; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let short = "launch code 0000-1111";
    let long = "the quarterly numbers are worse than we said in public; ".repeat(40);
    for text in [short, long.as_str()] {
        let id = sent(&h, c.text(text)).await;
        let raw = h.raw_content(&c.conv, id).await.expect("stored");
        assert!(
            !raw.windows(8)
                .any(|w| text.as_bytes().windows(8).any(|p| p == w)),
            "plaintext at rest"
        );
        assert_eq!(
            h.store
                .get(&c.conv, id, &c.bob)
                .await
                .unwrap()
                .body
                .unwrap()
                .content,
            text.as_bytes()
        );
    }
    h.finish().await;
}

/// Tampering with the stored bytes yields a Decode error on read, never a panic or garbage.
pub async fn tampered_stored_content_is_a_decode_error<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x22; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let id = sent(&h, c.text("do not touch")).await;
    let mut raw = h.raw_content(&c.conv, id).await.unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x40;
    h.set_raw_content(&c.conv, id, raw.clone()).await;
    assert_eq!(
        kind(h.store.get(&c.conv, id, &c.bob).await),
        ErrorKind::Decode
    );
    assert_eq!(kind(h.store.audit(&c.conv, id).await), ErrorKind::Decode);
    h.set_raw_content(&c.conv, id, raw[..raw.len() / 2].to_vec())
        .await;
    assert_eq!(
        kind(h.store.get(&c.conv, id, &c.bob).await),
        ErrorKind::Decode
    );
    h.set_raw_content(&c.conv, id, b"<html>not ours</html>".to_vec())
        .await;
    assert_eq!(
        kind(h.store.get(&c.conv, id, &c.bob).await),
        ErrorKind::Decode
    );
    h.finish().await;
}

/// Ciphertext copied from one message to another fails to decode (identity bound as associated data).
pub async fn ciphertext_swapped_between_messages_fails_to_decode<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x33; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let a = sent(&h, c.text("for bob")).await;
    let b = sent(&h, c.text("for carol")).await;
    let raw_a = h.raw_content(&c.conv, a).await.unwrap();
    h.set_raw_content(&c.conv, b, raw_a).await;
    assert_eq!(
        kind(h.store.get(&c.conv, b, &c.carol).await),
        ErrorKind::Decode
    );
    assert_eq!(
        h.store
            .get(&c.conv, a, &c.bob)
            .await
            .unwrap()
            .body
            .unwrap()
            .content,
        b"for bob"
    );
    h.finish().await;
}

/// After key rotation, messages sealed with the old key stay readable and new ones use the new key.
pub async fn key_rotation_keeps_old_messages_readable<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x44; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let old = sent(&h, c.text("sealed with key 1")).await;
    let ring = KeyRing::new(EncryptionKey::new(KeyId(1), [0x44; 32]))
        .rotate_to(EncryptionKey::new(KeyId(2), [0x55; 32]))
        .unwrap();
    let rotated = h
        .reopen_with_codec(ContentCodec::default().with_encryption(ring))
        .await;
    assert_eq!(
        rotated
            .get(&c.conv, old, &c.bob)
            .await
            .unwrap()
            .body
            .unwrap()
            .content,
        b"sealed with key 1"
    );
    let new = c.text("sealed with key 2");
    rotated.insert(new.clone()).await.unwrap();
    let raw = h.raw_content(&c.conv, new.msg_id).await.unwrap();
    assert_eq!(ContentCodec::key_id_of(&raw).unwrap(), Some(KeyId(2)));
    // A store that lost the old key cannot read old messages: a Decode error, not garbage.
    let forgot = h.reopen_with_codec(sealed_codec(2, [0x55; 32])).await;
    assert_eq!(
        kind(forgot.get(&c.conv, old, &c.bob).await),
        ErrorKind::Decode
    );
    assert!(forgot.get(&c.conv, new.msg_id, &c.bob).await.is_ok());
    h.finish().await;
}

/// Large compressible content is stored compressed (smaller than the plaintext) and reads back exactly.
pub async fn large_content_is_compressed_at_rest<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let text = "ha".repeat(8_000);
    let id = sent(&h, c.text(&text)).await;
    let raw = h.raw_content(&c.conv, id).await.unwrap();
    assert!(
        raw.len() < text.len() / 10,
        "{} bytes stored for {}",
        raw.len(),
        text.len()
    );
    assert_eq!(
        h.store
            .get(&c.conv, id, &c.bob)
            .await
            .unwrap()
            .body
            .unwrap()
            .content,
        text.as_bytes()
    );
    h.finish().await;
}

// ---------------------------------------------------------------- bad input

/// Content over the policy's limit is InvalidInput naming `content`, and nothing is stored.
pub async fn oversized_content_is_invalid_input<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let max = h.settings.policy.max_content_bytes();
    let at_limit = NewMessage {
        content: vec![7u8; max],
        ..c.text("")
    };
    sent(&h, at_limit).await;
    let over = NewMessage {
        content: vec![7u8; max + 1],
        ..c.text("")
    };
    let err = h.store.insert(over.clone()).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("content"))
    );
    assert_eq!(
        kind(h.store.get(&c.conv, over.msg_id, &c.bob).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// Ids over the policy's length are InvalidInput naming the field, on writes and reads alike.
pub async fn oversized_ids_are_invalid_input<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder().max_id_bytes(32).build().unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let long = "x".repeat(33);
    let m = NewMessage {
        conversation_id: conv(&long),
        ..c.text("x")
    };
    let err = h.store.insert(m).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("conversation_id"))
    );
    let m = NewMessage {
        sender_id: user(&long),
        ..c.text("x")
    };
    assert_eq!(
        h.store.insert(m).await.unwrap_err().field(),
        Some("sender_id")
    );
    let id = sent(&h, c.text("ok")).await;
    let req = TransitionRequest {
        request_id: RequestId::new(long.clone()).unwrap(),
        ..c.request(Action::Recall, &c.alice, id)
    };
    assert_eq!(
        h.store.transition(req).await.unwrap_err().field(),
        Some("request_id")
    );
    let err = h
        .store
        .list(&conv(&long), &c.bob, ListOptions::newest(10))
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("conversation_id"))
    );
    h.finish().await;
}

/// Empty, non-UTF-8 and control-character ids are refused with InvalidInput before reaching a store.
pub async fn malformed_ids_are_refused_before_reaching_the_store<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let bad: [(&[u8], &str); 4] = [
        (b"", "must not be empty"),
        (&[0xc3, 0x28], "invalid UTF-8"),
        (b"a\0b", "NUL"),
        (b"line\nbreak", "newline"),
    ];
    for (bytes, why) in bad {
        for err in [
            ConversationId::from_bytes(bytes).unwrap_err(),
            UserId::from_bytes(bytes).unwrap_err(),
            RequestId::from_bytes(bytes).unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{why}");
            assert!(err.field().is_some(), "{why}");
        }
    }
    assert_eq!(MsgId::new(0).unwrap_err().kind(), ErrorKind::InvalidInput);
    assert_eq!(
        MsgId::new(u64::MAX).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // The store is untouched and usable.
    sent(&h, c.text("still fine")).await;
    h.finish().await;
}

/// Strings that look like SQL, CQL or query-operator injection are stored and read back verbatim.
pub async fn injection_looking_strings_are_stored_verbatim<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let nasty = [
        "'; DROP TABLE messages; --",
        "\" OR 1=1 --",
        "{\"$gt\": \"\"}",
        "$where",
        "a.b.c",
        "robert'); DELETE FROM conversations WHERE ('1'='1",
        "🙂 ünïcödé 中文 עברית",
        "%s%n%x",
    ];
    for s in nasty {
        let cast = Cast::in_conversation(&h.settings, s);
        let m = NewMessage {
            sender_id: user(s),
            attachment: Some(Attachment {
                key: s.to_string(),
                size: 1,
                mime: s.to_string(),
            }),
            ..cast.text(s)
        };
        sent(&h, m.clone()).await;
        let v = h.store.get(&cast.conv, m.msg_id, &user(s)).await.unwrap();
        assert_eq!(v.conversation_id.as_str(), s);
        assert_eq!(v.sender_id.as_str(), s);
        let body = v.body.unwrap();
        assert_eq!(body.content, s.as_bytes());
        assert_eq!(body.attachment, m.attachment);
        let req = TransitionRequest {
            request_id: RequestId::new(s).unwrap(),
            ..cast.request(Action::Recall, &user(s), m.msg_id)
        };
        assert!(h.store.transition(req).await.unwrap().changed);
        assert_eq!(
            h.store
                .list(&cast.conv, &c.bob, ListOptions::newest(5))
                .await
                .unwrap()
                .items
                .len(),
            1
        );
    }
    h.finish().await;
}

/// An attachment with an empty key is InvalidInput naming `attachment.key`.
pub async fn attachment_with_an_empty_key_is_invalid_input<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = NewMessage {
        attachment: Some(Attachment {
            key: String::new(),
            size: 1,
            mime: "a/b".into(),
        }),
        ..c.text("x")
    };
    let err = h.store.insert(m).await.unwrap_err();
    assert_eq!(
        (err.kind(), err.field()),
        (ErrorKind::InvalidInput, Some("attachment.key"))
    );
    h.finish().await;
}

/// Errors carry the operation and the backend that produced them.
pub async fn errors_name_their_operation_and_backend<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let err = h.store.get(&c.conv, c.next_id(), &c.bob).await.unwrap_err();
    assert_eq!(err.operation(), Some(Operation::Get));
    assert_eq!(err.backend(), Some(h.store.backend()));
    assert!(!err.is_temporary());
    let id = sent(&h, c.text("x")).await;
    let err = h
        .store
        .transition(c.request(Action::Recall, &c.bob, id))
        .await
        .unwrap_err();
    assert_eq!(err.operation(), Some(Operation::Recall));
    assert_eq!(err.backend(), Some(h.store.backend()));
    h.finish().await;
}
