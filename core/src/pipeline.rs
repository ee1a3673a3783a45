//! `Store<B>`: the pipeline every backend goes through, in the manner of object_store's wrapper
//! stores and OpenDAL's layers.
//!
//! For every operation, in this order: the tracing span; validation of every argument (ids,
//! sizes, page sizes, cursors, batch limits; `InvalidInput` naming the field, before any I/O); the
//! content codec; the backend's one database operation; the core's verdict on what it returned
//! (insert retry or conflict, the transition decision, rendering for the viewer, the feed cursor);
//! and tagging any error with the operation and the backend. Backends implement
//! [`Backend`]; callers only ever get a `Store<B>`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{
    Backend, Connect, EncodedMessage, Fields, PageQuery, PurgeJob, resolve_insert,
};
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::ids::{ConversationId, MsgId, UserId};
use crate::lifecycle;
use crate::store::{MAX_SYNC_CONVERSATIONS, MessageStore, StoreSettings};
use crate::telemetry::traced;
use crate::transition::Decider;
use crate::types::*;
use crate::view;

/// A [`MessageStore`] over backend `B`: every rule of the contract applied once, here.
#[derive(Debug)]
pub struct Store<B: Backend> {
    backend: Arc<B>,
    settings: StoreSettings,
}

impl<B: Backend> Clone for Store<B> {
    fn clone(&self) -> Self {
        Store {
            backend: Arc::clone(&self.backend),
            settings: self.settings.clone(),
        }
    }
}

impl<B: Backend> Store<B> {
    /// The checked store over `backend`; refuses settings the backend cannot honour (for
    /// instance a content limit above what the database can hold) with `InvalidInput`.
    pub fn with_backend(backend: B, settings: StoreSettings) -> Result<Self> {
        let settings = Self::bounded(settings);
        Self::check(&backend, &settings)?;
        Ok(Store {
            backend: Arc::new(backend),
            settings,
        })
    }

    /// The codec never decodes more than the policy lets a message hold: a small forged envelope
    /// that decompresses to far more is a decode error, not an allocation.
    fn bounded(mut settings: StoreSettings) -> StoreSettings {
        settings.codec = settings
            .codec
            .with_decode_limit(settings.policy.max_content_bytes());
        settings
    }

    fn check(backend: &B, settings: &StoreSettings) -> Result<()> {
        let limits = backend.limits();
        let policy = &settings.policy;
        let stored = settings.codec.max_encoded_len(policy.max_content_bytes());
        if stored > limits.max_stored_content_bytes {
            return Err(Error::invalid_input(
                "max_content_bytes",
                format!(
                    "{} bytes of content encode to up to {stored} bytes, more than the {} \
                     backend stores per message ({} bytes)",
                    policy.max_content_bytes(),
                    B::NAME,
                    limits.max_stored_content_bytes
                ),
            )
            .with_operation(Operation::Connect)
            .with_backend(B::NAME));
        }
        if policy.max_content_bytes() > settings.codec.decode_limit() {
            return Err(Error::invalid_input(
                "max_content_bytes",
                format!(
                    "{} bytes is more than the codec decodes ({} bytes): such a message would be \
                     acknowledged and never readable",
                    policy.max_content_bytes(),
                    settings.codec.decode_limit()
                ),
            )
            .with_operation(Operation::Connect)
            .with_backend(B::NAME));
        }
        if policy.max_batch_size() > limits.max_batch_size {
            return Err(Error::invalid_input(
                "max_batch_size",
                format!(
                    "the {} backend takes at most {} messages per batch",
                    B::NAME,
                    limits.max_batch_size
                ),
            )
            .with_operation(Operation::Connect)
            .with_backend(B::NAME));
        }
        Ok(())
    }

    /// Another store over the same backend and data with other settings (a rotated key ring,
    /// another policy), checked like [`Store::with_backend`].
    pub fn reconfigured(&self, settings: StoreSettings) -> Result<Self> {
        let settings = Self::bounded(settings);
        Self::check(&self.backend, &settings)?;
        Ok(Store {
            backend: Arc::clone(&self.backend),
            settings,
        })
    }

    /// The backend, for its own administrative methods (pools, migrations, raw access in tests).
    pub fn inner(&self) -> &B {
        &self.backend
    }

    /// The settings the store was built with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn now(&self) -> Timestamp {
        self.settings.clock.now()
    }

    fn render(
        &self,
        stored: StoredMessage,
        viewer: &UserId,
        now: Timestamp,
    ) -> Result<MessageView> {
        let s = &self.settings;
        view::render_encoded(stored, viewer, &s.policy, &s.codec, now)
    }

    async fn fetch_required(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<StoredMessage> {
        lifecycle::validate_conversation(conversation, &self.settings.policy)?;
        self.backend
            .fetch(conversation, msg_id, fields)
            .await?
            .ok_or_else(|| Error::not_found(msg_id))
    }
}

impl<B: Connect> Store<B> {
    /// Connects backend `B` with `config` and builds the checked store over it.
    pub async fn connect(config: B::Config, settings: StoreSettings) -> Result<Self> {
        let backend = B::connect(config)
            .await
            .map_err(|e| e.with_operation(Operation::Connect).with_backend(B::NAME))?;
        Store::with_backend(backend, settings)
    }
}

/// The feed position of `cursor`, if it was issued for `conversation`'s feed: a cursor of
/// another conversation is refused rather than skipping this feed's events up to its position.
fn cursor_position(conversation: &ConversationId, cursor: FeedCursor) -> Result<FeedCursor> {
    if !cursor.belongs_to(conversation) {
        return Err(Error::invalid_input(
            "cursor",
            "was issued for another conversation's feed",
        ));
    }
    Ok(FeedCursor(cursor.position()))
}

/// A position beyond the feed's head was never issued by this feed (forged): refused rather
/// than silently skipping every event up to it.
fn check_position(position: FeedCursor, head: u64) -> Result<()> {
    if position.0 > head {
        return Err(Error::invalid_input(
            "cursor",
            format!(
                "is at {} but this conversation's feed ends at {head}",
                position.0
            ),
        ));
    }
    Ok(())
}

/// The cursor of `conversation` at a position its backend reported: one above the largest a
/// cursor holds is a backend fault, not the caller's.
fn issued(conversation: &ConversationId, position: u64) -> Result<FeedCursor> {
    FeedCursor::at(conversation, position).map_err(|_| {
        Error::new(
            ErrorKind::Backend,
            format!(
                "the feed position {position} is above the largest a cursor holds ({})",
                FeedCursor::MAX_POSITION
            ),
        )
    })
}

#[async_trait]
impl<B: Backend> MessageStore for Store<B> {
    fn backend(&self) -> &'static str {
        B::NAME
    }

    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        let (conv, id) = (message.conversation_id.clone(), message.msg_id);
        traced(Operation::Insert, B::NAME, Some(&conv), Some(id), async {
            let s = &self.settings;
            let now = self.now();
            let encoded = EncodedMessage::encode(&message, &s.policy, &s.codec)?;
            lifecycle::check_insert_window(&message, &s.policy, now)?;
            let found = self.backend.insert(&encoded, now).await?;
            resolve_insert(&message, found, &s.codec)
        })
        .await
    }

    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        let conv = messages.first().map(|m| m.conversation_id.clone());
        traced(Operation::Insert, B::NAME, conv.as_ref(), None, async {
            let s = &self.settings;
            lifecycle::validate_batch(&messages, &s.policy)?;
            if messages.is_empty() {
                return Ok(BatchOutcome::default());
            }
            let now = self.now();
            let encoded = messages
                .iter()
                .map(|m| {
                    lifecycle::check_insert_window(m, &s.policy, now)?;
                    EncodedMessage::encode(m, &s.policy, &s.codec)
                })
                .collect::<Result<Vec<_>>>()?;
            let found = self.backend.insert_batch(&encoded, now).await?;
            if found.len() != messages.len() {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "batch insert answered for {} of {} messages",
                        found.len(),
                        messages.len()
                    ),
                ));
            }
            BatchOutcome::tally(
                messages
                    .iter()
                    .zip(found)
                    .map(|(m, f)| resolve_insert(m, f, &s.codec)),
            )
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
            B::NAME,
            Some(conversation),
            Some(msg_id),
            async {
                lifecycle::validate_viewer(viewer, &self.settings.policy)?;
                let stored = self
                    .fetch_required(conversation, msg_id, Fields::All)
                    .await?;
                self.render(stored, viewer, self.now())
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
        traced(Operation::List, B::NAME, Some(conversation), None, async {
            let policy = &self.settings.policy;
            lifecycle::validate_conversation(conversation, policy)?;
            lifecycle::validate_viewer(viewer, policy)?;
            lifecycle::validate_page_size(options.limit, policy)?;
            let query = PageQuery {
                direction: options.direction,
                cursor: options.cursor,
                fetch: options.limit + 1,
            };
            let mut rows = self.backend.page(conversation, query).await?;
            let limit = options.limit as usize;
            let more = rows.len() > limit;
            rows.truncate(limit);
            let now = self.now();
            let s = &self.settings;
            let items = rows
                .into_iter()
                .map(|stored| {
                    view::render_encoded_or_mark(stored, viewer, &s.policy, &s.codec, now)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Page::new(items, more))
        })
        .await
    }

    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
        let op = request.action.operation();
        let (conv, id) = (request.conversation_id.clone(), request.msg_id);
        traced(op, B::NAME, Some(&conv), Some(id), async {
            let policy = &self.settings.policy;
            lifecycle::validate_request(&request, policy)?;
            let decider = Decider::new(&request, policy, self.now());
            self.backend.transition(&decider).await
        })
        .await
    }

    async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord> {
        traced(
            Operation::Audit,
            B::NAME,
            Some(conversation),
            Some(msg_id),
            async {
                let mut stored = self
                    .fetch_required(conversation, msg_id, Fields::All)
                    .await?;
                let m = &stored.message;
                stored.message.content =
                    self.settings
                        .codec
                        .decode(&m.conversation_id, m.msg_id, &m.content)?;
                Ok(AuditRecord { message: stored })
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
            B::NAME,
            Some(conversation),
            Some(msg_id),
            async {
                let policy = &self.settings.policy;
                lifecycle::validate_viewer(viewer, policy)?;
                let stored = self
                    .fetch_required(conversation, msg_id, Fields::NoContent)
                    .await?;
                Ok(view::attachment_access(&stored, viewer, policy, self.now()))
            },
        )
        .await
    }

    async fn changes_since(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        traced(
            Operation::Changes,
            B::NAME,
            Some(conversation),
            None,
            async {
                let policy = &self.settings.policy;
                lifecycle::validate_conversation(conversation, policy)?;
                lifecycle::validate_viewer(viewer, policy)?;
                lifecycle::validate_page_size(limit, policy)?;
                let position = cursor_position(conversation, cursor)?;
                let slice = self.backend.changes(conversation, position, limit).await?;
                check_position(position, slice.head)?;
                // Below the mark, the device re-reads what it holds: the events at or below the
                // mark add nothing to that, and the page goes on from the mark at least, so the
                // next pull is not told to resync again (and a backend may read from the mark).
                let mark = slice.purged_through;
                let resync = position.0 < mark;
                let events: Vec<_> = slice
                    .events
                    .into_iter()
                    .filter(|e| !resync || e.seq > mark)
                    .collect();
                let next = match events.last() {
                    Some(e) => issued(conversation, e.seq)?,
                    None if resync => issued(conversation, mark)?,
                    None => cursor,
                };
                let events = events
                    .into_iter()
                    .map(|e| view::event_for(e, viewer, policy))
                    .collect();
                Ok(ChangePage {
                    events,
                    next,
                    resync: if resync {
                        Some(Resync {
                            purged_through: issued(conversation, mark)?,
                        })
                    } else {
                        None
                    },
                })
            },
        )
        .await
    }

    async fn changed_conversations(
        &self,
        cursors: &[SyncCursor],
    ) -> Result<Vec<ConversationChange>> {
        traced(Operation::Changes, B::NAME, None, None, async {
            let policy = &self.settings.policy;
            if cursors.len() > MAX_SYNC_CONVERSATIONS {
                return Err(Error::invalid_input(
                    "cursors",
                    format!(
                        "has {} conversations, more than {MAX_SYNC_CONVERSATIONS}",
                        cursors.len()
                    ),
                ));
            }
            let mut positions = Vec::with_capacity(cursors.len());
            for c in cursors {
                lifecycle::validate_conversation(&c.conversation, policy)?;
                positions.push(cursor_position(&c.conversation, c.cursor)?);
            }
            let conversations: Vec<ConversationId> =
                cursors.iter().map(|c| c.conversation.clone()).collect();
            let heads = self.backend.heads(&conversations).await?;
            if heads.len() != cursors.len() {
                return Err(Error::new(
                    ErrorKind::Backend,
                    format!(
                        "heads answered for {} of {} conversations",
                        heads.len(),
                        cursors.len()
                    ),
                ));
            }
            let mut changed = Vec::new();
            for ((c, position), h) in cursors.iter().zip(positions).zip(heads) {
                check_position(position, h.head)?;
                let resync = position.0 < h.purged_through;
                if h.head > position.0 || resync {
                    changed.push(ConversationChange {
                        conversation: c.conversation.clone(),
                        head: issued(&c.conversation, h.head)?,
                        resync,
                    });
                }
            }
            Ok(changed)
        })
        .await
    }

    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        traced(Operation::Purge, B::NAME, None, None, async {
            lifecycle::validate_purge(&options)?;
            let job = PurgeJob::new(&self.settings.policy, self.now(), options.batch_size);
            self.backend.purge(&job).await
        })
        .await
    }

    async fn rekey(&self, options: RekeyOptions) -> Result<RekeyReport> {
        traced(Operation::Rekey, B::NAME, None, None, async {
            if options.batch_size == 0 || options.batch_size > PurgeOptions::MAX_BATCH {
                return Err(Error::invalid_input(
                    "batch_size",
                    format!("must be between 1 and {}", PurgeOptions::MAX_BATCH),
                ));
            }
            let codec = &self.settings.codec;
            let scan = self
                .backend
                .scan_contents(options.resume.as_deref(), options.batch_size)
                .await?;
            let mut report = RekeyReport {
                next: scan.next,
                ..RekeyReport::default()
            };
            for c in scan.contents {
                report.scanned += 1;
                // An envelope that cannot be parsed or opened is left as it is: the job never
                // turns forged bytes into a sealed message.
                match codec.needs_rekey(&c.content) {
                    Err(_) => {
                        report.undecodable += 1;
                        continue;
                    }
                    Ok(false) => continue,
                    Ok(true) => {}
                }
                let sealed = if options.seal_plaintext {
                    codec.rekey_accepting_plaintext(&c.conversation, c.msg_id, &c.content)
                } else {
                    codec.rekey(&c.conversation, c.msg_id, &c.content)
                };
                let Ok(sealed) = sealed else {
                    report.undecodable += 1;
                    continue;
                };
                if self
                    .backend
                    .replace_content(&c.conversation, c.msg_id, &c.content, &sealed)
                    .await?
                {
                    report.rewritten += 1;
                } else {
                    report.skipped += 1;
                }
            }
            Ok(report)
        })
        .await
    }

    async fn key_usage(&self) -> Result<KeyUsage> {
        traced(Operation::Rekey, B::NAME, None, None, async {
            let mut usage = KeyUsage::default();
            let mut after: Option<String> = None;
            loop {
                let scan = self
                    .backend
                    .scan_contents(after.as_deref(), PurgeOptions::MAX_BATCH)
                    .await?;
                for c in &scan.contents {
                    match crate::codec::ContentCodec::key_id_of(&c.content) {
                        Ok(Some(k)) => *usage.sealed.entry(k.0).or_default() += 1,
                        Ok(None) => usage.unsealed += 1,
                        Err(_) => usage.unreadable += 1,
                    }
                }
                match scan.next {
                    Some(n) => after = Some(n),
                    None => return Ok(usage),
                }
            }
        })
        .await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        traced(
            Operation::LegalHold,
            B::NAME,
            Some(conversation),
            None,
            async {
                lifecycle::validate_conversation(conversation, &self.settings.policy)?;
                self.backend.set_legal_hold(conversation, held).await
            },
        )
        .await
    }
}
