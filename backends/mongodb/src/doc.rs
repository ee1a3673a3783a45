//! BSON documents to and from the domain types; every stored value is checked, never trusted.
//!
//! Two kinds of document: a message (collection `messages`) and a log entry (collection `log`,
//! see [`crate::schema`]). A stored value of the wrong type or out of range is a `Backend` error
//! naming the field ([`Error::corrupt`]): the document is not one this store wrote.

use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    Action, Attachment, ConversationId, ErrorKind, Lifecycle, MessageType, MsgId, NewMessage,
    RequestId, Result, Status, StoredMessage, Timestamp, UserId,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};

use crate::error::bad_field;

pub(crate) fn get_str<'a>(d: &'a Document, f: &str) -> Result<&'a str> {
    match d.get(f) {
        Some(Bson::String(s)) => Ok(s),
        Some(_) => Err(bad_field(f, "is not a string")),
        None => Err(bad_field(f, "is missing")),
    }
}

pub(crate) fn get_i64(d: &Document, f: &str) -> Result<i64> {
    opt_i64(d, f)?.ok_or_else(|| bad_field(f, "is missing"))
}

/// An integer field; missing or null is `None`. Int32 is accepted (some tools write it).
pub(crate) fn opt_i64(d: &Document, f: &str) -> Result<Option<i64>> {
    match d.get(f) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Int64(v)) => Ok(Some(*v)),
        Some(Bson::Int32(v)) => Ok(Some(i64::from(*v))),
        Some(_) => Err(bad_field(f, "is not an integer")),
    }
}

fn get_bool(d: &Document, f: &str) -> Result<bool> {
    match d.get(f) {
        Some(Bson::Boolean(b)) => Ok(*b),
        _ => Err(bad_field(f, "is not a boolean")),
    }
}

fn opt_doc<'a>(d: &'a Document, f: &str) -> Result<Option<&'a Document>> {
    match d.get(f) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(inner)) => Ok(Some(inner)),
        Some(_) => Err(bad_field(f, "is not a document")),
    }
}

fn get_doc<'a>(d: &'a Document, f: &str) -> Result<&'a Document> {
    opt_doc(d, f)?.ok_or_else(|| bad_field(f, "is missing"))
}

pub(crate) fn get_oid(d: &Document, f: &str) -> Result<ObjectId> {
    match d.get(f) {
        Some(Bson::ObjectId(o)) => Ok(*o),
        _ => Err(bad_field(f, "is not an ObjectId")),
    }
}

fn parsed<T, E>(f: &str, r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|_| bad_field(f, "is not valid"))
}

fn get_user(d: &Document, f: &str) -> Result<UserId> {
    parsed(f, UserId::new(get_str(d, f)?))
}

fn opt_user(d: &Document, f: &str) -> Result<Option<UserId>> {
    match d.get(f) {
        None | Some(Bson::Null) => Ok(None),
        _ => get_user(d, f).map(Some),
    }
}

fn get_conversation(d: &Document, f: &str) -> Result<ConversationId> {
    parsed(f, ConversationId::new(get_str(d, f)?))
}

pub(crate) fn get_msg_id(d: &Document, f: &str) -> Result<MsgId> {
    parsed(f, MsgId::from_i64(get_i64(d, f)?))
}

pub(crate) fn get_status(d: &Document, f: &str) -> Result<Status> {
    let code = i16::try_from(get_i64(d, f)?).map_err(|_| bad_field(f, "is out of range"))?;
    parsed(f, Status::from_code(code))
}

pub(crate) fn get_version(d: &Document, f: &str) -> Result<u32> {
    u32::try_from(get_i64(d, f)?).map_err(|_| bad_field(f, "is out of range"))
}

fn opt_ts(d: &Document, f: &str) -> Result<Option<Timestamp>> {
    Ok(opt_i64(d, f)?.map(Timestamp::from_millis))
}

/// The binary wrapper for stored content.
pub(crate) fn binary(bytes: Vec<u8>) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes,
    }
}

/// The filter selecting one message document by its key (only the testing helpers need it).
#[cfg(feature = "testing")]
pub(crate) fn key(conversation: &ConversationId, msg_id: MsgId) -> Document {
    doc! {"conversation_id": conversation.as_str(), "msg_id": msg_id.as_i64()}
}

/// The document of a new message: its fields, content as stored, a fresh lifecycle.
pub(crate) fn message_doc(m: &NewMessage, now: Timestamp) -> Document {
    let mut d = doc! {
        "conversation_id": m.conversation_id.as_str(),
        "msg_id": m.msg_id.as_i64(),
        "sender_id": m.sender_id.as_str(),
        "msg_type": m.msg_type.code(),
        "content": binary(m.content.clone()),
    };
    d.extend(lifecycle_set(&Lifecycle::new(now)));
    if let Some(a) = &m.attachment {
        // `size` fits: core refuses sizes above i64::MAX.
        d.insert(
            "attachment",
            doc! {"key": a.key.as_str(), "size": a.size as i64, "mime": a.mime.as_str()},
        );
    }
    d
}

/// A message document as read: its `_id`, and the message as its document shows it (the
/// lifecycle there may trail the log; see `read::overlay`).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: ObjectId,
    pub stored: StoredMessage,
}

fn attachment_of(d: &Document) -> Result<Option<Attachment>> {
    let Some(a) = opt_doc(d, "attachment")? else {
        return Ok(None);
    };
    let size = get_i64(a, "size")?;
    Ok(Some(Attachment {
        key: get_str(a, "key")?.to_string(),
        size: u64::try_from(size).map_err(|_| bad_field("attachment.size", "is negative"))?,
        mime: get_str(a, "mime")?.to_string(),
    }))
}

/// A message document (content may be projected away: it then reads as empty).
pub(crate) fn row_of(d: &Document) -> Result<Row> {
    let code = i32::try_from(get_i64(d, "msg_type")?)
        .map_err(|_| bad_field("msg_type", "is out of range"))?;
    let message = NewMessage {
        msg_id: get_msg_id(d, "msg_id")?,
        conversation_id: get_conversation(d, "conversation_id")?,
        sender_id: get_user(d, "sender_id")?,
        msg_type: parsed("msg_type", MessageType::from_code(code))?,
        content: match d.get("content") {
            Some(Bson::Binary(b)) => b.bytes.clone(),
            None => Vec::new(),
            Some(_) => return Err(bad_field("content", "is not binary")),
        },
        attachment: attachment_of(d)?,
    };
    Ok(Row {
        id: get_oid(d, "_id")?,
        stored: StoredMessage {
            message,
            lifecycle: lifecycle_of(d)?,
        },
    })
}

fn lifecycle_of(d: &Document) -> Result<Lifecycle> {
    Ok(Lifecycle {
        status: get_status(d, "status")?,
        version: get_version(d, "version")?,
        created_at: Timestamp::from_millis(get_i64(d, "created_at")?),
        recalled_at: opt_ts(d, "recalled_at")?,
        recalled_by: opt_user(d, "recalled_by")?,
        restored_at: opt_ts(d, "restored_at")?,
        deleted_at: opt_ts(d, "deleted_at")?,
        deleted_by: opt_user(d, "deleted_by")?,
    })
}

/// The lifecycle fields that are set (absent ones are left out).
fn lifecycle_set(l: &Lifecycle) -> Document {
    let mut set = doc! {
        "status": i32::from(l.status.code()),
        "version": i64::from(l.version),
        "created_at": l.created_at.as_millis(),
    };
    for (field, value) in lifecycle_optionals(l) {
        if let Some(v) = value {
            set.insert(field, v);
        }
    }
    set
}

fn lifecycle_optionals(l: &Lifecycle) -> [(&'static str, Option<Bson>); 6] {
    let ts = |t: Option<Timestamp>| t.map(|t| Bson::Int64(t.as_millis()));
    let user = |u: &Option<UserId>| u.as_ref().map(|u| Bson::String(u.as_str().to_string()));
    // When the message left Normal: the time its retention counts from, indexed for the purge.
    let retired = match l.status {
        Status::Normal => None,
        Status::Recalled => l.recalled_at,
        Status::Deleted => l.deleted_at,
    };
    [
        ("recalled_at", ts(l.recalled_at)),
        ("recalled_by", user(&l.recalled_by)),
        ("restored_at", ts(l.restored_at)),
        ("deleted_at", ts(l.deleted_at)),
        ("deleted_by", user(&l.deleted_by)),
        ("retired_at", ts(retired)),
    ]
}

/// The `$set`/`$unset` update that writes `next` onto a message document.
pub(crate) fn lifecycle_update(next: &Lifecycle) -> Document {
    let mut unset = Document::new();
    for (field, value) in lifecycle_optionals(next) {
        if value.is_none() {
            unset.insert(field, "");
        }
    }
    let mut update = doc! {"$set": lifecycle_set(next)};
    if !unset.is_empty() {
        update.insert("$unset", unset);
    }
    update
}

/// Log entry kinds (the `kind` field).
pub(crate) mod kind {
    /// An applied transition: a change event, its message's next version, its request record.
    pub const EVENT: &str = "event";
    /// A request record that changed nothing (a no-op or a refusal).
    pub const RECORD: &str = "record";
    /// The event of a purged message: off the feed, its request record and feed position kept.
    pub const GONE: &str = "gone";
    /// The purge of a message: its last version.
    pub const PURGE: &str = "purge";
    /// A legal hold's fence: takes a feed position so that no purge read before it commits.
    pub const FENCE: &str = "fence";
}

/// The `todo` marks of log entries whose follow-up writes are not known to be done.
pub(crate) mod todo {
    /// An event whose lifecycle may not be on its message document yet.
    pub const CACHE: &str = "cache";
    /// A purge whose message, events or attachment report may not be finished.
    pub const FINISH: &str = "finish";
}

/// The request-id slot of an entry that belongs to no request: a control character cannot
/// be in a client's request id (core refuses it), so it never collides with one.
fn internal_request_id(what: &str, id: ObjectId) -> String {
    format!("\u{1}{what}:{}", id.to_hex())
}

fn record_fields(d: &mut Document, r: &RequestRecord) {
    let mut rec = doc! {
        "action": r.action.as_str(),
        "requester": r.requester.as_str(),
        "status": i32::from(r.status.code()),
        "version": i64::from(r.version),
        "changed": r.changed,
    };
    if let Some(k) = r.refusal {
        rec.insert("refusal", k.as_str());
    }
    d.insert("request_id", r.request_id.as_str());
    d.insert("msg_id", r.msg_id.as_i64());
    d.insert("at", r.at.as_millis());
    d.insert("record", rec);
}

/// An applied transition of message document `msg` to `next`, at feed position `seq`.
pub(crate) fn event_doc(
    id: ObjectId,
    msg: ObjectId,
    seq: i64,
    next: &Lifecycle,
    r: &RequestRecord,
) -> Document {
    let mut d = doc! {
        "_id": id,
        "kind": kind::EVENT,
        "conversation_id": r.conversation_id.as_str(),
        "seq": seq,
        "msg": msg,
        "version": i64::from(next.version),
        "next": lifecycle_set(next),
        "todo": todo::CACHE,
    };
    record_fields(&mut d, r);
    d
}

/// A request record that changed nothing. Its feed-position and version slots are filled with
/// a fresh ObjectId and 0, which no other entry has: it only claims its request id.
pub(crate) fn record_doc(r: &RequestRecord) -> Document {
    let fresh = ObjectId::new();
    let mut d = doc! {
        "kind": kind::RECORD,
        "conversation_id": r.conversation_id.as_str(),
        "seq": fresh,
        "msg": fresh,
        "version": 0_i64,
    };
    record_fields(&mut d, r);
    d
}

/// The purge of message document `msg` (of `conversation`) as its version `version`.
pub(crate) fn purge_doc(id: ObjectId, row: &Row, seq: i64, version: u32, wall: i64) -> Document {
    let m = &row.stored.message;
    let mut d = doc! {
        "_id": id,
        "kind": kind::PURGE,
        "conversation_id": m.conversation_id.as_str(),
        "seq": seq,
        "msg": row.id,
        "version": i64::from(version),
        "request_id": internal_request_id("purge", id),
        "msg_id": m.msg_id.as_i64(),
        "wall": wall,
        "todo": todo::FINISH,
    };
    if let Some(a) = &m.attachment {
        d.insert("attachment", a.key.as_str());
    }
    d
}

/// A legal hold's fence in `conversation` at feed position `seq`.
pub(crate) fn fence_doc(conversation: &ConversationId, seq: i64, wall: i64) -> Document {
    let id = ObjectId::new();
    doc! {
        "_id": id,
        "kind": kind::FENCE,
        "conversation_id": conversation.as_str(),
        "seq": seq,
        "msg": id,
        "version": 0_i64,
        "request_id": internal_request_id("fence", id),
        "wall": wall,
    }
}

/// The request record carried by a log entry (event, record or gone event).
pub(crate) fn record_of(d: &Document) -> Result<RequestRecord> {
    let rec = get_doc(d, "record")?;
    let refusal = match rec.get("refusal") {
        None | Some(Bson::Null) => None,
        Some(Bson::String(s)) => Some(
            ErrorKind::parse(s)
                .ok_or_else(|| bad_field("record.refusal", "is not an error kind"))?,
        ),
        Some(_) => return Err(bad_field("record.refusal", "is not a string")),
    };
    Ok(RequestRecord {
        conversation_id: get_conversation(d, "conversation_id")?,
        request_id: parsed("request_id", RequestId::new(get_str(d, "request_id")?))?,
        action: parsed("record.action", Action::parse(get_str(rec, "action")?))?,
        msg_id: get_msg_id(d, "msg_id")?,
        requester: get_user(rec, "requester")?,
        status: get_status(rec, "status")?,
        version: get_version(rec, "version")?,
        changed: get_bool(rec, "changed")?,
        at: Timestamp::from_millis(get_i64(d, "at")?),
        refusal,
    })
}

/// What a log entry after a message document's version says about that message.
#[derive(Debug, Clone)]
pub(crate) enum Commit {
    /// An applied transition to this lifecycle.
    Applied(Lifecycle),
    /// The message is purged.
    Purged,
}

/// The commit of an `event` or `purge` entry.
pub(crate) fn commit_of(d: &Document) -> Result<Commit> {
    match get_str(d, "kind")? {
        kind::PURGE => Ok(Commit::Purged),
        kind::EVENT | kind::GONE => next_of(d).map(Commit::Applied),
        _ => Err(bad_field("kind", "is not a commit")),
    }
}

/// The lifecycle an `event` entry commits.
pub(crate) fn next_of(d: &Document) -> Result<Lifecycle> {
    lifecycle_of(get_doc(d, "next")?)
}

/// A change event as the feed hands it out.
pub(crate) fn event_of(
    d: &Document,
    conversation: &ConversationId,
) -> Result<imstore_core::ChangeEvent> {
    let rec = get_doc(d, "record")?;
    Ok(imstore_core::ChangeEvent {
        seq: u64::try_from(get_i64(d, "seq")?).map_err(|_| bad_field("seq", "is negative"))?,
        conversation_id: conversation.clone(),
        msg_id: get_msg_id(d, "msg_id")?,
        status: get_status(rec, "status")?,
        version: get_version(d, "version")?,
        at: Timestamp::from_millis(get_i64(d, "at")?),
        by: get_user(rec, "requester")?,
    })
}

/// Wall-clock milliseconds: only for how long tombstones stay; every business time is the
/// store's clock.
pub(crate) fn wall_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_core::{Authority, TransitionOutcome, TransitionRequest};

    fn message() -> NewMessage {
        NewMessage {
            msg_id: MsgId::new(42).unwrap(),
            conversation_id: ConversationId::new("c").unwrap(),
            sender_id: UserId::new("alice").unwrap(),
            msg_type: MessageType::Custom(7),
            content: b"sealed".to_vec(),
            attachment: Some(Attachment {
                key: "blobs/a".into(),
                size: 9,
                mime: "image/png".into(),
            }),
        }
    }

    fn request() -> TransitionRequest {
        TransitionRequest {
            action: Action::Recall,
            requester: UserId::new("alice").unwrap(),
            authority: Authority::Member,
            conversation_id: ConversationId::new("c").unwrap(),
            msg_id: MsgId::new(42).unwrap(),
            client_ts: Timestamp::from_millis(1),
            request_id: RequestId::new("r1").unwrap(),
        }
    }

    #[test]
    fn message_documents_round_trip_with_typed_fields() {
        let m = message();
        let mut d = message_doc(&m, Timestamp::from_millis(5));
        assert!(matches!(d.get("msg_id"), Some(Bson::Int64(42))));
        assert!(matches!(d.get("status"), Some(Bson::Int32(0))));
        assert!(matches!(d.get("created_at"), Some(Bson::Int64(5))));
        assert!(matches!(d.get("content"), Some(Bson::Binary(_))));
        d.insert("_id", ObjectId::new());
        let row = row_of(&d).unwrap();
        assert_eq!(row.stored.message, m);
        assert_eq!(
            row.stored.lifecycle,
            Lifecycle::new(Timestamp::from_millis(5))
        );
    }

    #[test]
    fn corrupt_documents_are_backend_errors() {
        let m = message();
        let mut d = message_doc(&m, Timestamp::from_millis(5));
        d.insert("_id", ObjectId::new());
        for (field, value) in [
            ("status", Bson::Int32(9)),
            ("msg_id", Bson::String("x".into())),
            ("version", Bson::Int64(-1)),
            ("sender_id", Bson::String(String::new())),
        ] {
            let mut bad = d.clone();
            bad.insert(field, value);
            assert_eq!(
                row_of(&bad).unwrap_err().kind(),
                ErrorKind::Backend,
                "{field}"
            );
        }
    }

    #[test]
    fn lifecycle_update_unsets_what_is_cleared() {
        let mut l = Lifecycle::new(Timestamp::from_millis(1));
        l.version = 3;
        l.recalled_by = Some(UserId::new("alice").unwrap());
        l.restored_at = Some(Timestamp::from_millis(9));
        let u = lifecycle_update(&l);
        let unset = u.get_document("$unset").unwrap();
        assert!(unset.contains_key("recalled_at") && unset.contains_key("retired_at"));
        assert!(u.get_document("$set").unwrap().contains_key("recalled_by"));
    }

    #[test]
    fn log_entries_round_trip_their_records_and_commits() {
        let req = request();
        let outcome = TransitionOutcome {
            msg_id: req.msg_id,
            status: Status::Recalled,
            version: 2,
            changed: true,
            replayed: false,
        };
        let record = RequestRecord::new(&req, &outcome, Timestamp::from_millis(3));
        let mut next = Lifecycle::new(Timestamp::from_millis(1));
        next.status = Status::Recalled;
        next.version = 2;
        let ev = event_doc(ObjectId::new(), ObjectId::new(), 7, &next, &record);
        assert_eq!(record_of(&ev).unwrap(), record);
        assert!(matches!(commit_of(&ev).unwrap(), Commit::Applied(l) if l == next));
        let e = event_of(&ev, &req.conversation_id).unwrap();
        assert_eq!((e.seq, e.version, e.status), (7, 2, Status::Recalled));

        let refused = RequestRecord::refused(
            &req,
            ErrorKind::InvalidState,
            Status::Normal,
            1,
            Timestamp::from_millis(4),
        );
        let rd = record_doc(&refused);
        assert_eq!(record_of(&rd).unwrap(), refused);
        assert!(matches!(rd.get("seq"), Some(Bson::ObjectId(_))));

        let mut row_doc = message_doc(&message(), Timestamp::from_millis(5));
        row_doc.insert("_id", ObjectId::new());
        let pd = purge_doc(ObjectId::new(), &row_of(&row_doc).unwrap(), 8, 3, 0);
        assert!(matches!(commit_of(&pd).unwrap(), Commit::Purged));
        assert!(get_str(&pd, "request_id").unwrap().starts_with('\u{1}'));
    }
}
