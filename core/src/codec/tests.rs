use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::*;

// The largest single allocation the current thread asked for while `track` ran: how the bomb
// tests prove that decoding never allocated past the limit. (A global allocator is per binary,
// so this counts for every unit test of the crate; it only records while a test tracks.)
struct PeakAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = PEAK.try_with(|p| p.set(p.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; `note` only touches
// const-initialized thread locals without destructors, which never allocate.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// `f`'s result and the largest single allocation it made on this thread.
fn track<T>(f: impl FnOnce() -> T) -> (T, usize) {
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let out = f();
    TRACKING.with(|t| t.set(false));
    (out, PEAK.with(|p| p.get()))
}

fn conv(s: &str) -> ConversationId {
    ConversationId::new(s).unwrap()
}
fn id(n: u64) -> MsgId {
    MsgId::new(n).unwrap()
}
const KEY: [u8; 32] = [7; 32];
fn ring() -> KeyRing {
    KeyRing::new(EncryptionKey::new(KeyId(1), KEY))
}
fn sealed() -> ContentCodec {
    ContentCodec::default().with_encryption(ring())
}
fn kind(r: Result<Vec<u8>>) -> ErrorKind {
    r.unwrap_err().kind()
}
fn chat(len: usize) -> Vec<u8> {
    b"see you at the standup tomorrow, bring the launch notes "
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

/// The envelope version 1 writer as it shipped before issue 15, kept to prove old rows still
/// read: `49 01 flags [orig_len] [key_id nonce:12] body [tag]`, AES-256-GCM under the raw key.
fn v1_encode(
    key: Option<(KeyId, [u8; 32])>,
    compress: bool,
    conversation: &ConversationId,
    msg_id: MsgId,
    content: &[u8],
) -> Vec<u8> {
    let mut flags = 0u8;
    let mut header = vec![MAGIC, V1, 0];
    let mut body = content.to_vec();
    if compress {
        flags |= FLAG_ZSTD;
        header.extend_from_slice(&(content.len() as u32).to_be_bytes());
        body = zstd::bulk::compress(content, 3).unwrap();
    }
    if let Some((key_id, bytes)) = key {
        flags |= FLAG_SEALED;
        header[2] = flags;
        let nonce: [u8; 12] = rand::random();
        header.extend_from_slice(&key_id.0.to_be_bytes());
        header.extend_from_slice(&nonce);
        let cipher = Aes256Gcm::new_from_slice(&bytes).unwrap();
        let mut aad = header.clone();
        let c = conversation.as_str().as_bytes();
        aad.extend_from_slice(&(c.len() as u32).to_be_bytes());
        aad.extend_from_slice(c);
        aad.extend_from_slice(&msg_id.get().to_be_bytes());
        let tag = cipher
            .encrypt_inout_detached(
                &aes_gcm::Nonce::try_from(&nonce[..]).unwrap(),
                &aad,
                body.as_mut_slice().into(),
            )
            .unwrap();
        body.extend_from_slice(&tag);
    }
    header[2] = flags;
    header.extend_from_slice(&body);
    header
}

/// A well-formed, correctly checked or sealed v2 envelope around an arbitrary `body` that
/// declares `content_len` and the given flags: what an attacker with the key (or, unsealed,
/// anyone) could write.
fn v2_raw(codec: &ContentCodec, flags: u8, content_len: u32, body: &[u8]) -> Vec<u8> {
    let mut out = codec.start(content_len, body.len());
    out.extend_from_slice(body);
    codec.finish(&conv("c"), id(1), flags, out).unwrap()
}

#[test]
fn round_trips_every_mode_and_size() {
    let codecs = [
        ContentCodec::plain(),
        ContentCodec::default(),
        ContentCodec::plain().with_encryption(ring()),
        sealed(),
    ];
    for codec in &codecs {
        for len in [0usize, 1, 100, 255, 256, 1024, 65_536] {
            let content: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
            let stored = codec.encode(&conv("c"), id(9), &content).unwrap();
            assert_eq!(stored[1], V2);
            assert!(stored.len() <= codec.max_encoded_len(len));
            assert_eq!(codec.decode(&conv("c"), id(9), &stored).unwrap(), content);
        }
    }
}

#[test]
fn the_v2_layout_is_as_documented() {
    let content = b"hello";
    let plain = ContentCodec::plain()
        .encode(&conv("c"), id(1), content)
        .unwrap();
    assert_eq!(&plain[..7], &[0x49, 2, 0, 0, 0, 0, 5]);
    assert_eq!(&plain[7..12], content);
    let crc =
        crc32c::crc32c(&[&plain[..12], &1u32.to_be_bytes(), b"c", &1u64.to_be_bytes()].concat());
    assert_eq!(&plain[12..], &crc.to_be_bytes());
    let stored = sealed().encode(&conv("c"), id(1), content).unwrap();
    assert_eq!(
        &stored[..11],
        &[0x49, 2, FLAG_SEALED, 0, 0, 0, 5, 0, 0, 0, 1]
    );
    assert_eq!(stored.len(), 7 + 4 + 24 + 5 + 16);
}

#[test]
fn xaes_matches_the_c2sp_test_vector() {
    // C2SP XAES-256-GCM's first test vector, through the crate this codec seals with.
    let cipher = Xaes256Gcm::new_from_slice(&[1; 32]).unwrap();
    let mut buf = b"XAES-256-GCM".to_vec();
    let tag = cipher
        .encrypt_inout_detached(
            &xaes_256_gcm::Nonce::try_from(&b"ABCDEFGHIJKLMNOPQRSTUVWX"[..]).unwrap(),
            b"",
            buf.as_mut_slice().into(),
        )
        .unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&buf), "ce546ef63c9cc60765923609");
    assert_eq!(hex(&tag), "b33a9a1974e96e52daf2fcf7075e2271");
}

#[test]
fn compresses_only_when_smaller() {
    let codec = ContentCodec::default();
    let repetitive = vec![b'a'; 4096];
    let stored = codec.encode(&conv("c"), id(1), &repetitive).unwrap();
    assert!(stored.len() < 200);
    assert_eq!(stored[2], FLAG_ZSTD);
    let random: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
    let stored = codec.encode(&conv("c"), id(1), &random).unwrap();
    assert_eq!(stored[2] & FLAG_ZSTD, 0);
    assert_eq!(stored.len(), random.len() + V2_FIXED + CRC_LEN);
}

#[test]
fn encryption_hides_content_and_uses_fresh_nonces() {
    let codec = sealed();
    let secret = b"meet me at the old bridge at midnight";
    let a = codec.encode(&conv("c"), id(1), secret).unwrap();
    let b = codec.encode(&conv("c"), id(1), secret).unwrap();
    assert_ne!(
        a[V2_KEY_AT + 4..V2_SEALED_HEADER],
        b[V2_KEY_AT + 4..V2_SEALED_HEADER]
    );
    assert_ne!(a, b);
    assert!(!a.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
}

#[test]
fn an_encrypting_codec_refuses_forged_plaintext_v1_and_v2() {
    let codec = sealed();
    let forged_v1 = [&[0x49, 0x01, 0x00][..], b"send the wire transfer now"].concat();
    let forged_v1_zstd = v1_encode(None, true, &conv("c"), id(1), &chat(1000));
    let forged_v2 = ContentCodec::plain()
        .encode(&conv("c"), id(1), b"send the wire transfer now")
        .unwrap();
    let forged_v2_zstd = ContentCodec::default()
        .encode(&conv("c"), id(1), &chat(1000))
        .unwrap();
    for forged in [&forged_v1, &forged_v1_zstd, &forged_v2, &forged_v2_zstd] {
        assert_eq!(
            kind(codec.decode(&conv("c"), id(1), forged)),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(codec.rekey(&conv("c"), id(1), forged)),
            ErrorKind::Decode
        );
        assert!(codec.needs_rekey(forged).unwrap());
        // The explicit migration path accepts it, and what it writes is sealed.
        let content = codec.decode_for_rekey(&conv("c"), id(1), forged).unwrap();
        let moved = codec
            .rekey_accepting_plaintext(&conv("c"), id(1), forged)
            .unwrap();
        assert_eq!(ContentCodec::key_id_of(&moved).unwrap(), Some(KeyId(1)));
        assert!(!codec.needs_rekey(&moved).unwrap());
        assert_eq!(codec.decode(&conv("c"), id(1), &moved).unwrap(), content);
    }
    // Migration still verifies what can be verified: a corrupt v2 plaintext is refused.
    let mut corrupt = forged_v2.clone();
    corrupt[8] ^= 1;
    assert_eq!(
        kind(codec.decode_for_rekey(&conv("c"), id(1), &corrupt)),
        ErrorKind::Decode
    );
}

#[test]
fn flipping_the_seal_flag_never_decodes() {
    let stored = sealed().encode(&conv("c"), id(1), b"hello world").unwrap();
    let mut flipped = stored.clone();
    flipped[2] ^= FLAG_SEALED;
    for codec in [sealed(), ContentCodec::plain(), ContentCodec::default()] {
        assert_eq!(
            kind(codec.decode(&conv("c"), id(1), &flipped)),
            ErrorKind::Decode
        );
    }
}

fn every_bit_flip_and_truncation_fails(codec: &ContentCodec, stored: &[u8]) {
    assert!(codec.decode(&conv("c"), id(1), stored).is_ok());
    for i in 0..stored.len() {
        for bit in 0..8 {
            let mut t = stored.to_vec();
            t[i] ^= 1 << bit;
            assert_eq!(
                kind(codec.decode(&conv("c"), id(1), &t)),
                ErrorKind::Decode,
                "byte {i} bit {bit}"
            );
            assert_eq!(
                kind(codec.decode_for_rekey(&conv("c"), id(1), &t)),
                ErrorKind::Decode,
                "rekey path, byte {i} bit {bit}"
            );
        }
    }
    for n in 0..stored.len() {
        assert_eq!(
            kind(codec.decode(&conv("c"), id(1), &stored[..n])),
            ErrorKind::Decode,
            "truncated to {n}"
        );
        assert_eq!(
            kind(codec.decode_for_rekey(&conv("c"), id(1), &stored[..n])),
            ErrorKind::Decode,
            "rekey path, truncated to {n}"
        );
    }
}

#[test]
fn every_bit_flip_and_truncation_of_a_sealed_v2_envelope_is_a_decode_error() {
    for codec in [sealed(), ContentCodec::plain().with_encryption(ring())] {
        for content in [&b""[..], b"hello world", &chat(1024)] {
            let stored = codec.encode(&conv("c"), id(1), content).unwrap();
            every_bit_flip_and_truncation_fails(&codec, &stored);
        }
    }
}

#[test]
fn every_bit_flip_and_truncation_of_an_unsealed_v2_envelope_is_a_decode_error() {
    for codec in [ContentCodec::plain(), ContentCodec::default()] {
        for content in [&b""[..], b"hello world", &chat(1024)] {
            let stored = codec.encode(&conv("c"), id(1), content).unwrap();
            every_bit_flip_and_truncation_fails(&codec, &stored);
        }
    }
}

#[test]
fn moved_foreign_and_unknown_key_are_decode_errors() {
    for codec in [sealed(), ContentCodec::plain(), ContentCodec::default()] {
        let stored = codec.encode(&conv("c"), id(1), b"hello world").unwrap();
        assert_eq!(
            kind(codec.decode(&conv("other"), id(1), &stored)),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(codec.decode(&conv("c"), id(2), &stored)),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(codec.decode(&conv("c"), id(1), b"plain old bytes")),
            ErrorKind::Decode
        );
    }
    let stored = sealed().encode(&conv("c"), id(1), b"hello world").unwrap();
    let other_key =
        ContentCodec::default().with_encryption(KeyRing::new(EncryptionKey::generate(KeyId(1))));
    assert_eq!(
        kind(other_key.decode(&conv("c"), id(1), &stored)),
        ErrorKind::Decode
    );
    let other_id =
        ContentCodec::default().with_encryption(KeyRing::new(EncryptionKey::new(KeyId(2), KEY)));
    assert_eq!(
        kind(other_id.decode(&conv("c"), id(1), &stored)),
        ErrorKind::Decode
    );
    assert_eq!(
        kind(ContentCodec::plain().decode(&conv("c"), id(1), &stored)),
        ErrorKind::Decode
    );
    let mut v3 = stored.clone();
    v3[1] = 3;
    assert_eq!(
        kind(sealed().decode(&conv("c"), id(1), &v3)),
        ErrorKind::Decode
    );
}

#[test]
fn v1_envelopes_still_decode() {
    let content = chat(1000);
    let plain_codecs = [ContentCodec::plain(), ContentCodec::default()];
    for compress in [false, true] {
        // Unsealed v1: read by codecs that do not encrypt.
        let stored = v1_encode(None, compress, &conv("c"), id(5), &content);
        for codec in &plain_codecs {
            assert_eq!(codec.decode(&conv("c"), id(5), &stored).unwrap(), content);
            assert!(codec.needs_rekey(&stored).unwrap());
            let moved = codec.rekey(&conv("c"), id(5), &stored).unwrap();
            assert_eq!(moved[1], V2);
            assert!(!codec.needs_rekey(&moved).unwrap());
            assert_eq!(codec.decode(&conv("c"), id(5), &moved).unwrap(), content);
        }
        // Sealed v1: read by a ring holding the key, with its identity binding intact.
        let stored = v1_encode(Some((KeyId(1), KEY)), compress, &conv("c"), id(5), &content);
        let codec = sealed();
        assert_eq!(ContentCodec::key_id_of(&stored).unwrap(), Some(KeyId(1)));
        assert_eq!(codec.decode(&conv("c"), id(5), &stored).unwrap(), content);
        assert_eq!(
            kind(codec.decode(&conv("c"), id(6), &stored)),
            ErrorKind::Decode
        );
        for i in 0..stored.len() {
            let mut t = stored.clone();
            t[i] ^= 0x80;
            assert_eq!(
                kind(codec.decode(&conv("c"), id(5), &t)),
                ErrorKind::Decode,
                "byte {i}"
            );
        }
        assert!(codec.needs_rekey(&stored).unwrap());
        let moved = codec.rekey(&conv("c"), id(5), &stored).unwrap();
        assert_eq!(moved[1], V2);
        assert!(!codec.needs_rekey(&moved).unwrap());
        assert_eq!(codec.decode(&conv("c"), id(5), &moved).unwrap(), content);
    }
}

#[test]
fn rotation_keeps_old_content_readable_and_rekey_moves_it() {
    let old = ContentCodec::default()
        .with_encryption(KeyRing::new(EncryptionKey::new(KeyId(1), [7; 32])));
    let stored = old.encode(&conv("c"), id(1), b"before rotation").unwrap();
    let ring = KeyRing::new(EncryptionKey::new(KeyId(1), [7; 32]))
        .rotate_to(EncryptionKey::new(KeyId(2), [9; 32]))
        .unwrap();
    assert_eq!(ring.active(), KeyId(2));
    let new = ContentCodec::default().with_encryption(ring);
    assert_eq!(
        new.decode(&conv("c"), id(1), &stored).unwrap(),
        b"before rotation"
    );
    assert!(new.needs_rekey(&stored).unwrap());
    let moved = new.rekey(&conv("c"), id(1), &stored).unwrap();
    assert_eq!(ContentCodec::key_id_of(&moved).unwrap(), Some(KeyId(2)));
    assert!(!new.needs_rekey(&moved).unwrap());
    assert_eq!(
        new.decode(&conv("c"), id(1), &moved).unwrap(),
        b"before rotation"
    );
    // The old codec cannot read what the new key sealed; an old key added back still opens.
    assert_eq!(
        kind(old.decode(&conv("c"), id(1), &moved)),
        ErrorKind::Decode
    );
    let with_old = ContentCodec::default().with_encryption(
        KeyRing::new(EncryptionKey::new(KeyId(2), [9; 32]))
            .with_old_key(EncryptionKey::new(KeyId(1), [7; 32]))
            .unwrap(),
    );
    assert_eq!(
        with_old.decode(&conv("c"), id(1), &stored).unwrap(),
        b"before rotation"
    );
    assert!(
        KeyRing::new(EncryptionKey::new(KeyId(1), [7; 32]))
            .rotate_to(EncryptionKey::new(KeyId(1), [9; 32]))
            .is_err()
    );
}

#[test]
fn the_decode_limit_bounds_encode_and_decode() {
    let big = ContentCodec::default();
    let small = ContentCodec::default().with_decode_limit(1000);
    assert_eq!(big.decode_limit(), MAX_DECODED_BYTES);
    assert_eq!(small.decode_limit(), 1000);
    for len in [1001, 5000] {
        let stored = big.encode(&conv("c"), id(1), &chat(len)).unwrap();
        assert_eq!(
            kind(small.decode(&conv("c"), id(1), &stored)),
            ErrorKind::Decode
        );
        assert_eq!(
            small
                .encode(&conv("c"), id(1), &chat(len))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidInput
        );
    }
    let stored = small.encode(&conv("c"), id(1), &chat(1000)).unwrap();
    assert_eq!(
        small.decode(&conv("c"), id(1), &stored).unwrap(),
        chat(1000)
    );
    // v1 declared no length when uncompressed: the body itself is held to the limit.
    let v1 = v1_encode(None, false, &conv("c"), id(1), &chat(1001));
    assert_eq!(
        kind(small.decode(&conv("c"), id(1), &v1)),
        ErrorKind::Decode
    );
}

/// A zstd frame of `len` zero bytes, with or without the frame's own content size field.
fn zeros_frame(len: usize, record_size: bool) -> Vec<u8> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    encoder.include_contentsize(record_size).unwrap();
    if record_size {
        encoder.set_pledged_src_size(Some(len as u64)).unwrap();
    }
    std::io::copy(&mut std::io::repeat(0).take(len as u64), &mut encoder).unwrap();
    encoder.finish().unwrap()
}

use std::io::Read as _;

#[test]
fn a_decompression_bomb_is_refused_without_allocating_past_the_limit() {
    const LIMIT: usize = 64 * 1024;
    const BOMB: usize = 16 * 1024 * 1024;
    for record_size in [true, false] {
        let frame = zeros_frame(BOMB, record_size);
        assert!(frame.len() < 1024, "a {} byte frame", frame.len());
        for codec in [
            ContentCodec::default().with_decode_limit(LIMIT),
            sealed().with_decode_limit(LIMIT),
        ] {
            // Warm the thread's zstd context, so what is tracked is the decode alone.
            let fine = codec.encode(&conv("c"), id(1), &chat(4096)).unwrap();
            let (r, peak) = track(|| codec.decode(&conv("c"), id(1), &fine));
            assert_eq!(r.unwrap(), chat(4096));
            assert!(
                peak >= 4096,
                "the tracker saw {peak} bytes for a 4 KiB decode"
            );
            // The header tells the truth: refused before anything is decompressed.
            let honest = v2_raw(&codec, FLAG_ZSTD, BOMB as u32, &frame);
            let (r, peak) = track(|| codec.decode(&conv("c"), id(1), &honest));
            assert_eq!(kind(r), ErrorKind::Decode);
            assert!(peak < 4096, "allocated {peak} bytes for a refused header");
            // The header lies (within the limit): zstd stops when the buffer is full.
            for declared in [LIMIT, 1000] {
                let lying = v2_raw(&codec, FLAG_ZSTD, declared as u32, &frame);
                let (r, peak) = track(|| codec.decode(&conv("c"), id(1), &lying));
                assert_eq!(kind(r), ErrorKind::Decode);
                assert!(peak <= declared.max(frame.len()), "allocated {peak} bytes");
            }
        }
    }
    // The v1 path is bounded the same way.
    let frame = zeros_frame(BOMB, true);
    let mut v1 = vec![MAGIC, V1, FLAG_ZSTD];
    v1.extend_from_slice(&(LIMIT as u32).to_be_bytes());
    v1.extend_from_slice(&frame);
    let codec = ContentCodec::default().with_decode_limit(LIMIT);
    let (r, peak) = track(|| codec.decode(&conv("c"), id(1), &v1));
    assert_eq!(kind(r), ErrorKind::Decode);
    assert!(peak <= LIMIT, "allocated {peak} bytes");
}

#[test]
fn a_frame_shorter_than_declared_is_refused() {
    let codec = ContentCodec::default();
    let frame = zstd::bulk::compress(&chat(2000), 3).unwrap();
    let short = v2_raw(&codec, FLAG_ZSTD, 2001, &frame);
    assert_eq!(
        kind(codec.decode(&conv("c"), id(1), &short)),
        ErrorKind::Decode
    );
    let exact = v2_raw(&codec, FLAG_ZSTD, 2000, &frame);
    assert_eq!(codec.decode(&conv("c"), id(1), &exact).unwrap(), chat(2000));
}

#[test]
fn max_encoded_len_covers_the_worst_case() {
    for codec in [ContentCodec::plain(), ContentCodec::default(), sealed()] {
        let random: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let stored = codec.encode(&conv("c"), id(1), &random).unwrap();
        assert_eq!(stored.len(), codec.max_encoded_len(random.len()));
    }
}

#[test]
fn debug_never_prints_key_bytes() {
    let key = EncryptionKey::new(KeyId(3), [0xAB; 32]);
    let key_text = format!("{key:?}");
    let codec = ContentCodec::default().with_encryption(KeyRing::new(key));
    let text = format!("{key_text} {codec:?}");
    assert!(!text.contains("171") && !text.to_lowercase().contains("ab, ab"));
    assert!(!text.to_lowercase().contains("abab"));
    assert!(text.contains("redacted"));
    assert!(text.contains("KeyId(3)"));
}

#[test]
fn a_sealed_v2_envelope_opens_with_the_documented_derivation() {
    // What another reader implements from the module docs alone.
    let content = b"documented, so others can read it";
    let stored = sealed().encode(&conv("c"), id(1), content).unwrap();
    let mut info = b"envelope v2 XAES-256-GCM key, key id ".to_vec();
    info.extend_from_slice(&1u32.to_be_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(b"imstore content codec"), &KEY)
        .expand(&info, &mut key)
        .unwrap();
    let header = &stored[..V2_SEALED_HEADER];
    let mut aad = header.to_vec();
    aad.extend_from_slice(&1u32.to_be_bytes());
    aad.extend_from_slice(b"c");
    aad.extend_from_slice(&1u64.to_be_bytes());
    let (body, tag) = stored[V2_SEALED_HEADER..].split_at(stored.len() - V2_SEALED_HEADER - 16);
    let mut body = body.to_vec();
    Xaes256Gcm::new_from_slice(&key)
        .unwrap()
        .decrypt_inout_detached(
            &xaes_256_gcm::Nonce::try_from(&header[11..]).unwrap(),
            &aad,
            body.as_mut_slice().into(),
            &xaes_256_gcm::Tag::try_from(tag).unwrap(),
        )
        .unwrap();
    assert_eq!(body, content);
}
