//! The change feed: a range scan of `change_events` after the cursor, with the feed's head and
//! purge mark; and the heads of many conversations at once.

use imstore_core::backend::{FeedHead, FeedSlice};
use imstore_core::{ConversationId, Error, FeedCursor, Result};
use sqlx::postgres::PgPool;

use crate::error::map;
use crate::read::reading;
use crate::rows::{self, Cols, EventCols};

/// Up to `limit` events with seq after `after`, the highest seq ever handed out, and the highest
/// seq the purge removed.
///
/// One statement, so one snapshot: the head (`conversations.feed_seq`, never decreased, kept
/// after a purge) is at least every seq returned, and the purge mark is the one committed with
/// the event deletions this snapshot sees (both in one purge transaction). Seq order is commit
/// order (see `transition.rs`), so a device that moves its cursor to the last seq returned never
/// skips an event committed later.
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
            "SELECT COALESCE(c.feed_seq, 0) AS head, COALESCE(c.purged_through, 0) AS purged, \
                 e.seq IS NOT NULL AS has_event, e.seq, e.msg_id, e.status, e.version, e.at, \
                 e.by_user \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN conversations c ON c.conversation_id = $1 \
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
    // Every row carries the head and the mark; the events' columns are null on the one row of
    // an empty page. Positions are looked up once (see `rows::Cols`).
    let Some(first) = found.first() else {
        return Err(Error::corrupt("the feed query answered no row"));
    };
    let (head, purged, has_event) = (
        rows::ordinal(first, "head")?,
        rows::ordinal(first, "purged")?,
        rows::ordinal(first, "has_event")?,
    );
    let cols = EventCols::of(first)?;
    slice.events.reserve(found.len());
    for row in &found {
        if rows::at::<bool>(row, has_event)? {
            slice.events.push(rows::event_at(conversation, row, &cols)?);
        }
    }
    slice.head = rows::count_at(first, head)?;
    slice.purged_through = rows::count_at(first, purged)?;
    Ok(slice)
}

/// The head and purge mark of each of `conversations`, in the same order (zeros for one never
/// written): one statement, a primary-key lookup per conversation asked.
///
/// The `LATERAL ... LIMIT 1` keeps the planner from turning the lookups into a hash join over
/// the whole `conversations` table (which it picks for a plain join once the list is a sizeable
/// fraction of the table: cost proportional to every conversation, not to those asked).
pub(crate) async fn heads(
    pool: &PgPool,
    conversations: &[ConversationId],
) -> Result<Vec<FeedHead>> {
    let ids: Vec<&str> = conversations.iter().map(ConversationId::as_str).collect();
    let found = reading(|| {
        sqlx::query(
            "SELECT k.ord, COALESCE(c.feed_seq, 0) AS head, \
                 COALESCE(c.purged_through, 0) AS purged \
             FROM UNNEST($1::text[]) WITH ORDINALITY AS k (conversation_id, ord) \
             LEFT JOIN LATERAL ( \
                 SELECT feed_seq, purged_through FROM conversations \
                 WHERE conversation_id = k.conversation_id LIMIT 1) c ON true \
             ORDER BY k.ord",
        )
        .bind(&ids)
        .fetch_all(pool)
    })
    .await
    .map_err(map)?;
    if found.len() != conversations.len() {
        return Err(Error::corrupt(format!(
            "the heads query answered {} rows for {} conversations",
            found.len(),
            conversations.len()
        )));
    }
    let Some(first) = found.first() else {
        return Ok(Vec::new());
    };
    let (head, purged) = (
        rows::ordinal(first, "head")?,
        rows::ordinal(first, "purged")?,
    );
    found
        .iter()
        .map(|row| {
            Ok(FeedHead {
                head: rows::count_at(row, head)?,
                purged_through: rows::count_at(row, purged)?,
            })
        })
        .collect()
}
