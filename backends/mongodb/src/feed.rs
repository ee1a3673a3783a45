//! The per-conversation change feed: the `event` entries of the log, in `seq` order.
//!
//! Every entry that takes a feed position (event, purge, fence) is inserted at the
//! conversation's highest position plus one ([`position`]), and the unique
//! `{conversation_id, seq}` index makes that insert the compare-and-set: a writer that read a
//! stale position loses and reads again. So `seq n + 1` is only ever taken after `seq n` was
//! visible, and positions follow commit order: a reader pulling `seq > cursor` in order cannot
//! skip an event appended later, and the order of the feed is the order in which the
//! transitions took effect (the event *is* the commit).
//!
//! What a reader is told: the head is the highest seq ever handed out as an event (events and
//! `gone` events, which are former events), and `purged_through` the highest seq of an event the
//! purge removed (a `gone` entry, or an event of a message whose purge is committed). Neither
//! ever goes down: events are never deleted (only turned `gone`), and the highest `gone` entry of
//! a conversation is never deleted. Purges and fences take positions too, but are no events: a
//! device at the last event is not sent to pull again because of them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use futures::{StreamExt, TryStreamExt};

use imstore_core::backend::{FeedHead, FeedSlice};
use imstore_core::{ConversationId, FeedCursor, Result};
use mongodb::bson::Document;
use mongodb::bson::oid::ObjectId;

use crate::doc as d;
use crate::handle::MongoBackend;
use crate::queries::{self, Highest};

/// The highest seq of the entries of `conversation` of the sort `which` (0 when none); see
/// [`queries::highest`].
async fn highest(b: &MongoBackend, conversation: &ConversationId, which: Highest) -> Result<i64> {
    match queries::find_one(b, queries::highest(conversation.as_str(), which)).await? {
        Some(t) => d::get_i64(&t, "seq"),
        None => Ok(0),
    }
}

/// The highest feed position taken in a conversation (0 when none): the next entry that
/// takes a position is inserted at this plus one.
pub(crate) async fn position(b: &MongoBackend, conversation: &ConversationId) -> Result<i64> {
    highest(b, conversation, Highest::Position).await
}

/// The highest seq of a `gone` entry in a conversation (0 when none): never deleted, it keeps
/// `purged_through` from going down.
pub(crate) async fn highest_gone(b: &MongoBackend, conversation: &ConversationId) -> Result<i64> {
    highest(b, conversation, Highest::Gone).await
}

/// The message documents of `conversation` whose purge is committed but not finished: their
/// events are still entries of kind `event`, yet no reader may see them any more.
async fn purging(b: &MongoBackend, conversation: &ConversationId) -> Result<HashSet<ObjectId>> {
    let docs = queries::find(b, queries::purging(conversation.as_str())).await?;
    docs.iter().map(|e| d::get_oid(e, "msg")).collect()
}

fn unsigned(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

/// Where the feed stands, read after whatever the caller read under `purging` (the unfinished
/// purges it read first).
async fn stand(
    b: &MongoBackend,
    conversation: &ConversationId,
    purging: &HashSet<ObjectId>,
) -> Result<FeedHead> {
    let removing = async {
        if purging.is_empty() {
            return Ok(0);
        }
        let msgs: Vec<ObjectId> = purging.iter().copied().collect();
        highest(b, conversation, Highest::EventsOf(msgs)).await
    };
    let (head, gone, removing) = futures::try_join!(
        highest(b, conversation, Highest::Head),
        highest_gone(b, conversation),
        removing,
    )?;
    Ok(FeedHead {
        head: unsigned(head),
        purged_through: unsigned(gone.max(removing)),
    })
}

/// Up to `limit` events after `after`, in seq order, and where the feed stands, read after them.
///
/// The unfinished purges of the conversation are read first: one committed before that read is
/// seen and its events skipped, and one finished before it has already taken its events off
/// the feed. So a device that was told a message is gone is never shown its events again. A
/// slice is short only at the end of the feed.
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
        let q = queries::feed_pull(
            conversation.as_str(),
            after_seq,
            i64::try_from(ask).unwrap_or(i64::MAX),
        );
        let docs = queries::find(b, q).await?;
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
    let stood = stand(b, conversation, &purging).await?;
    Ok(FeedSlice {
        events,
        head: stood.head,
        purged_through: stood.purged_through,
    })
}

/// How many conversations' heads are read at once when the server cannot group them.
const HEADS_CONCURRENCY: usize = 16;

/// Where each conversation's feed stands: in two round trips whatever the number of
/// conversations (the pipeline bounds it) or their histories where the server groups
/// ([`grouped_heads`]); else a few indexed reads per conversation, a bounded number at once.
pub(crate) async fn heads(
    b: &MongoBackend,
    conversations: &[ConversationId],
) -> Result<Vec<FeedHead>> {
    if conversations.is_empty() {
        return Ok(Vec::new());
    }
    if b.grouped_heads.load(Ordering::Relaxed) {
        if let Some(heads) = grouped_heads(b, conversations).await? {
            return Ok(heads);
        }
        // FerretDB v1: no `$first` or `$max` accumulator. Remembered, so every later call
        // goes straight to the reads below.
        b.grouped_heads.store(false, Ordering::Relaxed);
    }
    futures::stream::iter(conversations.iter().cloned())
        .map(|c| async move {
            let purging = purging(b, &c).await?;
            stand(b, &c, &purging).await
        })
        .buffered(HEADS_CONCURRENCY)
        .try_collect()
        .await
}

/// The reads of [`stand`] after [`purging`], batched with `$in`; `None` when the server does
/// not implement the grouping.
///
/// The unfinished purges of every conversation first, then together the highest event, the
/// highest `gone` entry and the highest event of a message being purged, each grouped per
/// conversation (on MongoDB one index seek per conversation; see
/// [`queries::highest_of_kind_in`]). Reading the purges first keeps what [`stand`] guarantees:
/// a purge committed before that read has its events counted in `purged_through`, one
/// finished before it has turned them `gone`.
async fn grouped_heads(
    b: &MongoBackend,
    conversations: &[ConversationId],
) -> Result<Option<Vec<FeedHead>>> {
    let ids: Vec<&str> = conversations.iter().map(|c| c.as_str()).collect();
    let purging: Vec<ObjectId> = queries::find(b, queries::purging_in(&ids))
        .await?
        .iter()
        .map(|e| d::get_oid(e, "msg"))
        .collect::<Result<_>>()?;
    let removing = async {
        if purging.is_empty() {
            return Ok(Some(Vec::new()));
        }
        queries::aggregate(b, queries::highest_events_of(&purging)).await
    };
    let (events, gone, removing) = futures::try_join!(
        queries::aggregate(b, queries::highest_of_kind_in(&ids, d::kind::EVENT)),
        queries::aggregate(b, queries::highest_of_kind_in(&ids, d::kind::GONE)),
        removing,
    )?;
    let (Some(events), Some(gone), Some(removing)) = (events, gone, removing) else {
        return Ok(None);
    };
    let (events, gone, removing) = (
        by_conversation(&events)?,
        by_conversation(&gone)?,
        by_conversation(&removing)?,
    );
    Ok(Some(
        ids.iter()
            .map(|c| {
                let of = |m: &HashMap<&str, i64>| m.get(c).copied().unwrap_or(0);
                FeedHead {
                    head: unsigned(of(&events).max(of(&gone))),
                    purged_through: unsigned(of(&gone).max(of(&removing))),
                }
            })
            .collect(),
    ))
}

/// The `{_id: conversation, seq}` answers of a grouped pipeline, by conversation.
fn by_conversation(docs: &[Document]) -> Result<HashMap<&str, i64>> {
    docs.iter()
        .map(|g| Ok((d::get_str(g, "_id")?, d::get_i64(g, "seq")?)))
        .collect()
}
