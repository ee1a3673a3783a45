//! Bad input: typed `InvalidInput` naming the field, never a panic or a silent truncation (CONTRACT.md, "Errors").

use super::*;

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

/// A message with the largest msg_id the type accepts is stored, read and listed from both ends.
pub async fn the_largest_msg_id_is_stored_and_listed<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let small = sent(&h, c.text("first")).await;
    let top = MsgId::new(i64::MAX as u64).unwrap();
    // The largest id is minted at the end of the id range: the store accepts it once its clock
    // is there (ids minted further ahead than the skew are refused).
    h.clock.set(top.timestamp());
    let m = NewMessage::text(top, c.conv.clone(), c.alice.clone(), "last");
    assert_eq!(h.store.insert(m).await.unwrap(), InsertOutcome::Inserted);
    assert_eq!(h.store.get(&c.conv, top, &c.bob).await.unwrap().msg_id, top);
    let newest = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(10))
        .await
        .unwrap();
    assert_eq!(
        newest.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        vec![top, small]
    );
    let oldest = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(1))
        .await
        .unwrap();
    assert_eq!(oldest.next, Some(small));
    let rest = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(1).after(small))
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        vec![top]
    );
    let after_top = h
        .store
        .list(&c.conv, &c.bob, ListOptions::oldest(5).after(top))
        .await
        .unwrap();
    assert!(after_top.items.is_empty() && after_top.next.is_none());
    let below_top = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(5).after(top))
        .await
        .unwrap();
    assert_eq!(
        below_top.items.iter().map(|v| v.msg_id).collect::<Vec<_>>(),
        vec![small]
    );
    h.finish().await;
}

/// Client timestamps at the ends of the range are stale requests, never an overflow or a panic.
pub async fn extreme_client_timestamps_are_stale_requests<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("x")).await;
    for ts in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
        for action in [Action::Recall, Action::Restore, Action::Delete] {
            let mut r = c.request(action, &c.alice, id);
            r.client_ts = Timestamp::from_millis(ts);
            assert_eq!(
                kind(h.store.transition(r).await),
                ErrorKind::StaleRequest,
                "{action:?} at {ts}"
            );
        }
    }
    assert_eq!(h.store.get(&c.conv, id, &c.bob).await.unwrap().version, 1);
    h.finish().await;
}

/// A feed cursor beyond the feed's head is invalid input naming the cursor, on an empty feed and
/// a busy one alike, up to the largest cursor.
pub async fn feed_cursor_beyond_the_head_is_invalid_input<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for position in [1, FeedCursor::MAX_POSITION] {
        let cursor = FeedCursor::at(&c.conv, position).unwrap();
        let e = h
            .store
            .changes_since(&c.conv, &c.bob, cursor, 10)
            .await
            .unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (ErrorKind::InvalidInput, Some("cursor"))
        );
    }
    let id = sent(&h, c.text("x")).await;
    h.store
        .transition(c.request(Action::Recall, &c.alice, id))
        .await
        .unwrap();
    let head = h
        .store
        .changes_since(&c.conv, &c.bob, FeedCursor::START, 10)
        .await
        .unwrap()
        .next;
    assert!(
        h.store
            .changes_since(&c.conv, &c.bob, head, 10)
            .await
            .unwrap()
            .events
            .is_empty()
    );
    for position in [
        head.position() + 1,
        FeedCursor::MAX_POSITION / 2,
        FeedCursor::MAX_POSITION,
    ] {
        let cursor = FeedCursor::at(&c.conv, position).unwrap();
        assert_eq!(
            kind(h.store.changes_since(&c.conv, &c.bob, cursor, 10).await),
            ErrorKind::InvalidInput
        );
    }
    // A position no cursor holds is refused when the cursor is built, naming it.
    let e = FeedCursor::at(&c.conv, FeedCursor::MAX_POSITION + 1).unwrap_err();
    assert_eq!(
        (e.kind(), e.field()),
        (ErrorKind::InvalidInput, Some("cursor"))
    );
    h.finish().await;
}

/// Over-long ids given to reads are invalid input naming the field on every read, the same kind
/// on every store.
pub async fn oversized_ids_on_reads_are_invalid_input<F: StoreFactory>(f: &F) {
    let setup = Setup {
        policy: Policy::builder().max_id_bytes(16).build().unwrap(),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let long_conv = conv(&"c".repeat(17));
    let long_user = user(&"u".repeat(17));
    let id = c.next_id();
    let field = |e: Error| (e.kind(), e.field());
    let want_conv = (ErrorKind::InvalidInput, Some("conversation_id"));
    let want_viewer = (ErrorKind::InvalidInput, Some("viewer"));
    assert_eq!(
        field(h.store.get(&long_conv, id, &c.bob).await.unwrap_err()),
        want_conv
    );
    assert_eq!(
        field(h.store.get(&c.conv, id, &long_user).await.unwrap_err()),
        want_viewer
    );
    assert_eq!(
        field(h.store.audit(&long_conv, id).await.unwrap_err()),
        want_conv
    );
    assert_eq!(
        field(
            h.store
                .attachment_access(&long_conv, id, &c.bob)
                .await
                .unwrap_err()
        ),
        want_conv
    );
    assert_eq!(
        field(
            h.store
                .attachment_access(&c.conv, id, &long_user)
                .await
                .unwrap_err()
        ),
        want_viewer
    );
    assert_eq!(
        field(
            h.store
                .list(&c.conv, &long_user, ListOptions::newest(5))
                .await
                .unwrap_err()
        ),
        want_viewer
    );
    assert_eq!(
        field(
            h.store
                .changes_since(&long_conv, &c.bob, FeedCursor::START, 5)
                .await
                .unwrap_err()
        ),
        want_conv
    );
    assert_eq!(
        field(h.store.set_legal_hold(&long_conv, true).await.unwrap_err()),
        want_conv
    );
    h.finish().await;
}

/// A content limit beyond what the store can keep is refused when the store is built, naming
/// `max_content_bytes`; a limit the store accepts is one it keeps: a message of that size reads
/// back whole. Never an acknowledged message that cannot be read, never a `Backend` error.
pub async fn a_content_limit_the_store_cannot_keep_is_refused_when_built<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    for mib in [1usize, 20] {
        let limit = mib * 1024 * 1024;
        let settings = StoreSettings {
            policy: Policy::builder().max_content_bytes(limit).build().unwrap(),
            ..h.settings.clone()
        };
        match h.try_reopen(settings).await {
            Err(e) => {
                assert_eq!(
                    (e.kind(), e.field()),
                    (ErrorKind::InvalidInput, Some("max_content_bytes")),
                    "{e}"
                );
            }
            Ok(store) => {
                // Incompressible content of exactly the limit.
                let mut content = vec![0u8; limit];
                let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
                for b in content.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let m = NewMessage::text(c.next_id(), c.conv.clone(), c.alice.clone(), content);
                assert_eq!(
                    store.insert(m.clone()).await.unwrap(),
                    InsertOutcome::Inserted
                );
                let back = store.get(&c.conv, m.msg_id, &c.bob).await.unwrap();
                assert_eq!(back.body.unwrap().content.len(), limit);
                let over = NewMessage::text(
                    c.next_id(),
                    c.conv.clone(),
                    c.alice.clone(),
                    vec![1u8; limit + 1],
                );
                let e = store.insert(over).await.unwrap_err();
                assert_eq!(
                    (e.kind(), e.field()),
                    (ErrorKind::InvalidInput, Some("content"))
                );
            }
        }
    }
    h.finish().await;
}

/// A stored envelope that would decompress past the policy's content limit is a decode error,
/// for every reader, without allocating past the limit.
pub async fn a_decompression_bomb_is_a_decode_error<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let id = sent(&h, c.text("small")).await;
    // An envelope written by a store whose limit is 16 MiB: 16 MiB of zeros compress to a few
    // hundred bytes. This store's limit is the default 64 KiB.
    let big = ContentCodec::default()
        .with_decode_limit(16 * 1024 * 1024)
        .encode(&c.conv, id, &vec![0u8; 16 * 1024 * 1024])
        .unwrap();
    assert!(big.len() < 4096, "{}", big.len());
    h.set_raw_content(&c.conv, id, big).await;
    assert_eq!(
        kind(h.store.get(&c.conv, id, &c.bob).await),
        ErrorKind::Decode
    );
    assert_eq!(kind(h.store.audit(&c.conv, id).await), ErrorKind::Decode);
    let page = h
        .store
        .list(&c.conv, &c.bob, ListOptions::newest(5))
        .await
        .unwrap();
    assert!(page.items[0].undecodable);
    h.finish().await;
}
