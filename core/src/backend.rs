//! The trait a backend implements: only what touches its database.
//!
//! Everything else (validation of every argument, the content codec, the replay and staleness
//! order, the lifecycle rules, rendering for a viewer, the tracing span and error tagging) is done
//! once by the [`Store`](crate::Store) pipeline, which is what the public constructors hand out.
//! A backend receives only values the pipeline built: an [`EncodedMessage`] (validated, content
//! already through the codec), a [`Decider`] and a [`PurgeJob`] cannot be made outside core, so no
//! write reaches a database without the core's checks.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::codec::ContentCodec;
use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConversationId, MsgId};
use crate::lifecycle;
use crate::policy::Policy;
use crate::transition::Decider;
use crate::types::{
    ChangeEvent, Direction, FeedCursor, InsertOutcome, Lifecycle, NewMessage, PurgeReport,
    StoredMessage, Timestamp,
};

/// A message ready to be written: validated against the policy, its content encoded by the codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedMessage {
    message: NewMessage,
}

impl EncodedMessage {
    /// Validates `message` and encodes its content (the pipeline's job, so only core builds one).
    pub(crate) fn encode(
        message: &NewMessage,
        policy: &Policy,
        codec: &ContentCodec,
    ) -> Result<Self> {
        lifecycle::validate_message(message, policy)?;
        let content = codec.encode(&message.conversation_id, message.msg_id, &message.content)?;
        Ok(EncodedMessage {
            message: NewMessage {
                content,
                ..message.clone()
            },
        })
    }

    /// The message, its `content` as stored (encoded).
    pub fn message(&self) -> &NewMessage {
        &self.message
    }

    /// The encoded content bytes, exactly as they go to the database.
    pub fn content(&self) -> &[u8] {
        &self.message.content
    }
}

/// What a backend found when it tried to insert one message.
// `Existing` is large, `New` is the common case; both are moved once per insert and never
// stored, so boxing would only add an allocation to the retry path.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The message was written.
    New,
    /// A message with this msg_id already exists in the conversation; here it is, content still
    /// encoded. The pipeline decides whether it is a retry or a conflict.
    Existing(StoredMessage),
}

/// Which part of a stored message a read needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fields {
    /// Everything, the encoded content included.
    All,
    /// Everything but the content (lifecycle and attachment decisions never need it); the
    /// backend may return an empty `content`.
    NoContent,
}

/// One page query, as the pipeline asks it of a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageQuery {
    /// Newest or oldest first.
    pub direction: Direction,
    /// Exclusive starting msg_id, in `direction`.
    pub cursor: Option<MsgId>,
    /// How many messages to return at most: the caller's limit plus one, so that the pipeline
    /// can tell whether another page follows.
    pub fetch: u32,
}

/// A slice of a conversation's change feed and where the feed ends.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FeedSlice {
    /// Events with seq greater than the cursor, in seq order, at most the requested count.
    pub events: Vec<ChangeEvent>,
    /// The highest seq ever handed out in this conversation (0 when none), read with the events
    /// or after them: a cursor above it was never issued by this feed.
    pub head: u64,
    /// The highest seq whose event the purge removed (0 when none): the conversation's
    /// low-water mark, kept by the purge. A cursor below it missed removed events.
    pub purged_through: u64,
}

/// Where one conversation's feed stands: its head and its purge low-water mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FeedHead {
    /// As [`FeedSlice::head`].
    pub head: u64,
    /// As [`FeedSlice::purged_through`].
    pub purged_through: u64,
}

/// One message's stored content, as the re-key job scans it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredContent {
    /// The conversation.
    pub conversation: ConversationId,
    /// The message.
    pub msg_id: MsgId,
    /// The content bytes exactly as stored.
    pub content: Vec<u8>,
}

/// A page of a scan over every stored message's content.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContentScan {
    /// Up to the requested number of contents, in the backend's scan order.
    pub contents: Vec<StoredContent>,
    /// Where the next page starts (opaque to the pipeline), or `None` when the scan is done.
    pub next: Option<String>,
}

/// One purge batch, as the pipeline hands it to a backend.
#[derive(Debug)]
pub struct PurgeJob<'a> {
    policy: &'a Policy,
    now: Timestamp,
    batch_size: u32,
}

impl<'a> PurgeJob<'a> {
    pub(crate) fn new(policy: &'a Policy, now: Timestamp, batch_size: u32) -> Self {
        PurgeJob {
            policy,
            now,
            batch_size,
        }
    }

    /// The store's time for this batch.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The policy (retention, history limit).
    pub fn policy(&self) -> &Policy {
        self.policy
    }

    /// At most this many messages are removed by the batch.
    pub fn batch_size(&self) -> u32 {
        self.batch_size
    }

    /// Recalled/deleted messages whose `recalled_at`/`deleted_at` is at or before this go; so do
    /// request records whose `at` is at or before it.
    pub fn retention_cutoff(&self) -> Timestamp {
        lifecycle::purge_cutoffs(self.policy, self.now).0
    }

    /// With a history limit, every message created at or before this goes too.
    pub fn history_cutoff(&self) -> Option<Timestamp> {
        lifecycle::purge_cutoffs(self.policy, self.now).1
    }

    /// True when this batch removes a message in state `state` (the purge-due rule, once).
    pub fn purgeable(&self, state: &Lifecycle) -> bool {
        lifecycle::purgeable(state, self.policy, self.now)
    }
}

/// What a backend can hold; the pipeline refuses, when the store is built, a policy beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest encoded content (bytes) one message may carry.
    pub max_stored_content_bytes: usize,
    /// The most messages one batch insert may carry.
    pub max_batch_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stored_content_bytes: usize::MAX,
            max_batch_size: usize::MAX,
        }
    }
}

impl Limits {
    /// Limits of a backend that stores up to `max_stored_content_bytes` of content per message.
    pub fn new(max_stored_content_bytes: usize, max_batch_size: usize) -> Self {
        Limits {
            max_stored_content_bytes,
            max_batch_size,
        }
    }
}

/// A database behind the pipeline. Implement this for a new backend; callers use
/// [`Store<B>`](crate::Store), which implements [`MessageStore`](crate::MessageStore) on top.
///
/// Every method is one database operation as the contract needs it: atomic where it says so,
/// mapping driver errors to the contract's kinds in the backend's `error` module, and returning
/// `Unavailable` (temporary) only for faults a retry may fix.
#[async_trait]
pub trait Backend: Send + Sync + Debug + 'static {
    /// The backend's name in errors and spans ("memory", "postgres", ...).
    const NAME: &'static str;

    /// What this backend can hold.
    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Writes `message` unless its msg_id exists in its conversation, stamping `created_at`;
    /// never overwrites. Returns the stored message when one existed.
    async fn insert(&self, message: &EncodedMessage, created_at: Timestamp) -> Result<Inserted>;

    /// [`Backend::insert`] for each message, in as few round trips as the database allows; the
    /// results in the same order. The pipeline has checked the batch (size, no id twice).
    async fn insert_batch(
        &self,
        messages: &[EncodedMessage],
        created_at: Timestamp,
    ) -> Result<Vec<Inserted>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.insert(m, created_at).await?);
        }
        Ok(out)
    }

    /// One stored message (content still encoded), or `None`.
    async fn fetch(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        fields: Fields,
    ) -> Result<Option<StoredMessage>>;

    /// Up to `query.fetch` stored messages of a conversation in `query.direction` after
    /// `query.cursor` (exclusive), at a cost bounded by the page, never by the history.
    async fn page(
        &self,
        conversation: &ConversationId,
        query: PageQuery,
    ) -> Result<Vec<StoredMessage>>;

    /// Persists what `decider` decides for its request (see [`crate::transition`]), re-reading
    /// and deciding again after a lost race, and returns the decision's answer.
    async fn transition(&self, decider: &Decider<'_>) -> Result<crate::TransitionOutcome>;

    /// Up to `limit` events with seq after `after`, and the feed's head. `after` is a bare
    /// position (core has checked the cursor's conversation tag and taken it off). When `after`
    /// is below the low-water mark, core keeps only the events after the mark, so a backend may
    /// read from the mark instead.
    async fn changes(
        &self,
        conversation: &ConversationId,
        after: FeedCursor,
        limit: u32,
    ) -> Result<FeedSlice>;

    /// The feed heads of `conversations`, in the same order (a conversation never written has
    /// head 0), in one round trip where the database allows; cost proportional to the number of
    /// conversations, never to their histories. The default reads them one by one.
    async fn heads(&self, conversations: &[ConversationId]) -> Result<Vec<FeedHead>> {
        let mut out = Vec::with_capacity(conversations.len());
        for c in conversations {
            let slice = self.changes(c, FeedCursor::START, 1).await?;
            out.push(FeedHead {
                head: slice.head,
                purged_through: slice.purged_through,
            });
        }
        Ok(out)
    }

    /// Removes up to `job.batch_size()` purgeable messages of conversations not under legal hold,
    /// with their change events, and request records past retention; raises each affected
    /// conversation's `purged_through` to the highest seq it removed. `released_attachments` are
    /// the keys of removed messages that no stored message references any more.
    async fn purge(&self, job: &PurgeJob<'_>) -> Result<PurgeReport>;

    /// Up to `limit` stored contents after `after` (a token this method returned, or `None` for
    /// the start) in a stable order of the backend's choosing that every message is visited
    /// in exactly once, whatever is inserted or purged meanwhile (new messages may be missed:
    /// they are sealed under the active key anyway).
    async fn scan_contents(&self, after: Option<&str>, limit: u32) -> Result<ContentScan>;

    /// Replaces a message's stored content with `replacement` if it is still exactly
    /// `expected` (a compare-and-set on the bytes); never touches status, version or the feed.
    /// False when the message is gone or its content changed.
    async fn replace_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        expected: &[u8],
        replacement: &[u8],
    ) -> Result<bool>;

    /// Places or lifts a legal hold on a conversation, ordered against running purge batches.
    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()>;
}

/// A backend built from its configuration, so that `Store::<B>::connect(config, settings)` works
/// for every backend.
#[async_trait]
pub trait Connect: Backend + Sized {
    /// The backend's connection settings.
    type Config: Send + 'static;

    /// Connects (and migrates, when the configuration says so).
    async fn connect(config: Self::Config) -> Result<Self>;
}

/// The pipeline's verdict on an insert: a retry when the stored message has the same fields,
/// a conflict when any differs (content compared after decoding, since encryption is randomized).
pub fn resolve_insert(
    new: &NewMessage,
    found: Inserted,
    codec: &ContentCodec,
) -> Result<InsertOutcome> {
    match found {
        Inserted::New => Ok(InsertOutcome::Inserted),
        Inserted::Existing(stored) => {
            let m = stored.message;
            let content = codec.decode(&m.conversation_id, m.msg_id, &m.content)?;
            let existing = NewMessage { content, ..m };
            if new.same_as(&existing) {
                Ok(InsertOutcome::AlreadyExists)
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "msg_id {} is already stored with different fields",
                        new.msg_id
                    ),
                ))
            }
        }
    }
}
