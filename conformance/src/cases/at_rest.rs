//! Content at rest: compression, encryption, tampering, key rotation (CONTRACT.md, "Content at rest").

use super::*;

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

/// One undecodable stored row does not make its conversation unreadable: a page serves the other
/// messages and marks that one undecodable (no body), while `get` and `audit` of it are `Decode`.
pub async fn an_undecodable_row_is_marked_in_its_page_not_fatal<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x31; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let before = sent(&h, c.text("before")).await;
    let bad = sent(&h, c.text("tampered")).await;
    let after = sent(&h, c.text("after")).await;
    let mut raw = h.raw_content(&c.conv, bad).await.unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    h.set_raw_content(&c.conv, bad, raw).await;
    for opts in [ListOptions::newest(10), ListOptions::oldest(10)] {
        let newest = opts.direction == Direction::NewestFirst;
        let page = h.store.list(&c.conv, &c.bob, opts).await.unwrap();
        let got: Vec<_> = page
            .items
            .iter()
            .map(|v| {
                (
                    v.msg_id,
                    v.undecodable,
                    v.body.as_ref().map(|b| b.content.clone()),
                )
            })
            .collect();
        let mut want = vec![
            (before, false, Some(b"before".to_vec())),
            (bad, true, None),
            (after, false, Some(b"after".to_vec())),
        ];
        if newest {
            want.reverse();
        }
        assert_eq!(got, want);
    }
    assert_eq!(
        kind(h.store.get(&c.conv, bad, &c.bob).await),
        ErrorKind::Decode
    );
    assert_eq!(kind(h.store.audit(&c.conv, bad).await), ErrorKind::Decode);
    // A viewer who may not see the content is not affected at all.
    h.store
        .transition(c.request(Action::Delete, &c.alice, bad))
        .await
        .unwrap();
    let v = h.store.get(&c.conv, bad, &c.bob).await.unwrap();
    assert!(!v.undecodable && v.body.is_none());
    h.finish().await;
}

fn rotated_ring() -> KeyRing {
    KeyRing::new(EncryptionKey::new(KeyId(1), [0x61; 32]))
        .rotate_to(EncryptionKey::new(KeyId(2), [0x62; 32]))
        .unwrap()
}

/// The re-key job moves every message to the active key in bounded, resumable batches, without
/// touching status, version or the feed; afterwards no message needs the old key, which can be
/// retired.
pub async fn rekey_moves_every_message_to_the_active_key<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x61; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let mut ids = Vec::new();
    for i in 0..9 {
        ids.push(sent(&h, c.text(&format!("message {i}"))).await);
    }
    h.store
        .transition(c.request(Action::Recall, &c.alice, ids[2]))
        .await
        .unwrap();
    let events_before = all_events(&h, &c.conv).await;
    let rotated = h
        .reopen_with_codec(ContentCodec::default().with_encryption(rotated_ring()))
        .await;
    assert_eq!(rotated.key_usage().await.unwrap().sealed.get(&1), Some(&9));
    let mut report = rotated.rekey(RekeyOptions::batch(4)).await.unwrap();
    let mut batches = 1;
    let mut rewritten = report.rewritten;
    while report.next.is_some() {
        report = rotated
            .rekey(RekeyOptions::batch(4).after(&report))
            .await
            .unwrap();
        rewritten += report.rewritten;
        batches += 1;
    }
    assert_eq!(rewritten, 9);
    assert!(batches >= 3, "bounded batches: {batches}");
    let usage = rotated.key_usage().await.unwrap();
    assert_eq!(usage.needing_other_than(KeyId(2)), 0, "{usage:?}");
    for id in &ids {
        let raw = h.raw_content(&c.conv, *id).await.unwrap();
        assert_eq!(ContentCodec::key_id_of(&raw).unwrap(), Some(KeyId(2)));
    }
    // Key 1 retired: everything still reads.
    let retired = h.reopen_with_codec(sealed_codec(2, [0x62; 32])).await;
    for (i, id) in ids.iter().enumerate() {
        let v = retired.get(&c.conv, *id, &c.alice).await.unwrap();
        assert_eq!(v.body.unwrap().content, format!("message {i}").as_bytes());
    }
    let v = retired.get(&c.conv, ids[2], &c.bob).await.unwrap();
    assert_eq!((v.status, v.version), (Status::Recalled, 2));
    assert_eq!(all_events(&h, &c.conv).await, events_before);
    // A second run finds nothing to do.
    assert_eq!(
        retired
            .rekey_all(RekeyOptions::batch(50))
            .await
            .unwrap()
            .rewritten,
        0
    );
    h.finish().await;
}

/// Turning encryption on: unsealed content is refused by the encrypting store until the re-key
/// job seals it (explicitly accepting plaintext); then no stored byte is plaintext.
pub async fn rekey_seals_a_plaintext_store_when_encryption_is_turned_on<F: StoreFactory>(f: &F) {
    let (h, c) = start(f).await;
    let secret = "the merger closes on friday, tell no one";
    let id = sent(&h, c.text(secret)).await;
    let sealed = h.reopen_with_codec(sealed_codec(9, [0x63; 32])).await;
    assert_eq!(
        kind(sealed.get(&c.conv, id, &c.bob).await),
        ErrorKind::Decode
    );
    let refused = sealed.rekey_all(RekeyOptions::batch(10)).await.unwrap();
    assert_eq!((refused.rewritten, refused.undecodable), (0, 1));
    let done = sealed
        .rekey_all(RekeyOptions::batch(10).sealing_plaintext())
        .await
        .unwrap();
    assert_eq!(done.rewritten, 1);
    let raw = h.raw_content(&c.conv, id).await.unwrap();
    assert!(
        !raw.windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|s| s == w)),
        "plaintext left at rest"
    );
    assert_eq!(
        sealed
            .get(&c.conv, id, &c.bob)
            .await
            .unwrap()
            .body
            .unwrap()
            .content,
        secret.as_bytes()
    );
    assert_eq!(sealed.key_usage().await.unwrap().unsealed, 0);
    h.finish().await;
}

/// Plaintext forged into an encrypting store by someone without the key (a valid unsealed
/// envelope of either version) is a decode error for every reader and the audit, and the
/// re-key job leaves it alone.
pub async fn forged_plaintext_in_an_encrypting_store_is_a_decode_error<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x64; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let id = sent(&h, c.text("the real message")).await;
    let v2 = ContentCodec::plain()
        .encode(&c.conv, id, b"send the money to account 1234")
        .unwrap();
    let mut v1 = vec![0x49, 0x01, 0x00];
    v1.extend_from_slice(b"send the money to account 1234");
    for forged in [v1, v2] {
        h.set_raw_content(&c.conv, id, forged).await;
        assert_eq!(
            kind(h.store.get(&c.conv, id, &c.bob).await),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(h.store.get(&c.conv, id, &c.alice).await),
            ErrorKind::Decode
        );
        assert_eq!(kind(h.store.audit(&c.conv, id).await), ErrorKind::Decode);
        let page = h
            .store
            .list(&c.conv, &c.bob, ListOptions::newest(5))
            .await
            .unwrap();
        assert!(page.items[0].undecodable && page.items[0].body.is_none());
        assert_eq!(
            h.store
                .rekey_all(RekeyOptions::batch(5))
                .await
                .unwrap()
                .rewritten,
            0
        );
    }
    h.finish().await;
}

/// Every single bit flip and every truncation of a stored envelope, sealed or not, is a decode
/// error: never garbage, never a shorter message.
pub async fn every_bit_flip_and_truncation_of_stored_content_is_a_decode_error<F: StoreFactory>(
    f: &F,
) {
    for codec in [ContentCodec::default(), sealed_codec(1, [0x65; 32])] {
        let setup = Setup {
            codec,
            ..Setup::default()
        };
        let (h, c) = start_with(f, setup).await;
        let id = sent(&h, c.text("ok")).await;
        let good = h.raw_content(&c.conv, id).await.unwrap();
        let mut broken = Vec::new();
        for bit in 0..good.len() * 8 {
            let mut b = good.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            broken.push(b);
        }
        for len in 0..good.len() {
            broken.push(good[..len].to_vec());
        }
        for b in broken {
            h.set_raw_content(&c.conv, id, b.clone()).await;
            assert_eq!(
                kind(h.store.audit(&c.conv, id).await),
                ErrorKind::Decode,
                "{b:02x?} decoded"
            );
        }
        h.set_raw_content(&c.conv, id, good).await;
        assert_eq!(
            h.store
                .audit(&c.conv, id)
                .await
                .unwrap()
                .message
                .message
                .content,
            b"ok"
        );
        h.finish().await;
    }
}

/// The re-key job racing transitions and inserts changes no status, version or event, loses no
/// message, and leaves every message it saw under the active key.
pub async fn rekey_racing_transitions_and_inserts_changes_nothing_else<F: StoreFactory>(f: &F) {
    let setup = Setup {
        codec: sealed_codec(1, [0x61; 32]),
        ..Setup::default()
    };
    let (h, c) = start_with(f, setup).await;
    let mut ids = Vec::new();
    for i in 0..24 {
        ids.push(sent(&h, c.text(&format!("before {i}"))).await);
    }
    let rotated = h
        .reopen_with_codec(ContentCodec::default().with_encryption(rotated_ring()))
        .await;
    let rekey = async {
        let mut report = rotated.rekey(RekeyOptions::batch(3)).await.unwrap();
        while report.next.is_some() {
            tokio::task::yield_now().await;
            report = rotated
                .rekey(RekeyOptions::batch(3).after(&report))
                .await
                .unwrap();
        }
    };
    let writes = async {
        let mut recalled = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if i % 3 == 0 {
                rotated
                    .transition(c.request(Action::Recall, &c.alice, *id))
                    .await
                    .unwrap();
                recalled.push(*id);
            }
            rotated
                .insert(c.text(&format!("during {i}")))
                .await
                .unwrap();
            tokio::task::yield_now().await;
        }
        recalled
    };
    let ((), recalled) = futures::join!(rekey, writes);
    // A second pass picks up whatever the first skipped because it changed under it.
    rotated.rekey_all(RekeyOptions::batch(50)).await.unwrap();
    assert_eq!(
        rotated
            .key_usage()
            .await
            .unwrap()
            .needing_other_than(KeyId(2)),
        0
    );
    for (i, id) in ids.iter().enumerate() {
        let v = rotated.get(&c.conv, *id, &c.alice).await.unwrap();
        let want = if recalled.contains(id) {
            (Status::Recalled, 2)
        } else {
            (Status::Normal, 1)
        };
        assert_eq!((v.status, v.version), want);
        assert_eq!(v.body.unwrap().content, format!("before {i}").as_bytes());
    }
    let events = all_events(&h, &c.conv).await;
    assert_eq!(events.len(), recalled.len());
    h.finish().await;
}
