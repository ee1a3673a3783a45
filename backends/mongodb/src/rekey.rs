//! What the core's re-key job needs: a scan over every stored content, and a compare-and-set
//! of one message's content bytes. Neither touches status, version or the feed.

use imstore_core::backend::{ContentScan, StoredContent};
use imstore_core::{ConversationId, Error, MsgId, Result};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, doc};

use crate::doc::{self as d, binary};
use crate::error::map;
use crate::handle::MongoBackend;
use crate::queries;

/// Up to `limit` contents after `after` in `_id` order (the token is the last `_id`, in hex):
/// every message document is visited once, whatever is inserted or deleted meanwhile; a
/// message inserted during the scan by a client whose ObjectIds sort lower may be missed.
pub(crate) async fn scan(b: &MongoBackend, after: Option<&str>, limit: u32) -> Result<ContentScan> {
    let after = after
        .map(|token| {
            ObjectId::parse_str(token)
                .map_err(|_| Error::invalid_input("resume", "not a scan token"))
        })
        .transpose()?;
    let docs = queries::find(b, queries::content_scan(after, i64::from(limit) + 1)).await?;
    let more = docs.len() > limit as usize;
    let page = &docs[..docs.len().min(limit as usize)];
    let contents = page
        .iter()
        .map(|m| {
            Ok(StoredContent {
                conversation: ConversationId::new(d::get_str(m, "conversation_id")?)
                    .map_err(|_| crate::error::bad_field("conversation_id", "is not valid"))?,
                msg_id: d::get_msg_id(m, "msg_id")?,
                content: match m.get("content") {
                    Some(Bson::Binary(b)) => b.bytes.clone(),
                    _ => return Err(crate::error::bad_field("content", "is not binary")),
                },
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = match (more, page.last()) {
        (true, Some(last)) => Some(d::get_oid(last, "_id")?.to_hex()),
        _ => None,
    };
    Ok(ContentScan { contents, next })
}

/// Writes `replacement` as the message's content if it is still exactly `expected`; false when
/// the message is gone or its content changed. (On FerretDB the filter is not re-checked with
/// the write; the only other writer of content is the re-key job itself, whose replacements of
/// one content are all valid.)
pub(crate) async fn replace(
    b: &MongoBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool> {
    let mut filter = queries::message_by_key(conversation.as_str(), msg_id.as_i64()).filter;
    filter.insert("content", binary(expected.to_vec()));
    let r = b
        .messages
        .update_one(
            filter,
            doc! {"$set": {"content": binary(replacement.to_vec())}},
        )
        .await
        .map_err(map)?;
    Ok(r.matched_count == 1)
}
