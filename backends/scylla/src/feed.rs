//! The change feed: the events (kind 1) of the conversation's state partition, in seq order.
//!
//! Events get strictly increasing seqs in commit order (every transition's batch claims the next
//! seq `IF feed_head = <read>`), so a QUORUM read cannot see seq n+1 without seq n: the round that
//! writes n+1 first completes any earlier accepted round on the partition.

use imstore_core::backend::FeedSlice;
use imstore_core::{ConversationId, FeedCursor, Result};

use crate::error;
use crate::handle::ScyllaBackend;
use crate::read;
use crate::rows::{self, EventCols};

/// Up to `limit` events after `after`, and the feed head: the static `feed_head` comes with
/// every event row (one snapshot); when there is no row it is read right after.
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
    let mut head = None;
    let mut events = Vec::new();
    for row in res
        .rows::<EventCols>()
        .map_err(|e| error::decode("change events", e))?
    {
        let cols = row.map_err(|e| error::decode("change events", e))?;
        head = head.max(cols.6);
        events.push(rows::event(conversation, cols)?);
    }
    let head = match head {
        Some(h) => Some(h),
        None => read::head(b, conversation, false).await?,
    };
    Ok(FeedSlice {
        events,
        head: head.and_then(|h| u64::try_from(h).ok()).unwrap_or(0),
    })
}
