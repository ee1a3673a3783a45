//! The message: inserts, retries and conflicts of `insert` and `insert_batch`, round trips (CONTRACT.md, "The message").

use super::*;

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

/// A batch that repeats a msg_id: an identical copy is a retry of the first (stored once,
/// answered as already there); a differing copy refuses the whole batch as a Conflict before
/// anything is stored; the same msg_id in another conversation is another message.
pub async fn insert_batch_repeating_a_msg_id<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let other = conv("other-room");
    let (a, b) = (c.text("a"), c.text("b"));
    let elsewhere = NewMessage {
        conversation_id: other.clone(),
        content: b"elsewhere".to_vec(),
        ..a.clone()
    };
    let batch = vec![a.clone(), b.clone(), a.clone(), elsewhere.clone()];
    assert_eq!(
        h.store.insert_batch(batch).await.unwrap(),
        BatchOutcome {
            inserted: 3,
            already_existed: 1
        }
    );
    let here = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(10))
        .await
        .unwrap();
    assert_eq!(here.items.len(), 2, "the repeat is stored once");
    let there = h.store.get(&other, a.msg_id, &c.bob).await.unwrap();
    assert_eq!(there.body.unwrap().content, b"elsewhere");
    // A differing copy of a new id, wherever it sits in the batch: nothing of the batch lands.
    let (d, e) = (c.text("d"), c.text("e"));
    let forged = NewMessage {
        content: b"forged".to_vec(),
        ..d.clone()
    };
    for batch in [
        vec![d.clone(), e.clone(), forged.clone()],
        vec![forged.clone(), e.clone(), d.clone()],
    ] {
        assert_eq!(kind(h.store.insert_batch(batch).await), ErrorKind::Conflict);
        for id in [d.msg_id, e.msg_id] {
            assert_eq!(
                kind(h.store.get(&c.conv, id, &c.bob).await),
                ErrorKind::NotFound,
                "a refused batch stores nothing"
            );
        }
    }
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

/// A late retry of the insert of a message that was deleted and purged is refused as stale (its
/// msg_id is before the purge horizon), so recipients never read the content again.
pub async fn late_insert_of_a_purged_message_is_refused<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let m = c.text("said and regretted");
    sent(&h, m.clone()).await;
    h.store
        .transition(c.request(Action::Delete, &c.alice, m.msg_id))
        .await
        .unwrap();
    h.clock.advance(h.settings.policy.retention() + DAY);
    assert_eq!(
        h.store
            .purge_all(PurgeOptions::default())
            .await
            .unwrap()
            .messages,
        1
    );
    let e = h.store.insert(m.clone()).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::StaleRequest, Some("msg_id"))
    );
    let e = h.store.insert_batch(vec![m.clone()]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::StaleRequest);
    assert_eq!(
        kind(h.store.get(&c.conv, m.msg_id, &c.bob).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// The purge horizon is the shorter of retention and the history limit, less the allowed skew:
/// an insert minted just inside it is stored, just outside it is refused.
pub async fn insert_horizon_follows_retention_history_limit_and_skew<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder()
            .retention(30 * DAY)
            .restore_window(7 * DAY)
            .history_limit(Some(40 * DAY))
            .build()
            .unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let p = &h.settings.policy;
    let reach = p.retention() - p.max_clock_skew();
    let now = h.clock.now();
    let minted = |age: std::time::Duration, seq: u16| {
        let at = Timestamp::from_millis(now.as_millis() - age.as_millis() as i64);
        NewMessage::text(
            MsgId::from_parts(at, 3, seq).unwrap(),
            c.conv.clone(),
            c.alice.clone(),
            "backfill",
        )
    };
    let inside = minted(reach - MINUTE, 1);
    assert_eq!(
        h.store.insert(inside).await.unwrap(),
        InsertOutcome::Inserted
    );
    let outside = minted(reach + MINUTE, 2);
    assert_eq!(
        kind(h.store.insert(outside.clone()).await),
        ErrorKind::StaleRequest
    );
    // A batch holding one message outside the horizon stores nothing.
    let fresh = c.text("fresh");
    assert_eq!(
        kind(h.store.insert_batch(vec![fresh.clone(), outside]).await),
        ErrorKind::StaleRequest
    );
    assert_eq!(
        kind(h.store.get(&c.conv, fresh.msg_id, &c.bob).await),
        ErrorKind::NotFound
    );
    h.finish().await;
}

/// A msg_id minted further ahead of the store's clock than the allowed skew is refused as stale;
/// one within the skew is stored.
pub async fn insert_minted_ahead_of_the_skew_is_refused<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let skew = h.settings.policy.max_clock_skew();
    let ahead = |d: std::time::Duration, seq: u16| {
        NewMessage::text(
            MsgId::from_parts(h.clock.now().saturating_add(d), 4, seq).unwrap(),
            c.conv.clone(),
            c.alice.clone(),
            "from a fast clock",
        )
    };
    assert_eq!(
        h.store.insert(ahead(skew - MINUTE, 1)).await.unwrap(),
        InsertOutcome::Inserted
    );
    let e = h.store.insert(ahead(skew + MINUTE, 2)).await.unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::StaleRequest, Some("msg_id"))
    );
    h.finish().await;
}
