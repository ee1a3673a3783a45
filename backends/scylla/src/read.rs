//! Reads: one message (`fetch`), one page (`page`), and the point reads the transition and the
//! purge share.
//!
//! A message is its row in its bucket partition plus, once it changed, its lifecycle row in the
//! conversation's state partition; the two are read in parallel. A lifecycle marked by a purge
//! reads as "not found".

use std::collections::HashMap;

use imstore_core::backend::{Fields, PageQuery};
use imstore_core::lifecycle::RequestRecord;
use imstore_core::{
    ConversationId, Direction, MsgId, Result, StoredMessage, Timestamp, TransitionRequest,
};

use scylla::statement::prepared::PreparedStatement;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::rows::{self, MessageRow, RequestCols, StateCols, StateRow};

/// Buckets fetched per round trip while walking a conversation's bucket index.
const BUCKET_CHUNK: i32 = 8;

/// A stored message from its row and its lifecycle; `None` when a purge marker hides it.
pub(crate) fn stored(row: MessageRow, state: Option<&StateRow>) -> Option<StoredMessage> {
    let lifecycle = rows::lifecycle_of(state, row.created_at)?;
    Some(StoredMessage {
        message: row.message,
        lifecycle,
    })
}

/// The message row (`serial`: a linearizable read that also completes an unfinished Paxos round).
pub(crate) async fn message(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
    serial: bool,
) -> Result<Option<MessageRow>> {
    let key = (conversation.as_str(), b.bucket_of(msg_id), msg_id.as_i64());
    if fields == Fields::NoContent && !serial {
        let res = b
            .session()
            .execute_unpaged(&b.st().msg_get_meta, key)
            .await
            .map_err(error::execution)?
            .into_rows_result()
            .map_err(|e| error::decode("message row", e))?;
        type MetaCols = (
            Option<String>,
            Option<i32>,
            Option<String>,
            Option<i64>,
            Option<String>,
            Option<i64>,
        );
        return res
            .maybe_first_row::<MetaCols>()
            .map_err(|e| error::decode("message row", e))?
            .map(|(s, t, k, z, m, c)| {
                rows::message(conversation, msg_id, (s, t, Some(Vec::new()), k, z, m, c))
            })
            .transpose();
    }
    let st = if serial {
        &b.st().msg_get_serial
    } else {
        &b.st().msg_get
    };
    let res = b
        .session()
        .execute_unpaged(st, key)
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("message row", e))?;
    type PointCols = (
        Option<String>,
        Option<i32>,
        Option<Vec<u8>>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    res.maybe_first_row::<PointCols>()
        .map_err(|e| error::decode("message row", e))?
        .map(|(a, b, c, d, e, f, g, token)| {
            let mut row = rows::message(conversation, msg_id, (a, b, c, d, e, f, g))?;
            row.insert_token = token;
            Ok(row)
        })
        .transpose()
}

/// The lifecycle rows of the messages between `lo` and `hi` (inclusive), by msg_id.
async fn states_between(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    lo: i64,
    hi: i64,
) -> Result<HashMap<i64, StateRow>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().state_range, (conversation.as_str(), lo, hi))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("lifecycle rows", e))?;
    type RangeCols = (
        i64,
        Option<i8>,
        Option<i32>,
        Option<i64>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<Vec<i64>>,
        Option<bool>,
    );
    let mut out = HashMap::new();
    for row in res
        .rows::<RangeCols>()
        .map_err(|e| error::decode("lifecycle rows", e))?
    {
        let (k, a, b2, c, d, e, f, g, h, i) =
            row.map_err(|e| error::decode("lifecycle rows", e))?;
        out.insert(k, rows::state((a, b2, c, d, e, f, g, h, i))?);
    }
    Ok(out)
}

/// One message with its lifecycle, or `None` (never stored, purged, or being purged).
pub(crate) async fn fetch(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<StoredMessage>> {
    let (row, state) = futures::try_join!(
        message(b, conversation, msg_id, fields, false),
        state(b, conversation, msg_id, false)
    )?;
    Ok(row.and_then(|row| stored(row, state.as_ref())))
}

async fn bucket_chunk(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    from: i32,
    direction: Direction,
) -> Result<Vec<i32>> {
    let st = match direction {
        Direction::NewestFirst => &b.st().buckets_desc,
        Direction::OldestFirst => &b.st().buckets_asc,
    };
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(), from, BUCKET_CHUNK))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("bucket index", e))?;
    let buckets = res
        .rows::<(Option<i32>,)>()
        .map_err(|e| error::decode("bucket index", e))?
        .map(|r| r.map(|(b,)| b))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| error::decode("bucket index", e))?;
    Ok(buckets.into_iter().flatten().collect())
}

/// Up to `limit` message rows of one bucket after `bound` (exclusive) in `direction`; without a
/// bound, from the bucket's newest (or oldest) message, the largest msg_id included.
async fn bucket_page(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    bound: Option<i64>,
    limit: i32,
    direction: Direction,
) -> Result<Vec<MessageRow>> {
    let session = b.session();
    let conv = conversation.as_str();
    let st: &PreparedStatement = match (direction, bound) {
        (Direction::NewestFirst, None) => &b.st().msg_page_newest,
        (Direction::NewestFirst, Some(_)) => &b.st().msg_page_desc,
        (Direction::OldestFirst, _) => &b.st().msg_page_asc,
    };
    let res = match (direction, bound) {
        (Direction::NewestFirst, None) => session.execute_unpaged(st, (conv, bucket, limit)).await,
        // Message ids are positive, so `> 0` is "from the oldest".
        (_, bound) => {
            session
                .execute_unpaged(st, (conv, bucket, bound.unwrap_or(0), limit))
                .await
        }
    }
    .map_err(error::execution)?
    .into_rows_result()
    .map_err(|e| error::decode("message page", e))?;
    type PageCols = (
        i64,
        Option<String>,
        Option<i32>,
        Option<Vec<u8>>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let mut out = Vec::new();
    for row in res
        .rows::<PageCols>()
        .map_err(|e| error::decode("message page", e))?
    {
        let (id, a, b, c, d, e, f, g) = row.map_err(|e| error::decode("message page", e))?;
        let id = MsgId::from_i64(id).map_err(|_| error::corrupt("msg_id"))?;
        out.push(rows::message(conversation, id, (a, b, c, d, e, f, g))?);
    }
    Ok(out)
}

/// Up to `query.fetch` messages after the cursor, walking only the non-empty buckets a few at
/// a time, then ONE range read of the page's lifecycle rows; messages a purge marked are left
/// out.
pub(crate) async fn page(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    query: PageQuery,
) -> Result<Vec<StoredMessage>> {
    let want = query.fetch as usize;
    let dir = query.direction;
    let (mut from, bound) = match (dir, query.cursor) {
        (_, Some(c)) => (b.bucket_of(c), Some(c.as_i64())),
        (Direction::NewestFirst, None) => (i32::MAX, None),
        (Direction::OldestFirst, None) => (i32::MIN, None),
    };
    let mut found: Vec<MessageRow> = Vec::new();
    'walk: loop {
        let chunk = bucket_chunk(b, conversation, from, dir).await?;
        for &bucket in &chunk {
            let need = i32::try_from(want - found.len()).unwrap_or(i32::MAX);
            found.extend(bucket_page(b, conversation, bucket, bound, need, dir).await?);
            if found.len() >= want {
                break 'walk;
            }
        }
        let (Some(&last), true) = (chunk.last(), chunk.len() == BUCKET_CHUNK as usize) else {
            break;
        };
        from = match dir {
            Direction::NewestFirst => match last.checked_sub(1) {
                Some(f) => f,
                None => break,
            },
            Direction::OldestFirst => match last.checked_add(1) {
                Some(f) => f,
                None => break,
            },
        };
    }
    let ids = found.iter().map(|m| m.message.msg_id.as_i64());
    let states = match (ids.clone().min(), ids.max()) {
        (Some(lo), Some(hi)) => states_between(b, conversation, lo, hi).await?,
        _ => HashMap::new(),
    };
    Ok(found
        .into_iter()
        .filter_map(|m| {
            let state = states.get(&m.message.msg_id.as_i64());
            stored(m, state)
        })
        .collect())
}

/// The feed head (the last seq handed out), if any.
pub(crate) async fn head(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    serial: bool,
) -> Result<Option<i64>> {
    let st = if serial {
        &b.st().head_get_serial
    } else {
        &b.st().head_get
    };
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(),))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("feed head", e))?;
    Ok(res
        .maybe_first_row::<(Option<i64>,)>()
        .map_err(|e| error::decode("feed head", e))?
        .and_then(|(h,)| h))
}

/// The request record of `req`'s id, and the token of the call that wrote it.
pub(crate) async fn request(
    b: &ScyllaBackend,
    req: &TransitionRequest,
    serial: bool,
) -> Result<Option<(RequestRecord, Option<i64>)>> {
    let st = if serial {
        &b.st().request_get_serial
    } else {
        &b.st().request_get
    };
    let res = b
        .session()
        .execute_unpaged(st, (req.conversation_id.as_str(), req.request_id.as_str()))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("request record", e))?;
    res.maybe_first_row::<RequestCols>()
        .map_err(|e| error::decode("request record", e))?
        .map(|cols| rows::request(&req.conversation_id, &req.request_id, cols))
        .transpose()
}

/// A message's lifecycle row.
pub(crate) async fn state(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    serial: bool,
) -> Result<Option<StateRow>> {
    let st = if serial {
        &b.st().state_get_serial
    } else {
        &b.st().state_get
    };
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(), msg_id.as_i64()))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("lifecycle row", e))?;
    res.maybe_first_row::<StateCols>()
        .map_err(|e| error::decode("lifecycle row", e))?
        .map(rows::state)
        .transpose()
}

/// Whether `conversation` is under legal hold.
pub(crate) async fn legal_hold(b: &ScyllaBackend, conversation: &ConversationId) -> Result<bool> {
    let res = b
        .session()
        .execute_unpaged(&b.st().hold_get, (conversation.as_str(),))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("legal hold", e))?;
    Ok(res
        .maybe_first_row::<(Option<bool>,)>()
        .map_err(|e| error::decode("legal hold", e))?
        .and_then(|(h,)| h)
        .unwrap_or(false))
}

/// The store clock's day of `t` (for the purge indexes), saturating at the i32 range.
pub(crate) fn day_of(t: Timestamp) -> i32 {
    const DAY_MS: i64 = 86_400_000;
    let d = t.as_millis().div_euclid(DAY_MS);
    i32::try_from(d).unwrap_or(if d < 0 { i32::MIN } else { i32::MAX })
}
