//! Content at rest: zstd compression (above a threshold, only when it helps) and AES-256-GCM
//! encryption with a fresh nonce per message and the message identity bound as associated data.
//!
//! Envelope (version 1):
//! `0x49 'I' | 0x01 | flags | [orig_len: u32 BE if compressed] | [key_id: u32 BE | nonce: 12 if encrypted] | payload`
//! Flags: bit 0 zstd, bit 1 AES-256-GCM; other bits must be zero. When encrypted, the associated
//! data is the whole header followed by the conversation id (length-prefixed) and the msg_id, so a
//! ciphertext moved to another message, another conversation or another header fails to decode.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::ids::{ConversationId, MsgId};

const MAGIC: u8 = 0x49;
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 0b01;
const FLAG_AES_GCM: u8 = 0b10;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// The largest content the codec will ever decompress to, whatever a header claims (16 MiB).
pub const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// The id of an encryption key, stored in every envelope it sealed.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct KeyId(pub u32);

/// A 256-bit key with its id; the key bytes are zeroized on drop and never printed.
pub struct EncryptionKey {
    id: KeyId,
    bytes: Zeroizing<[u8; 32]>,
}

impl EncryptionKey {
    /// A key from its 32 bytes, to be referred to by `id`.
    pub fn new(id: KeyId, bytes: [u8; 32]) -> Self {
        EncryptionKey {
            id,
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A fresh random key (from the operating system's CSPRNG via the thread RNG).
    pub fn generate(id: KeyId) -> Self {
        EncryptionKey::new(id, rand::random())
    }

    /// The key's id.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

/// The keys a codec seals with (the active one) and opens with (all of them).
#[derive(Clone)]
pub struct KeyRing {
    active: KeyId,
    ciphers: BTreeMap<KeyId, Arc<Aes256Gcm>>,
}

impl KeyRing {
    /// A ring that seals with `active`.
    pub fn new(active: EncryptionKey) -> Self {
        let id = active.id;
        let mut ring = KeyRing {
            active: id,
            ciphers: BTreeMap::new(),
        };
        ring.insert(active);
        ring
    }

    /// Adds an older key, still accepted when opening; refused if its id is already present.
    pub fn with_old_key(mut self, key: EncryptionKey) -> Result<Self> {
        if self.ciphers.contains_key(&key.id) {
            return Err(Error::invalid_input("key_id", "key id already in the ring")
                .with_operation(Operation::Codec));
        }
        self.insert(key);
        Ok(self)
    }

    /// Makes `key` the sealing key; the previous one stays for opening (rotation).
    pub fn rotate_to(mut self, key: EncryptionKey) -> Result<Self> {
        if self.ciphers.contains_key(&key.id) {
            return Err(Error::invalid_input("key_id", "key id already in the ring")
                .with_operation(Operation::Codec));
        }
        self.active = key.id;
        self.insert(key);
        Ok(self)
    }

    /// The id of the sealing key.
    pub fn active(&self) -> KeyId {
        self.active
    }

    fn insert(&mut self, key: EncryptionKey) {
        // The expanded key schedule is zeroized on drop (aes-gcm's `zeroize` feature).
        let cipher = Aes256Gcm::new_from_slice(key.bytes.as_slice()).expect("32-byte key");
        self.ciphers.insert(key.id, Arc::new(cipher));
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("active", &self.active)
            .field("keys", &self.ciphers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// When content is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Compression {
    /// Content shorter than this is never compressed.
    pub threshold: usize,
    /// The zstd level.
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            threshold: 256,
            level: 3,
        }
    }
}

/// Encodes content for storage and decodes it back; cheap to clone and share.
#[derive(Clone, Debug)]
pub struct ContentCodec {
    compression: Option<Compression>,
    keys: Option<KeyRing>,
}

impl Default for ContentCodec {
    /// Compression on (256 B threshold, level 3), no encryption.
    fn default() -> Self {
        ContentCodec {
            compression: Some(Compression::default()),
            keys: None,
        }
    }
}

fn decode_error(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::Decode, why).with_operation(Operation::Codec)
}

impl ContentCodec {
    /// Neither compression nor encryption: the envelope header and the content as is.
    pub fn plain() -> Self {
        ContentCodec {
            compression: None,
            keys: None,
        }
    }

    /// This codec with compression set (or turned off with `None`).
    pub fn with_compression(mut self, compression: Option<Compression>) -> Self {
        self.compression = compression;
        self
    }

    /// This codec encrypting with `keys`.
    pub fn with_encryption(mut self, keys: KeyRing) -> Self {
        self.keys = Some(keys);
        self
    }

    /// True when content is encrypted at rest.
    pub fn encrypts(&self) -> bool {
        self.keys.is_some()
    }

    /// The largest content this codec decodes; a store refuses a policy admitting more.
    pub fn decode_limit(&self) -> usize {
        MAX_DECODED_BYTES
    }

    /// The most bytes [`ContentCodec::encode`] writes for `content_len` bytes of content: the
    /// envelope's header, key id, nonce and tag around the body (compression is only kept when it
    /// makes the body smaller).
    pub fn max_encoded_len(&self, content_len: usize) -> usize {
        let header = 3 + 4;
        let sealed = if self.keys.is_some() {
            4 + NONCE_LEN + TAG_LEN
        } else {
            0
        };
        content_len.saturating_add(header + sealed)
    }

    /// The stored form of `content` for message `msg_id` of `conversation`.
    pub fn encode(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        content: &[u8],
    ) -> Result<Vec<u8>> {
        let mut flags = 0u8;
        let mut body: Vec<u8>;
        let mut orig_len = None;
        match self.compression {
            Some(c) if content.len() >= c.threshold => {
                let compressed = zstd_compress(content, c.level).map_err(|e| {
                    Error::new(ErrorKind::Backend, "zstd compression failed")
                        .with_operation(Operation::Codec)
                        .with_source(e)
                })?;
                if compressed.len() < content.len() {
                    flags |= FLAG_ZSTD;
                    orig_len = Some(content.len() as u32);
                    body = compressed;
                } else {
                    body = content.to_vec();
                }
            }
            _ => body = content.to_vec(),
        }
        let mut header = Vec::with_capacity(4 + 4 + 4 + NONCE_LEN);
        header.extend_from_slice(&[MAGIC, VERSION, 0]);
        if let Some(len) = orig_len {
            header.extend_from_slice(&len.to_be_bytes());
        }
        if let Some(keys) = &self.keys {
            flags |= FLAG_AES_GCM;
            header[2] = flags;
            let nonce: [u8; NONCE_LEN] = rand::random();
            header.extend_from_slice(&keys.active.0.to_be_bytes());
            header.extend_from_slice(&nonce);
            let cipher = &keys.ciphers[&keys.active];
            let aad = associated_data(&header, conversation, msg_id);
            body = cipher
                .encrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &body,
                        aad: &aad,
                    },
                )
                .map_err(|_| {
                    Error::new(ErrorKind::Backend, "encryption failed")
                        .with_operation(Operation::Codec)
                })?;
        } else {
            header[2] = flags;
        }
        header.extend_from_slice(&body);
        Ok(header)
    }

    /// The content stored as `stored` for message `msg_id` of `conversation`; any tampering,
    /// truncation, foreign bytes or unknown key is an [`ErrorKind::Decode`] error.
    pub fn decode(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let env = Envelope::parse(stored)?;
        let mut body = match env.key {
            Some((key_id, nonce)) => {
                let keys = self.keys.as_ref().ok_or_else(|| {
                    decode_error("content is encrypted but the codec has no keys")
                })?;
                let cipher = keys
                    .ciphers
                    .get(&key_id)
                    .ok_or_else(|| decode_error(format!("unknown key id {}", key_id.0)))?;
                let aad = associated_data(env.header, conversation, msg_id);
                cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: env.payload,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| {
                        decode_error("authentication failed: tampered, moved or wrong key")
                    })?
            }
            None => env.payload.to_vec(),
        };
        if let Some(len) = env.orig_len {
            let len = len as usize;
            if len > MAX_DECODED_BYTES {
                return Err(decode_error("declared length exceeds the decode limit"));
            }
            let out =
                zstd_decompress(&body, len).map_err(|_| decode_error("zstd payload is corrupt"))?;
            if out.len() != len {
                return Err(decode_error(
                    "decompressed length does not match the header",
                ));
            }
            body = out;
        }
        Ok(body)
    }

    /// The key that sealed `stored`, or `None` when it is not encrypted.
    pub fn key_id_of(stored: &[u8]) -> Result<Option<KeyId>> {
        Ok(Envelope::parse(stored)?.key.map(|(id, _)| id))
    }

    /// True when `stored` is not sealed with this codec's active key (or is not encrypted but
    /// the codec encrypts): the re-key job should rewrite it.
    pub fn needs_rekey(&self, stored: &[u8]) -> Result<bool> {
        let current = ContentCodec::key_id_of(stored)?;
        Ok(current != self.keys.as_ref().map(|k| k.active))
    }

    /// `stored` re-encoded under the active key (decoded with whichever ring key sealed it).
    pub fn rekey(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let content = Zeroizing::new(self.decode(conversation, msg_id, stored)?);
        self.encode(conversation, msg_id, &content)
    }
}

// zstd contexts are reused per thread: creating one costs more than compressing a 1 KiB
// message (measured ~30 µs per call with a fresh context, see benches/benches/codec.rs).
thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_compress(content: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        let (_, compressor) = slot.as_mut().expect("set above");
        compressor.compress(content)
    })
}

fn zstd_decompress(body: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(body, capacity)
    })
}

struct Envelope<'a> {
    header: &'a [u8],
    orig_len: Option<u32>,
    key: Option<(KeyId, &'a [u8])>,
    payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    fn parse(stored: &'a [u8]) -> Result<Self> {
        if stored.len() < 3 || stored[0] != MAGIC {
            return Err(decode_error("not an imstore content envelope"));
        }
        if stored[1] != VERSION {
            return Err(decode_error(format!(
                "unsupported envelope version {}",
                stored[1]
            )));
        }
        let flags = stored[2];
        if flags & !(FLAG_ZSTD | FLAG_AES_GCM) != 0 {
            return Err(decode_error("unknown envelope flags"));
        }
        let mut at = 3;
        let take = |at: &mut usize, n: usize| -> Result<&'a [u8]> {
            let s = stored
                .get(*at..*at + n)
                .ok_or_else(|| decode_error("envelope is truncated"))?;
            *at += n;
            Ok(s)
        };
        let orig_len = if flags & FLAG_ZSTD != 0 {
            Some(u32::from_be_bytes(
                take(&mut at, 4)?.try_into().expect("4 bytes"),
            ))
        } else {
            None
        };
        let key = if flags & FLAG_AES_GCM != 0 {
            let id = u32::from_be_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
            let nonce = take(&mut at, NONCE_LEN)?;
            if stored.len() < at + TAG_LEN {
                return Err(decode_error("envelope is truncated"));
            }
            Some((KeyId(id), nonce))
        } else {
            None
        };
        Ok(Envelope {
            header: &stored[..at],
            orig_len,
            key,
            payload: &stored[at..],
        })
    }
}

fn associated_data(header: &[u8], conversation: &ConversationId, msg_id: MsgId) -> Vec<u8> {
    let conv = conversation.as_str().as_bytes();
    let mut aad = Vec::with_capacity(header.len() + 4 + conv.len() + 8);
    aad.extend_from_slice(header);
    aad.extend_from_slice(&(conv.len() as u32).to_be_bytes());
    aad.extend_from_slice(conv);
    aad.extend_from_slice(&msg_id.get().to_be_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> ConversationId {
        ConversationId::new(s).unwrap()
    }
    fn id(n: u64) -> MsgId {
        MsgId::new(n).unwrap()
    }
    fn sealed() -> ContentCodec {
        ContentCodec::default().with_encryption(KeyRing::new(EncryptionKey::generate(KeyId(1))))
    }

    #[test]
    fn round_trips_every_mode_and_size() {
        let codecs = [
            ContentCodec::plain(),
            ContentCodec::default(),
            ContentCodec::plain().with_encryption(KeyRing::new(EncryptionKey::generate(KeyId(1)))),
            sealed(),
        ];
        for codec in &codecs {
            for len in [0usize, 1, 100, 255, 256, 1024, 65_536] {
                let content: Vec<u8> = (0..len).map(|i| (i % 7) as u8).collect();
                let stored = codec.encode(&conv("c"), id(9), &content).unwrap();
                assert_eq!(codec.decode(&conv("c"), id(9), &stored).unwrap(), content);
            }
        }
    }

    #[test]
    fn compresses_only_when_smaller() {
        let codec = ContentCodec::default();
        let repetitive = vec![b'a'; 4096];
        assert!(codec.encode(&conv("c"), id(1), &repetitive).unwrap().len() < 200);
        let random: Vec<u8> = (0..4096).map(|_| rand::random()).collect();
        let stored = codec.encode(&conv("c"), id(1), &random).unwrap();
        assert_eq!(stored[2] & FLAG_ZSTD, 0);
        assert_eq!(stored.len(), random.len() + 3);
    }

    #[test]
    fn encryption_hides_content_and_uses_fresh_nonces() {
        let codec = sealed();
        let secret = b"meet me at the old bridge at midnight";
        let a = codec.encode(&conv("c"), id(1), secret).unwrap();
        let b = codec.encode(&conv("c"), id(1), secret).unwrap();
        assert_ne!(a, b);
        assert!(!a.windows(8).any(|w| secret.windows(8).any(|s| s == w)));
    }

    #[test]
    fn moved_tampered_truncated_foreign_and_unknown_key_are_decode_errors() {
        let codec = sealed();
        let stored = codec.encode(&conv("c"), id(1), b"hello world").unwrap();
        let kind = |r: Result<Vec<u8>>| r.unwrap_err().kind();
        assert_eq!(
            kind(codec.decode(&conv("other"), id(1), &stored)),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(codec.decode(&conv("c"), id(2), &stored)),
            ErrorKind::Decode
        );
        for i in 0..stored.len() {
            let mut t = stored.clone();
            t[i] ^= 0x01;
            assert_eq!(
                kind(codec.decode(&conv("c"), id(1), &t)),
                ErrorKind::Decode,
                "byte {i}"
            );
        }
        for n in 0..stored.len() {
            assert_eq!(
                kind(codec.decode(&conv("c"), id(1), &stored[..n])),
                ErrorKind::Decode
            );
        }
        assert_eq!(
            kind(codec.decode(&conv("c"), id(1), b"plain old bytes")),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(sealed().decode(&conv("c"), id(1), &stored)),
            ErrorKind::Decode
        );
        assert_eq!(
            kind(ContentCodec::plain().decode(&conv("c"), id(1), &stored)),
            ErrorKind::Decode
        );
    }

    #[test]
    fn rotation_keeps_old_content_readable_and_rekey_moves_it() {
        let old = ContentCodec::default()
            .with_encryption(KeyRing::new(EncryptionKey::new(KeyId(1), [7; 32])));
        let stored = old.encode(&conv("c"), id(1), b"before rotation").unwrap();
        let ring = KeyRing::new(EncryptionKey::new(KeyId(1), [7; 32]))
            .rotate_to(EncryptionKey::new(KeyId(2), [9; 32]))
            .unwrap();
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
    }

    #[test]
    fn a_compression_bomb_header_is_refused() {
        let codec = ContentCodec::default();
        let mut stored = codec.encode(&conv("c"), id(1), &vec![0u8; 1000]).unwrap();
        stored[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            codec.decode(&conv("c"), id(1), &stored).unwrap_err().kind(),
            ErrorKind::Decode
        );
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let key = EncryptionKey::new(KeyId(3), [0xAB; 32]);
        let key_text = format!("{key:?}");
        let text = format!("{key_text} {:?}", KeyRing::new(key));
        assert!(!text.contains("171") && !text.to_lowercase().contains("ab, ab"));
        assert!(text.contains("redacted"));
    }
}
