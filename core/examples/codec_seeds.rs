//! Writes valid envelopes of every codec mode into a directory: the fuzzer's seed corpus.
//!
//! `cargo run -p imstore-core --example codec_seeds -- DIR`

use imstore_core::{ContentCodec, ConversationId, EncryptionKey, KeyId, KeyRing, MsgId};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: codec_seeds DIR")?;
    std::fs::create_dir_all(&dir)?;
    // The fuzz target decodes as conversation "fuzz", message 42, key 7 of [7; 32].
    let conv = ConversationId::new("fuzz")?;
    let id = MsgId::new(42)?;
    let sealed = ContentCodec::default()
        .with_encryption(KeyRing::new(EncryptionKey::new(KeyId(7), [7; 32])));
    let codecs = [
        ("plain", ContentCodec::plain()),
        ("zstd", ContentCodec::default()),
        ("sealed", sealed),
    ];
    let chat = "see you at the standup tomorrow, bring the launch notes ".repeat(20);
    let contents: [&[u8]; 4] = [b"", b"hi", chat.as_bytes(), &[0u8; 1024]];
    let mut n = 0;
    for (name, codec) in &codecs {
        for (i, content) in contents.iter().enumerate() {
            let stored = codec.encode(&conv, id, content)?;
            std::fs::write(format!("{dir}/{name}-{i}"), stored)?;
            n += 1;
        }
    }
    println!("wrote {n} seed envelopes to {dir}");
    Ok(())
}
