//! The stored byte layout of both envelope versions: constants, the parser, and the identity
//! bytes every envelope is bound to.

use super::decode_error;
use crate::error::Result;
use crate::ids::{ConversationId, MAX_ID_BYTES, MsgId};

pub(super) const MAGIC: u8 = 0x49;
/// Written by codecs before issue 15; read, never written.
pub(super) const V1: u8 = 1;
/// Written today.
pub(super) const V2: u8 = 2;
pub(super) const FLAG_ZSTD: u8 = 0b01;
/// v1: AES-256-GCM with a 96-bit nonce; v2: XAES-256-GCM with a 192-bit nonce.
pub(super) const FLAG_SEALED: u8 = 0b10;
pub(super) const V1_NONCE_LEN: usize = 12;
pub(super) const V2_NONCE_LEN: usize = 24;
pub(super) const TAG_LEN: usize = 16;
pub(super) const CRC_LEN: usize = 4;
/// magic, version, flags, content length.
pub(super) const V2_FIXED: usize = 3 + 4;
/// Offset of the key id in a sealed v2 envelope; the nonce follows it.
pub(super) const V2_KEY_AT: usize = V2_FIXED;
/// The header of a sealed v2 envelope: fixed part, key id, nonce.
pub(super) const V2_SEALED_HEADER: usize = V2_FIXED + 4 + V2_NONCE_LEN;
/// The longest associated data: the longest header (sealed v2 or v1 with zstd) plus the identity.
pub(super) const MAX_AAD: usize = V2_SEALED_HEADER + IDENTITY_FIXED + MAX_ID_BYTES;
/// The identity's fixed part: the conversation id's length (u32) and the msg_id (u64).
const IDENTITY_FIXED: usize = 4 + 8;

/// How an envelope protects its body.
pub(super) enum Protection<'a> {
    /// v1 unsealed: no integrity check at all (the reason for v2).
    None,
    /// v2 unsealed: CRC-32C over header, body and identity.
    Crc(u32),
    /// Sealed under `key`: v1 with a 12-byte nonce, v2 with a 24-byte nonce; the tag ends the
    /// payload.
    Sealed { key: u32, nonce: &'a [u8] },
}

/// A parsed envelope; nothing in it is verified yet, only its structure.
pub(super) struct Envelope<'a> {
    pub version: u8,
    pub compressed: bool,
    /// The content length the header declares: v1 only when compressed; v2 always.
    pub content_len: Option<u32>,
    /// Every byte before the body, exactly as stored (what the checksum or the tag covers).
    pub header: &'a [u8],
    /// The body; when sealed, ciphertext followed by the 16-byte tag.
    pub payload: &'a [u8],
    pub protection: Protection<'a>,
}

impl<'a> Envelope<'a> {
    pub fn sealed(&self) -> bool {
        matches!(self.protection, Protection::Sealed { .. })
    }

    pub fn key_id(&self) -> Option<u32> {
        match self.protection {
            Protection::Sealed { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The structure of `stored`: magic, a known version, only known flags, every field present.
    pub fn parse(stored: &'a [u8]) -> Result<Self> {
        if stored.len() < 3 || stored[0] != MAGIC {
            return Err(decode_error("not an imstore content envelope"));
        }
        let version = stored[1];
        if version != V1 && version != V2 {
            return Err(decode_error(format!(
                "unsupported envelope version {version}"
            )));
        }
        let flags = stored[2];
        if flags & !(FLAG_ZSTD | FLAG_SEALED) != 0 {
            return Err(decode_error("unknown envelope flags"));
        }
        let compressed = flags & FLAG_ZSTD != 0;
        let sealed = flags & FLAG_SEALED != 0;
        let mut at = 3;
        let take = |at: &mut usize, n: usize| -> Result<&'a [u8]> {
            let s = stored
                .get(*at..*at + n)
                .ok_or_else(|| decode_error("envelope is truncated"))?;
            *at += n;
            Ok(s)
        };
        let u32_at = |at: &mut usize| -> Result<u32> {
            Ok(u32::from_be_bytes(
                take(at, 4)?.try_into().expect("take returned 4 bytes"),
            ))
        };
        let content_len = if version == V2 || compressed {
            Some(u32_at(&mut at)?)
        } else {
            None
        };
        let nonce_len = if version == V1 {
            V1_NONCE_LEN
        } else {
            V2_NONCE_LEN
        };
        let sealed_by = if sealed {
            let key = u32_at(&mut at)?;
            Some((key, take(&mut at, nonce_len)?))
        } else {
            None
        };
        let header = &stored[..at];
        let rest = &stored[at..];
        let (payload, protection) = match sealed_by {
            Some((key, nonce)) => {
                if rest.len() < TAG_LEN {
                    return Err(decode_error("envelope is truncated"));
                }
                (rest, Protection::Sealed { key, nonce })
            }
            None if version == V1 => (rest, Protection::None),
            None => {
                let body_len = rest
                    .len()
                    .checked_sub(CRC_LEN)
                    .ok_or_else(|| decode_error("envelope is truncated"))?;
                let (body, crc) = rest.split_at(body_len);
                let crc = u32::from_be_bytes(crc.try_into().expect("4 bytes"));
                (body, Protection::Crc(crc))
            }
        };
        Ok(Envelope {
            version,
            compressed,
            content_len,
            header,
            payload,
            protection,
        })
    }
}

/// The identity an envelope is bound to, in its stored order: the conversation id's length
/// (u32 BE), its bytes, the msg_id (u64 BE). Length-prefixed so no two identities share bytes.
pub(super) struct Identity<'a> {
    conv_len: [u8; 4],
    conv: &'a [u8],
    msg_id: [u8; 8],
}

impl<'a> Identity<'a> {
    pub fn new(conversation: &'a ConversationId, msg_id: MsgId) -> Self {
        let conv = conversation.as_str().as_bytes();
        Identity {
            conv_len: (conv.len() as u32).to_be_bytes(),
            conv,
            msg_id: msg_id.get().to_be_bytes(),
        }
    }

    /// CRC-32C of `header_and_body` followed by the identity.
    pub fn crc(&self, header_and_body: &[u8]) -> u32 {
        let crc = crc32c::crc32c(header_and_body);
        let crc = crc32c::crc32c_append(crc, &self.conv_len);
        let crc = crc32c::crc32c_append(crc, self.conv);
        crc32c::crc32c_append(crc, &self.msg_id)
    }

    /// The associated data of a sealed envelope, `header` then the identity, on the stack (a
    /// heap allocation per message costs more than the derivation of its key).
    pub fn aad<'b>(&self, header: &[u8], buf: &'b mut [u8; MAX_AAD]) -> &'b [u8] {
        let parts: [&[u8]; 4] = [header, &self.conv_len, self.conv, &self.msg_id];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        &buf[..at]
    }
}
