//! Encode and decode cost of the content codec for 100 B, 1 KiB and 64 KiB messages, in each mode.
//!
//! Content is chat-like text (compressible, as real messages are), so compression is exercised the
//! way production content exercises it. Envelopes are version 2: "encrypt" is XAES-256-GCM (a
//! per-message key derived from the ring key, 192-bit random nonce), the unencrypted modes carry a
//! CRC-32C. Codecs are built as a store builds them, with the decode limit at the default policy's
//! 64 KiB content limit. Run: `cargo bench -p imstore-bench --no-default-features --bench codec`
//! (add `-- 1KiB` for one size).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use imstore_core::codec::Compression;
use imstore_core::{ContentCodec, ConversationId, EncryptionKey, KeyId, KeyRing, MsgId};

fn chat_text(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "launch", "moves", "to", "friday", "please", "review", "plan", "and", "send",
        "notes", "before", "standup", "thanks", "ok", "see", "you", "there", "🙂", "meeting",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(WORDS[(state % WORDS.len() as u64) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// The default policy's content limit, which a store passes to `with_decode_limit`.
const DECODE_LIMIT: usize = 64 * 1024;

fn modes() -> Vec<(&'static str, ContentCodec)> {
    let ring = || KeyRing::new(EncryptionKey::new(KeyId(1), [0x42; 32]));
    let modes = vec![
        ("plain", ContentCodec::plain()),
        (
            "compress",
            ContentCodec::plain().with_compression(Some(Compression::default())),
        ),
        ("encrypt", ContentCodec::plain().with_encryption(ring())),
        (
            "compress+encrypt",
            ContentCodec::default().with_encryption(ring()),
        ),
    ];
    modes
        .into_iter()
        .map(|(mode, codec)| (mode, codec.with_decode_limit(DECODE_LIMIT)))
        .collect()
}

fn codec(c: &mut Criterion) {
    let conv = ConversationId::new("group-42").unwrap();
    let id = MsgId::new(385_169_603_430_453_248).unwrap();
    for (label, size) in [("100B", 100), ("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let content = chat_text(size);
        let mut group = c.benchmark_group(format!("codec/{label}"));
        group.throughput(Throughput::Bytes(size as u64));
        for (mode, codec) in modes() {
            group.bench_with_input(BenchmarkId::new("encode", mode), &content, |b, content| {
                b.iter(|| codec.encode(&conv, id, black_box(content)).unwrap())
            });
            let stored = codec.encode(&conv, id, &content).unwrap();
            group.bench_with_input(BenchmarkId::new("decode", mode), &stored, |b, stored| {
                b.iter(|| codec.decode(&conv, id, black_box(stored)).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
