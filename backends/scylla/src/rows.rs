//! Decoding rows into the contract's types; anything malformed is a `Decode` error, never a panic.

use std::collections::HashMap;

use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    Action, Attachment, ChangeEvent, ConversationId, ErrorKind, Lifecycle, MessageType, MsgId,
    NewMessage, RequestId, Result, Status, Timestamp, UserId,
};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use crate::error;

/// A boxed statement's values, so one batch can mix statement shapes.
pub(crate) type BoxedRow = Box<dyn scylla::serialize::row::SerializeRow + Send + Sync>;

/// The columns of a `messages` row after its key: sender, type, content, attachment, created_at.
pub(crate) type MessageCols = (
    Option<String>,
    Option<i32>,
    Option<Vec<u8>>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// The columns of a lifecycle row of `conversation_state`: status, version, recalled_at,
/// recalled_by, restored_at, deleted_at, deleted_by, event_seqs, purging, release_key.
pub(crate) type StateCols = (
    Option<i8>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<Vec<i64>>,
    Option<bool>,
    Option<String>,
);

/// The columns of a request record row: action, msg_id, requester, status, version, changed,
/// at, refusal, token.
pub(crate) type RequestCols = (
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i8>,
    Option<i32>,
    Option<bool>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// The columns of an event row: seq, msg_id, status, version, at, actor, then the feed head
/// and the purge's low-water mark (statics, so they come with every row, in the same snapshot).
pub(crate) type EventCols = (
    i64,
    Option<i64>,
    Option<i8>,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A stored message: the sender's fields with content still encoded, and its acceptance time.
#[derive(Clone, Debug)]
pub(crate) struct MessageRow {
    pub(crate) message: NewMessage,
    pub(crate) created_at: Timestamp,
    /// The random token of the insert call that wrote the row (only on point reads), so a
    /// writer whose conditional insert timed out can tell its own row from a retry's.
    pub(crate) insert_token: Option<i64>,
}

/// The lifecycle fields of a row: the state after the message's last transition.
#[derive(Clone, Debug)]
pub(crate) struct Changed {
    pub(crate) status: Status,
    pub(crate) version: u32,
    pub(crate) recalled_at: Option<Timestamp>,
    pub(crate) recalled_by: Option<UserId>,
    pub(crate) restored_at: Option<Timestamp>,
    pub(crate) deleted_at: Option<Timestamp>,
    pub(crate) deleted_by: Option<UserId>,
}

/// A lifecycle row (kind 0, k = msg_id) of `conversation_state`.
#[derive(Clone, Debug)]
pub(crate) enum StateRow {
    /// The message changed at least once; the seqs of its events.
    Live {
        changed: Changed,
        event_seqs: Vec<i64>,
    },
    /// The purge committed: the message is gone for every reader, whatever is left of its rows;
    /// `release_key` is the attachment the purge releases; `marked` the time and token of the
    /// purge call that committed (read by the purge's own reads only; `None` elsewhere, and on
    /// markers written before markers carried them).
    Purged {
        release_key: Option<String>,
        marked: Option<(Option<i64>, Option<i64>)>,
        /// The seqs of the events the commit removed (the commit leaves the column as it was).
        event_seqs: Vec<i64>,
    },
}

impl StateRow {
    /// The version a compare-and-set on this row expects (`None`: a never-transitioned
    /// message's marker, whose version column is null).
    pub(crate) fn version(&self) -> Option<u32> {
        match self {
            StateRow::Live { changed, .. } => Some(changed.version),
            StateRow::Purged { .. } => None,
        }
    }
}

/// The lifecycle of a live message accepted at `created_at`: its row's fields, or a
/// never-changed message's initial state. `None` for a purge marker.
pub(crate) fn lifecycle_of(state: Option<&StateRow>, created_at: Timestamp) -> Option<Lifecycle> {
    match state {
        None => Some(Lifecycle::new(created_at)),
        Some(StateRow::Purged { .. }) => None,
        Some(StateRow::Live { changed: c, .. }) => Some(Lifecycle {
            status: c.status,
            version: c.version,
            created_at,
            recalled_at: c.recalled_at,
            recalled_by: c.recalled_by.clone(),
            restored_at: c.restored_at,
            deleted_at: c.deleted_at,
            deleted_by: c.deleted_by.clone(),
        }),
    }
}

fn user(v: Option<String>, what: &str) -> Result<Option<UserId>> {
    v.map(|s| UserId::new(s).map_err(|_| error::corrupt(what)))
        .transpose()
}

fn required<T>(v: Option<T>, what: &str) -> Result<T> {
    v.ok_or_else(|| error::corrupt(what))
}

fn status(code: Option<i8>) -> Result<Status> {
    Status::from_code(i16::from(required(code, "status")?))
}

fn version(v: Option<i32>) -> Result<u32> {
    u32::try_from(required(v, "version")?).map_err(|_| error::corrupt("version"))
}

fn ts(v: Option<i64>) -> Option<Timestamp> {
    v.map(Timestamp::from_millis)
}

/// A message row with its key.
pub(crate) fn message(
    conversation: &ConversationId,
    msg_id: MsgId,
    cols: MessageCols,
) -> Result<MessageRow> {
    let (sender, msg_type, content, att_key, att_size, att_mime, created_at) = cols;
    let attachment = match (att_key, att_size, att_mime) {
        (Some(key), Some(size), Some(mime)) => Some(Attachment {
            key,
            size: u64::try_from(size).map_err(|_| error::corrupt("attachment size"))?,
            mime,
        }),
        (None, None, None) => None,
        _ => return Err(error::corrupt("attachment")),
    };
    Ok(MessageRow {
        message: NewMessage {
            msg_id,
            conversation_id: conversation.clone(),
            sender_id: required(user(sender, "sender_id")?, "sender_id")?,
            msg_type: MessageType::from_code(required(msg_type, "msg_type")?)?,
            content: required(content, "content")?,
            attachment,
        },
        created_at: Timestamp::from_millis(required(created_at, "created_at")?),
        insert_token: None,
    })
}

/// A lifecycle row.
pub(crate) fn state(cols: StateCols) -> Result<StateRow> {
    let (
        st,
        ver,
        recalled_at,
        recalled_by,
        restored_at,
        deleted_at,
        deleted_by,
        seqs,
        purging,
        key,
    ) = cols;
    if purging == Some(true) {
        return Ok(StateRow::Purged {
            release_key: key,
            marked: None,
            event_seqs: seqs.unwrap_or_default(),
        });
    }
    Ok(StateRow::Live {
        changed: Changed {
            status: status(st)?,
            version: version(ver)?,
            recalled_at: ts(recalled_at),
            recalled_by: user(recalled_by, "recalled_by")?,
            restored_at: ts(restored_at),
            deleted_at: ts(deleted_at),
            deleted_by: user(deleted_by, "deleted_by")?,
        },
        event_seqs: seqs.unwrap_or_default(),
    })
}

/// A request record row, and the token of the call that wrote it.
pub(crate) fn request(
    conversation: &ConversationId,
    request_id: &RequestId,
    cols: RequestCols,
) -> Result<(RequestRecord, Option<i64>)> {
    let (action, msg_id, actor, st, ver, changed, at, refusal, token) = cols;
    let refusal = refusal
        .map(|r| ErrorKind::parse(&r).ok_or_else(|| error::corrupt("request refusal")))
        .transpose()?;
    let record = RequestRecord {
        conversation_id: conversation.clone(),
        request_id: request_id.clone(),
        action: Action::parse(&required(action, "request action")?)?,
        msg_id: MsgId::from_i64(required(msg_id, "request msg_id")?)
            .map_err(|_| error::corrupt("request msg_id"))?,
        requester: required(user(actor, "requester")?, "requester")?,
        status: status(st)?,
        version: version(ver)?,
        changed: required(changed, "request changed")?,
        at: Timestamp::from_millis(required(at, "request time")?),
        refusal,
    };
    Ok((record, token))
}

/// A change event row (its static columns are read by the caller).
pub(crate) fn event(conversation: &ConversationId, cols: EventCols) -> Result<ChangeEvent> {
    let (seq, msg_id, st, ver, at, actor, _head, _purged_through) = cols;
    Ok(ChangeEvent {
        seq: u64::try_from(seq).map_err(|_| error::corrupt("event seq"))?,
        conversation_id: conversation.clone(),
        msg_id: MsgId::from_i64(required(msg_id, "event msg_id")?)
            .map_err(|_| error::corrupt("event msg_id"))?,
        status: status(st)?,
        version: version(ver)?,
        at: Timestamp::from_millis(required(at, "event time")?),
        by: required(user(actor, "event actor")?, "event actor")?,
    })
}

/// The result of a conditional statement: `[applied]` (column 0 on both ScyllaDB and Cassandra)
/// and the other columns by name (ScyllaDB returns the old row always, Cassandra only when the
/// condition failed; so callers never rely on their presence).
pub(crate) struct LwtResult {
    pub(crate) applied: bool,
    pub(crate) columns: HashMap<String, CqlValue>,
}

/// Reads `[applied]` as column 0 of an untyped row, whatever else the server returned.
pub(crate) fn lwt(result: QueryResult) -> Result<LwtResult> {
    let rows = result
        .into_rows_result()
        .map_err(|e| error::decode("conditional write result", e))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(|e| error::decode("conditional write result", e))?
        .ok_or_else(|| error::corrupt("conditional write result (no row)"))?;
    let applied = row
        .columns
        .first()
        .and_then(Option::as_ref)
        .and_then(CqlValue::as_boolean)
        .ok_or_else(|| error::corrupt("conditional write result ([applied] missing)"))?;
    let columns = names
        .into_iter()
        .zip(row.columns)
        .skip(1)
        .filter_map(|(n, v)| v.map(|v| (n, v)))
        .collect();
    Ok(LwtResult { applied, columns })
}

/// The message columns of a conditional insert's result, when the server returned them all.
pub(crate) fn message_from_lwt(
    columns: &HashMap<String, CqlValue>,
) -> Option<(MessageCols, Option<i64>)> {
    let text = |n: &str| match columns.get(n) {
        Some(CqlValue::Text(s)) | Some(CqlValue::Ascii(s)) => Some(s.clone()),
        _ => None,
    };
    let big = |n: &str| match columns.get(n) {
        Some(CqlValue::BigInt(v)) => Some(*v),
        _ => None,
    };
    let content = match columns.get("content") {
        Some(CqlValue::Blob(b)) => Some(b.clone()),
        _ => None,
    };
    let msg_type = match columns.get("msg_type") {
        Some(CqlValue::Int(v)) => Some(*v),
        _ => None,
    };
    // Without the required columns the row was not returned (or is malformed): re-read instead.
    let cols = (
        text("sender_id"),
        msg_type,
        content,
        text("attachment_key"),
        big("attachment_size"),
        text("attachment_mime"),
        big("created_at"),
    );
    (cols.0.is_some() && cols.1.is_some() && cols.2.is_some() && cols.6.is_some())
        .then_some((cols, big("insert_token")))
}
