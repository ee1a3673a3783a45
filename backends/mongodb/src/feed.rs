//! The per-conversation change feed: the `event` entries of the log, in `seq` order.
//!
//! Every entry that takes a feed position (event, purge, fence) is inserted at the
//! conversation's highest `seq` plus one, and the unique `{conversation_id, seq}` index makes
//! that insert the compare-and-set: a writer that read a stale head loses and reads again. So
//! `seq n + 1` is only ever taken after `seq n` was visible, and positions follow commit order:
//! a reader pulling `seq > cursor` in order cannot skip an event appended later, and the order
//! of the feed is the order in which the transitions took effect (the event *is* the commit).
//!
//! The highest entry of a conversation is never deleted, and no entry that held a position is
//! deleted before a day has passed, so a position is never handed out twice (see `purge`).

use std::collections::HashSet;

use futures::TryStreamExt;
use imstore_core::backend::FeedSlice;
use imstore_core::{ConversationId, FeedCursor, Result};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use crate::doc::{self as d, kind, todo};
use crate::error::map;
use crate::handle::MongoBackend;

/// The highest feed position taken in a conversation (0 when none). Positions are Int64; the
/// `$gt: 0` keeps request records (whose position slot holds an ObjectId, which sorts above
/// every number) out of it.
pub(crate) async fn head(b: &MongoBackend, conversation: &ConversationId) -> Result<i64> {
    let head = b
        .log
        .find_one(doc! {"conversation_id": conversation.as_str(), "seq": {"$gt": 0_i64}})
        .sort(doc! {"seq": -1})
        .projection(doc! {"seq": 1})
        .await
        .map_err(map)?;
    match head {
        Some(h) => d::get_i64(&h, "seq"),
        None => Ok(0),
    }
}

/// The message documents of `conversation` whose purge is committed but not finished: their
/// events are still entries of kind `event`, yet no reader may see them any more.
async fn purging(b: &MongoBackend, conversation: &ConversationId) -> Result<HashSet<ObjectId>> {
    let docs: Vec<Document> = b
        .log
        .find(doc! {"todo": todo::FINISH, "conversation_id": conversation.as_str()})
        .projection(doc! {"msg": 1})
        .await
        .map_err(map)?
        .try_collect()
        .await
        .map_err(map)?;
    docs.iter().map(|e| d::get_oid(e, "msg")).collect()
}

/// Up to `limit` events after `after`, in seq order, and the head read after them.
///
/// The unfinished purges of the conversation are read first: one committed before that read is
/// seen and its events skipped, and one finished before it has already taken its events off
/// the feed. So a device that was told a message is gone is never shown its events again.
pub(crate) async fn changes(
    b: &MongoBackend,
    conversation: &ConversationId,
    after: FeedCursor,
    limit: u32,
) -> Result<FeedSlice> {
    let purging = purging(b, conversation).await?;
    let wanted = limit as usize;
    let mut events = Vec::with_capacity(wanted);
    // A cursor beyond i64 is beyond every head; the pipeline refuses it.
    let mut after_seq = i64::try_from(after.0).unwrap_or(i64::MAX);
    while events.len() < wanted {
        let ask = wanted - events.len();
        let docs: Vec<Document> = b
            .log
            .find(doc! {
                "conversation_id": conversation.as_str(),
                "seq": {"$gt": after_seq},
                "kind": kind::EVENT,
            })
            .sort(doc! {"seq": 1})
            .limit(i64::try_from(ask).unwrap_or(i64::MAX))
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        let exhausted = docs.len() < ask;
        for e in &docs {
            after_seq = d::get_i64(e, "seq")?;
            if !purging.contains(&d::get_oid(e, "msg")?) {
                events.push(d::event_of(e, conversation)?);
            }
        }
        if exhausted {
            break;
        }
    }
    let head = head(b, conversation).await?;
    Ok(FeedSlice {
        head: u64::try_from(head).unwrap_or(0),
        events,
    })
}
