//! BSON documents to and from the domain types; every stored value is checked, never trusted.

use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    Action, Attachment, ConversationId, Error, ErrorKind, Lifecycle, MessageType, MsgId,
    NewMessage, RequestId, Result, Status, Timestamp, TransitionOutcome, UserId,
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

pub(crate) fn get_bool(d: &Document, f: &str) -> Result<bool> {
    match d.get(f) {
        Some(Bson::Boolean(b)) => Ok(*b),
        _ => Err(bad_field(f, "is not a boolean")),
    }
}

pub(crate) fn opt_doc<'a>(d: &'a Document, f: &str) -> Result<Option<&'a Document>> {
    match d.get(f) {
        None | Some(Bson::Null) => Ok(None),
        Some(Bson::Document(inner)) => Ok(Some(inner)),
        Some(_) => Err(bad_field(f, "is not a document")),
    }
}

pub(crate) fn get_oid(d: &Document, f: &str) -> Result<ObjectId> {
    match d.get(f) {
        Some(Bson::ObjectId(o)) => Ok(*o),
        _ => Err(bad_field(f, "is not an ObjectId")),
    }
}

fn as_decode(field: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| {
        Error::new(
            ErrorKind::Decode,
            format!("stored field `{field}`: {}", e.message()),
        )
    }
}

pub(crate) fn get_user(d: &Document, f: &str) -> Result<UserId> {
    UserId::new(get_str(d, f)?).map_err(as_decode(f))
}

pub(crate) fn opt_user(d: &Document, f: &str) -> Result<Option<UserId>> {
    match d.get(f) {
        None | Some(Bson::Null) => Ok(None),
        _ => get_user(d, f).map(Some),
    }
}

pub(crate) fn get_conversation(d: &Document, f: &str) -> Result<ConversationId> {
    ConversationId::new(get_str(d, f)?).map_err(as_decode(f))
}

pub(crate) fn get_msg_id(d: &Document, f: &str) -> Result<MsgId> {
    MsgId::from_i64(get_i64(d, f)?).map_err(as_decode(f))
}

pub(crate) fn get_status(d: &Document, f: &str) -> Result<Status> {
    let code = get_i64(d, f)?;
    let code = i16::try_from(code).map_err(|_| bad_field(f, "is out of range"))?;
    Status::from_code(code)
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

/// The document of a new message: its fields, content as `encoded` bytes, a fresh lifecycle.
pub(crate) fn message_doc(m: &NewMessage, encoded: Vec<u8>, now: Timestamp) -> Document {
    let mut d = doc! {
        "conversation_id": m.conversation_id.as_str(),
        "msg_id": m.msg_id.as_i64(),
        "sender_id": m.sender_id.as_str(),
        "msg_type": m.msg_type.code(),
        "content": binary(encoded),
    };
    d.extend(lifecycle_set(&Lifecycle::new(now)));
    if let Some(a) = &m.attachment {
        d.insert(
            "attachment",
            doc! {"key": a.key.as_str(), "size": a.size as i64, "mime": a.mime.as_str()},
        );
    }
    d
}

/// A stored message as read: its `_id`, the sender's fields (content still encoded), the lifecycle.
#[derive(Debug)]
pub(crate) struct Row {
    pub id: ObjectId,
    pub message: NewMessage,
    pub lifecycle: Lifecycle,
}

pub(crate) fn attachment_of(d: &Document) -> Result<Option<Attachment>> {
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
    let message = NewMessage {
        msg_id: get_msg_id(d, "msg_id")?,
        conversation_id: get_conversation(d, "conversation_id")?,
        sender_id: get_user(d, "sender_id")?,
        msg_type: MessageType::from_code(
            i32::try_from(get_i64(d, "msg_type")?)
                .map_err(|_| bad_field("msg_type", "is out of range"))?,
        )?,
        content: match d.get("content") {
            Some(Bson::Binary(b)) => b.bytes.clone(),
            None => Vec::new(),
            Some(_) => return Err(bad_field("content", "is not binary")),
        },
        attachment: attachment_of(d)?,
    };
    Ok(Row {
        id: get_oid(d, "_id")?,
        message,
        lifecycle: lifecycle_of(d)?,
    })
}

pub(crate) fn lifecycle_of(d: &Document) -> Result<Lifecycle> {
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
    // When the message left Normal: the time its retention counts from (see `purgeable`).
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

/// What a commit-log record does to its message.
#[derive(Clone, Debug)]
pub(crate) enum CommitKind {
    /// A transition to `next`, asked by `record`'s request.
    Apply {
        next: Lifecycle,
        record: RequestRecord,
    },
    /// The retention purge of the message (with the attachment key it releases).
    Purge { attachment: Option<String> },
}

/// One record of the commit log: version `version` of message document `msg`.
#[derive(Clone, Debug)]
pub(crate) struct Commit {
    pub msg: ObjectId,
    pub conversation_id: ConversationId,
    pub msg_id: MsgId,
    pub version: u32,
    /// Unique per commit: tells its writer that a stored outcome is its own.
    pub token: ObjectId,
    /// Wall-clock milliseconds when it was written (for takeover after a crash).
    pub wall: i64,
    pub done: bool,
    pub kind: CommitKind,
}

pub(crate) fn wall_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn commit_doc(c: &Commit) -> Document {
    let mut d = doc! {
        "msg": c.msg,
        "conversation_id": c.conversation_id.as_str(),
        "msg_id": c.msg_id.as_i64(),
        "version": i64::from(c.version),
        "token": c.token,
        "wall": c.wall,
        "done": c.done,
    };
    match &c.kind {
        CommitKind::Apply { next, record } => {
            d.insert("kind", "apply");
            d.insert("next", lifecycle_set(next));
            d.insert("request", record_doc(record));
        }
        CommitKind::Purge { attachment } => {
            d.insert("kind", "purge");
            if let Some(a) = attachment {
                d.insert("attachment", a.as_str());
            }
        }
    }
    d
}

pub(crate) fn commit_of(d: &Document) -> Result<Commit> {
    let conversation_id = get_conversation(d, "conversation_id")?;
    let msg_id = get_msg_id(d, "msg_id")?;
    let kind = match get_str(d, "kind")? {
        "apply" => {
            let next = opt_doc(d, "next")?.ok_or_else(|| bad_field("next", "is missing"))?;
            let request =
                opt_doc(d, "request")?.ok_or_else(|| bad_field("request", "is missing"))?;
            CommitKind::Apply {
                next: lifecycle_of(next)?,
                record: record_of(request, &conversation_id, msg_id)?,
            }
        }
        "purge" => CommitKind::Purge {
            attachment: match d.get("attachment") {
                Some(Bson::String(s)) => Some(s.clone()),
                _ => None,
            },
        },
        _ => return Err(bad_field("kind", "is unknown")),
    };
    Ok(Commit {
        msg: get_oid(d, "msg")?,
        conversation_id,
        msg_id,
        version: get_version(d, "version")?,
        token: get_oid(d, "token")?,
        wall: get_i64(d, "wall")?,
        done: get_bool(d, "done")?,
        kind,
    })
}

fn record_doc(r: &RequestRecord) -> Document {
    doc! {
        "request_id": r.request_id.as_str(),
        "action": r.action.as_str(),
        "requester": r.requester.as_str(),
        "status": i32::from(r.status.code()),
        "version": i64::from(r.version),
        "changed": r.changed,
        "at": r.at.as_millis(),
    }
}

fn record_of(
    p: &Document,
    conversation_id: &ConversationId,
    msg_id: MsgId,
) -> Result<RequestRecord> {
    Ok(RequestRecord {
        conversation_id: conversation_id.clone(),
        request_id: RequestId::new(get_str(p, "request_id")?).map_err(as_decode("request_id"))?,
        action: Action::parse(get_str(p, "action")?)?,
        msg_id,
        requester: get_user(p, "requester")?,
        status: get_status(p, "status")?,
        version: get_version(p, "version")?,
        changed: get_bool(p, "changed")?,
        at: Timestamp::from_millis(get_i64(p, "at")?),
    })
}

/// A request-id claim (who used the id for what) and its first outcome, once recorded.
#[derive(Debug, Default)]
pub(crate) struct Claim {
    pub identity: Option<(Action, MsgId, UserId, Timestamp)>,
    pub outcome: Option<(TransitionOutcome, ObjectId)>,
}

/// The claim document: inserted (unique) before the request may commit anything.
pub(crate) fn claim_doc(r: &RequestRecord) -> Document {
    doc! {
        "conversation_id": r.conversation_id.as_str(),
        "request_id": r.request_id.as_str(),
        "kind": "claim",
        "msg_id": r.msg_id.as_i64(),
        "action": r.action.as_str(),
        "requester": r.requester.as_str(),
        "at": r.at.as_millis(),
    }
}

/// The outcome document: inserted (unique) once; the first one is the request's answer forever.
pub(crate) fn outcome_doc(r: &RequestRecord, token: ObjectId) -> Document {
    doc! {
        "conversation_id": r.conversation_id.as_str(),
        "request_id": r.request_id.as_str(),
        "kind": "outcome",
        "msg_id": r.msg_id.as_i64(),
        "status": i32::from(r.status.code()),
        "version": i64::from(r.version),
        "changed": r.changed,
        "token": token,
        "at": r.at.as_millis(),
    }
}

/// Folds the claim and outcome documents of one request id.
pub(crate) fn claim_of(docs: &[Document]) -> Result<Claim> {
    let mut claim = Claim::default();
    for d in docs {
        let msg_id = get_msg_id(d, "msg_id")?;
        match get_str(d, "kind")? {
            "claim" => {
                claim.identity = Some((
                    Action::parse(get_str(d, "action")?)?,
                    msg_id,
                    get_user(d, "requester")?,
                    Timestamp::from_millis(get_i64(d, "at")?),
                ))
            }
            "outcome" => {
                claim.outcome = Some((
                    TransitionOutcome {
                        msg_id,
                        status: get_status(d, "status")?,
                        version: get_version(d, "version")?,
                        changed: get_bool(d, "changed")?,
                        replayed: true,
                    },
                    get_oid(d, "token")?,
                ))
            }
            _ => return Err(bad_field("kind", "is unknown")),
        }
    }
    Ok(claim)
}

impl Claim {
    /// The claim as a core request record (with `outcome`), so that core decides replay/conflict.
    pub(crate) fn record(
        &self,
        conversation_id: &ConversationId,
        request_id: &RequestId,
        outcome: &TransitionOutcome,
    ) -> Option<RequestRecord> {
        let (action, msg_id, requester, at) = self.identity.clone()?;
        Some(RequestRecord {
            conversation_id: conversation_id.clone(),
            request_id: request_id.clone(),
            action,
            msg_id,
            requester,
            status: outcome.status,
            version: outcome.version,
            changed: outcome.changed,
            at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imstore_core::{Authority, TransitionRequest};

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

    #[test]
    fn message_documents_round_trip_with_typed_fields() {
        let m = message();
        let mut d = message_doc(&m, m.content.clone(), Timestamp::from_millis(5));
        assert!(matches!(d.get("msg_id"), Some(Bson::Int64(42))));
        assert!(matches!(d.get("status"), Some(Bson::Int32(0))));
        assert!(matches!(d.get("created_at"), Some(Bson::Int64(5))));
        assert!(matches!(d.get("content"), Some(Bson::Binary(_))));
        d.insert("_id", ObjectId::new());
        let row = row_of(&d).unwrap();
        assert_eq!(row.message, m);
        assert_eq!(row.lifecycle, Lifecycle::new(Timestamp::from_millis(5)));
    }

    #[test]
    fn corrupt_documents_are_decode_errors() {
        let m = message();
        let mut d = message_doc(&m, m.content.clone(), Timestamp::from_millis(5));
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
                ErrorKind::Decode,
                "{field}"
            );
        }
    }

    #[test]
    fn lifecycle_update_unsets_what_is_cleared() {
        let mut l = Lifecycle::new(Timestamp::from_millis(1));
        l.status = Status::Normal;
        l.version = 3;
        l.recalled_by = Some(UserId::new("alice").unwrap());
        l.restored_at = Some(Timestamp::from_millis(9));
        let u = lifecycle_update(&l);
        let unset = u.get_document("$unset").unwrap();
        assert!(unset.contains_key("recalled_at") && unset.contains_key("retired_at"));
        assert!(u.get_document("$set").unwrap().contains_key("recalled_by"));
    }

    #[test]
    fn commit_records_and_claims_round_trip() {
        let req = TransitionRequest {
            action: Action::Recall,
            requester: UserId::new("alice").unwrap(),
            authority: Authority::Member,
            conversation_id: ConversationId::new("c").unwrap(),
            msg_id: MsgId::new(42).unwrap(),
            client_ts: Timestamp::from_millis(1),
            request_id: RequestId::new("r1").unwrap(),
        };
        let outcome = TransitionOutcome {
            msg_id: req.msg_id,
            status: Status::Recalled,
            version: 2,
            changed: true,
            replayed: false,
        };
        let record = RequestRecord::new(&req, &outcome, Timestamp::from_millis(3));
        let commit = Commit {
            msg: ObjectId::new(),
            conversation_id: req.conversation_id.clone(),
            msg_id: req.msg_id,
            version: 2,
            token: ObjectId::new(),
            wall: 7,
            done: false,
            kind: CommitKind::Apply {
                next: Lifecycle::new(Timestamp::from_millis(1)),
                record: record.clone(),
            },
        };
        let back = commit_of(&commit_doc(&commit)).unwrap();
        assert!(matches!(back.kind, CommitKind::Apply { record: r, .. } if r == record));
        let claim = claim_of(&[claim_doc(&record), outcome_doc(&record, commit.token)]).unwrap();
        let (first, token) = claim.outcome.clone().unwrap();
        assert_eq!(token, commit.token);
        let replay = claim
            .record(&req.conversation_id, &req.request_id, &first)
            .unwrap()
            .replay(&req)
            .unwrap();
        assert!(replay.replayed && replay.changed && replay.version == 2);
    }
}
