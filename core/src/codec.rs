//! Content at rest: zstd compression (above a threshold, only when it helps), XAES-256-GCM
//! encryption bound to the message's identity, a CRC-32C check when not encrypted, and
//! decompression bounded by a limit.
//!
//! # Nonces and keys
//!
//! New envelopes are sealed with XAES-256-GCM ([C2SP's specification]: a NIST SP 800-108r1
//! counter-mode KDF over AES-256-CMAC, then standard AES-256-GCM). Every message draws a fresh
//! 192-bit random nonce from the thread RNG; its first 96 bits derive a per-message AES-256-GCM
//! key from the ring key (two AES block encryptions), its last 96 bits are that key's GCM nonce.
//! A key and nonce pair repeats only when two messages draw the same 192 bits: after `n` messages
//! under one ring key the chance is at most n²/2¹⁹³, that is 2⁻⁶⁵ after 2⁶⁴ messages and 2⁻³³
//! after 2⁸⁰ (the specification's "2⁸⁰ messages with collision risk 2⁻³²"), where AES-256-GCM
//! with random 96-bit nonces is good for 2³² messages per key. There is no practical limit on
//! messages per key; rotation is for hygiene and compromise, not wear-out. XAES-256-GCM rather
//! than HKDF-SHA256 per message because its derivation costs two AES blocks (tens of
//! nanoseconds) where HKDF costs two HMAC-SHA256 invocations (about 1 µs, a tenth of the 1 KiB
//! encode+decode budget); rather than AES-256-GCM-SIV because that keeps a 96-bit nonce and
//! reads the content twice. The ring's 32-byte key is not used by XAES-256-GCM directly:
//! HKDF-SHA256, once when the key enters the ring, derives the XAES key from it and its key id,
//! so the AES-256-GCM cipher that still opens version 1 envelopes never shares an AES key with
//! the version 2 cipher. For another reader of these envelopes: the XAES-256-GCM key is
//! HKDF-SHA256 with salt `"imstore content codec"`, the ring key as input keying material, info
//! `"envelope v2 XAES-256-GCM key, key id "` followed by the key id (u32 BE), 32 bytes long.
//!
//! # Envelope version 2 (written)
//!
//! ```text
//! 0x49 'I' | 0x02 | flags | content_len: u32 BE | [key_id: u32 BE | nonce: 24]  (header)
//! body (zstd frame when flag bit 0, else the content; ciphertext when sealed)
//! sealed: tag: 16 (XAES-256-GCM; associated data = header | identity)
//! not sealed: crc32c: u32 BE (CRC-32C of header | body | identity)
//! ```
//!
//! Flags: bit 0 zstd, bit 1 sealed (the key id and nonce are present); other bits must be zero.
//! The identity is the conversation id's length (u32 BE), its bytes and the msg_id (u64 BE), so
//! an envelope copied to another message fails its tag or its checksum. Every header byte is
//! covered by the tag or by the checksum. `content_len` is the decoded length: checked against
//! the decode limit before anything is allocated, and against the body (uncompressed) or the
//! decompressed frame, so a truncation is caught by structure as well as by the check.
//!
//! CRC-32C (Castagnoli; the `crc32c` crate, SSE 4.2 / ARMv8 CRC instructions with a software
//! fallback) rather than a 64-bit hash such as xxh3: a CRC is an error-detecting code, so every
//! single-bit flip and every burst of up to 32 bits is detected by construction, not with high
//! probability; other corruption slips through with probability 2⁻³². It is no defence against
//! someone who writes to the database: only sealing is, which is why an encrypting codec refuses
//! unsealed envelopes.
//!
//! # Envelope version 1 (read only)
//!
//! `0x49 | 0x01 | flags | [orig_len: u32 BE if zstd] | [key_id: u32 BE | nonce: 12 if sealed] |
//! body [| tag: 16 if sealed]`, sealed with AES-256-GCM under the ring key itself and the same
//! associated data. Unsealed version 1 envelopes carry no integrity check at all; an encrypting
//! codec refuses them like any unsealed envelope. [`ContentCodec::needs_rekey`] is true for every
//! version 1 envelope, so the re-key job rewrites them as version 2.
//!
//! # Migrating a plaintext store
//!
//! An encrypting codec's [`ContentCodec::decode`] and [`ContentCodec::rekey`] refuse unsealed
//! content (anyone who can write to the database could have written it). Turning encryption on
//! for a store that holds plaintext goes through [`ContentCodec::rekey_accepting_plaintext`] (or
//! [`ContentCodec::decode_for_rekey`]), which trusts unsealed v1 and v2 envelopes once, for the
//! migration: run it while the plaintext is known to be genuine, and never on the read path.
//!
//! [C2SP's specification]: https://c2sp.org/XAES-256-GCM

mod envelope;
#[cfg(test)]
mod tests;
mod zstd_ctx;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit};
use hkdf::Hkdf;
use sha2::Sha256;
use xaes_256_gcm::Xaes256Gcm;
use zeroize::Zeroizing;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::ids::{ConversationId, MsgId};
use envelope::{
    CRC_LEN, Envelope, FLAG_SEALED, FLAG_ZSTD, Identity, MAGIC, MAX_AAD, Protection, TAG_LEN, V1,
    V2, V2_FIXED, V2_KEY_AT, V2_NONCE_LEN, V2_SEALED_HEADER,
};

/// The default decode limit (16 MiB): what a codec decodes unless
/// [`ContentCodec::with_decode_limit`] sets less.
pub const MAX_DECODED_BYTES: usize = 16 * 1024 * 1024;

/// HKDF-SHA256 salt and info prefix of the XAES-256-GCM key derived from a ring key; changing
/// them makes every sealed v2 envelope unreadable.
const XAES_KEY_SALT: &[u8] = b"imstore content codec";
const XAES_KEY_INFO: &[u8] = b"envelope v2 XAES-256-GCM key, key id ";

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

/// The two ciphers of one ring key; both zeroize their key schedules on drop (the `zeroize`
/// features of aes-gcm and xaes-256-gcm).
struct Ciphers {
    /// Seals and opens version 2 envelopes, under a key derived from the ring key.
    v2: Xaes256Gcm,
    /// Opens version 1 envelopes, under the ring key itself.
    v1: Aes256Gcm,
}

impl Ciphers {
    fn new(key: &EncryptionKey) -> Self {
        let v1 = Aes256Gcm::new_from_slice(key.bytes.as_slice()).expect("32-byte key");
        let mut info = [0u8; XAES_KEY_INFO.len() + 4];
        info[..XAES_KEY_INFO.len()].copy_from_slice(XAES_KEY_INFO);
        info[XAES_KEY_INFO.len()..].copy_from_slice(&key.id.0.to_be_bytes());
        let mut derived = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(XAES_KEY_SALT), key.bytes.as_slice())
            .expand(&info, derived.as_mut_slice())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        let v2 = Xaes256Gcm::new_from_slice(derived.as_slice()).expect("32-byte key");
        Ciphers { v2, v1 }
    }
}

/// The keys a codec seals with (the active one) and opens with (all of them).
#[derive(Clone)]
pub struct KeyRing {
    active: KeyId,
    ciphers: BTreeMap<KeyId, Arc<Ciphers>>,
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
        self.ciphers.insert(key.id, Arc::new(Ciphers::new(&key)));
    }

    fn sealing(&self) -> &Ciphers {
        &self.ciphers[&self.active]
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
    decode_limit: usize,
}

impl Default for ContentCodec {
    /// Compression on (256 B threshold, level 3), no encryption, the 16 MiB decode limit.
    fn default() -> Self {
        ContentCodec {
            compression: Some(Compression::default()),
            keys: None,
            decode_limit: MAX_DECODED_BYTES,
        }
    }
}

fn decode_error(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::Decode, why).with_operation(Operation::Codec)
}

impl ContentCodec {
    /// Neither compression nor encryption: the envelope header, the content as is and its
    /// checksum.
    pub fn plain() -> Self {
        ContentCodec {
            compression: None,
            ..ContentCodec::default()
        }
    }

    /// This codec with compression set (or turned off with `None`).
    pub fn with_compression(mut self, compression: Option<Compression>) -> Self {
        self.compression = compression;
        self
    }

    /// This codec sealing with `keys`; it then refuses to decode anything it did not seal.
    pub fn with_encryption(mut self, keys: KeyRing) -> Self {
        self.keys = Some(keys);
        self
    }

    /// This codec decoding at most `max_content_bytes` of content (capped at `u32::MAX`, the
    /// largest length an envelope records): a declared or actual length above it is a `Decode`
    /// error before more than that is allocated, and encoding more is refused. A store sets it
    /// to its policy's content limit.
    pub fn with_decode_limit(mut self, max_content_bytes: usize) -> Self {
        self.decode_limit = max_content_bytes.min(u32::MAX as usize);
        self
    }

    /// The largest content this codec encodes or decodes; a store refuses a policy admitting
    /// more.
    pub fn decode_limit(&self) -> usize {
        self.decode_limit
    }

    /// True when content is encrypted at rest.
    pub fn encrypts(&self) -> bool {
        self.keys.is_some()
    }

    /// The most bytes [`ContentCodec::encode`] writes for `content_len` bytes of content: the
    /// envelope's header, key id, nonce and tag or checksum around the body (compression is only
    /// kept when it makes the body smaller).
    pub fn max_encoded_len(&self, content_len: usize) -> usize {
        let overhead = if self.keys.is_some() {
            V2_SEALED_HEADER + TAG_LEN
        } else {
            V2_FIXED + CRC_LEN
        };
        content_len.saturating_add(overhead)
    }

    /// The stored form (a version 2 envelope) of `content` for message `msg_id` of
    /// `conversation`; content longer than the decode limit is refused with `InvalidInput`.
    pub fn encode(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        content: &[u8],
    ) -> Result<Vec<u8>> {
        if content.len() > self.decode_limit {
            return Err(Error::invalid_input(
                "content",
                format!(
                    "{} bytes is more than the codec decodes ({} bytes)",
                    content.len(),
                    self.decode_limit
                ),
            )
            .with_operation(Operation::Codec));
        }
        let compression = self.compression.filter(|c| content.len() >= c.threshold);
        let body_room = match compression {
            Some(_) => zstd::zstd_safe::compress_bound(content.len()),
            None => content.len(),
        };
        let mut out = self.start(content.len() as u32, body_room);
        let header_len = out.len();
        let mut flags = 0;
        match compression {
            Some(c) => {
                let n = zstd_ctx::compress_into(content, c.level, &mut out).map_err(|e| {
                    Error::new(ErrorKind::Backend, "zstd compression failed")
                        .with_operation(Operation::Codec)
                        .with_source(e)
                })?;
                if n < content.len() {
                    flags |= FLAG_ZSTD;
                } else {
                    out.truncate(header_len);
                    out.extend_from_slice(content);
                }
            }
            None => out.extend_from_slice(content),
        }
        self.finish(conversation, msg_id, flags, out)
    }

    /// A v2 header declaring `content_len` (with the active key id and a fresh nonce when
    /// sealing), in a buffer with room for `body_room` bytes of body and the trailer.
    fn start(&self, content_len: u32, body_room: usize) -> Vec<u8> {
        let (header, trailer) = match self.keys {
            Some(_) => (V2_SEALED_HEADER, TAG_LEN),
            None => (V2_FIXED, CRC_LEN),
        };
        let mut out = Vec::with_capacity(header + body_room + trailer);
        out.extend_from_slice(&[MAGIC, V2, 0]);
        out.extend_from_slice(&content_len.to_be_bytes());
        if let Some(keys) = &self.keys {
            out.extend_from_slice(&keys.active.0.to_be_bytes());
            out.extend_from_slice(&rand::random::<[u8; V2_NONCE_LEN]>());
        }
        out
    }

    /// Sets `flags` in the header [`ContentCodec::start`] wrote to `out` and seals the body that
    /// follows it (appending the tag), or appends the checksum.
    fn finish(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        flags: u8,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let identity = Identity::new(conversation, msg_id);
        match &self.keys {
            Some(keys) => {
                out[2] = flags | FLAG_SEALED;
                let (header, body) = out.split_at_mut(V2_SEALED_HEADER);
                let nonce = xaes_256_gcm::Nonce::try_from(&header[V2_KEY_AT + 4..])
                    .expect("the header ends with the 24-byte nonce");
                let mut aad = [0u8; MAX_AAD];
                let tag = keys
                    .sealing()
                    .v2
                    .encrypt_inout_detached(&nonce, identity.aad(header, &mut aad), body.into())
                    .map_err(|_| {
                        Error::new(ErrorKind::Backend, "encryption failed")
                            .with_operation(Operation::Codec)
                    })?;
                out.extend_from_slice(&tag);
            }
            None => {
                out[2] = flags;
                let crc = identity.crc(&out);
                out.extend_from_slice(&crc.to_be_bytes());
            }
        }
        Ok(out)
    }

    /// The content stored as `stored` for message `msg_id` of `conversation`. Tampering,
    /// truncation, foreign bytes, an unknown key, a length above the decode limit and, when this
    /// codec encrypts, anything it did not seal are [`ErrorKind::Decode`] errors.
    pub fn decode(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        self.open(conversation, msg_id, stored, false)
    }

    /// Like [`ContentCodec::decode`], except that an encrypting codec also accepts unsealed
    /// version 1 and 2 envelopes: the migration of a plaintext store to encryption, and nothing
    /// else. Unsealed content proves nothing about who wrote it, so call this only from the
    /// re-key job, while the store's plaintext is known to be genuine.
    pub fn decode_for_rekey(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        self.open(conversation, msg_id, stored, true)
    }

    fn open(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
        accept_plaintext: bool,
    ) -> Result<Vec<u8>> {
        let env = Envelope::parse(stored)?;
        if let Some(len) = env.content_len
            && len as usize > self.decode_limit
        {
            return Err(decode_error(format!(
                "declared content length {len} exceeds the decode limit ({} bytes)",
                self.decode_limit
            )));
        }
        if self.keys.is_some() && !env.sealed() && !accept_plaintext {
            return Err(decode_error(
                "content is not sealed but this codec encrypts: refused (a plaintext store is \
                 migrated by the re-key job with decode_for_rekey)",
            ));
        }
        let identity = Identity::new(conversation, msg_id);
        let body: Cow<'_, [u8]> = match env.protection {
            Protection::None => Cow::Borrowed(env.payload),
            Protection::Crc(crc) => {
                if identity.crc(&stored[..stored.len() - CRC_LEN]) != crc {
                    return Err(decode_error(
                        "checksum mismatch: corrupt, truncated or moved content",
                    ));
                }
                Cow::Borrowed(env.payload)
            }
            Protection::Sealed { key, nonce } => {
                let keys = self.keys.as_ref().ok_or_else(|| {
                    decode_error("content is encrypted but the codec has no keys")
                })?;
                let ciphers = keys
                    .ciphers
                    .get(&KeyId(key))
                    .ok_or_else(|| decode_error(format!("unknown key id {key}")))?;
                let (ciphertext, tag) = env.payload.split_at(env.payload.len() - TAG_LEN);
                let mut aad = [0u8; MAX_AAD];
                let aad = identity.aad(env.header, &mut aad);
                let mut buf = ciphertext.to_vec();
                let checked = if env.version == V1 {
                    ciphers.v1.decrypt_inout_detached(
                        &aes_gcm::Nonce::try_from(nonce).expect("12-byte nonce"),
                        aad,
                        buf.as_mut_slice().into(),
                        &aes_gcm::Tag::try_from(tag).expect("16-byte tag"),
                    )
                } else {
                    ciphers.v2.decrypt_inout_detached(
                        &xaes_256_gcm::Nonce::try_from(nonce).expect("24-byte nonce"),
                        aad,
                        buf.as_mut_slice().into(),
                        &xaes_256_gcm::Tag::try_from(tag).expect("16-byte tag"),
                    )
                };
                checked.map_err(|_| {
                    decode_error("authentication failed: tampered, moved or wrong key")
                })?;
                Cow::Owned(buf)
            }
        };
        if env.compressed {
            let len = env
                .content_len
                .expect("compressed envelopes declare their length") as usize;
            return zstd_ctx::decompress_exact(&body, len).map_err(|_| {
                decode_error("zstd payload is corrupt or does not match the declared length")
            });
        }
        match env.content_len {
            Some(len) if len as usize != body.len() => {
                Err(decode_error("content length does not match the header"))
            }
            None if body.len() > self.decode_limit => Err(decode_error(format!(
                "content of {} bytes exceeds the decode limit ({} bytes)",
                body.len(),
                self.decode_limit
            ))),
            _ => Ok(body.into_owned()),
        }
    }

    /// The key that sealed `stored`, or `None` when it is not encrypted (structure only: nothing
    /// is verified).
    pub fn key_id_of(stored: &[u8]) -> Result<Option<KeyId>> {
        Ok(Envelope::parse(stored)?.key_id().map(KeyId))
    }

    /// True when the re-key job should rewrite `stored`: it is a version 1 envelope, or it is not
    /// sealed with this codec's active key (or is sealed though the codec does not encrypt, or
    /// is not sealed though it does).
    pub fn needs_rekey(&self, stored: &[u8]) -> Result<bool> {
        let env = Envelope::parse(stored)?;
        Ok(env.version != V2 || env.key_id().map(KeyId) != self.keys.as_ref().map(|k| k.active))
    }

    /// `stored` re-encoded as a version 2 envelope under the active key, opened as
    /// [`ContentCodec::decode`] opens it (so an encrypting codec refuses unsealed content here
    /// too: see [`ContentCodec::rekey_accepting_plaintext`]).
    pub fn rekey(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let content = Zeroizing::new(self.decode(conversation, msg_id, stored)?);
        self.encode(conversation, msg_id, &content)
    }

    /// `stored` re-encoded under the active key, opened as [`ContentCodec::decode_for_rekey`]
    /// opens it: the one way unsealed content becomes sealed, for migrating a plaintext store
    /// whose content is known to be genuine.
    pub fn rekey_accepting_plaintext(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        stored: &[u8],
    ) -> Result<Vec<u8>> {
        let content = Zeroizing::new(self.decode_for_rekey(conversation, msg_id, stored)?);
        self.encode(conversation, msg_id, &content)
    }
}
