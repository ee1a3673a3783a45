//! Reads of messages: one message, one page, and the rule that makes them current.
//!
//! A message document's lifecycle is a cache of its log: the log entry that creates version
//! `v + 1` is the commit, and the document is brought up to it right after (by the committer, or
//! by the purge if the committer died). So every read of a message also asks the log for an
//! entry after the document's version ([`current`]): a read that follows a commit in any order,
//! whoever made it, sees the commit. That is what lets a device that saw an event in the feed
//! `get` the message in the same state, and a request refused as a reused id find the winner's
//! effect already visible.

use std::collections::HashMap;

use imstore_core::backend::{Fields, PageQuery};
use imstore_core::{ConversationId, Direction, MsgId, Result, StoredMessage};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use crate::doc::{self as d, Commit, Row};
use crate::handle::MongoBackend;
use crate::queries;

/// How a message document stands against its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// The document shows the latest committed version.
    Current,
    /// A later version is committed; the row now carries it, the document does not yet.
    Behind,
    /// The message is purged (its document may not be deleted yet).
    Purged,
}

/// At most this many `$or` branches per query (a page or a purge batch may hold 10,000 rows;
/// MongoDB plans every branch).
const MAX_BRANCHES: usize = 500;

/// `rows` brought up to their log: each row's lifecycle replaced by the latest commit after its
/// document's version, in one query over the `{msg, version}` index.
pub(crate) async fn current(b: &MongoBackend, mut rows: Vec<Row>) -> Result<Vec<(Row, Freshness)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<Document> = Vec::new();
    for chunk in rows.chunks(MAX_BRANCHES) {
        let versions: Vec<(ObjectId, i64)> = chunk
            .iter()
            .map(|r| (r.id, i64::from(r.stored.lifecycle.version)))
            .collect();
        entries.extend(queries::find(b, queries::commits_after(&versions)).await?);
    }
    let mut latest: HashMap<ObjectId, (u32, &Document)> = HashMap::new();
    for e in &entries {
        let (msg, version) = (d::get_oid(e, "msg")?, d::get_version(e, "version")?);
        if latest.get(&msg).is_none_or(|(v, _)| *v < version) {
            latest.insert(msg, (version, e));
        }
    }
    let mut out = Vec::with_capacity(rows.len());
    for mut row in rows.drain(..) {
        let freshness = match latest.get(&row.id) {
            None => Freshness::Current,
            Some((_, e)) => match d::commit_of(e)? {
                Commit::Purged => Freshness::Purged,
                Commit::Applied(next) => {
                    row.stored.lifecycle = next;
                    Freshness::Behind
                }
            },
        };
        out.push((row, freshness));
    }
    Ok(out)
}

/// The message document of `msg_id` as stored (its lifecycle may trail the log).
pub(crate) async fn document(
    b: &MongoBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<Row>> {
    let mut q = queries::message_by_key(conversation.as_str(), msg_id.as_i64());
    if fields == Fields::NoContent {
        q.projection = Some(doc! {"content": 0});
    }
    queries::find_one(b, q)
        .await?
        .map(|doc| d::row_of(&doc))
        .transpose()
}

/// The message document of `msg_id` brought up to its log, or `None` when it does not exist or
/// is purged.
pub(crate) async fn committed(
    b: &MongoBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<Row>> {
    let Some(row) = document(b, conversation, msg_id, fields).await? else {
        return Ok(None);
    };
    Ok(current(b, vec![row])
        .await?
        .into_iter()
        .find(|(_, f)| *f != Freshness::Purged)
        .map(|(row, _)| row))
}

/// One message as committed, or `None` when it does not exist or is purged.
pub(crate) async fn fetch(
    b: &MongoBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<StoredMessage>> {
    Ok(committed(b, conversation, msg_id, fields)
        .await?
        .map(|row| row.stored))
}

/// Up to `query.fetch` messages after the cursor, as committed. A purged message whose document
/// is not deleted yet is skipped and the page filled from further on, so a page is short only
/// at the end of the conversation.
pub(crate) async fn page(
    b: &MongoBackend,
    conversation: &ConversationId,
    query: PageQuery,
) -> Result<Vec<StoredMessage>> {
    let newest_first = query.direction == Direction::NewestFirst;
    let wanted = query.fetch as usize;
    let mut out = Vec::with_capacity(wanted);
    let mut cursor = query.cursor;
    while out.len() < wanted {
        let ask = wanted - out.len();
        let q = queries::page(
            conversation.as_str(),
            cursor.map(MsgId::as_i64),
            newest_first,
            i64::try_from(ask).unwrap_or(i64::MAX),
        );
        let docs = queries::find(b, q).await?;
        let rows = docs.iter().map(d::row_of).collect::<Result<Vec<_>>>()?;
        let exhausted = rows.len() < ask;
        cursor = rows.last().map(|r| r.stored.message.msg_id).or(cursor);
        out.extend(
            current(b, rows)
                .await?
                .into_iter()
                .filter(|(_, f)| *f != Freshness::Purged)
                .map(|(row, _)| row.stored),
        );
        if exhausted {
            break;
        }
    }
    Ok(out)
}
