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
