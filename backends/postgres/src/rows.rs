//! Rows to the core's types: every column the store reads is decoded here, and a stored value
//! the schema forbids is `Error::corrupt`, never a guess.

use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    Action, Attachment, ChangeEvent, ConversationId, Error, ErrorKind, Lifecycle, MessageType,
    MsgId, NewMessage, Result, Status, StoredMessage, Timestamp, TransitionRequest, UserId,
};
use sqlx::postgres::PgRow;
use sqlx::{Postgres, Row};

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

fn user(row: &PgRow, name: &str) -> Result<UserId> {
    UserId::new(column::<String>(row, name)?)
        .map_err(|_| Error::corrupt(format!("stored {name} is not a valid user id")))
}

fn opt_user(row: &PgRow, name: &str) -> Result<Option<UserId>> {
    column::<Option<String>>(row, name)?
        .map(|s| {
            UserId::new(s)
                .map_err(|_| Error::corrupt(format!("stored {name} is not a valid user id")))
        })
        .transpose()
}

fn msg_id(row: &PgRow, name: &str) -> Result<MsgId> {
    MsgId::from_i64(column(row, name)?)
        .map_err(|_| Error::corrupt(format!("stored {name} is not a valid msg_id")))
}

fn version(row: &PgRow, name: &str) -> Result<u32> {
    u32::try_from(column::<i64>(row, name)?)
        .map_err(|_| Error::corrupt(format!("stored {name} is out of range")))
}

fn opt_time(row: &PgRow, name: &str) -> Result<Option<Timestamp>> {
    Ok(column::<Option<i64>>(row, name)?.map(Timestamp::from_millis))
}

/// A stored conversation id (rows that carry one, such as the batch read-back).
pub(crate) fn conversation(row: &PgRow, name: &str) -> Result<ConversationId> {
    ConversationId::new(column::<String>(row, name)?)
        .map_err(|_| Error::corrupt(format!("stored {name} is not a valid conversation id")))
}

/// The sender of a message row.
pub(crate) fn sender(row: &PgRow) -> Result<UserId> {
    user(row, "sender_id")
}

/// The lifecycle columns of a message row.
pub(crate) fn lifecycle(row: &PgRow) -> Result<Lifecycle> {
    Ok(Lifecycle {
        status: Status::from_code(column(row, "status")?)?,
        version: version(row, "version")?,
        created_at: Timestamp::from_millis(column(row, "created_at")?),
        recalled_at: opt_time(row, "recalled_at")?,
        recalled_by: opt_user(row, "recalled_by")?,
        restored_at: opt_time(row, "restored_at")?,
        deleted_at: opt_time(row, "deleted_at")?,
        deleted_by: opt_user(row, "deleted_by")?,
    })
}

/// A message row of conversation `conversation`, its content as stored (encoded).
pub(crate) fn message(conversation: &ConversationId, row: &PgRow) -> Result<StoredMessage> {
    let attachment = match column::<Option<String>>(row, "attachment_key")? {
        None => None,
        Some(key) => {
            let size = column::<Option<i64>>(row, "attachment_size")?
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| Error::corrupt("stored attachment has no valid size"))?;
            let mime = column::<Option<String>>(row, "attachment_mime")?
                .ok_or_else(|| Error::corrupt("stored attachment has no mime type"))?;
            Some(Attachment { key, size, mime })
        }
    };
    Ok(StoredMessage {
        message: NewMessage {
            msg_id: msg_id(row, "msg_id")?,
            conversation_id: conversation.clone(),
            sender_id: sender(row)?,
            msg_type: MessageType::from_code(column(row, "msg_type")?)?,
            content: column(row, "content")?,
            attachment,
        },
        lifecycle: lifecycle(row)?,
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
        msg_id: msg_id(row, &name("msg_id"))?,
        requester: user(row, &name("requester"))?,
        status: Status::from_code(column(row, &name("status"))?)?,
        version: version(row, &name("version"))?,
        changed: column(row, &name("changed"))?,
        at: Timestamp::from_millis(column(row, &name("at"))?),
        refusal,
    })
}

/// A change event row of conversation `conversation`.
pub(crate) fn event(conversation: &ConversationId, row: &PgRow) -> Result<ChangeEvent> {
    Ok(ChangeEvent {
        seq: u64::try_from(column::<i64>(row, "seq")?)
            .map_err(|_| Error::corrupt("stored seq is negative"))?,
        conversation_id: conversation.clone(),
        msg_id: msg_id(row, "msg_id")?,
        status: Status::from_code(column(row, "status")?)?,
        version: version(row, "version")?,
        at: Timestamp::from_millis(column(row, "at")?),
        by: user(row, "by_user")?,
    })
}

/// A non-negative bigint count or position.
pub(crate) fn count(row: &PgRow, name: &str) -> Result<u64> {
    u64::try_from(column::<i64>(row, name)?)
        .map_err(|_| Error::corrupt(format!("{name} is negative")))
}
