//! The change feed: a range scan of `change_events` after the cursor, and the feed's head.

use imstore_core::backend::FeedSlice;
use imstore_core::{ConversationId, FeedCursor, Result};
use sqlx::postgres::PgPool;

use crate::error::map;
use crate::read::reading;
use crate::rows::{self, column};

/// Up to `limit` events with seq after `after`, and the highest seq ever handed out.
///
/// One statement, so one snapshot: the head (`conversations.feed_seq`, never decreased, kept
/// after a purge) is at least every seq returned. Seq order is commit order (see
/// `transition.rs`), so a device that moves its cursor to the last seq returned never skips an
/// event committed later.
pub(crate) async fn changes(
    pool: &PgPool,
    conversation: &ConversationId,
    after: FeedCursor,
    limit: u32,
) -> Result<FeedSlice> {
    // A cursor beyond i64 is beyond any head: no events, and the pipeline refuses it against
    // the head as InvalidInput.
    let after_seq = i64::try_from(after.0).unwrap_or(i64::MAX);
    let found = reading(|| {
        sqlx::query(
            "SELECT COALESCE((SELECT feed_seq FROM conversations WHERE conversation_id = $1), 0) \
                 AS head, e.seq IS NOT NULL AS has_event, e.seq, e.msg_id, e.status, e.version, \
                 e.at, e.by_user \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN LATERAL ( \
                 SELECT seq, msg_id, status, version, at, by_user FROM change_events \
                 WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e ON true \
             ORDER BY e.seq",
        )
        .bind(conversation.as_str())
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(pool)
    })
    .await
    .map_err(map)?;
    let mut slice = FeedSlice::default();
    for row in &found {
        slice.head = rows::count(row, "head")?;
        if column::<bool>(row, "has_event")? {
            slice.events.push(rows::event(conversation, row)?);
        }
    }
    Ok(slice)
}
