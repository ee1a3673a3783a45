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

use std::collections::HashMap;
use std::sync::Mutex;

use imstore_core::backend::{EncodedMessage, Inserted};
use imstore_core::{ConversationId, Lifecycle, MsgId, StoredMessage, Timestamp, UserId};

/// What a transition's decision depends on, besides the request record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Known {
    /// The message's sender.
    pub(crate) sender: UserId,
    /// Its lifecycle as last seen by this handle.
    pub(crate) lifecycle: Lifecycle,
}

type Key = (ConversationId, MsgId);

#[derive(Debug, Default)]
struct Generations {
    current: HashMap<Key, Known>,
    previous: HashMap<Key, Known>,
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
        let key = (conversation.clone(), msg_id);
        let mut g = self.lock();
        if let Some(known) = g.current.get(&key) {
            return Some(known.clone());
        }
        let known = g.previous.remove(&key)?;
        Self::insert(&mut g, self.half, key, known.clone());
        Some(known)
    }

    /// Remembers a message's state.
    pub(crate) fn put(&self, conversation: &ConversationId, msg_id: MsgId, known: Known) {
        if self.half == 0 {
            return;
        }
        let mut g = self.lock();
        Self::insert(&mut g, self.half, (conversation.clone(), msg_id), known);
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
            let key = (m.message.conversation_id.clone(), m.message.msg_id);
            Self::insert(&mut g, self.half, key, known);
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
                (m.conversation_id.clone(), m.msg_id),
                known,
            );
        }
    }

    /// Forgets a message (it was read as absent).
    pub(crate) fn forget(&self, conversation: &ConversationId, msg_id: MsgId) {
        if self.half == 0 {
            return;
        }
        let key = (conversation.clone(), msg_id);
        let mut g = self.lock();
        g.current.remove(&key);
        g.previous.remove(&key);
    }

    fn insert(g: &mut Generations, half: usize, key: Key, known: Known) {
        if g.current.len() >= half && !g.current.contains_key(&key) {
            g.previous = std::mem::take(&mut g.current);
        }
        g.previous.remove(&key);
        g.current.insert(key, known);
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
        assert!(g.current.len() + g.previous.len() <= 4);
        drop(g);
        cache.forget(&c, id(1));
        assert_eq!(cache.get(&c, id(1)), None);
        let off = StateCache::new(0);
        off.put(&c, id(1), known(1));
        assert_eq!(off.get(&c, id(1)), None);
    }
}
