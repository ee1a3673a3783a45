//! Identifiers: the time-ordered 64-bit msg_id and its generator, and validated string ids.

use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::types::Timestamp;

/// Milliseconds since the Unix epoch at which msg_id time starts (2024-01-01T00:00:00Z).
pub const MSG_ID_EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
const TIME_BITS: u32 = 41;
/// The largest node id a generator accepts (10 bits).
pub const MAX_NODE_ID: u16 = (1 << NODE_BITS) - 1;
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// A message id: 41 bits of milliseconds since [`MSG_ID_EPOCH_MS`], 10 bits of node, 12 of sequence.
///
/// Ids from one generator strictly increase; ids sort by creation time across nodes to the
/// millisecond. The top bit is always clear, so an id fits a signed 64-bit column unchanged.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgId(u64);

impl MsgId {
    /// Wraps a raw id; refused when zero or above `i64::MAX` (it could not be stored signed).
    pub fn new(raw: u64) -> Result<Self> {
        if raw == 0 || raw > i64::MAX as u64 {
            return Err(Error::invalid_input(
                "msg_id",
                "must be between 1 and 2^63-1",
            ));
        }
        Ok(MsgId(raw))
    }

    /// Wraps a value read back from a signed column; refused when not positive.
    pub fn from_i64(raw: i64) -> Result<Self> {
        if raw <= 0 {
            return Err(Error::invalid_input("msg_id", "must be positive"));
        }
        Ok(MsgId(raw as u64))
    }

    /// The id from its parts; used by the generator and by tests that need a given creation time.
    pub fn from_parts(at: Timestamp, node: u16, seq: u16) -> Result<Self> {
        // Checked: `at` may come from a client, and i64::MIN minus the epoch overflows.
        let ms = at.as_millis().checked_sub(MSG_ID_EPOCH_MS).unwrap_or(-1);
        if !(0..(1i64 << TIME_BITS)).contains(&ms) {
            return Err(Error::invalid_input("msg_id", "time outside the id range"));
        }
        if node > MAX_NODE_ID || seq as u64 > MAX_SEQ {
            return Err(Error::invalid_input(
                "msg_id",
                "node or sequence out of range",
            ));
        }
        MsgId::new(
            ((ms as u64) << (NODE_BITS + SEQ_BITS)) | ((node as u64) << SEQ_BITS) | seq as u64,
        )
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The value as a signed 64-bit integer, lossless (the top bit is never set).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }

    /// The millisecond at which the id was generated.
    pub fn timestamp(self) -> Timestamp {
        Timestamp::from_millis((self.0 >> (NODE_BITS + SEQ_BITS)) as i64 + MSG_ID_EPOCH_MS)
    }

    /// The node that generated the id.
    pub fn node(self) -> u16 {
        ((self.0 >> SEQ_BITS) & MAX_NODE_ID as u64) as u16
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MsgId({})", self.0)
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Generates unique, strictly increasing [`MsgId`]s for one node; safe to share across threads.
///
/// When the wall clock goes backwards, the generator keeps using its last millisecond (borrowing
/// sequence numbers, then moving its logical time forward) instead of issuing smaller ids.
#[derive(Debug, Clone)]
pub struct MsgIdGenerator {
    node: u16,
    clock: Arc<dyn Clock>,
    last: Arc<Mutex<(i64, u64)>>,
}

impl MsgIdGenerator {
    /// A generator for `node` (0..=1023) reading time from `clock`; distinct nodes never collide.
    pub fn new(node: u16, clock: Arc<dyn Clock>) -> Result<Self> {
        if node > MAX_NODE_ID {
            return Err(Error::invalid_input("node", "node id must be at most 1023"));
        }
        Ok(MsgIdGenerator {
            node,
            clock,
            last: Arc::new(Mutex::new((0, 0))),
        })
    }

    /// The next id, greater than every id this generator (and its clones) returned before; or
    /// `InvalidState` when the clock (or the logical time the generator moved to) is outside the
    /// 41-bit millisecond range of ids: never an id that [`MsgId::new`] refuses.
    pub fn next_id(&self) -> Result<MsgId> {
        let now = self.clock.now().as_millis().saturating_sub(MSG_ID_EPOCH_MS);
        if now < 0 {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidState,
                "the clock is before the msg_id epoch (2024-01-01)",
            ));
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (last_ms, last_seq) = *last;
        let (ms, seq) = if now > last_ms {
            (now, 0)
        } else if last_seq < MAX_SEQ {
            (last_ms, last_seq + 1)
        } else {
            // Sequence exhausted in this millisecond (or the clock went back): move logical time on.
            (last_ms + 1, 0)
        };
        if !(0..(1i64 << TIME_BITS)).contains(&ms) {
            return Err(Error::new(
                crate::error::ErrorKind::InvalidState,
                "the clock is outside the msg_id time range (2024 to about 2093)",
            ));
        }
        *last = (ms, seq);
        Ok(MsgId(
            ((ms as u64) << (NODE_BITS + SEQ_BITS)) | ((self.node as u64) << SEQ_BITS) | seq,
        ))
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Accepts any non-empty UTF-8 string of at most [`MAX_ID_BYTES`] bytes without NUL
            /// or other control characters; everything else is stored verbatim.
            pub fn new(value: impl Into<String>) -> Result<Self> {
                let value = value.into();
                validate_id($field, &value)?;
                Ok($name(value))
            }

            /// Accepts raw bytes from the wire; non-UTF-8 input is refused, never replaced.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| Error::invalid_input($field, "is not valid UTF-8"))?;
                Self::new(s)
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;
            fn try_from(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(value: String) -> Result<Self> {
                Self::new(value)
            }
        }
    };
}

/// The hard upper bound on any string id, in bytes; a [`crate::Policy`] may set a lower one.
pub const MAX_ID_BYTES: usize = 256;

fn validate_id(field: &'static str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::invalid_input(field, "must not be empty"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(Error::invalid_input(
            field,
            format!("is {} bytes, more than {MAX_ID_BYTES}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid_input(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

string_id!(
    /// A conversation: a one-to-one chat or a group.
    ConversationId,
    "conversation_id"
);
string_id!(
    /// A user: a sender, a requester, a viewer.
    UserId,
    "user_id"
);
string_id!(
    /// A client-chosen request id; a repeated id is answered with its first outcome.
    RequestId,
    "request_id"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::collections::HashSet;

    #[test]
    fn ids_increase_and_carry_time_and_node() {
        let clock = ManualClock::new(Timestamp::from_millis(MSG_ID_EPOCH_MS + 5_000));
        let g = MsgIdGenerator::new(7, Arc::new(clock.clone())).unwrap();
        let a = g.next_id().unwrap();
        let b = g.next_id().unwrap();
        assert!(b > a);
        assert_eq!(a.timestamp().as_millis(), MSG_ID_EPOCH_MS + 5_000);
        assert_eq!(a.node(), 7);
    }

    #[test]
    fn clock_going_backwards_never_yields_smaller_ids() {
        let clock = ManualClock::new(Timestamp::from_millis(MSG_ID_EPOCH_MS + 100_000));
        let g = MsgIdGenerator::new(1, Arc::new(clock.clone())).unwrap();
        let before = g.next_id().unwrap();
        clock.set(Timestamp::from_millis(MSG_ID_EPOCH_MS + 50_000));
        let mut prev = before;
        for _ in 0..10_000 {
            let id = g.next_id().unwrap();
            assert!(id > prev);
            prev = id;
        }
    }

    #[test]
    fn unique_across_threads_and_nodes() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp::from_millis(
            MSG_ID_EPOCH_MS + 1,
        )));
        let handles: Vec<_> = (0..4u16)
            .flat_map(|node| {
                let g = MsgIdGenerator::new(node, clock.clone()).unwrap();
                (0..2).map(move |_| {
                    let g = g.clone();
                    std::thread::spawn(move || {
                        (0..5_000).map(|_| g.next_id().unwrap()).collect::<Vec<_>>()
                    })
                })
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().unwrap() {
                assert!(all.insert(id), "duplicate {id}");
            }
        }
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn the_generator_refuses_outside_its_time_range() {
        let end = MSG_ID_EPOCH_MS + (1i64 << TIME_BITS);
        let clock = ManualClock::new(Timestamp::from_millis(end - 1));
        let g = MsgIdGenerator::new(3, Arc::new(clock.clone())).unwrap();
        let last = g.next_id().unwrap();
        assert!(MsgId::new(last.get()).is_ok());
        // Exhaust the last millisecond's sequence: the logical time would move past the range.
        let mut refused = None;
        for _ in 0..=MAX_SEQ {
            if let Err(e) = g.next_id() {
                refused = Some(e);
                break;
            }
        }
        assert_eq!(
            refused.expect("refused once the range is spent").kind(),
            crate::error::ErrorKind::InvalidState
        );
        clock.set(Timestamp::from_millis(end + 1_000));
        assert!(
            MsgIdGenerator::new(3, Arc::new(clock.clone()))
                .unwrap()
                .next_id()
                .is_err()
        );
        clock.set(Timestamp::from_millis(i64::MIN));
        assert!(
            MsgIdGenerator::new(3, Arc::new(clock))
                .unwrap()
                .next_id()
                .is_err()
        );
        assert!(MsgId::from_parts(Timestamp::from_millis(i64::MIN), 0, 0).is_err());
        assert!(MsgId::from_parts(Timestamp::from_millis(i64::MAX), 0, 0).is_err());
    }

    #[test]
    fn string_ids_refuse_bad_input_and_keep_the_rest_verbatim() {
        assert_eq!(UserId::new("").unwrap_err().field(), Some("user_id"));
        assert!(ConversationId::new("a\0b").is_err());
        assert!(ConversationId::new("x".repeat(MAX_ID_BYTES + 1)).is_err());
        assert!(RequestId::from_bytes(&[0xff, 0xfe]).is_err());
        let tricky = "'; DROP TABLE messages; -- {\"$gt\": \"\"} 😀";
        assert_eq!(ConversationId::new(tricky).unwrap().as_str(), tricky);
        assert!(MsgId::new(0).is_err());
        assert!(MsgId::new(u64::MAX).is_err());
    }
}
