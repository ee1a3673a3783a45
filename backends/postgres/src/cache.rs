//! The states of messages this handle recently wrote or read: what lets a transition guess the
//! stored state and decide before reading it (see `transition.rs`).
//!
//! Never trusted: a guess is only ever used inside a statement that applies its decision *if
//! and only if* the stored row still equals the guess, column by column, and reads the row
//! otherwise. So an entry that is stale (another process changed the message, the purge removed
//! it, a concurrent read put an older state back) costs nothing but the guess; no invalidation
//! is needed for correctness, and none is done.
//!
//! Bounded: two generations of at most half the capacity each. Puts go to the current one; when
//! it is full it becomes the previous one (the older previous is dropped), and a hit in the
//! previous generation moves the entry back to the current. That keeps recently used entries,
//! in O(1) per call, without per-entry bookkeeping.

use std::sync::Mutex;

use imstore_core::backend::{EncodedMessage, Inserted};
use imstore_core::{ConversationId, Lifecycle, MsgId, StoredMessage, Timestamp, UserId};

// foldhash, not SipHash: the cache is touched once per message of every insert and read, and
// SipHash over the conversation id was a fifth of a batch insert's client CPU. foldhash is
// seeded per process, so keys a caller picks cannot be aimed at one bucket without knowing the
// seed, and the cache is bounded whatever happens to its buckets.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What a transition's decision depends on, besides the request record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The message's sender.
    pub(crate) sender: UserId,
    /// Its lifecycle as last seen by this handle.
    pub(crate) lifecycle: Lifecycle,
}

/// One generation: entries by conversation, then by msg_id. Keyed in two levels so that a
/// batch or a page (one conversation, many messages) copies the conversation id once, not once
/// per message, and hashes a message by its 8-byte id.
#[derive(Debug, Default)]
struct Generation {
    by_conversation: HashMap<String, HashMap<MsgId, Known>>,
    len: usize,
}

impl Generation {
    fn get(&self, conversation: &str, msg_id: MsgId) -> Option<&Known> {
        self.by_conversation.get(conversation)?.get(&msg_id)
    }

    fn remove(&mut self, conversation: &str, msg_id: MsgId) -> Option<Known> {
        let known = self
            .by_conversation
            .get_mut(conversation)?
            .remove(&msg_id)?;
        self.len -= 1;
        Some(known)
    }

    fn insert(&mut self, conversation: &str, msg_id: MsgId, known: Known) {
        let messages = match self.by_conversation.get_mut(conversation) {
            Some(m) => m,
            None => self
                .by_conversation
                .entry(conversation.to_owned())
                .or_default(),
        };
        if messages.insert(msg_id, known).is_none() {
            self.len += 1;
        }
    }

    fn clear(&mut self) {
        self.by_conversation.clear();
        self.len = 0;
    }
}

#[derive(Debug, Default)]
struct Generations {
    current: Generation,
    previous: Generation,
}

/// A bounded map of message states (see the module docs); capacity 0 disables it.
#[derive(Debug)]
pub(crate) struct StateCache {
    half: usize,
    inner: Mutex<Generations>,
}

impl StateCache {
    /// A cache of about `capacity` entries (0: nothing is ever kept).
    pub(crate) fn new(capacity: usize) -> Self {
        StateCache {
            half: capacity.div_ceil(2),
            inner: Mutex::new(Generations::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // A panic while holding the lock leaves at worst a stale entry, which is harmless.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last state this handle saw of a message, if still kept.
    pub(crate) fn get(&self, conversation: &ConversationId, msg_id: MsgId) -> Option<Known> {
        if self.half == 0 {
            return None;
        }
        let conversation = conversation.as_str();
        let mut g = self.lock();
        if let Some(known) = g.current.get(conversation, msg_id) {
            return Some(known.clone());
        }
        let known = g.previous.remove(conversation, msg_id)?;
        Self::insert(&mut g, self.half, conversation, msg_id, known.clone());
        Some(known)
    }

    /// Remembers a message's state.
    pub(crate) fn put(&self, conversation: &ConversationId, msg_id: MsgId, known: Known) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        Self::insert(&mut g, self.half, conversation.as_str(), msg_id, known);
    }

    /// Remembers the states of stored messages just read.
    pub(crate) fn put_read(&self, messages: &[StoredMessage]) {
        if self.half == 0 || messages.is_empty() {
            return;
        }
        let mut g = self.lock();
        for m in messages {
            let known = Known {
                sender: m.message.sender_id.clone(),
                lifecycle: m.lifecycle.clone(),
            };
            let conversation = m.message.conversation_id.as_str();
            Self::insert(&mut g, self.half, conversation, m.message.msg_id, known);
        }
    }

    /// Remembers the messages an insert wrote (their state is the store's initial one) and those
    /// it found already stored.
    pub(crate) fn put_inserted(
        &self,
        messages: &[EncodedMessage],
        found: &[Inserted],
        created_at: Timestamp,
    ) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        for (m, f) in messages.iter().zip(found) {
            let m = m.message();
            let known = match f {
                Inserted::New => Known {
                    sender: m.sender_id.clone(),
                    lifecycle: Lifecycle::new(created_at),
                },
                Inserted::Existing(s) => Known {
                    sender: s.message.sender_id.clone(),
                    lifecycle: s.lifecycle.clone(),
                },
            };
            Self::insert(
                &mut g,
                self.half,
                m.conversation_id.as_str(),
                m.msg_id,
                known,
            );
        }
    }

    /// Forgets a message (it was read as absent).
    pub(crate) fn forget(&self, conversation: &ConversationId, msg_id: MsgId) {
        if self.half == 0 {
            return;
        }
        let conversation = conversation.as_str();
        let mut g = self.lock();
        g.current.remove(conversation, msg_id);
        g.previous.remove(conversation, msg_id);
    }

    fn insert(g: &mut Generations, half: usize, conversation: &str, msg_id: MsgId, known: Known) {
        if g.current.len >= half && g.current.get(conversation, msg_id).is_none() {
            // The old previous generation's outer table becomes the new current one, emptied
            // but keeping its allocation.
            let Generations { current, previous } = g;
            std::mem::swap(current, previous);
            current.clear();
        }
        g.previous.remove(conversation, msg_id);
        g.current.insert(conversation, msg_id, known);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(v: u32) -> Known {
        let mut lifecycle = Lifecycle::new(Timestamp::from_millis(1));
        lifecycle.version = v;
        Known {
            sender: UserId::new("alice").unwrap(),
            lifecycle,
        }
    }

    #[test]
    fn keeps_recent_entries_within_its_bound() {
        let c = ConversationId::new("c").unwrap();
        let id = |n: u64| MsgId::new(n << 22).unwrap();
        let cache = StateCache::new(4);
        for n in 1..=4 {
            cache.put(&c, id(n), known(n as u32));
        }
        // Touching 1 keeps it while 5 and 6 push the older generation out.
        assert_eq!(cache.get(&c, id(1)), Some(known(1)));
        cache.put(&c, id(5), known(5));
        cache.put(&c, id(6), known(6));
        assert_eq!(cache.get(&c, id(1)), Some(known(1)));
        assert_eq!(cache.get(&c, id(2)), None);
        let g = cache.lock();
        assert!(g.current.len + g.previous.len <= 4);
        drop(g);
        cache.forget(&c, id(1));
        assert_eq!(cache.get(&c, id(1)), None);
        // The same msg_id in another conversation is another entry.
        let d = ConversationId::new("d").unwrap();
        cache.put(&c, id(7), known(7));
        cache.put(&d, id(7), known(8));
        assert_eq!(cache.get(&c, id(7)), Some(known(7)));
        assert_eq!(cache.get(&d, id(7)), Some(known(8)));
        cache.forget(&d, id(7));
        assert_eq!(cache.get(&d, id(7)), None);
        assert_eq!(cache.get(&c, id(7)), Some(known(7)));
        let off = StateCache::new(0);
        off.put(&c, id(1), known(1));
        assert_eq!(off.get(&c, id(1)), None);
    }
}
