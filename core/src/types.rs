//! The domain types of the contract: messages, statuses, requests, views, feed events, purge reports.

use std::fmt;

use crate::error::{Error, Result};
use crate::ids::{ConversationId, MsgId, RequestId, UserId};

/// A point in time, in milliseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The time `ms` milliseconds after the Unix epoch.
    pub const fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn saturating_add(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(duration_ms(d)))
    }

    /// This time minus `d`, saturating instead of overflowing.
    pub fn saturating_sub(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(duration_ms(d)))
    }
}

fn duration_ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// The kind of a message; stored as an integer code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MessageType {
    /// Plain or rich text.
    Text,
    /// An image (usually with an attachment).
    Image,
    /// A file (usually with an attachment).
    File,
    /// A voice message.
    Audio,
    /// A video.
    Video,
    /// A system notice (member joined, topic changed).
    System,
    /// An application-defined type.
    Custom(u16),
}

const CUSTOM_BASE: i32 = 1_000;

impl MessageType {
    /// The code kept on disk: 1..=6 for the built-in types, 1000 + n for `Custom(n)`.
    pub fn code(self) -> i32 {
        match self {
            MessageType::Text => 1,
            MessageType::Image => 2,
            MessageType::File => 3,
            MessageType::Audio => 4,
            MessageType::Video => 5,
            MessageType::System => 6,
            MessageType::Custom(n) => CUSTOM_BASE + n as i32,
        }
    }

    /// The type for a stored code; unknown codes are a decode error, never a guess.
    pub fn from_code(code: i32) -> Result<Self> {
        Ok(match code {
            1 => MessageType::Text,
            2 => MessageType::Image,
            3 => MessageType::File,
            4 => MessageType::Audio,
            5 => MessageType::Video,
            6 => MessageType::System,
            c if (CUSTOM_BASE..=CUSTOM_BASE + u16::MAX as i32).contains(&c) => {
                MessageType::Custom((c - CUSTOM_BASE) as u16)
            }
            other => {
                return Err(Error::new(
                    crate::ErrorKind::Decode,
                    format!("unknown message type code {other}"),
                ));
            }
        })
    }
}

/// The lifecycle state of a message, with the article's on-disk values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Status {
    /// Visible to everyone.
    Normal,
    /// Recalled: a tombstone for recipients, restorable by the sender within the restore window.
    Recalled,
    /// Deleted: terminal; never shows content.
    Deleted,
}

impl Status {
    /// The value kept on disk: Normal = 0, Recalled = 1, Deleted = 2.
    pub fn code(self) -> i16 {
        match self {
            Status::Normal => 0,
            Status::Recalled => 1,
            Status::Deleted => 2,
        }
    }

    /// The status for a stored value; anything else is a decode error.
    pub fn from_code(code: i16) -> Result<Self> {
        match code {
            0 => Ok(Status::Normal),
            1 => Ok(Status::Recalled),
            2 => Ok(Status::Deleted),
            other => Err(Error::new(
                crate::ErrorKind::Decode,
                format!("unknown status code {other}"),
            )),
        }
    }
}

/// A reference to a file in blob storage; the file itself is never stored here.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Attachment {
    /// The blob-storage key the service uses to fetch or delete the file.
    pub key: String,
    /// The file's size in bytes.
    pub size: u64,
    /// The file's MIME type.
    pub mime: String,
}

/// A message as sent: what `insert` stores. The store stamps `created_at` from its clock.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NewMessage {
    /// The time-ordered id (from [`crate::MsgIdGenerator`]).
    pub msg_id: MsgId,
    /// The conversation it belongs to.
    pub conversation_id: ConversationId,
    /// Who sent it.
    pub sender_id: UserId,
    /// What kind of message it is.
    pub msg_type: MessageType,
    /// The content, stored through the store's codec.
    pub content: Vec<u8>,
    /// An optional file reference.
    pub attachment: Option<Attachment>,
}

impl NewMessage {
    /// A text message with no attachment.
    pub fn text(
        msg_id: MsgId,
        conversation_id: ConversationId,
        sender_id: UserId,
        content: impl Into<Vec<u8>>,
    ) -> Self {
        NewMessage {
            msg_id,
            conversation_id,
            sender_id,
            msg_type: MessageType::Text,
            content: content.into(),
            attachment: None,
        }
    }

    /// True when `stored` holds the same message (a retry), comparing every field the sender set.
    pub fn same_as(&self, stored: &NewMessage) -> bool {
        self == stored
    }
}

/// The lifecycle fields of a stored message: everything the rules read and transitions write.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Lifecycle {
    /// The current status.
    pub status: Status,
    /// Starts at 1; +1 on every status change.
    pub version: u32,
    /// When the store accepted the message.
    pub created_at: Timestamp,
    /// When it was recalled; cleared by a restore.
    pub recalled_at: Option<Timestamp>,
    /// Who recalled it last (kept after a restore, for the recall notice).
    pub recalled_by: Option<UserId>,
    /// When it was last restored; cleared by a new recall.
    pub restored_at: Option<Timestamp>,
    /// When it was deleted.
    pub deleted_at: Option<Timestamp>,
    /// Who deleted it.
    pub deleted_by: Option<UserId>,
}

impl Lifecycle {
    /// The state of a message just accepted at `created_at`.
    pub fn new(created_at: Timestamp) -> Self {
        Lifecycle {
            status: Status::Normal,
            version: 1,
            created_at,
            recalled_at: None,
            recalled_by: None,
            restored_at: None,
            deleted_at: None,
            deleted_by: None,
        }
    }
}

/// A message as stored, with its content decoded: what views, audits and retries are built from.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StoredMessage {
    /// The fields the sender set.
    pub message: NewMessage,
    /// The fields the lifecycle owns.
    pub lifecycle: Lifecycle,
}

/// A recall or deletion notice shown in place of content.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Tombstone {
    /// Recalled or Deleted, as the viewer sees it.
    pub status: Status,
    /// Who recalled or deleted the message.
    pub by: UserId,
    /// When (for a restore shown only to its sender: when it was restored).
    pub at: Timestamp,
}

/// Content the viewer may see.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Body {
    /// The decoded content.
    pub content: Vec<u8>,
    /// The file reference, if any.
    pub attachment: Option<Attachment>,
}

/// A message as one viewer sees it.
///
/// `tombstone` is set for recalled and deleted messages; `body` is set when the viewer may see the
/// content: always for normal messages, for a recalled one only to its sender while it can still
/// be restored (re-edit), never for a deleted one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MessageView {
    /// The message id.
    pub msg_id: MsgId,
    /// Its conversation.
    pub conversation_id: ConversationId,
    /// Its sender.
    pub sender_id: UserId,
    /// Its type.
    pub msg_type: MessageType,
    /// When the store accepted it.
    pub created_at: Timestamp,
    /// The status as this viewer sees it (a restore shown only to the sender reads Recalled to others).
    pub status: Status,
    /// The stored version (so a client can order updates).
    pub version: u32,
    /// The recall or deletion notice, when there is one for this viewer.
    pub tombstone: Option<Tombstone>,
    /// The content, when this viewer may see it.
    pub body: Option<Body>,
    /// True when this viewer may see the content but the stored bytes could not be decoded
    /// (tampered, truncated, foreign, unknown key): a page still serves the message without its
    /// body, while `get` of it is the `Decode` error. One bad row never hides a conversation.
    pub undecodable: bool,
}

/// A status change a request asks for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Action {
    /// Normal → Recalled.
    Recall,
    /// Recalled → Normal.
    Restore,
    /// Normal | Recalled → Deleted.
    Delete,
}

impl Action {
    /// A stable name, for storage of request records and for spans.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Recall => "recall",
            Action::Restore => "restore",
            Action::Delete => "delete",
        }
    }

    /// The action for a stored name; anything else is a decode error.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "recall" => Ok(Action::Recall),
            "restore" => Ok(Action::Restore),
            "delete" => Ok(Action::Delete),
            other => Err(Error::new(
                crate::ErrorKind::Decode,
                format!("unknown action {other:?}"),
            )),
        }
    }

    /// The operation this action is reported under in errors and spans.
    pub fn operation(self) -> crate::Operation {
        match self {
            Action::Recall => crate::Operation::Recall,
            Action::Restore => crate::Operation::Restore,
            Action::Delete => crate::Operation::Delete,
        }
    }
}

/// What the caller vouches for about the requester; the store never decides who moderates.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Authority {
    /// An ordinary member: may act on their own messages only.
    #[default]
    Member,
    /// A moderator of the conversation: may recall (within the moderator window) and delete any message.
    Moderator,
}

/// A request to change a message's status.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TransitionRequest {
    /// Recall, restore or delete.
    pub action: Action,
    /// Who asks.
    pub requester: UserId,
    /// What the caller vouches for about the requester.
    pub authority: Authority,
    /// The conversation of the message.
    pub conversation_id: ConversationId,
    /// The message.
    pub msg_id: MsgId,
    /// The client's clock when it sent the request; refused when too far from the store's.
    pub client_ts: Timestamp,
    /// The client's id for this request; a repeat is answered with the first outcome.
    pub request_id: RequestId,
}

/// The result of a transition request: the message's state after it, the same for every caller.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TransitionOutcome {
    /// The message.
    pub msg_id: MsgId,
    /// Its status after the request.
    pub status: Status,
    /// Its version after the request.
    pub version: u32,
    /// True when this request changed the message (and appended an event).
    pub changed: bool,
    /// True when the request id was seen before and this is the first outcome, replayed.
    pub replayed: bool,
}

/// The order of a page.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Direction {
    /// Latest first: the chat window opening.
    #[default]
    NewestFirst,
    /// Oldest first: catching up from a known point.
    OldestFirst,
}

/// Options of `list`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ListOptions {
    /// The page order.
    pub direction: Direction,
    /// Start strictly after this id in the page order (the `next` cursor of the previous page).
    pub cursor: Option<MsgId>,
    /// How many messages at most; 1..=the policy's maximum page size, else invalid input.
    pub limit: u32,
}

impl ListOptions {
    /// The first page, newest first.
    pub fn newest(limit: u32) -> Self {
        ListOptions {
            direction: Direction::NewestFirst,
            cursor: None,
            limit,
        }
    }

    /// The first page, oldest first.
    pub fn oldest(limit: u32) -> Self {
        ListOptions {
            direction: Direction::OldestFirst,
            cursor: None,
            limit,
        }
    }

    /// The same options continuing after `cursor`.
    pub fn after(mut self, cursor: MsgId) -> Self {
        self.cursor = Some(cursor);
        self
    }
}

/// One page of a conversation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Page {
    /// The messages, in the requested order.
    pub items: Vec<MessageView>,
    /// Where the next page starts, or `None` when this page reached the end.
    pub next: Option<MsgId>,
}

impl Page {
    /// A page of `items` (at most the requested limit); when `more` (a row beyond the limit
    /// was seen), `next` is the last item's id, else the walk is over.
    pub fn new(items: Vec<MessageView>, more: bool) -> Self {
        let next = if more {
            items.last().map(|v| v.msg_id)
        } else {
            None
        };
        Page { items, next }
    }
}

/// A position in one conversation's change feed, bound to that conversation.
///
/// The low 40 bits are the position (the `seq` of the last event before the cursor), the high
/// 24 bits a tag of the conversation it was issued for (CRC-32C of its id), so a cursor used
/// in another conversation is `InvalidInput` instead of silently skipping that feed's events
/// (two conversations share a tag with odds of 1 in 2^24). `FeedCursor::START` is before the
/// first event of every conversation. Build one from an event with [`FeedCursor::at`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct FeedCursor(pub u64);

impl FeedCursor {
    /// Before every event, in every conversation.
    pub const START: FeedCursor = FeedCursor(0);

    /// The largest feed position a cursor holds: 2^40 - 1 (about 10^12 events per conversation).
    pub const MAX_POSITION: u64 = (1 << 40) - 1;

    /// The cursor of `conversation` just after the event at `position` (its `seq`): pulling
    /// from it returns the events after that one. Position 0 is [`FeedCursor::START`]; a
    /// position above [`FeedCursor::MAX_POSITION`] is `InvalidInput` naming `cursor`.
    pub fn at(conversation: &ConversationId, position: u64) -> Result<FeedCursor> {
        if position > Self::MAX_POSITION {
            return Err(Error::invalid_input(
                "cursor",
                format!(
                    "position {position} is above the largest feed position {}",
                    Self::MAX_POSITION
                ),
            ));
        }
        if position == 0 {
            return Ok(Self::START);
        }
        Ok(FeedCursor(Self::tag(conversation) << 40 | position))
    }

    /// The feed position this cursor stands at (0 for [`FeedCursor::START`]).
    pub fn position(self) -> u64 {
        self.0 & Self::MAX_POSITION
    }

    /// Whether this cursor was issued for `conversation`'s feed ([`FeedCursor::START`] belongs
    /// to every conversation).
    pub fn belongs_to(self, conversation: &ConversationId) -> bool {
        self == Self::START || self.0 >> 40 == Self::tag(conversation)
    }

    /// The conversation's 24-bit tag, never 0 (so no issued cursor but START has tag 0).
    fn tag(conversation: &ConversationId) -> u64 {
        let tag = u64::from(crc32c::crc32c(conversation.as_str().as_bytes())) & 0xFF_FFFF;
        tag.max(1)
    }
}

/// One committed status change.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangeEvent {
    /// The event's position in its conversation's feed: strictly increasing in commit order.
    pub seq: u64,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The message that changed.
    pub msg_id: MsgId,
    /// Its new status.
    pub status: Status,
    /// Its new version.
    pub version: u32,
    /// When the change was committed (store clock).
    pub at: Timestamp,
    /// Who made it.
    pub by: UserId,
}

/// A page of the change feed, as one viewer's device sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ChangePage {
    /// Events after the cursor, in feed order, each as this viewer sees it.
    pub events: Vec<ChangeEvent>,
    /// The cursor to pull from next (unchanged when there was nothing new).
    pub next: FeedCursor,
    /// Set when the purge removed events after the cursor that this device never pulled: the
    /// device must re-read the messages of this conversation that it holds (see [`Resync`]).
    pub resync: Option<Resync>,
}

/// The purge removed events a device had not pulled yet: what it needs to recover.
///
/// The device re-reads every message of the conversation it holds (`get`; `NotFound` means the
/// message was purged: drop it), then applies the page's events and goes on from its `next`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Resync {
    /// The highest feed position whose event the purge removed.
    pub purged_through: FeedCursor,
}

/// A conversation a device follows, and how far it has pulled its feed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SyncCursor {
    /// The conversation.
    pub conversation: ConversationId,
    /// The device's cursor in it.
    pub cursor: FeedCursor,
}

/// A conversation whose feed moved past a device's cursor.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConversationChange {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its feed's head: pulling from the device's cursor up to here brings it up to date.
    pub head: FeedCursor,
    /// True when the purge removed events after the device's cursor (see [`Resync`]).
    pub resync: bool,
}

/// Options of `purge`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PurgeOptions {
    /// At most this many messages are removed by one call (1..=[`PurgeOptions::MAX_BATCH`]).
    pub batch_size: u32,
}

impl PurgeOptions {
    /// The largest purge batch a store accepts.
    pub const MAX_BATCH: u32 = 10_000;
}

impl Default for PurgeOptions {
    fn default() -> Self {
        PurgeOptions { batch_size: 500 }
    }
}

/// What one purge batch removed.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PurgeReport {
    /// Messages physically removed.
    pub messages: u64,
    /// Change events removed with them.
    pub events: u64,
    /// Attachment keys of removed messages: the service may now delete these files.
    pub released_attachments: Vec<String>,
    /// True when the batch was full, so more may be eligible: call again to resume.
    pub more: bool,
}

/// What `insert` did.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum InsertOutcome {
    /// The message was stored.
    Inserted,
    /// The same message was already stored: a successful retry, nothing written.
    AlreadyExists,
}

/// What `insert_batch` did, counted over the batch.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct BatchOutcome {
    /// Messages newly stored.
    pub inserted: u64,
    /// Messages that were already stored with the same fields.
    pub already_existed: u64,
}

impl BatchOutcome {
    /// Counts per-message insert results: any error other than a conflict is returned at once;
    /// the first conflict is returned after every result was counted (the rest were stored).
    pub fn tally(results: impl IntoIterator<Item = Result<InsertOutcome>>) -> Result<Self> {
        let mut outcome = BatchOutcome::default();
        let mut conflict = None;
        for result in results {
            match result {
                Ok(InsertOutcome::Inserted) => outcome.inserted += 1,
                Ok(InsertOutcome::AlreadyExists) => outcome.already_existed += 1,
                Err(e) if e.kind() == crate::ErrorKind::Conflict => {
                    conflict = conflict.or(Some(e));
                }
                Err(e) => return Err(e),
            }
        }
        match conflict {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// Whether a viewer may download a message's attachment.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum AttachmentAccess {
    /// The viewer may download the file under this key.
    Allowed {
        /// The blob-storage key.
        key: String,
    },
    /// The file still exists but this viewer may no longer download it.
    Denied {
        /// The status that hides it from this viewer.
        status: Status,
    },
    /// The message has no attachment.
    NoAttachment,
}

/// A message and its stored content for compliance, regardless of status, until it is purged.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditRecord {
    /// The stored message with content decoded.
    pub message: StoredMessage,
}

/// Options of one re-key batch.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RekeyOptions {
    /// How many stored messages the batch looks at (1..=[`PurgeOptions::MAX_BATCH`]).
    pub batch_size: u32,
    /// Where to resume: the `next` of the previous batch's report, or `None` to start.
    pub resume: Option<String>,
    /// Also seal content stored without encryption (migrating a plaintext store to encryption).
    /// Only for content known to be genuine: unsealed bytes are otherwise refused as forged.
    pub seal_plaintext: bool,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            batch_size: 500,
            resume: None,
            seal_plaintext: false,
        }
    }
}

impl RekeyOptions {
    /// A batch of `batch_size` messages from the start.
    pub fn batch(batch_size: u32) -> Self {
        RekeyOptions {
            batch_size,
            ..RekeyOptions::default()
        }
    }

    /// The same options resuming where `report` stopped.
    pub fn after(mut self, report: &RekeyReport) -> Self {
        self.resume = report.next.clone();
        self
    }

    /// The same options, also sealing plaintext content.
    pub fn sealing_plaintext(mut self) -> Self {
        self.seal_plaintext = true;
        self
    }
}

/// What one re-key batch did.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RekeyReport {
    /// Messages looked at.
    pub scanned: u64,
    /// Messages rewritten under the active key.
    pub rewritten: u64,
    /// Messages that changed or vanished under the job (purged meanwhile): left as they are.
    pub skipped: u64,
    /// Messages whose content could not be opened (forged, unknown key): left as they are.
    pub undecodable: u64,
    /// Where the next batch resumes, or `None` when the scan is complete.
    pub next: Option<String>,
}

/// Which keys the stored messages are sealed with, from a full scan.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct KeyUsage {
    /// Messages per key id that sealed them.
    pub sealed: std::collections::BTreeMap<u32, u64>,
    /// Messages stored without encryption.
    pub unsealed: u64,
    /// Messages whose envelope cannot even be parsed.
    pub unreadable: u64,
}

impl KeyUsage {
    /// Messages that still need a key other than `active` (or are unsealed): what stands
    /// between an old key and its retirement.
    pub fn needing_other_than(&self, active: crate::codec::KeyId) -> u64 {
        self.sealed
            .iter()
            .filter(|(k, _)| **k != active.0)
            .map(|(_, n)| n)
            .sum::<u64>()
            + self.unsealed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &str) -> ConversationId {
        ConversationId::new(s).unwrap()
    }

    #[test]
    fn a_cursor_keeps_its_position_and_names_its_conversation() {
        let (a, b) = (conv("room-a"), conv("room-b"));
        let at = FeedCursor::at(&a, 42).unwrap();
        assert_eq!(at.position(), 42);
        assert!(at.belongs_to(&a));
        assert!(!at.belongs_to(&b));
        // Raw positions (no tag) belong to no conversation; START to every one.
        assert!(!FeedCursor(42).belongs_to(&a));
        assert!(FeedCursor::START.belongs_to(&b));
        assert_eq!(FeedCursor::at(&b, 0).unwrap(), FeedCursor::START);
        let top = FeedCursor::at(&a, FeedCursor::MAX_POSITION).unwrap();
        assert_eq!(top.position(), FeedCursor::MAX_POSITION);
        assert!(top.belongs_to(&a));
        let e = FeedCursor::at(&a, FeedCursor::MAX_POSITION + 1).unwrap_err();
        assert_eq!(
            (e.kind(), e.field()),
            (crate::ErrorKind::InvalidInput, Some("cursor"))
        );
        // Cursors of one conversation keep their order.
        assert!(FeedCursor::at(&a, 7).unwrap() < FeedCursor::at(&a, 8).unwrap());
    }
}
