//! `MemoryStore`: the complete reference implementation of the contract, and the embedded default.
//!
//! One mutex guards all state, and no lock is held across an await, so every operation is atomic:
//! a transition, its change event and its request record are written together or not at all.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Operation, Result};
use crate::ids::{ConversationId, MsgId, RequestId, UserId};
use crate::lifecycle::{self, Plan, RequestRecord};
use crate::store::{MessageStore, StoreSettings};
use crate::telemetry::traced;
use crate::types::*;
use crate::view;

const BACKEND: &str = "memory";

#[derive(Debug)]
struct Entry {
    /// The message with its content in stored (encoded) form.
    message: NewMessage,
    lifecycle: Lifecycle,
}

#[derive(Debug, Default)]
struct Conversation {
    messages: BTreeMap<MsgId, Entry>,
    events: BTreeMap<u64, ChangeEvent>,
    last_seq: u64,
    requests: HashMap<RequestId, RequestRecord>,
    legal_hold: bool,
}

/// An in-memory [`MessageStore`]: complete, concurrency-safe, and lost when dropped.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    settings: StoreSettings,
    state: Arc<Mutex<HashMap<ConversationId, Conversation>>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(StoreSettings::default())
    }
}

impl MemoryStore {
    /// An empty store with these settings.
    pub fn new(settings: StoreSettings) -> Self {
        MemoryStore {
            settings,
            state: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Another handle on the same data with other settings (a new codec after key rotation, say).
    pub fn reconfigured(&self, settings: StoreSettings) -> Self {
        MemoryStore {
            settings,
            state: Arc::clone(&self.state),
        }
    }

    /// The settings the store was built with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The content bytes exactly as stored (after the codec), for at-rest checks and tooling.
    pub fn raw_content(&self, conversation: &ConversationId, msg_id: MsgId) -> Option<Vec<u8>> {
        self.lock()
            .get(conversation)?
            .messages
            .get(&msg_id)
            .map(|e| e.message.content.clone())
    }

    /// Replaces the stored content bytes, bypassing the codec (to simulate tampering or a re-key).
    /// Returns false when the message does not exist.
    pub fn set_raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) -> bool {
        match self
            .lock()
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

    fn lock(&self) -> MutexGuard<'_, HashMap<ConversationId, Conversation>> {
        // A panic while holding the lock cannot leave a half-applied write (every write is a
        // single map update after all checks), so the data is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Timestamp {
        self.settings.clock.now()
    }

    fn decode(&self, stored: &NewMessage) -> Result<NewMessage> {
        let content =
            self.settings
                .codec
                .decode(&stored.conversation_id, stored.msg_id, &stored.content)?;
        Ok(NewMessage {
            content,
            ..stored.clone()
        })
    }

    fn decoded(&self, entry: &Entry, with_content: bool) -> Result<StoredMessage> {
        let message = if with_content {
            self.decode(&entry.message)?
        } else {
            NewMessage {
                content: Vec::new(),
                ..entry.message.clone()
            }
        };
        Ok(StoredMessage {
            message,
            lifecycle: entry.lifecycle.clone(),
        })
    }

    fn view(&self, entry: &Entry, viewer: &UserId, now: Timestamp) -> Result<MessageView> {
        let stored = StoredMessage {
            message: entry.message.clone(),
            lifecycle: entry.lifecycle.clone(),
        };
        let s = &self.settings;
        view::render_encoded(stored, viewer, &s.policy, &s.codec, now)
    }

    /// Inserts one validated message into the locked state.
    fn insert_locked(
        &self,
        state: &mut HashMap<ConversationId, Conversation>,
        message: &NewMessage,
        encoded: Vec<u8>,
        now: Timestamp,
    ) -> Result<InsertOutcome> {
        let conv = state.entry(message.conversation_id.clone()).or_default();
        if let Some(existing) = conv.messages.get(&message.msg_id) {
            return if self.decode(&existing.message)?.same_as(message) {
                Ok(InsertOutcome::AlreadyExists)
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "msg_id {} is already stored with different fields",
                        message.msg_id
                    ),
                ))
            };
        }
        conv.messages.insert(
            message.msg_id,
            Entry {
                message: NewMessage {
                    content: encoded,
                    ..message.clone()
                },
                lifecycle: Lifecycle::new(now),
            },
        );
        Ok(InsertOutcome::Inserted)
    }

    fn not_found(msg_id: MsgId) -> Error {
        Error::new(ErrorKind::NotFound, format!("message {msg_id} not found"))
    }
}

#[async_trait]
impl MessageStore for MemoryStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        let (conv, id) = (message.conversation_id.clone(), message.msg_id);
        traced(Operation::Insert, BACKEND, Some(&conv), Some(id), async {
            lifecycle::validate_message(&message, &self.settings.policy)?;
            let encoded = self.settings.codec.encode(
                &message.conversation_id,
                message.msg_id,
                &message.content,
            )?;
            let now = self.now();
            self.insert_locked(&mut self.lock(), &message, encoded, now)
        })
        .await
    }

    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        let conv = messages.first().map(|m| m.conversation_id.clone());
        traced(Operation::Insert, BACKEND, conv.as_ref(), None, async {
            lifecycle::validate_batch(&messages, &self.settings.policy)?;
            let encoded = messages
                .iter()
                .map(|m| {
                    self.settings
                        .codec
                        .encode(&m.conversation_id, m.msg_id, &m.content)
                })
                .collect::<Result<Vec<_>>>()?;
            let now = self.now();
            let mut state = self.lock();
            let results: Vec<_> = messages
                .iter()
                .zip(encoded)
                .map(|(m, enc)| self.insert_locked(&mut state, m, enc, now))
                .collect();
            BatchOutcome::tally(results)
        })
        .await
    }

    async fn get(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<MessageView> {
        traced(
            Operation::Get,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let now = self.now();
                let state = self.lock();
                let entry = state
                    .get(conversation)
                    .and_then(|c| c.messages.get(&msg_id))
                    .ok_or_else(|| Self::not_found(msg_id))?;
                self.view(entry, viewer, now)
            },
        )
        .await
    }

    async fn list(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page> {
        traced(Operation::List, BACKEND, Some(conversation), None, async {
            lifecycle::validate_conversation(conversation, &self.settings.policy)?;
            lifecycle::validate_page_size(options.limit, &self.settings.policy)?;
            let now = self.now();
            let state = self.lock();
            let Some(conv) = state.get(conversation) else {
                return Ok(Page {
                    items: Vec::new(),
                    next: None,
                });
            };
            let limit = options.limit as usize;
            let entries: Vec<&Entry> = match (options.direction, options.cursor) {
                (Direction::NewestFirst, None) => {
                    conv.messages.values().rev().take(limit + 1).collect()
                }
                (Direction::NewestFirst, Some(c)) => conv
                    .messages
                    .range(..c)
                    .rev()
                    .map(|(_, e)| e)
                    .take(limit + 1)
                    .collect(),
                (Direction::OldestFirst, None) => conv.messages.values().take(limit + 1).collect(),
                (Direction::OldestFirst, Some(c)) => conv
                    .messages
                    .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                    .map(|(_, e)| e)
                    .take(limit + 1)
                    .collect(),
            };
            let more = entries.len() > limit;
            let items = entries
                .into_iter()
                .take(limit)
                .map(|e| self.view(e, viewer, now))
                .collect::<Result<Vec<_>>>()?;
            Ok(Page::new(items, more))
        })
        .await
    }

    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
        let op = request.action.operation();
        traced(
            op,
            BACKEND,
            Some(&request.conversation_id),
            Some(request.msg_id),
            async {
                let policy = &self.settings.policy;
                let now = self.now();
                lifecycle::validate_request(&request, policy, now)?;
                let mut state = self.lock();
                let conv = state
                    .get_mut(&request.conversation_id)
                    .ok_or_else(|| Self::not_found(request.msg_id))?;
                if let Some(record) = conv.requests.get(&request.request_id) {
                    return record.replay(&request);
                }
                let entry = conv
                    .messages
                    .get_mut(&request.msg_id)
                    .ok_or_else(|| Self::not_found(request.msg_id))?;
                let plan = lifecycle::plan(
                    &request,
                    &entry.message.sender_id,
                    &entry.lifecycle,
                    policy,
                    now,
                )?;
                let outcome = lifecycle::outcome(request.msg_id, &entry.lifecycle, &plan);
                if let Plan::Apply(next) = plan {
                    entry.lifecycle = next;
                    conv.last_seq += 1;
                    conv.events.insert(
                        conv.last_seq,
                        ChangeEvent {
                            seq: conv.last_seq,
                            conversation_id: request.conversation_id.clone(),
                            msg_id: request.msg_id,
                            status: outcome.status,
                            version: outcome.version,
                            at: now,
                            by: request.requester.clone(),
                        },
                    );
                }
                // Recorded for no-op outcomes too: a replay after a later restore must not recall.
                conv.requests.insert(
                    request.request_id.clone(),
                    RequestRecord::new(&request, &outcome, now),
                );
                Ok(outcome)
            },
        )
        .await
    }

    async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord> {
        traced(
            Operation::Audit,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let state = self.lock();
                let entry = state
                    .get(conversation)
                    .and_then(|c| c.messages.get(&msg_id))
                    .ok_or_else(|| Self::not_found(msg_id))?;
                Ok(AuditRecord {
                    message: self.decoded(entry, true)?,
                })
            },
        )
        .await
    }

    async fn attachment_access(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<AttachmentAccess> {
        traced(
            Operation::AttachmentAccess,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let now = self.now();
                let state = self.lock();
                let entry = state
                    .get(conversation)
                    .and_then(|c| c.messages.get(&msg_id))
                    .ok_or_else(|| Self::not_found(msg_id))?;
                // The decision needs the lifecycle and the attachment, never the content.
                let stored = self.decoded(entry, false)?;
                Ok(view::attachment_access(
                    &stored,
                    viewer,
                    &self.settings.policy,
                    now,
                ))
            },
        )
        .await
    }

    async fn changes_since(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        traced(
            Operation::Changes,
            BACKEND,
            Some(conversation),
            None,
            async {
                lifecycle::validate_conversation(conversation, &self.settings.policy)?;
                lifecycle::validate_page_size(limit, &self.settings.policy)?;
                let state = self.lock();
                let events: Vec<ChangeEvent> = state
                    .get(conversation)
                    .map(|c| {
                        c.events
                            .range(cursor.0.saturating_add(1)..)
                            .take(limit as usize)
                            .map(|(_, e)| e.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                let next = events.last().map(|e| FeedCursor(e.seq)).unwrap_or(cursor);
                Ok(ChangePage { events, next })
            },
        )
        .await
    }

    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        traced(Operation::Purge, BACKEND, None, None, async {
            lifecycle::validate_purge(&options)?;
            let policy = &self.settings.policy;
            let now = self.now();
            let (retention_cutoff, _) = lifecycle::purge_cutoffs(policy, now);
            let mut state = self.lock();
            let mut report = PurgeReport::default();
            let budget = u64::from(options.batch_size);
            // Request records past retention go everywhere, whatever the message budget: the
            // skew check already refuses requests that old, so their records protect nothing.
            for conv in state.values_mut() {
                conv.requests.retain(|_, r| r.at > retention_cutoff);
            }
            for conv in state.values_mut().filter(|c| !c.legal_hold) {
                let doomed: Vec<MsgId> = conv
                    .messages
                    .iter()
                    .filter(|(_, e)| lifecycle::purgeable(&e.lifecycle, policy, now))
                    .map(|(id, _)| *id)
                    .take((budget - report.messages) as usize)
                    .collect();
                for id in doomed {
                    if let Some(e) = conv.messages.remove(&id) {
                        report.messages += 1;
                        report
                            .released_attachments
                            .extend(e.message.attachment.map(|a| a.key));
                    }
                    let before = conv.events.len();
                    conv.events.retain(|_, ev| ev.msg_id != id);
                    report.events += (before - conv.events.len()) as u64;
                }
                if report.messages == budget {
                    break;
                }
            }
            report.more = report.messages == budget;
            Ok(report)
        })
        .await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        traced(
            Operation::LegalHold,
            BACKEND,
            Some(conversation),
            None,
            async {
                lifecycle::validate_conversation(conversation, &self.settings.policy)?;
                self.lock()
                    .entry(conversation.clone())
                    .or_default()
                    .legal_hold = held;
                Ok(())
            },
        )
        .await
    }
}
