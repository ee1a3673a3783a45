//! The change feed: the events (kind 1) of the conversation's state partition, in seq order,
//! with its head and the purge's low-water mark (statics of that partition).
//!
//! Events get strictly increasing seqs in commit order (every transition's batch claims the next
//! seq `IF feed_head = <read>`), so a QUORUM read cannot see seq n+1 without seq n: the round that
//! writes n+1 first completes any earlier accepted round on the partition. The purge removes a
//! message's events in its commit batch and raises `purged_through` in the same batch.

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use imstore_core::backend::{FeedHead, FeedSlice};
use imstore_core::{ConversationId, FeedCursor, Result};

use crate::error;
use crate::handle::ScyllaBackend;
use crate::read;
use crate::rows::{self, EventCols};

/// Head reads in flight for one `heads` call.
const HEADS_IN_FLIGHT: usize = 32;

fn seq(v: Option<i64>) -> u64 {
    v.and_then(|h| u64::try_from(h).ok()).unwrap_or(0)
}

/// Up to `limit` events after `after`, the feed head and the low-water mark: the statics come
/// with every event row (one snapshot); when there is no row they are read right after.
pub(crate) async fn changes(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    after: FeedCursor,
    limit: u32,
) -> Result<FeedSlice> {
    // A cursor beyond i64 is beyond any seq: nothing follows it, and the head says so.
    let from = i64::try_from(after.0).unwrap_or(i64::MAX);
    let res = b
        .session()
        .execute_unpaged(
            &b.st().events_after,
            (
                conversation.as_str(),
                from,
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

/// The heads of `conversations`, in order: one static read per conversation, a few dozen in
/// flight, so the cost is the number of conversations, never their histories.
pub(crate) async fn heads(
    b: &ScyllaBackend,
    conversations: &[ConversationId],
) -> Result<Vec<FeedHead>> {
    // Boxed, so the stream's futures have one named type (async_trait needs it to be Send).
    let reads: Vec<BoxFuture<'_, Result<FeedHead>>> = conversations
        .iter()
        .map(|c| {
            async move {
                let (head, purged_through) = read::head(b, c, false).await?;
                Ok(FeedHead {
                    head: seq(head),
                    purged_through: seq(purged_through),
                })
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(reads)
        .buffered(HEADS_IN_FLIGHT)
        .try_collect()
        .await
}
