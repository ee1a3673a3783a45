//! The collections of a store's database and the indexes built (idempotently) when it opens.
//!
//! * `messages`: one document per message. Unique `{conversation_id: 1, msg_id: -1}` (the key,
//!   idempotent inserts, both page directions); `{parked: 1, retired_at: 1}` and
//!   `{parked: 1, created_at: 1}` (purge candidates that are not parked under a legal hold, and
//!   a hold's parked messages); `{"attachment.key": 1}` (is a released key still referenced?).
//! * `log`: every decision, one document each, inserted under three unique indexes at once:
//!   `{conversation_id: 1, seq: 1}` (the feed position), `{msg: 1, version: 1}` (the message
//!   version it creates) and `{conversation_id: 1, request_id: 1}` (the request it answers).
//!   An entry with no use for a slot fills it with a value no other entry has.
//!   `{conversation_id: 1, kind: 1, seq: 1}` serves the feed (events, its head, the purge mark); `{todo: 1,
//!   conversation_id: 1}` finds unfinished follow-up writes (a conversation's, for the feed), `{kind: 1, at: 1}` and `{kind: 1, wall: 1}` old entries.
//! * `legal_holds`: `_id` = conversation id, `held` flag.
//!
//! No TTL index is created: a TTL monitor would delete messages without reporting their
//! attachment keys, without removing their change events and regardless of legal hold, so
//! retention is the explicit `purge` only (see the README).

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use crate::error::{NAMESPACE_NOT_FOUND, code_of, map};
use imstore_core::{Error, Result};

/// The messages collection.
pub(crate) const MESSAGES: &str = "messages";
/// The log: events, request records, purges, fences.
pub(crate) const LOG: &str = "log";
/// The legal holds collection.
pub(crate) const HOLDS: &str = "legal_holds";

/// Collections of the first layout (commit log, feed and request records kept apart, which
/// let a request's outcome and its effect be seen at different times). A database holding them
/// is refused rather than read with the wrong rules.
const OLD_LAYOUT: &[&str] = &["changes", "events", "requests"];

/// Indexes of earlier versions no query uses any more (dropped when found): the purge
/// candidates' single-field indexes, which made every purge walk held conversations' backlog.
const OBSOLETE: &[(&str, &str)] = &[(MESSAGES, "retired_at"), (MESSAGES, "created_at")];

fn index(name: &str, keys: Document, unique: bool) -> IndexModel {
    let options = IndexOptions::builder()
        .name(name.to_string())
        .unique(unique.then_some(true))
        .build();
    IndexModel::builder().keys(keys).options(options).build()
}

fn wanted() -> [(&'static str, Vec<IndexModel>); 2] {
    [
        (
            MESSAGES,
            vec![
                index(
                    "conversation_msg_id",
                    doc! {"conversation_id": 1, "msg_id": -1},
                    true,
                ),
                index(
                    "parked_retired_at",
                    doc! {"parked": 1, "retired_at": 1},
                    false,
                ),
                index(
                    "parked_created_at",
                    doc! {"parked": 1, "created_at": 1},
                    false,
                ),
                index("attachment_key", doc! {"attachment.key": 1}, false),
            ],
        ),
        (
            LOG,
            vec![
                index(
                    "conversation_seq",
                    doc! {"conversation_id": 1, "seq": 1},
                    true,
                ),
                index("msg_version", doc! {"msg": 1, "version": 1}, true),
                index(
                    "conversation_kind_seq",
                    doc! {"conversation_id": 1, "kind": 1, "seq": 1},
                    false,
                ),
                index(
                    "conversation_request",
                    doc! {"conversation_id": 1, "request_id": 1},
                    true,
                ),
                index(
                    "todo_conversation",
                    doc! {"todo": 1, "conversation_id": 1},
                    false,
                ),
                index("kind_at", doc! {"kind": 1, "at": 1}, false),
                index("kind_wall", doc! {"kind": 1, "wall": 1}, false),
            ],
        ),
    ]
}

/// Creates every index the store's queries and compare-and-sets rely on, after checking that
/// the database does not hold the first layout.
///
/// Existing indexes are listed first and only missing ones created: re-issuing `createIndexes`
/// for two or more existing indexes crashed the connection handler of FerretDB v1.24.
pub(crate) async fn ensure(db: &Database) -> Result<()> {
    let collections = db.list_collection_names().await.map_err(map)?;
    if let Some(old) = OLD_LAYOUT
        .iter()
        .find(|c| collections.iter().any(|n| n == *c))
    {
        return Err(Error::new(
            imstore_core::ErrorKind::Backend,
            format!(
                "database {:?} holds collection {old:?} of the first imstore-mongodb layout; \
                 this version keeps events, commits and request records in `log`: move the data \
                 or use a fresh database",
                db.name()
            ),
        ));
    }
    for (name, models) in wanted() {
        let coll = db.collection::<Document>(name);
        let existing: Vec<String> = match coll.list_index_names().await {
            Ok(names) => names,
            Err(e) if code_of(&e) == Some(NAMESPACE_NOT_FOUND) => Vec::new(),
            Err(e) => return Err(map(e)),
        };
        let missing: Vec<IndexModel> = models
            .into_iter()
            .filter(|m| {
                m.options
                    .as_ref()
                    .and_then(|o| o.name.as_ref())
                    .is_none_or(|n| !existing.contains(n))
            })
            .collect();
        if !missing.is_empty() {
            coll.create_indexes(missing).await.map_err(map)?;
        }
        for (_, obsolete) in OBSOLETE.iter().filter(|(c, _)| *c == name) {
            if existing.iter().any(|n| n == obsolete) {
                coll.drop_index(*obsolete).await.map_err(map)?;
            }
        }
    }
    Ok(())
}
