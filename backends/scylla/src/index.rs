//! The purge's due-day indexes and how they are read.
//!
//! * `retention_queue` (days in `purge_days` shard 2): a transition queues its request record,
//!   and the message when it becomes Recalled/Deleted, at `now + retention`, BEFORE its batch (a
//!   crash leaves at worst a stale entry, which the purge re-checks and drops).
//! * `history_index` (shard 3): the insert queues every message by the day it was accepted;
//!   with a history limit the purge reads the days up to the history cutoff (the insert cannot
//!   know the policy; the purge job does).
//!
//! Both are partitioned by day AND by one of [`QUEUE_SHARDS`] shards of the conversation id, so
//! no partition is written by every transition or insert of the service (a day's entries spread
//! over 32 partitions). The purge reads a shard-day from its progress mark (`purge_progress`:
//! every entry due before it is done), never from the start of the day, so the entries it
//! removed before are not read again; a shard-day whose mark passed the day's end is dropped
//! as a partition. Entries of a held conversation are parked (`held_entries`) instead of kept
//! in place, so a hold does not pin the mark: the parked backlog is read again only once the
//! hold is lifted.
//!
//! `purge_queue` and `history_queue` (shards 0 and 1) are the unsharded tables of keyspaces
//! made before: nothing writes them any more, and the purge drains what they still hold.

use std::ops::ControlFlow;

use imstore_core::{ConversationId, Lifecycle, MsgId, Policy, Result, Status, Timestamp};
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::prepared::PreparedStatement;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::read::day_of;

/// `purge_days` shard of the legacy `purge_queue` days.
pub(crate) const RETENTION_SHARD: i32 = 0;
/// `purge_days` shard of the legacy `history_queue` days.
pub(crate) const HISTORY_SHARD: i32 = 1;
/// Shards of a day of `retention_queue` and of `history_index`. Fixed: the purge reads shards
/// `0..QUEUE_SHARDS` of every day, so changing it would strand entries.
pub(crate) const QUEUE_SHARDS: i32 = 32;
/// How far behind the purge's clock a shard-day's progress mark stays: an entry is written
/// with a due of its writer's clock (plus the retention, for the retention queue), and a writer
/// whose clock is behind by up to the policy's skew, or whose call is in flight, must still land
/// after the mark. The entries of the last `MARK_LAG` are read again by the next call.
pub(crate) const MARK_LAG_MS: i64 = 15 * 60 * 1000;

/// One of the two sharded queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Queue {
    /// `retention_queue`: due = recall or deletion (or request) + retention.
    Retention,
    /// `history_index`: due = the time the message was accepted.
    History,
}

impl Queue {
    /// The `purge_days` shard of its days, and its key in `purge_progress`/`held_entries`.
    pub(crate) fn code(self) -> i32 {
        match self {
            Queue::Retention => 2,
            Queue::History => 3,
        }
    }

    pub(crate) fn from_code(code: i32) -> Option<Queue> {
        match code {
            2 => Some(Queue::Retention),
            3 => Some(Queue::History),
            _ => None,
        }
    }
}

/// The queue shard of a conversation: FNV-1a of its id, so every process agrees.
pub(crate) fn shard_of(conversation: &ConversationId) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in conversation.as_str().bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i32::try_from(h % QUEUE_SHARDS as u64).unwrap_or(0)
}

/// One queue entry: due (or accepted-at), conversation, message, request id ('' for none).
pub(crate) type Entry = (i64, String, i64, String);
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
    note_day(b, Queue::Retention.code(), day).await?;
    b.session()
        .execute_unpaged(
            &b.st().rq_add,
            (
                day,
                shard_of(conversation),
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
    note_day(b, Queue::History.code(), day).await?;
    b.session()
        .execute_unpaged(
            &b.st().hq_add,
            (
                day,
                shard_of(conversation),
                created_at.as_millis(),
                conversation.as_str(),
                msg_id.as_i64(),
            ),
        )
        .await
        .map_err(error::execution)?;
    Ok(())
}

/// Mutation bytes per unlogged history batch: well under Cassandra's default 50 KiB
/// `batch_size_fail_threshold` (each row counts its conversation id and about 40 bytes more).
const HISTORY_BATCH_BYTES: usize = 16 * 1024;
/// Rows per unlogged history batch.
const HISTORY_BATCH_ROWS: usize = 100;

/// Indexes many messages accepted at `created_at`: the entries of one queue partition (day and
/// shard) go as unlogged batches (one partition each, so each is one mutation applied
/// atomically, not a logged batch across partitions), as many in flight as `in_flight`. A batch
/// of 1,000 messages into one conversation writes 10 requests instead of 1,000.
pub(crate) async fn enqueue_history_many(
    b: &ScyllaBackend,
    messages: &[(&ConversationId, MsgId)],
    created_at: Timestamp,
    in_flight: usize,
) -> Result<()> {
    use futures::{FutureExt, StreamExt, TryStreamExt};
    use scylla::statement::batch::{Batch, BatchType};
    let day = day_of(created_at);
    note_day(b, Queue::History.code(), day).await?;
    let mut by_shard: std::collections::BTreeMap<i32, Vec<(&ConversationId, MsgId)>> =
        std::collections::BTreeMap::new();
    for &(c, id) in messages {
        by_shard.entry(shard_of(c)).or_default().push((c, id));
    }
    let mut batches: Vec<(i32, Vec<(&ConversationId, MsgId)>)> = Vec::new();
    for (shard, entries) in by_shard {
        let mut current: Vec<(&ConversationId, MsgId)> = Vec::new();
        let mut bytes = 0;
        for (c, id) in entries {
            let len = c.as_str().len() + 40;
            if !current.is_empty()
                && (current.len() >= HISTORY_BATCH_ROWS || bytes + len > HISTORY_BATCH_BYTES)
            {
                batches.push((shard, std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += len;
            current.push((c, id));
        }
        if !current.is_empty() {
            batches.push((shard, current));
        }
    }
    let config = b.config();
    let writes: Vec<futures::future::BoxFuture<'_, Result<()>>> = batches
        .into_iter()
        .map(|(shard, entries)| {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(config.consistency());
            batch.set_request_timeout(Some(config.request_timeout()));
            // Re-running a batch of plain inserts writes the same rows again.
            batch.set_is_idempotent(true);
            let mut values = Vec::with_capacity(entries.len());
            for (c, id) in entries {
                batch.append_statement(b.st().hq_add.clone());
                values.push((
                    day,
                    shard,
                    created_at.as_millis(),
                    c.as_str().to_owned(),
                    id.as_i64(),
                ));
            }
            async move {
                b.session()
                    .batch(&batch, values)
                    .await
                    .map_err(error::execution)?;
                Ok(())
            }
            .boxed()
        })
        .collect();
    futures::stream::iter(writes)
        .buffer_unordered(in_flight.max(1))
        .try_collect::<Vec<()>>()
        .await?;
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

/// Pages of `st` over one day's partition of a legacy queue, as raw rows decoded by `T`.
pub(crate) async fn page_of<T>(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    values: (i32, i64),
    paging: PagingState,
) -> Result<(Vec<T>, Option<PagingState>)>
where
    T: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    page_with(b, st, values, paging).await
}

/// The progress marks of `queue`'s shards on `day` (absent: nothing done yet).
pub(crate) async fn progress(
    b: &ScyllaBackend,
    queue: Queue,
    day: i32,
) -> Result<std::collections::HashMap<i32, i64>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().progress_get, (queue.code(), day))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("purge progress", e))?;
    res.rows::<(i32, Option<i64>)>()
        .map_err(|e| error::decode("purge progress", e))?
        .map(|r| {
            r.map(|(shard, through)| (shard, through.unwrap_or(i64::MIN)))
                .map_err(|e| error::decode("purge progress", e))
        })
        .collect()
}

/// A page of the entries of one shard-day of `queue` due in `[from, upto]`.
pub(crate) async fn shard_page(
    b: &ScyllaBackend,
    queue: Queue,
    (day, shard): (i32, i32),
    (from, upto): (i64, i64),
    paging: PagingState,
) -> Result<(Vec<Entry>, Option<PagingState>)> {
    let values = (day, shard, from, upto);
    match queue {
        Queue::Retention => page_with::<Entry>(b, &b.st().rq_scan, values, paging).await,
        Queue::History => {
            let (rows, next) =
                page_with::<(i64, String, i64)>(b, &b.st().hq_scan, values, paging).await?;
            Ok((
                rows.into_iter()
                    .map(|(at, c, m)| (at, c, m, String::new()))
                    .collect(),
                next,
            ))
        }
    }
}

/// One page of `st` with `values`, decoded by `T`.
pub(crate) async fn page_with<T>(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    values: impl SerializeRow,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The shards spread a service's conversations evenly: 32,000 ids, 1,000 a shard expected,
    /// each shard within 15% of it; and a conversation always lands in the same shard.
    #[test]
    fn conversations_spread_over_every_shard() {
        let mut counts = [0u32; QUEUE_SHARDS as usize];
        for i in 0..32_000 {
            let conv = ConversationId::new(format!("group-{i}")).unwrap();
            let shard = shard_of(&conv);
            assert_eq!(shard, shard_of(&conv));
            counts[usize::try_from(shard).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&n| (850..=1150).contains(&n)),
            "{counts:?}"
        );
    }
}
