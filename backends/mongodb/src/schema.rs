//! The collections of a store's database and the indexes built (idempotently) when it opens.
//!
//! * `messages`: one document per message. Unique `{conversation_id: 1, msg_id: -1}` (the key,
//!   idempotent inserts, both page directions), `{retired_at: 1}` and `{created_at: 1}` (purge).
//! * `changes`: the per-message commit log. Unique `{msg: 1, version: 1}` (`msg` is the message
//!   document's `_id`): inserting version `v + 1` IS the compare-and-set of a transition or purge.
//!   `{conversation_id: 1, done: 1}` and `{done: 1, kind: 1}` find unfinished records.
//! * `events`: the change feed, one document per event. Unique `{conversation_id: 1, seq: 1}`
//!   (gap-free order) and unique `{conversation_id: 1, msg_id: 1, version: 1}` (one event per
//!   version, so completing a commit twice appends once).
//! * `requests`: request-id claims and first outcomes. Unique
//!   `{conversation_id: 1, request_id: 1, kind: 1}`, and `{at: 1}` for purging old records.
//! * `legal_holds`: `_id` = conversation id, `held` flag.
//!
//! No TTL index is created: a TTL monitor would delete messages without reporting their
//! attachment keys, without removing their change events and regardless of legal hold, so
//! retention is the explicit `purge` only (see the README).

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use crate::error::map;
use imstore_core::Result;

/// The messages collection.
pub(crate) const MESSAGES: &str = "messages";
/// The per-message commit log.
pub(crate) const CHANGES: &str = "changes";
/// The change feed.
pub(crate) const EVENTS: &str = "events";
/// The request-id claims and outcomes.
pub(crate) const REQUESTS: &str = "requests";
/// The legal holds collection.
pub(crate) const HOLDS: &str = "legal_holds";

fn index(name: &str, keys: Document, unique: bool) -> IndexModel {
    let mut options = IndexOptions::builder().name(name.to_string()).build();
    if unique {
        options.unique = Some(true);
    }
    IndexModel::builder().keys(keys).options(options).build()
}

/// Creates the indexes of `coll` that do not exist yet (by name).
///
/// Existing indexes are listed first rather than re-created: re-issuing `createIndexes` for
/// existing indexes is a no-op on MongoDB but crashed the connection handler of FerretDB v1.24.
async fn ensure(coll: &Collection<Document>, wanted: Vec<IndexModel>) -> Result<()> {
    let existing: Vec<String> = match coll.list_index_names().await {
        Ok(names) => names,
        // A collection that does not exist yet has no indexes (NamespaceNotFound, code 26).
        Err(e) if crate::error::code_of(&e) == Some(26) => Vec::new(),
        Err(e) => return Err(map(e)),
    };
    let missing: Vec<IndexModel> = wanted
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
    Ok(())
}

/// Creates every index the store's queries and compare-and-sets rely on.
pub(crate) async fn ensure_indexes(
    messages: &Collection<Document>,
    changes: &Collection<Document>,
    events: &Collection<Document>,
    requests: &Collection<Document>,
) -> Result<()> {
    ensure(
        messages,
        vec![
            index(
                "conversation_msg_id",
                doc! {"conversation_id": 1, "msg_id": -1},
                true,
            ),
            index("retired_at", doc! {"retired_at": 1}, false),
            index("created_at", doc! {"created_at": 1}, false),
        ],
    )
    .await?;
    ensure(
        changes,
        vec![
            index("msg_version", doc! {"msg": 1, "version": 1}, true),
            index(
                "conversation_done",
                doc! {"conversation_id": 1, "done": 1},
                false,
            ),
            index("done_kind", doc! {"done": 1, "kind": 1}, false),
        ],
    )
    .await?;
    ensure(
        events,
        vec![
            index(
                "conversation_seq",
                doc! {"conversation_id": 1, "seq": 1},
                true,
            ),
            index(
                "conversation_msg_version",
                doc! {"conversation_id": 1, "msg_id": 1, "version": 1},
                true,
            ),
        ],
    )
    .await?;
    ensure(
        requests,
        vec![
            index(
                "conversation_request_kind",
                doc! {"conversation_id": 1, "request_id": 1, "kind": 1},
                true,
            ),
            index("at", doc! {"at": 1}, false),
        ],
    )
    .await?;
    Ok(())
}
