//! The `MessageStore` trait every backend implements, and the conveniences built on it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::codec::ContentCodec;
use crate::error::Result;
use crate::ids::{ConversationId, MsgId, RequestId, UserId};
use crate::policy::Policy;
use crate::types::*;

/// The most conversations one [`MessageStore::changed_conversations`] call may ask about.
pub const MAX_SYNC_CONVERSATIONS: usize = 1_000;

/// What every backend is built with: the rules, the content codec and the clock.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    /// The lifecycle rules.
    pub policy: Policy,
    /// How content is encoded at rest.
    pub codec: ContentCodec,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
}

impl Default for StoreSettings {
    /// The default policy, compression without encryption, and the system clock.
    fn default() -> Self {
        StoreSettings {
            policy: Policy::default(),
            codec: ContentCodec::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// A message store: the whole lifecycle contract of `CONTRACT.md`, on one backend.
///
/// Implementations are safe to share across tasks (`Arc<dyn MessageStore>`). Every method
/// returns typed errors ([`crate::ErrorKind`]); none panics on bad input.
#[async_trait]
pub trait MessageStore: Send + Sync + Debug {
    /// The backend's name, as reported in errors and spans ("memory", "postgres", ...).
    fn backend(&self) -> &'static str;

    /// Stores a message, stamping `created_at` from the store's clock.
    ///
    /// The same message again is [`InsertOutcome::AlreadyExists`]; the same msg_id in the same
    /// conversation with any other field different is a `Conflict`, and nothing is overwritten.
    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome>;

    /// Stores up to the policy's batch size of messages in as few round trips as the backend allows.
    ///
    /// The whole batch is validated first; retries are idempotent. If one message conflicts with
    /// a stored one, the call returns `Conflict` and the others are stored (a retry without the
    /// conflicting message completes it).
    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome>;

    /// One message as `viewer` sees it; `NotFound` if it does not exist or was purged.
    async fn get(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<MessageView>;

    /// A page of a conversation as `viewer` sees it, recalled and deleted messages as tombstones.
    ///
    /// Costs a bounded amount of work for the page, whatever the conversation's length.
    async fn list(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page>;

    /// Applies a recall, restore or delete, atomically with its change event and request record.
    ///
    /// A request id seen before is answered with its first outcome (`replayed`), never applied again.
    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome>;

    /// The stored message with its content, whatever its status, until it is purged (compliance).
    async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord>;

    /// Whether `viewer` may still download the message's attachment.
    async fn attachment_access(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<AttachmentAccess>;

    /// Up to `limit` change events of a conversation after `cursor`, in feed order, as `viewer`'s
    /// device sees them (agreeing with what `get` shows that viewer).
    ///
    /// A reader that keeps pulling from the returned cursor sees every committed change exactly
    /// once. A cursor beyond the feed's head is `InvalidInput`; a cursor before events that the
    /// purge removed gets [`ChangePage::resync`].
    async fn changes_since(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage>;

    /// Of the conversations a device follows (at most [`MAX_SYNC_CONVERSATIONS`]), those whose
    /// feed moved past the device's cursor, with their heads: one call, whatever the count, at a
    /// cost proportional to the conversations asked, never to their histories.
    async fn changed_conversations(
        &self,
        cursors: &[SyncCursor],
    ) -> Result<Vec<ConversationChange>>;

    /// Physically removes up to `options.batch_size` expired messages with their change events,
    /// skipping conversations under legal hold; call again while `more` to resume.
    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport>;

    /// Puts a conversation under legal hold (never purged) or releases it.
    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()>;

    /// One batch of the re-key job: rewrites, under the codec's active key, every scanned message
    /// not sealed with it; never changes status, version or the feed, and is safe to run while
    /// the service writes. Call again with [`RekeyOptions::after`] until `next` is `None`.
    async fn rekey(&self, options: RekeyOptions) -> Result<RekeyReport>;

    /// Which keys the stored messages are sealed with (a full scan): once no message needs an
    /// old key, that key can be retired from the ring.
    async fn key_usage(&self) -> Result<KeyUsage>;
}

macro_rules! forward_message_store {
    ($($ptr:ty),*) => {$(
        #[async_trait]
        impl<T: MessageStore + ?Sized> MessageStore for $ptr {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }
            async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
                (**self).insert(message).await
            }
            async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
                (**self).insert_batch(messages).await
            }
            async fn get(&self, conversation: &ConversationId, msg_id: MsgId, viewer: &UserId) -> Result<MessageView> {
                (**self).get(conversation, msg_id, viewer).await
            }
            async fn list(&self, conversation: &ConversationId, viewer: &UserId, options: ListOptions) -> Result<Page> {
                (**self).list(conversation, viewer, options).await
            }
            async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
                (**self).transition(request).await
            }
            async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord> {
                (**self).audit(conversation, msg_id).await
            }
            async fn attachment_access(&self, conversation: &ConversationId, msg_id: MsgId, viewer: &UserId) -> Result<AttachmentAccess> {
                (**self).attachment_access(conversation, msg_id, viewer).await
            }
            async fn changes_since(&self, conversation: &ConversationId, viewer: &UserId, cursor: FeedCursor, limit: u32) -> Result<ChangePage> {
                (**self).changes_since(conversation, viewer, cursor, limit).await
            }
            async fn changed_conversations(&self, cursors: &[SyncCursor]) -> Result<Vec<ConversationChange>> {
                (**self).changed_conversations(cursors).await
            }
            async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
                (**self).purge(options).await
            }
            async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
                (**self).set_legal_hold(conversation, held).await
            }
            async fn rekey(&self, options: RekeyOptions) -> Result<RekeyReport> {
                (**self).rekey(options).await
            }
            async fn key_usage(&self) -> Result<KeyUsage> {
                (**self).key_usage().await
            }
        }
    )*};
}

forward_message_store!(Arc<T>, Box<T>);

/// Conveniences over [`MessageStore`]; implemented for every store. Do not implement it yourself.
#[async_trait]
pub trait MessageStoreExt: MessageStore {
    /// Recalls `msg_id` as `requester` (see [`MessageStore::transition`]).
    async fn recall(
        &self,
        requester: &UserId,
        authority: Authority,
        conversation: &ConversationId,
        msg_id: MsgId,
        client_ts: Timestamp,
        request_id: RequestId,
    ) -> Result<TransitionOutcome> {
        self.transition(TransitionRequest {
            action: Action::Recall,
            requester: requester.clone(),
            authority,
            conversation_id: conversation.clone(),
            msg_id,
            client_ts,
            request_id,
        })
        .await
    }

    /// Restores `msg_id` as its sender (see [`MessageStore::transition`]).
    async fn restore(
        &self,
        requester: &UserId,
        conversation: &ConversationId,
        msg_id: MsgId,
        client_ts: Timestamp,
        request_id: RequestId,
    ) -> Result<TransitionOutcome> {
        self.transition(TransitionRequest {
            action: Action::Restore,
            requester: requester.clone(),
            authority: Authority::Member,
            conversation_id: conversation.clone(),
            msg_id,
            client_ts,
            request_id,
        })
        .await
    }

    /// Deletes `msg_id` as `requester` (see [`MessageStore::transition`]).
    async fn delete(
        &self,
        requester: &UserId,
        authority: Authority,
        conversation: &ConversationId,
        msg_id: MsgId,
        client_ts: Timestamp,
        request_id: RequestId,
    ) -> Result<TransitionOutcome> {
        self.transition(TransitionRequest {
            action: Action::Delete,
            requester: requester.clone(),
            authority,
            conversation_id: conversation.clone(),
            msg_id,
            client_ts,
            request_id,
        })
        .await
    }

    /// Every change event after `cursor` as `viewer` sees it, pulled page by page until the feed
    /// is drained; `resync` is set if any page said so.
    async fn drain_changes(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        mut cursor: FeedCursor,
        page: u32,
    ) -> Result<ChangePage> {
        let mut events = Vec::new();
        let mut resync = None;
        loop {
            let got = self
                .changes_since(conversation, viewer, cursor, page)
                .await?;
            let done = got.events.is_empty();
            events.extend(got.events);
            resync = resync.or(got.resync);
            cursor = got.next;
            if done {
                return Ok(ChangePage {
                    events,
                    next: cursor,
                    resync,
                });
            }
        }
    }

    /// Runs re-key batches until the scan is complete, and sums their reports.
    async fn rekey_all(&self, options: RekeyOptions) -> Result<RekeyReport> {
        let mut total = RekeyReport::default();
        let mut options = options;
        loop {
            let r = self.rekey(options.clone()).await?;
            total.scanned += r.scanned;
            total.rewritten += r.rewritten;
            total.skipped += r.skipped;
            total.undecodable += r.undecodable;
            if r.next.is_none() {
                return Ok(total);
            }
            options = options.after(&r);
        }
    }

    /// Runs purge batches until nothing more is eligible, and sums their reports.
    async fn purge_all(&self, options: PurgeOptions) -> Result<PurgeReport> {
        let mut total = PurgeReport::default();
        loop {
            let r = self.purge(options).await?;
            total.messages += r.messages;
            total.events += r.events;
            total.released_attachments.extend(r.released_attachments);
            if !r.more {
                return Ok(total);
            }
        }
    }
}

impl<T: MessageStore + ?Sized> MessageStoreExt for T {}
