//! The purge's due-day indexes and how they are read.
//!
//! * `purge_queue` (days in `purge_days` shard 0): a transition queues its request record, and
//!   the message when it becomes Recalled/Deleted, at `now + retention`, BEFORE its batch (a
//!   crash leaves at worst a stale entry, which the purge re-checks and drops).
//! * `history_queue` (shard 1): the insert queues every message by the day it was accepted;
//!   with a history limit the purge reads the days up to the history cutoff (the insert cannot
//!   know the policy; the purge job does).

use std::ops::ControlFlow;

use imstore_core::{ConversationId, Lifecycle, MsgId, Policy, Result, Status, Timestamp};
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::read::day_of;

/// `purge_days` shard of `purge_queue` days.
pub(crate) const RETENTION_SHARD: i32 = 0;
/// `purge_days` shard of `history_queue` days.
pub(crate) const HISTORY_SHARD: i32 = 1;
/// Queue rows fetched per page.
const QUEUE_PAGE: i32 = 256;
/// Day rows fetched per round trip.
const DAYS_PAGE: i32 = 32;

/// Writes the `purge_days` row of `day` in `shard`, once per process and day.
async fn note_day(b: &ScyllaBackend, shard: i32, day: i32) -> Result<()> {
    let known = &b.inner().known_days;
    if known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&(shard, day))
    {
        return Ok(());
    }
    b.session()
        .execute_unpaged(&b.st().days_add, (shard, day))
        .await
        .map_err(error::execution)?;
    known
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((shard, day));
    Ok(())
}

/// Queues `(conversation, msg_id)`, and the request record `request_id` when not empty, for the
/// purge at `due`.
pub(crate) async fn enqueue_retention(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    request_id: &str,
    due: Timestamp,
) -> Result<()> {
    let day = day_of(due);
    note_day(b, RETENTION_SHARD, day).await?;
    b.session()
        .execute_unpaged(
            &b.st().queue_add,
            (
                day,
                due.as_millis(),
                conversation.as_str(),
                msg_id.as_i64(),
                request_id,
            ),
        )
        .await
        .map_err(error::execution)?;
    Ok(())
}

/// Indexes a message by the time it was accepted, for a history limit.
pub(crate) async fn enqueue_history(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    created_at: Timestamp,
) -> Result<()> {
    let day = day_of(created_at);
    note_day(b, HISTORY_SHARD, day).await?;
    b.session()
        .execute_unpaged(
            &b.st().history_add,
            (
                day,
                created_at.as_millis(),
                conversation.as_str(),
                msg_id.as_i64(),
            ),
        )
        .await
        .map_err(error::execution)?;
    Ok(())
}

/// When a message in state `lc` is next worth looking at for the retention: its recall or
/// deletion plus the retention. A scheduling hint only; whether it goes is always
/// `PurgeJob::purgeable`.
pub(crate) fn retention_due(lc: &Lifecycle, policy: &Policy) -> Option<Timestamp> {
    let since = match lc.status {
        Status::Recalled => lc.recalled_at,
        Status::Deleted => lc.deleted_at,
        Status::Normal => None,
    };
    since.map(|t| t.saturating_add(policy.retention()))
}

/// Reads the days of `shard` after `after` up to `upto`.
pub(crate) async fn days(b: &ScyllaBackend, shard: i32, after: i32, upto: i32) -> Result<Vec<i32>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().days_list, (shard, after, upto, DAYS_PAGE))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("purge days", e))?;
    res.rows::<(i32,)>()
        .map_err(|e| error::decode("purge days", e))?
        .map(|r| r.map(|(d,)| d).map_err(|e| error::decode("purge days", e)))
        .collect()
}

pub(crate) async fn is_empty(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    values: impl SerializeRow,
) -> Result<bool> {
    let res = b
        .session()
        .execute_unpaged(st, values)
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("emptiness check", e))?;
    Ok(res.rows_num() == 0)
}

/// Pages of `st` over one day's partition, as raw rows decoded by `T`.
pub(crate) async fn page_of<T>(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    values: (i32, i64),
    paging: PagingState,
) -> Result<(Vec<T>, Option<PagingState>)>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let mut st = st.clone();
    st.set_page_size(QUEUE_PAGE);
    let (res, next) = b
        .session()
        .execute_single_page(&st, values, paging)
        .await
        .map_err(error::execution)?;
    let rows = res
        .into_rows_result()
        .map_err(|e| error::decode("purge index", e))?
        .rows::<T>()
        .map_err(|e| error::decode("purge index", e))?
        .collect::<std::result::Result<Vec<T>, _>>()
        .map_err(|e| error::decode("purge index", e))?;
    let next = match next.into_paging_control_flow() {
        ControlFlow::Continue(ps) => Some(ps),
        ControlFlow::Break(()) => None,
    };
    Ok((rows, next))
}
