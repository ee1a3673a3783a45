//! The change feed: the events (kind 1) of the conversation's state partition, in seq order,
//! with its head and the purge's low-water mark (statics of that partition).
//!
//! Events get strictly increasing seqs in commit order (every transition's batch claims the next
//! seq `IF feed_head = <read>`), so a QUORUM read cannot see seq n+1 without seq n: the round that
//! writes n+1 first completes any earlier accepted round on the partition. The purge removes a
//! message's events in its commit batch and raises `purged_through` in the same batch.

use std::collections::HashMap;

use futures::future::try_join_all;
use imstore_core::backend::{FeedHead, FeedSlice};
use imstore_core::{ConversationId, FeedCursor, Result};

use crate::error;
use crate::handle::ScyllaBackend;
use crate::read;
use crate::rows::{self, EventCols};

/// Conversations per `heads` request: a call of 1,000 is 10 requests, in flight together.
const HEADS_PER_REQUEST: usize = 100;

fn seq(v: Option<i64>) -> u64 {
    v.and_then(|h| u64::try_from(h).ok()).unwrap_or(0)
}

/// Up to `limit` events after `after`, the feed head and the low-water mark: the statics come
/// with every event row (one snapshot); when there is no row they are read from the head row.
///
/// Each read is a window of `limit` seqs, so it passes at most `limit` purged events, and none
/// from a cursor at or above the mark. A cursor below the mark is told to resync and given the
/// events after the mark (the core drops those at or below it), read from the mark.
pub(crate) async fn changes(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    after: FeedCursor,
    limit: u32,
) -> Result<FeedSlice> {
    // A cursor beyond i64 is beyond any seq: nothing follows it, and the head says so.
    let from = i64::try_from(after.0).unwrap_or(i64::MAX);
    let mut slice = window(b, conversation, from, limit).await?;
    if let Some(mark) = i64::try_from(slice.purged_through)
        .ok()
        .filter(|&m| m > from)
    {
        let events = window(b, conversation, mark, limit).await?;
        slice = FeedSlice {
            purged_through: slice.purged_through.max(events.purged_through),
            head: slice.head.max(events.head),
            events: events.events,
        };
    }
    Ok(slice)
}

/// The events in `(from, from + limit]` with the statics they carry (or the head row's).
async fn window(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    from: i64,
    limit: u32,
) -> Result<FeedSlice> {
    let res = b
        .session()
        .execute_unpaged(
            &b.st().events_after,
            (
                conversation.as_str(),
                from,
                from.saturating_add(i64::from(limit)),
                i32::try_from(limit).unwrap_or(i32::MAX),
            ),
        )
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("change events", e))?;
    let mut statics = None;
    let mut events = Vec::new();
    for row in res
        .rows::<EventCols>()
        .map_err(|e| error::decode("change events", e))?
    {
        let cols = row.map_err(|e| error::decode("change events", e))?;
        statics = Some((cols.6, cols.7));
        events.push(rows::event(conversation, cols)?);
    }
    let (head, purged_through) = match statics {
        Some(s) => s,
        None => read::head(b, conversation, false).await?,
    };
    Ok(FeedSlice {
        events,
        head: seq(head),
        purged_through: seq(purged_through),
    })
}

/// The heads of `conversations`, in order: one `IN` request per [`HEADS_PER_REQUEST`]
/// conversations, all in flight together, each reading the head row of each partition asked (by
/// name: no tombstone of the partition is passed), so the cost is the number of conversations,
/// never their histories. A conversation never written has no partition: head 0.
///
/// Measured on Cassandra 5 (bench `--paths device_sync`, 500 conversations): one read per
/// conversation, 32 in flight, took 500 requests; this takes 5.
pub(crate) async fn heads(
    b: &ScyllaBackend,
    conversations: &[ConversationId],
) -> Result<Vec<FeedHead>> {
    let chunks = try_join_all(
        conversations
            .chunks(HEADS_PER_REQUEST)
            .map(|chunk| heads_chunk(b, chunk)),
    )
    .await?;
    Ok(conversations
        .chunks(HEADS_PER_REQUEST)
        .zip(chunks)
        .flat_map(|(chunk, found)| {
            chunk.iter().map(move |c| {
                let (head, purged_through) = found.get(c.as_str()).copied().unwrap_or_default();
                FeedHead {
                    head: seq(head),
                    purged_through: seq(purged_through),
                }
            })
        })
        .collect())
}

/// The heads found for one chunk, by conversation (absent: never written). On a keyspace made
/// before head rows, the conversations without one are read again from their first rows.
async fn heads_chunk(
    b: &ScyllaBackend,
    chunk: &[ConversationId],
) -> Result<HashMap<String, (Option<i64>, Option<i64>)>> {
    let keys: Vec<&str> = chunk.iter().map(ConversationId::as_str).collect();
    let mut found = heads_by(b, &b.st().heads_in, &keys).await?;
    if !b.inner().head_rows {
        let missing: Vec<&str> = keys
            .into_iter()
            .filter(|k| !found.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            found.extend(heads_by(b, &b.st().heads_scan_in, &missing).await?);
        }
    }
    Ok(found)
}

async fn heads_by(
    b: &ScyllaBackend,
    st: &scylla::statement::prepared::PreparedStatement,
    keys: &[&str],
) -> Result<HashMap<String, (Option<i64>, Option<i64>)>> {
    let res = b
        .session()
        .execute_unpaged(st, (keys,))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("feed heads", e))?;
    res.rows::<(String, Option<i64>, Option<i64>, Option<i64>)>()
        .map_err(|e| error::decode("feed heads", e))?
        .map(|r| {
            r.map(|(c, head, purged, _)| (c, (head, purged)))
                .map_err(|e| error::decode("feed heads", e))
        })
        .collect()
}
