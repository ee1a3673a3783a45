//! Rows to the core's types: every column the store reads is decoded here, and a stored value
//! the schema forbids is `Error::corrupt`, never a guess.

use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    Action, Attachment, ChangeEvent, ConversationId, Error, ErrorKind, Lifecycle, MessageType,
    MsgId, NewMessage, Result, Status, StoredMessage, Timestamp, TransitionRequest, UserId,
};
use sqlx::postgres::PgRow;
use sqlx::{Column, Postgres, Row};

use crate::error::map;

/// The columns of a message read, in the names [`message`] decodes (`content` included).
macro_rules! message_columns {
    () => {
        "msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, \
         status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by"
    };
}

/// [`message_columns!`] with an empty `content`, so that the (possibly TOASTed) bytes are never
/// fetched when the caller does not need them.
macro_rules! message_columns_no_content {
    () => {
        "msg_id, sender_id, msg_type, ''::bytea AS content, attachment_key, attachment_size, \
         attachment_mime, status, version, created_at, recalled_at, recalled_by, restored_at, \
         deleted_at, deleted_by"
    };
}

pub(crate) use {message_columns, message_columns_no_content};

/// One column, any driver error mapped.
pub(crate) fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(map)
}

/// One column by its position (see [`Cols`]), any driver error mapped.
pub(crate) fn at<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(i).map_err(map)
}

/// The name of column `i`, for an error message (the cold path only).
fn name_of(row: &PgRow, i: usize) -> &str {
    row.columns().get(i).map_or("column", |c| c.name())
}

/// The position of column `name` in `row`'s result set.
pub(crate) fn ordinal(row: &PgRow, name: &str) -> Result<usize> {
    row.try_column(name).map(Column::ordinal).map_err(map)
}

fn user(row: &PgRow, i: usize) -> Result<UserId> {
    UserId::new(at::<String>(row, i)?)
        .map_err(|_| Error::corrupt(format!("stored {} is not a valid user id", name_of(row, i))))
}

fn opt_user(row: &PgRow, i: usize) -> Result<Option<UserId>> {
    at::<Option<String>>(row, i)?
        .map(|s| {
            UserId::new(s).map_err(|_| {
                Error::corrupt(format!("stored {} is not a valid user id", name_of(row, i)))
            })
        })
        .transpose()
}

fn msg_id(row: &PgRow, i: usize) -> Result<MsgId> {
    MsgId::from_i64(at(row, i)?)
        .map_err(|_| Error::corrupt(format!("stored {} is not a valid msg_id", name_of(row, i))))
}

fn version(row: &PgRow, i: usize) -> Result<u32> {
    u32::try_from(at::<i64>(row, i)?)
        .map_err(|_| Error::corrupt(format!("stored {} is out of range", name_of(row, i))))
}

fn opt_time(row: &PgRow, i: usize) -> Result<Option<Timestamp>> {
    Ok(at::<Option<i64>>(row, i)?.map(Timestamp::from_millis))
}

/// Where the columns a decoder reads sit in a result set, looked up by name once for all its
/// rows (they share one description) and then read by position.
///
/// Why: sqlx finds a column by name with a hash lookup and a string compare on every read; a
/// page of 51 rows of 15 columns paid 765 of them, the largest single cost of decoding it
/// (`benches/README.md`, the PostgreSQL read profile).
pub(crate) trait Cols: Sized {
    /// The positions in `row`'s result set; an error if a column is missing.
    fn of(row: &PgRow) -> Result<Self>;
}

/// Decodes every row of one result set with the positions found in its first row.
pub(crate) fn each<C: Cols, T>(
    found: &[PgRow],
    mut decode: impl FnMut(&PgRow, &C) -> Result<T>,
) -> Result<Vec<T>> {
    let Some(first) = found.first() else {
        return Ok(Vec::new());
    };
    let cols = C::of(first)?;
    found.iter().map(|row| decode(row, &cols)).collect()
}

/// Declares a [`Cols`] struct whose fields are named after the columns they locate (so a field
/// and its column cannot drift apart), and, after `;`, fields that are other `Cols` of the same
/// row.
macro_rules! cols {
    ($(#[$doc:meta])* $name:ident { $($col:ident),+ $(; $($nested:ident: $ty:ty),+)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub(crate) struct $name {
            $($col: usize,)+
            $($($nested: $ty,)+)?
        }

        impl Cols for $name {
            fn of(row: &PgRow) -> Result<Self> {
                Ok($name {
                    $($col: ordinal(row, stringify!($col))?,)+
                    $($($nested: <$ty>::of(row)?,)+)?
                })
            }
        }
    };
}

cols!(
    /// The positions of a message's lifecycle columns.
    LifecycleCols {
        status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by
    }
);

cols!(
    /// The positions of the columns of [`message_columns!`].
    MessageCols {
        msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime;
        lifecycle: LifecycleCols
    }
);

cols!(
    /// The positions of a change event's columns.
    EventCols { seq, msg_id, status, version, at, by_user }
);

/// A stored conversation id (rows that carry one, such as the batch read-back).
pub(crate) fn conversation(row: &PgRow, name: &str) -> Result<ConversationId> {
    ConversationId::new(column::<String>(row, name)?)
        .map_err(|_| Error::corrupt(format!("stored {name} is not a valid conversation id")))
}

/// The sender of a message row.
pub(crate) fn sender(row: &PgRow) -> Result<UserId> {
    user(row, ordinal(row, "sender_id")?)
}

/// The lifecycle columns of a message row.
pub(crate) fn lifecycle(row: &PgRow) -> Result<Lifecycle> {
    lifecycle_at(row, &LifecycleCols::of(row)?)
}

/// The lifecycle columns of a message row, at positions `c`.
pub(crate) fn lifecycle_at(row: &PgRow, c: &LifecycleCols) -> Result<Lifecycle> {
    Ok(Lifecycle {
        status: Status::from_code(at(row, c.status)?)?,
        version: version(row, c.version)?,
        created_at: Timestamp::from_millis(at(row, c.created_at)?),
        recalled_at: opt_time(row, c.recalled_at)?,
        recalled_by: opt_user(row, c.recalled_by)?,
        restored_at: opt_time(row, c.restored_at)?,
        deleted_at: opt_time(row, c.deleted_at)?,
        deleted_by: opt_user(row, c.deleted_by)?,
    })
}

/// A message row of conversation `conversation`, its content as stored (encoded).
pub(crate) fn message(conversation: &ConversationId, row: &PgRow) -> Result<StoredMessage> {
    message_at(conversation, row, &MessageCols::of(row)?)
}

/// A message row of conversation `conversation`, at positions `c`.
pub(crate) fn message_at(
    conversation: &ConversationId,
    row: &PgRow,
    c: &MessageCols,
) -> Result<StoredMessage> {
    let attachment = match at::<Option<String>>(row, c.attachment_key)? {
        None => None,
        Some(key) => {
            let size = at::<Option<i64>>(row, c.attachment_size)?
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| Error::corrupt("stored attachment has no valid size"))?;
            let mime = at::<Option<String>>(row, c.attachment_mime)?
                .ok_or_else(|| Error::corrupt("stored attachment has no mime type"))?;
            Some(Attachment { key, size, mime })
        }
    };
    Ok(StoredMessage {
        message: NewMessage {
            msg_id: msg_id(row, c.msg_id)?,
            conversation_id: conversation.clone(),
            sender_id: user(row, c.sender_id)?,
            msg_type: MessageType::from_code(at(row, c.msg_type)?)?,
            content: at(row, c.content)?,
            attachment,
        },
        lifecycle: lifecycle_at(row, &c.lifecycle)?,
    })
}

/// The request record of `req`'s id, from columns named `{prefix}action`, `{prefix}msg_id`, ...
pub(crate) fn record(req: &TransitionRequest, row: &PgRow, prefix: &str) -> Result<RequestRecord> {
    let name = |c: &str| format!("{prefix}{c}");
    let refusal = column::<Option<String>>(row, &name("refusal"))?
        .map(|s| {
            ErrorKind::parse(&s)
                .ok_or_else(|| Error::corrupt(format!("stored refusal {s:?} is no error kind")))
        })
        .transpose()?;
    Ok(RequestRecord {
        conversation_id: req.conversation_id.clone(),
        request_id: req.request_id.clone(),
        action: Action::parse(&column::<String>(row, &name("action"))?)?,
        msg_id: msg_id(row, ordinal(row, &name("msg_id"))?)?,
        requester: user(row, ordinal(row, &name("requester"))?)?,
        status: Status::from_code(column(row, &name("status"))?)?,
        version: version(row, ordinal(row, &name("version"))?)?,
        changed: column(row, &name("changed"))?,
        at: Timestamp::from_millis(column(row, &name("at"))?),
        refusal,
    })
}

/// A change event row of conversation `conversation`, at positions `c`.
pub(crate) fn event_at(
    conversation: &ConversationId,
    row: &PgRow,
    c: &EventCols,
) -> Result<ChangeEvent> {
    Ok(ChangeEvent {
        seq: u64::try_from(at::<i64>(row, c.seq)?)
            .map_err(|_| Error::corrupt("stored seq is negative"))?,
        conversation_id: conversation.clone(),
        msg_id: msg_id(row, c.msg_id)?,
        status: Status::from_code(at(row, c.status)?)?,
        version: version(row, c.version)?,
        at: Timestamp::from_millis(at(row, c.at)?),
        by: user(row, c.by_user)?,
    })
}

/// A non-negative bigint count or position.
pub(crate) fn count(row: &PgRow, name: &str) -> Result<u64> {
    u64::try_from(column::<i64>(row, name)?)
        .map_err(|_| Error::corrupt(format!("{name} is negative")))
}

/// [`count`] by position.
pub(crate) fn count_at(row: &PgRow, i: usize) -> Result<u64> {
    u64::try_from(at::<i64>(row, i)?)
        .map_err(|_| Error::corrupt(format!("{} is negative", name_of(row, i))))
}
