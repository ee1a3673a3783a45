//! Reads: one message (`fetch`), one page (`page`), and the point reads the transition and the
//! purge share.
//!
//! A message is its row in its bucket partition plus, once it changed, its lifecycle row in the
//! conversation's state partition. The two are different partitions, so a reader could see the
//! message row before the purge deleted it and the lifecycle after the purge deleted that too,
//! and take the message for a never-changed Normal one. Two things rule that out:
//!
//! * the purge first turns the lifecycle into a marker (`purging = true`, the purge's commit), and
//!   deletes the marker only after the message row; a marker reads as "not found";
//! * the same commit stamps its bucket's *sentinel* (kind 0, k = `-(bucket + 1)`) with a new
//!   epoch, and readers read a lifecycle together with its bucket's sentinel in ONE
//!   single-partition query (one snapshot). A message with no lifecycle row in a bucket whose
//!   sentinel is set may be one whose purge finished between the two reads, so it is re-checked
//!   (its row must still be there after the lifecycle read); in a bucket never purged, an absent
//!   lifecycle can only mean "never changed".

use std::collections::HashMap;

use futures::future::try_join_all;
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
/// Keys per `IN (...)` list: under ScyllaDB's default `max_clustering_key_restrictions_per_query`
/// (100).
const IN_CHUNK: usize = 64;

/// The state-partition key of a bucket's purge sentinel (message ids are positive).
pub(crate) fn sentinel_key(bucket: i32) -> i64 {
    -i64::from(bucket) - 1
}

/// A lifecycle row read in one snapshot with its bucket's purge sentinel.
#[derive(Debug, Default)]
pub(crate) struct Fenced {
    /// The lifecycle row, if the message changed (or is being purged).
    pub(crate) state: Option<StateRow>,
    /// The sentinel's epoch: `None` while no purge ever committed in the bucket.
    pub(crate) epoch: Option<i64>,
    /// The feed's purge low-water mark (a static column: read with the lifecycle row, when
    /// there is one).
    pub(crate) purged_through: Option<i64>,
}

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

/// The message rows of `ids` (all in `bucket`, at most [`IN_CHUNK`]) without their content, by
/// msg_id, in one query: what the purge decides a group of entries from.
pub(crate) async fn messages_meta(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    ids: Vec<i64>,
) -> Result<HashMap<i64, MessageRow>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().msg_meta_in, (conversation.as_str(), bucket, ids))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("message rows", e))?;
    type MetaCols = (
        i64,
        Option<String>,
        Option<i32>,
        Option<String>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let mut found = HashMap::new();
    for row in res
        .rows::<MetaCols>()
        .map_err(|e| error::decode("message rows", e))?
    {
        let (id, s, t, k, z, m, c) = row.map_err(|e| error::decode("message rows", e))?;
        let msg_id = MsgId::from_i64(id).map_err(|_| error::corrupt("message row"))?;
        let row = rows::message(conversation, msg_id, (s, t, Some(Vec::new()), k, z, m, c))?;
        found.insert(id, row);
    }
    Ok(found)
}

/// Lifecycle rows by msg_id, the bucket's sentinel epoch, and the feed's low-water mark.
pub(crate) type Chunk = (HashMap<i64, StateRow>, Option<i64>, Option<i64>);

/// A lifecycle read's row: `k`, the lifecycle columns (`StateCols`), `at_ms`, `purged_through`,
/// `call_token` and `request_id` (`''` on lifecycles and sentinels, [`MIRROR_ID`] on a mirror).
type FencedCols = (
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
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    String,
);

/// The lifecycle rows of `ids` (all in `bucket`) and the bucket's sentinel, in one query.
pub(crate) async fn fenced_chunk(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    ids: &[i64],
    serial: bool,
) -> Result<Chunk> {
    let sentinel = sentinel_key(bucket);
    let mut keys = Vec::with_capacity(ids.len() + 1);
    keys.push(sentinel);
    keys.extend_from_slice(ids);
    let st = if serial {
        &b.st().state_fenced_serial
    } else {
        &b.st().state_fenced
    };
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(), keys))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("lifecycle rows", e))?;
    let mut chunk = Chunk::default();
    for row in res
        .rows::<FencedCols>()
        .map_err(|e| error::decode("lifecycle rows", e))?
    {
        let (k, a, b2, c, d, e, f, g, h, i, j, at, through, token, _) =
            row.map_err(|e| error::decode("lifecycle rows", e))?;
        take_state(
            &mut chunk,
            k == sentinel,
            k,
            (a, b2, c, d, e, f, g, h, i, j),
            (at, through, token),
        )?;
    }
    Ok(chunk)
}

/// Adds one row of a lifecycle read to `chunk`: the bucket's sentinel (or its mirror) gives the
/// epoch, a lifecycle row its state (a purge marker with the commit's time and token).
fn take_state(
    chunk: &mut Chunk,
    is_sentinel: bool,
    k: i64,
    cols: StateCols,
    (at, through, token): (Option<i64>, Option<i64>, Option<i64>),
) -> Result<()> {
    chunk.2 = chunk.2.max(through);
    if is_sentinel {
        chunk.1 = at;
        return Ok(());
    }
    let state = match rows::state(cols)? {
        StateRow::Purged {
            release_key,
            event_seqs,
            ..
        } => StateRow::Purged {
            release_key,
            marked: Some((at, token)),
            event_seqs,
        },
        live => live,
    };
    chunk.0.insert(k, state);
    Ok(())
}

/// The `request_id` of a bucket's sentinel mirror: lifecycle rows have `''`, which sorts first,
/// and every other read of kind 0 names `request_id = ''`, so only [`top_states`] sees it.
pub(crate) const MIRROR_ID: &str = "~sentinel";

/// The state-partition key of a bucket's sentinel mirror: the top of the bucket's id range, so
/// that a newest-first slice of the bucket's lifecycles reads it first, in the same snapshot.
pub(crate) fn mirror_key(b: &ScyllaBackend, bucket: i32) -> i64 {
    b.bucket_ids(bucket).1
}

/// The lifecycles of one bucket newest first (at most `limit` of them) with the bucket's
/// sentinel mirror, in ONE single-partition read: what a latest page reads beside its rows.
pub(crate) struct Top {
    /// Lifecycle rows and the sentinel's epoch (`None`: never purged), as [`fenced_chunk`].
    pub(crate) chunk: Chunk,
    /// Every lifecycle of the bucket with msg_id at or above this was read.
    pub(crate) covers_from: i64,
}

/// [`Top`] for `bucket`: rows `k` from the bucket's top down to `floor`, `limit` lifecycles at
/// most.
pub(crate) async fn top_states(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    floor: i64,
    limit: usize,
) -> Result<Top> {
    let (low, high) = b.bucket_ids(bucket);
    let low = low.max(floor);
    // The mirror and the lifecycle at the top key share a `k`: room for both.
    let rows_limit = i32::try_from(limit.saturating_add(2)).unwrap_or(i32::MAX);
    let res = b
        .session()
        .execute_unpaged(
            &b.st().state_top,
            (conversation.as_str(), low, high, rows_limit),
        )
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("lifecycle rows", e))?;
    let mut chunk = Chunk::default();
    let (mut read, mut lowest) = (0usize, i64::MAX);
    for row in res
        .rows::<FencedCols>()
        .map_err(|e| error::decode("lifecycle rows", e))?
    {
        let (k, a, b2, c, d, e, f, g, h, i, j, at, through, token, request_id) =
            row.map_err(|e| error::decode("lifecycle rows", e))?;
        read += 1;
        lowest = lowest.min(k);
        match request_id.as_str() {
            "" => take_state(
                &mut chunk,
                false,
                k,
                (a, b2, c, d, e, f, g, h, i, j),
                (at, through, token),
            )?,
            MIRROR_ID => take_state(&mut chunk, true, k, Default::default(), (at, through, None))?,
            _ => return Err(error::corrupt("a lifecycle row with a request id")),
        }
    }
    // A short answer is the whole range down to the floor; a full one reaches down to its
    // lowest key (rows are whole there: one lifecycle per key).
    let covers_from = if read < rows_limit as usize {
        low
    } else {
        lowest
    };
    Ok(Top { chunk, covers_from })
}

/// One message's lifecycle row with its bucket's sentinel, in one snapshot.
pub(crate) async fn fenced(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    serial: bool,
) -> Result<Fenced> {
    let id = msg_id.as_i64();
    let (mut states, epoch, purged_through) =
        fenced_chunk(b, conversation, b.bucket_of(msg_id), &[id], serial).await?;
    Ok(Fenced {
        state: states.remove(&id),
        epoch,
        purged_through,
    })
}

/// Which of `ids` (all in `bucket`) still have a message row, read after their lifecycles.
pub(crate) async fn still_there(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    ids: Vec<i64>,
) -> Result<Vec<i64>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().msg_exists, (conversation.as_str(), bucket, ids))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("message keys", e))?;
    res.rows::<(i64,)>()
        .map_err(|e| error::decode("message keys", e))?
        .map(|r| {
            r.map(|(id,)| id)
                .map_err(|e| error::decode("message keys", e))
        })
        .collect()
}

/// The live messages among `found` (one bucket's rows, in page order): purge markers dropped,
/// and, where the bucket was ever purged, messages without a lifecycle re-checked. The
/// lifecycles `top` already covers (read beside the rows, with the sentinel's mirror) are not
/// read again.
async fn live(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    bucket: i32,
    found: Vec<MessageRow>,
    top: Option<Top>,
) -> Result<Vec<StoredMessage>> {
    let mut states = HashMap::new();
    let mut doubtful = Vec::new();
    let covers_from = top.as_ref().map_or(i64::MAX, |t| t.covers_from);
    let (covered, ids): (Vec<i64>, Vec<i64>) = found
        .iter()
        .map(|m| m.message.msg_id.as_i64())
        .partition(|&id| id >= covers_from);
    if let Some(Top {
        chunk: (top_states, epoch, _),
        ..
    }) = top
    {
        if epoch.is_some() {
            doubtful.extend(covered.iter().filter(|id| !top_states.contains_key(id)));
        }
        states.extend(top_states);
    }
    let chunks = try_join_all(
        ids.chunks(IN_CHUNK)
            .map(|c| fenced_chunk(b, conversation, bucket, c, false)),
    )
    .await?;
    for ((chunk_states, epoch, _), chunk_ids) in chunks.into_iter().zip(ids.chunks(IN_CHUNK)) {
        if epoch.is_some() {
            doubtful.extend(chunk_ids.iter().filter(|id| !chunk_states.contains_key(id)));
        }
        states.extend(chunk_states);
    }
    let mut gone = std::collections::HashSet::new();
    if !doubtful.is_empty() {
        let there: Vec<Vec<i64>> = try_join_all(
            doubtful
                .chunks(IN_CHUNK)
                .map(|c| still_there(b, conversation, bucket, c.to_vec())),
        )
        .await?;
        let there: std::collections::HashSet<i64> = there.into_iter().flatten().collect();
        gone.extend(doubtful.into_iter().filter(|id| !there.contains(id)));
    }
    Ok(found
        .into_iter()
        .filter(|m| !gone.contains(&m.message.msg_id.as_i64()))
        .filter_map(|m| {
            let state = states.get(&m.message.msg_id.as_i64());
            stored(m, state)
        })
        .collect())
}

/// One message with its lifecycle, or `None` (never stored, purged, or being purged).
pub(crate) async fn fetch(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<StoredMessage>> {
    let (row, fenced) = futures::try_join!(
        message(b, conversation, msg_id, fields, false),
        fenced(b, conversation, msg_id, false)
    )?;
    let Some(row) = row else {
        return Ok(None);
    };
    if !confirm_present(b, conversation, msg_id, &fenced).await? {
        return Ok(None);
    }
    Ok(stored(row, fenced.state.as_ref()))
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

/// The first bucket a conversation's pages without a cursor started from, per direction, as
/// this process last saw it: a guess, always checked against the bucket index read beside it.
/// Newest first, also the lowest msg_id that page read in that bucket (its bottom there), which
/// bounds the next latest page's lifecycle slice from below.
#[derive(Default)]
pub(crate) struct FirstBuckets(std::sync::Mutex<HashMap<String, [Option<Guess>; 2]>>);

/// A first bucket and, when a latest page noted it, the lowest msg_id it read there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Guess {
    bucket: i32,
    bottom: Option<i64>,
}

/// Conversations whose first bucket a process remembers; past it the guesses start over.
const FIRST_BUCKETS_KEPT: usize = 65_536;

/// The slot of a direction in a conversation's entry.
fn slot(newest: bool) -> usize {
    usize::from(!newest)
}

impl FirstBuckets {
    fn get(&self, conversation: &ConversationId, newest: bool) -> Option<Guess> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(conversation.as_str())?[slot(newest)]
    }

    /// Applies `change` to the conversation's guess in one direction. The lookup copies
    /// nothing (every page and insert makes one); an entry is made, and the map started over
    /// when full, only for a conversation it does not hold.
    fn update(
        &self,
        conversation: &ConversationId,
        newest: bool,
        change: impl FnOnce(&mut Option<Guess>),
    ) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = map.get_mut(conversation.as_str()) {
            change(&mut entry[slot(newest)]);
            return;
        }
        let mut entry = [None; 2];
        change(&mut entry[slot(newest)]);
        if entry == [None; 2] {
            return;
        }
        if map.len() >= FIRST_BUCKETS_KEPT {
            map.clear();
        }
        map.insert(conversation.as_str().to_owned(), entry);
    }

    /// A bucket this process just listed for the conversation (an insert): a newest-first page
    /// starts there or higher, so the guess rises to it (with no bottom there yet).
    pub(crate) fn raise(&self, conversation: &ConversationId, bucket: i32) {
        self.update(conversation, true, |guess| {
            if guess.is_none_or(|g| g.bucket < bucket) {
                *guess = Some(Guess {
                    bucket,
                    bottom: None,
                });
            }
        });
    }

    fn note(&self, conversation: &ConversationId, newest: bool, guess: Option<Guess>) {
        self.update(conversation, newest, |slot| *slot = guess);
    }
}

/// Up to `query.fetch` live messages after the cursor, walking only the non-empty buckets a few
/// at a time; messages a purge is removing are skipped and the walk goes on past them, so a
/// page is never cut short by them.
///
/// The first bucket's rows are read beside the bucket index, not after it: the cursor's own
/// bucket, or without a cursor the first bucket this process saw last time. The index read
/// decides: a guess that is not the first indexed bucket is dropped, so a page costs two round
/// trips in series (index and rows, then lifecycles) when the guess holds and three when not.
/// A latest page on a keyspace with sentinel mirrors also reads the guessed bucket's lifecycles
/// in that first round trip (`top_states`, down to the bottom the last latest page noted), and
/// costs one round trip when the guess holds and the slice covers its rows.
pub(crate) async fn page(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    query: PageQuery,
) -> Result<Vec<StoredMessage>> {
    let want = query.fetch as usize;
    let dir = query.direction;
    let newest = dir == Direction::NewestFirst;
    let cursor = query.cursor.map(MsgId::as_i64);
    let mut from = match (dir, query.cursor) {
        (_, Some(c)) => b.bucket_of(c),
        (Direction::NewestFirst, None) => i32::MAX,
        (Direction::OldestFirst, None) => i32::MIN,
    };
    let remembered = match query.cursor {
        Some(_) => None,
        None => b.inner().first_buckets.get(conversation, newest),
    };
    let guess = match query.cursor {
        Some(c) => Some(b.bucket_of(c)),
        None => remembered.map(|g| g.bucket),
    };
    let limit = i32::try_from(want).unwrap_or(i32::MAX);
    // A latest page also reads the guessed bucket's lifecycles beside its rows: from the top of
    // the bucket's ids down, the sentinel's mirror first, so one snapshot (`top_states`). Any
    // other page bounds its rows by a cursor the slice would have to start above, and keeps
    // the read after the rows.
    // The slice needs a floor: it passes the tombstones of every purged lifecycle in its range
    // and stops early only at its LIMIT of live ones, so without the last latest page's bottom
    // it is not read.
    let top = remembered
        .and_then(|g| Some((g.bucket, g.bottom?)))
        .filter(|_| newest && b.inner().sentinel_mirrors);
    let (first_chunk, speculative, top) = futures::try_join!(
        bucket_chunk(b, conversation, from, dir),
        async {
            match guess {
                Some(g) => bucket_page(b, conversation, g, cursor, limit, dir)
                    .await
                    .map(|rows| Some((g, rows))),
                None => Ok(None),
            }
        },
        async {
            match top {
                Some((g, floor)) => top_states(b, conversation, g, floor, want).await.map(Some),
                None => Ok(None),
            }
        }
    )?;
    let mut top = top;
    let first_indexed = first_chunk.first().copied();
    // The lowest msg_id this page read in its first bucket (newest first, without a cursor).
    let mut first_bottom = None;
    // Only the first indexed bucket's first read may be the guess's.
    let mut speculative = speculative.filter(|(g, _)| first_chunk.first() == Some(g));
    let mut first_chunk = Some(first_chunk);
    let mut out: Vec<StoredMessage> = Vec::new();
    'walk: loop {
        let chunk = match first_chunk.take() {
            Some(chunk) => chunk,
            None => bucket_chunk(b, conversation, from, dir).await?,
        };
        for &bucket in &chunk {
            // The cursor bounds its own bucket; every other bucket lies wholly past it.
            let mut bound = cursor;
            loop {
                let need = want - out.len();
                let limit = i32::try_from(need).unwrap_or(i32::MAX);
                let (rows, top) = match speculative.take() {
                    Some((_, rows)) => (rows, top.take()),
                    None => (
                        bucket_page(b, conversation, bucket, bound, limit, dir).await?,
                        None,
                    ),
                };
                let full = rows.len() >= need;
                bound = rows.last().map(|m| m.message.msg_id.as_i64());
                if Some(bucket) == first_indexed && bound.is_some() {
                    first_bottom = bound;
                }
                out.extend(live(b, conversation, bucket, rows, top).await?);
                if out.len() >= want {
                    break 'walk;
                }
                if !full {
                    break;
                }
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
    if query.cursor.is_none() {
        let bottom = first_bottom.filter(|_| newest);
        b.inner().first_buckets.note(
            conversation,
            newest,
            first_indexed.map(|bucket| Guess { bucket, bottom }),
        );
    }
    out.truncate(want);
    Ok(out)
}

/// The feed head (the last seq handed out) and the purge's low-water mark, if any: read from
/// the head row by name. On a keyspace made before head rows, a partition without one is read
/// from its first row (a scan past its tombstones) until a batch writes the head row.
pub(crate) async fn head(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    serial: bool,
) -> Result<(Option<i64>, Option<i64>)> {
    let st = b.st();
    let (by_name, scan) = if serial {
        (&st.head_get_serial, &st.head_scan_serial)
    } else {
        (&st.head_get, &st.head_scan)
    };
    if let Some(found) = head_by(b, by_name, conversation).await? {
        return Ok(found);
    }
    if b.inner().head_rows {
        return Ok((None, None));
    }
    Ok(head_by(b, scan, conversation).await?.unwrap_or_default())
}

async fn head_by(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    conversation: &ConversationId,
) -> Result<Option<(Option<i64>, Option<i64>)>> {
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(),))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("feed head", e))?;
    Ok(res
        .maybe_first_row::<(Option<i64>, Option<i64>, Option<i64>)>()
        .map_err(|e| error::decode("feed head", e))?
        .map(|(head, mark, _)| (head, mark)))
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

/// A lifecycle row alone (what a held conversation's purge entry needs: is it a marker?).
pub(crate) async fn state(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
) -> Result<Option<StateRow>> {
    let res = b
        .session()
        .execute_unpaged(&b.st().state_get, (conversation.as_str(), msg_id.as_i64()))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("lifecycle row", e))?;
    res.maybe_first_row::<StateCols>()
        .map_err(|e| error::decode("lifecycle row", e))?
        .map(rows::state)
        .transpose()
}

/// Whether `conversation` is under legal hold: the head row's static, read by name (on a
/// keyspace made before head rows, from the first row when there is no head row; see [`head`]).
pub(crate) async fn legal_hold(b: &ScyllaBackend, conversation: &ConversationId) -> Result<bool> {
    let st = b.st();
    if let Some(held) = hold_by(b, &st.hold_get, conversation).await? {
        return Ok(held);
    }
    if b.inner().head_rows {
        return Ok(false);
    }
    Ok(hold_by(b, &st.hold_scan, conversation)
        .await?
        .unwrap_or(false))
}

async fn hold_by(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    conversation: &ConversationId,
) -> Result<Option<bool>> {
    let res = b
        .session()
        .execute_unpaged(st, (conversation.as_str(),))
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("legal hold", e))?;
    Ok(res
        .maybe_first_row::<(Option<bool>, Option<i64>)>()
        .map_err(|e| error::decode("legal hold", e))?
        .map(|(h, _)| h.unwrap_or(false)))
}

/// True when a message read as absent after `fenced` may in fact be a message being purged:
/// see the module docs. Re-checks the message row when the bucket was ever purged.
pub(crate) async fn confirm_present(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    fenced: &Fenced,
) -> Result<bool> {
    if fenced.state.is_some() || fenced.epoch.is_none() {
        return Ok(true);
    }
    let there = still_there(b, conversation, b.bucket_of(msg_id), vec![msg_id.as_i64()]).await?;
    Ok(!there.is_empty())
}

/// The store clock's day of `t` (for the purge indexes), saturating at the i32 range.
pub(crate) fn day_of(t: Timestamp) -> i32 {
    const DAY_MS: i64 = 86_400_000;
    let d = t.as_millis().div_euclid(DAY_MS);
    i32::try_from(d).unwrap_or(if d < 0 { i32::MIN } else { i32::MAX })
}
