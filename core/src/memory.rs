//! `MemoryStore`: the complete reference implementation of the contract, and the embedded default.
//!
//! [`MemoryBackend`] keeps everything behind one mutex and never holds it across an await, so
//! every backend operation is atomic: a transition, its change event and its request record are
//! written together or not at all. The rules are the pipeline's, as on every other backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::backend::{
    Backend, ContentScan, EncodedMessage, FeedHead, FeedSlice, Fields, Inserted, PageQuery,
    PurgeJob, StoredContent,
};
use crate::error::Result;
use crate::ids::{ConversationId, MsgId, RequestId};
use crate::lifecycle::RequestRecord;
use crate::pipeline::Store;
use crate::store::StoreSettings;
use crate::transition::{Decider, Decision};
use crate::types::*;

#[derive(Debug, Clone)]
struct Entry {
    /// The message with its content in stored (encoded) form.
    message: NewMessage,
    lifecycle: Lifecycle,
}

impl Entry {
    fn stored(&self, fields: Fields) -> StoredMessage {
        let mut message = self.message.clone();
        if fields == Fields::NoContent {
            message.content = Vec::new();
        }
        StoredMessage {
            message,
            lifecycle: self.lifecycle.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Conversation {
    messages: BTreeMap<MsgId, Entry>,
    events: BTreeMap<u64, ChangeEvent>,
    last_seq: u64,
    requests: HashMap<RequestId, RequestRecord>,
    legal_hold: bool,
    /// The highest seq whose event the purge removed.
    purged_through: u64,
}

#[derive(Debug, Default)]
struct State {
    conversations: HashMap<ConversationId, Conversation>,
    /// How many stored messages reference each attachment key, across conversations (a file
    /// forwarded elsewhere under the same key stays live until its last message is purged).
    attachment_refs: HashMap<String, usize>,
}

/// The in-memory backend: complete, concurrency-safe, and lost when the last handle is dropped.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

/// The embedded default store: the pipeline over [`MemoryBackend`].
pub type MemoryStore = Store<MemoryBackend>;

impl Default for Store<MemoryBackend> {
    fn default() -> Self {
        Store::new(StoreSettings::default())
    }
}

impl Store<MemoryBackend> {
    /// An empty in-memory store with these settings (the memory backend has no limits that a
    /// valid [`crate::Policy`] could exceed, so this cannot fail).
    pub fn new(settings: StoreSettings) -> Self {
        match Store::with_backend(MemoryBackend::default(), settings) {
            Ok(store) => store,
            Err(e) => unreachable!("the memory backend has no limits: {e}"),
        }
    }
}

impl MemoryBackend {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied write (every write is a
        // single map update after all checks), so the data is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The content bytes exactly as stored (after the codec), for at-rest checks and tooling.
    #[cfg(any(test, feature = "testing"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn raw_content(&self, conversation: &ConversationId, msg_id: MsgId) -> Option<Vec<u8>> {
        self.lock()
            .conversations
            .get(conversation)?
            .messages
            .get(&msg_id)
            .map(|e| e.message.content.clone())
    }

    /// Replaces the stored content bytes, bypassing the codec (to simulate tampering).
    /// Returns false when the message does not exist.
    #[cfg(any(test, feature = "testing"))]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn set_raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) -> bool {
        match self
            .lock()
            .conversations
            .get_mut(conversation)
            .and_then(|c| c.messages.get_mut(&msg_id))
        {
            Some(e) => {
                e.message.content = bytes;
                true
            }
            None => false,
        }
    }

    fn insert_locked(state: &mut State, message: &EncodedMessage, now: Timestamp) -> Inserted {
        let m = message.message();
        let conv = state
            .conversations
            .entry(m.conversation_id.clone())
            .or_default();
        if let Some(existing) = conv.messages.get(&m.msg_id) {
            return Inserted::Existing(existing.stored(Fields::All));
        }
        if let Some(att) = &m.attachment {
            *state.attachment_refs.entry(att.key.clone()).or_default() += 1;
        }
        conv.messages.insert(
            m.msg_id,
            Entry {
                message: m.clone(),
                lifecycle: Lifecycle::new(now),
            },
        );
        Inserted::New
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    const NAME: &'static str = "memory";

    async fn insert(&self, message: &EncodedMessage, created_at: Timestamp) -> Result<Inserted> {
        Ok(Self::insert_locked(&mut self.lock(), message, created_at))
    }

    async fn insert_batch(
        &self,
        messages: &[EncodedMessage],
        created_at: Timestamp,
    ) -> Result<Vec<Inserted>> {
        let mut state = self.lock();
        Ok(messages
            .iter()
            .map(|m| Self::insert_locked(&mut state, m, created_at))
            .collect())
    }

    async fn fetch(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<Option<StoredMessage>> {
        Ok(self
            .lock()
            .conversations
            .get(conversation)
            .and_then(|c| c.messages.get(&msg_id))
            .map(|e| e.stored(fields)))
    }

    async fn page(
        &self,
        conversation: &ConversationId,
        query: PageQuery,
    ) -> Result<Vec<StoredMessage>> {
        use std::ops::Bound::{Excluded, Unbounded};
        let state = self.lock();
        let Some(conv) = state.conversations.get(conversation) else {
            return Ok(Vec::new());
        };
        let n = query.fetch as usize;
        let range = match (query.direction, query.cursor) {
            (_, None) => (Unbounded, Unbounded),
            (Direction::NewestFirst, Some(c)) => (Unbounded, Excluded(c)),
            (Direction::OldestFirst, Some(c)) => (Excluded(c), Unbounded),
        };
        let entries = conv
            .messages
            .range(range)
            .map(|(_, e)| e.stored(Fields::All));
        Ok(match query.direction {
            Direction::NewestFirst => entries.rev().take(n).collect(),
            Direction::OldestFirst => entries.take(n).collect(),
        })
    }

    async fn transition(&self, decider: &Decider<'_>) -> Result<TransitionOutcome> {
        let req = decider.request();
        let mut state = self.lock();
        let conv = state
            .conversations
            .entry(req.conversation_id.clone())
            .or_default();
        let message = conv
            .messages
            .get(&req.msg_id)
            .map(|e| (&e.message.sender_id, &e.lifecycle));
        let decision = decider.decide(conv.requests.get(&req.request_id), message);
        match &decision {
            Decision::Answer(_) => {}
            Decision::Record { record, .. } => {
                conv.requests.insert(req.request_id.clone(), record.clone());
            }
            Decision::Apply { next, record, .. } => {
                let entry = conv
                    .messages
                    .get_mut(&req.msg_id)
                    .expect("decided from this entry under the same lock");
                entry.lifecycle = next.clone();
                conv.last_seq += 1;
                conv.events
                    .insert(conv.last_seq, decider.event(conv.last_seq, next));
                conv.requests.insert(req.request_id.clone(), record.clone());
            }
        }
        decision.into_answer()
    }

    async fn changes(
        &self,
        conversation: &ConversationId,
        after: FeedCursor,
        limit: u32,
    ) -> Result<FeedSlice> {
        let state = self.lock();
        Ok(state
            .conversations
            .get(conversation)
            .map(|c| FeedSlice {
                events: c
                    .events
                    .range(after.0.saturating_add(1)..)
                    .take(limit as usize)
                    .map(|(_, e)| e.clone())
                    .collect(),
                head: c.last_seq,
                purged_through: c.purged_through,
            })
            .unwrap_or_default())
    }

    async fn heads(&self, conversations: &[ConversationId]) -> Result<Vec<FeedHead>> {
        let state = self.lock();
        Ok(conversations
            .iter()
            .map(|c| {
                state
                    .conversations
                    .get(c)
                    .map(|c| FeedHead {
                        head: c.last_seq,
                        purged_through: c.purged_through,
                    })
                    .unwrap_or_default()
            })
            .collect())
    }

    async fn purge(&self, job: &PurgeJob<'_>) -> Result<PurgeReport> {
        let retention_cutoff = job.retention_cutoff();
        let mut guard = self.lock();
        let state = &mut *guard;
        let mut report = PurgeReport::default();
        let budget = u64::from(job.batch_size());
        // Request records past retention go everywhere, whatever the message budget: the
        // skew check already refuses requests that old, so their records protect nothing.
        for conv in state.conversations.values_mut() {
            conv.requests.retain(|_, r| r.at > retention_cutoff);
        }
        for conv in state.conversations.values_mut().filter(|c| !c.legal_hold) {
            let doomed: Vec<MsgId> = conv
                .messages
                .iter()
                .filter(|(_, e)| job.purgeable(&e.lifecycle))
                .map(|(id, _)| *id)
                .take((budget - report.messages) as usize)
                .collect();
            for id in doomed {
                if let Some(e) = conv.messages.remove(&id) {
                    report.messages += 1;
                    if let Some(att) = e.message.attachment {
                        let refs = state.attachment_refs.entry(att.key.clone()).or_default();
                        *refs = refs.saturating_sub(1);
                        if *refs == 0 {
                            state.attachment_refs.remove(&att.key);
                            report.released_attachments.push(att.key);
                        }
                    }
                }
                let before = conv.events.len();
                let purged_through = &mut conv.purged_through;
                conv.events.retain(|seq, ev| {
                    let keep = ev.msg_id != id;
                    if !keep {
                        *purged_through = (*purged_through).max(*seq);
                    }
                    keep
                });
                report.events += (before - conv.events.len()) as u64;
            }
            if report.messages == budget {
                break;
            }
        }
        report.more = report.messages == budget;
        Ok(report)
    }

    async fn scan_contents(&self, after: Option<&str>, limit: u32) -> Result<ContentScan> {
        // Scan order: conversation id, then msg_id. The token is "<msg_id>:<conversation>"
        // (the msg_id first, so a conversation id holding ':' still parses).
        let after = match after {
            None => None,
            Some(token) => {
                let (id, conv) = token
                    .split_once(':')
                    .ok_or_else(|| crate::Error::invalid_input("resume", "not a scan token"))?;
                let id = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|n| MsgId::new(n).ok())
                    .ok_or_else(|| crate::Error::invalid_input("resume", "not a scan token"))?;
                Some((ConversationId::new(conv)?, id))
            }
        };
        let state = self.lock();
        let mut convs: Vec<&ConversationId> = state.conversations.keys().collect();
        convs.sort();
        let mut contents = Vec::new();
        let mut more = false;
        'scan: for conv in convs {
            if let Some((c, _)) = &after
                && conv < c
            {
                continue;
            }
            let messages = &state.conversations[conv].messages;
            let range = match &after {
                Some((c, id)) if c == conv => {
                    messages.range((std::ops::Bound::Excluded(*id), std::ops::Bound::Unbounded))
                }
                _ => messages.range(..),
            };
            for (id, e) in range {
                if contents.len() == limit as usize {
                    more = true;
                    break 'scan;
                }
                contents.push(StoredContent {
                    conversation: conv.clone(),
                    msg_id: *id,
                    content: e.message.content.clone(),
                });
            }
        }
        let next = if more {
            contents
                .last()
                .map(|c| format!("{}:{}", c.msg_id, c.conversation))
        } else {
            None
        };
        Ok(ContentScan { contents, next })
    }

    async fn replace_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        expected: &[u8],
        replacement: &[u8],
    ) -> Result<bool> {
        let mut state = self.lock();
        match state
            .conversations
            .get_mut(conversation)
            .and_then(|c| c.messages.get_mut(&msg_id))
        {
            Some(e) if e.message.content == expected => {
                e.message.content = replacement.to_vec();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        self.lock()
            .conversations
            .entry(conversation.clone())
            .or_default()
            .legal_hold = held;
        Ok(())
    }
}
