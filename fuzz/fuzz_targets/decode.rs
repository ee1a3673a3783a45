//! The content decoder on arbitrary bytes: it must answer every input with content or a `Decode`
//! error, never panic, never allocate past its limit, and never accept what it did not seal.
#![no_main]

use imstore_core::{ContentCodec, ConversationId, EncryptionKey, ErrorKind, KeyId, KeyRing, MsgId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let conv = ConversationId::new("fuzz").unwrap();
    let id = MsgId::new(42).unwrap();
    let sealed = ContentCodec::default()
        .with_encryption(KeyRing::new(EncryptionKey::new(KeyId(7), [7; 32])));
    for codec in [ContentCodec::plain(), ContentCodec::default(), sealed.clone()] {
        match codec.decode(&conv, id, data) {
            Ok(content) => assert!(content.len() <= codec.decode_limit()),
            Err(e) => assert_eq!(e.kind(), ErrorKind::Decode),
        }
    }
    // Whatever the bytes, what the codec seals it opens again, unchanged.
    if data.len() <= 64 * 1024 {
        let stored = sealed.encode(&conv, id, data).unwrap();
        assert_eq!(sealed.decode(&conv, id, &stored).unwrap(), data);
    }
});
