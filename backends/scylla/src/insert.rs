//! Inserts: `INSERT ... IF NOT EXISTS`, so message rows are only ever written by Paxos.
//!
//! Order of one insert: the bucket index row, the history index entry and the attachment
//! reference (plain, idempotent writes) BEFORE the message, so a crash in between leaves an empty listed bucket or a stale
//! index entry, both harmless, never an unlisted message; then the conditional insert; then the
//! bucket index row AGAIN, so that a purge which unlisted the bucket as empty while the insert
//! was on its way cannot hide the message from `list` (see `purge::drop_bucket_if_empty`).
//!
//! Sends into one partition from one process share Paxos rounds: a single insert joins its
//! partition's lane (see [`Lanes`]), whose one task writes whatever is waiting as one conditional
//! batch, so 64 senders into one group make a few rounds instead of 64 that contend for one
//! partition's Paxos state.
//!
//! Not applied: the server's returned row (or a SERIAL re-read when it returned none) is the
//! stored message, for the core to tell a retry from a conflict. Each insert call writes a random
//! `insert_token`; after a timeout, a stored row carrying the call's own token is its own write.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use imstore_core::backend::{EncodedMessage, Fields, Inserted};
use imstore_core::{
    ConversationId, Error, ErrorKind, Lifecycle, NewMessage, Result, Retry, StoredMessage,
    Timestamp,
};
use scylla::value::MaybeUnset;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::index::{enqueue_history, enqueue_history_many};
use crate::read;
use crate::rows::BoxedRow;
use crate::rows::{self, MessageRow};
use crate::transition::run_batch;

/// Rows per conditional insert batch (one partition).
const MAX_BATCH_ROWS: usize = 50;
/// Encoded content per conditional insert batch: under Cassandra's default 50 KiB
/// `batch_size_fail_threshold`, with room for the other columns.
const MAX_BATCH_BYTES: usize = 32 * 1024;
/// Index writes and partition inserts in flight per batch call.
const IN_FLIGHT: usize = 16;

/// The single inserts waiting for their partition's next conditional batch, by partition
/// (conversation, bucket). A partition is in the map while its lane task runs.
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<(String, i32), VecDeque<Waiting>>>);

/// One single insert in a lane: the message, when it was accepted, its call's token, and where
/// its answer goes.
pub(crate) struct Waiting {
    message: NewMessage,
    created_at: Timestamp,
    token: i64,
    answer: futures::channel::oneshot::Sender<Result<Inserted>>,
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), VecDeque<Waiting>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next batch of `key`'s lane (at most a batch's rows and bytes), or `None` after
    /// closing the lane when nothing waits.
    fn next(&self, key: &(String, i32)) -> Option<Vec<Waiting>> {
        let mut lanes = self.lock();
        let queue = lanes.get_mut(key)?;
        if queue.is_empty() {
            lanes.remove(key);
            return None;
        }
        // Two inserts of one id in one batch would both pass `IF NOT EXISTS` and merge: a
        // repeat waits for the next batch, where it finds the first stored.
        let mut batch: Vec<Waiting> = Vec::new();
        let mut later = VecDeque::new();
        let mut ids = HashSet::new();
        let mut bytes = 0;
        while let Some(w) = queue.pop_front() {
            let len = w.message.content.len();
            let full = !batch.is_empty()
                && (batch.len() >= MAX_BATCH_ROWS || bytes + len > MAX_BATCH_BYTES);
            if full {
                later.push_back(w);
                later.extend(queue.drain(..));
                break;
            }
            if ids.insert(w.message.msg_id) {
                bytes += len;
                batch.push(w);
            } else {
                later.push_back(w);
            }
        }
        *queue = later;
        Some(batch)
    }
}

/// Writes `m` through its partition's lane: joins the waiting inserts, and starts the lane's
/// task when none runs. The task is spawned, so a caller that stops waiting strands nobody.
async fn through_lane(
    b: &ScyllaBackend,
    m: &NewMessage,
    created_at: Timestamp,
    token: i64,
) -> Result<Inserted> {
    let key = (m.conversation_id.as_str().to_owned(), b.bucket_of(m.msg_id));
    let (tx, rx) = futures::channel::oneshot::channel();
    let start = {
        let mut lanes = b.inner().lanes.lock();
        let waiting = Waiting {
            message: m.clone(),
            created_at,
            token,
            answer: tx,
        };
        match lanes.get_mut(&key) {
            Some(queue) => {
                queue.push_back(waiting);
                false
            }
            None => {
                lanes.insert(key.clone(), VecDeque::from([waiting]));
                true
            }
        }
    };
    if start {
        let b = b.clone();
        tokio::spawn(async move {
            while let Some(batch) = b.inner().lanes.next(&key) {
                let rows: Vec<(&NewMessage, Timestamp, i64)> = batch
                    .iter()
                    .map(|w| (&w.message, w.created_at, w.token))
                    .collect();
                let results = insert_chunk(&b, &rows, Singles::OneByOne).await;
                for (w, r) in batch.into_iter().zip(results) {
                    // A caller that stopped waiting has nobody to tell.
                    let _ = w.answer.send(r);
                }
            }
        });
    }
    rx.await.map_err(|_| {
        Error::new(
            ErrorKind::Unavailable,
            "the insert's partition lane ended before answering",
        )
    })?
}

/// How a chunk whose batch did not apply retries its messages one by one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Singles {
    /// All at once (a batch call's own chunk: nobody else in this process is on the partition).
    Together,
    /// In turn (a lane: its partition is busy, and concurrent rounds there would contend).
    OneByOne,
}

/// Records that `m` references its attachment, BEFORE the message exists: the purge releases
/// a key only when no reference is left.
async fn add_ref(b: &ScyllaBackend, m: &NewMessage) -> Result<()> {
    if let Some(a) = &m.attachment {
        b.session()
            .execute_unpaged(
                &b.st().ref_add,
                (
                    a.key.as_str(),
                    m.conversation_id.as_str(),
                    m.msg_id.as_i64(),
                ),
            )
            .await
            .map_err(error::execution)?;
    }
    Ok(())
}

/// After an insert found another message under the same id: drops the reference this call
/// wrote if the stored message does not hold that attachment (it would keep the file forever).
async fn drop_stray_ref(b: &ScyllaBackend, m: &NewMessage, found: &Inserted) -> Result<()> {
    let (Some(ours), Inserted::Existing(stored)) = (&m.attachment, found) else {
        return Ok(());
    };
    if stored.message.attachment.as_ref().map(|a| &a.key) == Some(&ours.key) {
        return Ok(());
    }
    b.session()
        .execute_unpaged(
            &b.st().ref_remove,
            (
                ours.key.as_str(),
                m.conversation_id.as_str(),
                m.msg_id.as_i64(),
            ),
        )
        .await
        .map_err(error::execution)?;
    Ok(())
}

async fn add_bucket(b: &ScyllaBackend, conversation: &ConversationId, bucket: i32) -> Result<()> {
    b.session()
        .execute_unpaged(&b.st().bucket_add, (conversation.as_str(), bucket))
        .await
        .map_err(error::execution)?;
    // Listed: the next latest page of this conversation reads this bucket beside the index.
    b.inner().first_buckets.raise(conversation, bucket);
    Ok(())
}

/// The values of `msg_insert` for one message (content already encoded).
fn insert_values(
    b: &ScyllaBackend,
    m: &NewMessage,
    created_at: Timestamp,
    token: i64,
) -> Result<BoxedRow> {
    let att = m.attachment.as_ref();
    let size = att
        .map(|a| i64::try_from(a.size))
        .transpose()
        .map_err(|_| Error::invalid_input("attachment.size", "must fit in 63 bits"))?;
    Ok(Box::new((
        m.conversation_id.as_str().to_string(),
        b.bucket_of(m.msg_id),
        m.msg_id.as_i64(),
        m.sender_id.as_str().to_string(),
        m.msg_type.code(),
        m.content.clone(),
        att.map_or(MaybeUnset::Unset, |a| MaybeUnset::Set(a.key.clone())),
        size.map_or(MaybeUnset::Unset, MaybeUnset::Set),
        att.map_or(MaybeUnset::Unset, |a| MaybeUnset::Set(a.mime.clone())),
        created_at.as_millis(),
        token,
    )))
}

fn existing(row: MessageRow) -> Inserted {
    // The core compares only the sender's fields; the stored lifecycle is not read for that.
    let lifecycle = Lifecycle::new(row.created_at);
    Inserted::Existing(StoredMessage {
        message: row.message,
        lifecycle,
    })
}

/// Inserts one encoded message whose bucket is already indexed (see the module docs).
async fn insert_one(
    b: &ScyllaBackend,
    m: &NewMessage,
    created_at: Timestamp,
    token: i64,
) -> Result<Inserted> {
    let conv = &m.conversation_id;
    Retry::default()
        .run(|_| async move {
            let found = match b
                .session()
                .execute_unpaged(&b.st().msg_insert, insert_values(b, m, created_at, token)?)
                .await
            {
                Ok(res) => {
                    let lwt = rows::lwt(res)?;
                    if lwt.applied {
                        return Ok(Some(Inserted::New));
                    }
                    match rows::message_from_lwt(&lwt.columns) {
                        Some((cols, token)) => {
                            let mut row = rows::message(conv, m.msg_id, cols)?;
                            row.insert_token = token;
                            Some(row)
                        }
                        // Not applied, so the outcome is known; the SERIAL read that finds
                        // the winner is a Paxos round and can time out: run both again.
                        None => match read::message(b, conv, m.msg_id, Fields::All, true).await {
                            Ok(found) => found,
                            Err(e) if error::lwt_outcome_unknown(&e) => return Ok(None),
                            Err(e) => return Err(e),
                        },
                    }
                }
                Err(e) => {
                    let e = error::execution(e);
                    if !error::lwt_outcome_unknown(&e) {
                        return Err(e);
                    }
                    match read::message(b, conv, m.msg_id, Fields::All, true).await {
                        Ok(found) => found,
                        Err(e) if error::lwt_outcome_unknown(&e) => return Ok(None),
                        Err(e) => return Err(e),
                    }
                }
            };
            Ok(match found {
                // Not there after all (a timed-out attempt that was not applied): try again.
                None => None,
                Some(row) if row.insert_token == Some(token) => Some(Inserted::New),
                Some(row) => Some(existing(row)),
            })
        })
        .await
}

/// Inserts one message (see the module docs).
pub(crate) async fn insert(
    b: &ScyllaBackend,
    message: &EncodedMessage,
    created_at: Timestamp,
) -> Result<Inserted> {
    let m = message.message();
    let bucket = b.bucket_of(m.msg_id);
    futures::try_join!(
        add_bucket(b, &m.conversation_id, bucket),
        enqueue_history(b, &m.conversation_id, m.msg_id, created_at),
        add_ref(b, m),
    )?;
    let inserted = through_lane(b, m, created_at, rand::random()).await?;
    if inserted == Inserted::New {
        add_bucket(b, &m.conversation_id, bucket).await?;
    } else {
        drop_stray_ref(b, m, &inserted).await?;
    }
    Ok(inserted)
}

/// Messages of ONE partition: first as one conditional batch (one Paxos round when they are all
/// new, the common case), then one by one when any exists or the outcome is unknown.
async fn insert_chunk(
    b: &ScyllaBackend,
    chunk: &[(&NewMessage, Timestamp, i64)],
    singles: Singles,
) -> Vec<Result<Inserted>> {
    if chunk.len() > 1 {
        let mut batch = b.conditional_batch();
        let values: Result<Vec<BoxedRow>> = chunk
            .iter()
            .map(|(m, at, t)| {
                batch.append_statement(b.st().msg_insert.clone());
                insert_values(b, m, *at, *t)
            })
            .collect();
        if let Ok(values) = values {
            match run_batch(b, &batch, values).await {
                Ok(true) => return chunk.iter().map(|_| Ok(Inserted::New)).collect(),
                Ok(false) => {}
                Err(e) if error::lwt_outcome_unknown(&e) => {}
                Err(e) => {
                    let (kind, msg) = (e.kind(), e.to_string());
                    let mut out = vec![Err(e)];
                    out.extend((1..chunk.len()).map(|_| Err(Error::new(kind, msg.clone()))));
                    return out;
                }
            }
        }
    }
    match singles {
        Singles::Together => {
            futures::future::join_all(chunk.iter().map(|(m, at, t)| insert_one(b, m, *at, *t)))
                .await
        }
        Singles::OneByOne => {
            let mut out = Vec::with_capacity(chunk.len());
            for (m, at, t) in chunk {
                out.push(insert_one(b, m, *at, *t).await);
            }
            out
        }
    }
}

/// The results of one partition chunk, by position in the batch.
type Answers = Vec<(usize, Result<Inserted>)>;

/// Runs index writes, a few at a time.
async fn run_all(writes: Vec<BoxFuture<'_, Result<()>>>) -> Result<()> {
    futures::stream::iter(writes)
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Inserts a batch the core has validated, grouped by partition; the results in order.
pub(crate) async fn insert_batch(
    b: &ScyllaBackend,
    messages: &[EncodedMessage],
    created_at: Timestamp,
) -> Result<Vec<Inserted>> {
    let buckets: HashSet<(&ConversationId, i32)> = messages
        .iter()
        .map(|m| {
            (
                &m.message().conversation_id,
                b.bucket_of(m.message().msg_id),
            )
        })
        .collect();
    let mut indexes: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    for (c, k) in &buckets {
        indexes.push(add_bucket(b, c, *k).boxed());
    }
    for m in messages {
        let m = m.message();
        if m.attachment.is_some() {
            indexes.push(add_ref(b, m).boxed());
        }
    }
    let history: Vec<(&ConversationId, imstore_core::MsgId)> = messages
        .iter()
        .map(|m| (&m.message().conversation_id, m.message().msg_id))
        .collect();
    futures::try_join!(
        run_all(indexes),
        enqueue_history_many(b, &history, created_at, IN_FLIGHT)
    )?;
    // Identical repeats inside the batch (the core checked they are identical) are retries
    // of the first: answered with it as stored.
    let mut first: HashMap<(&ConversationId, i64), usize> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut chunks: BTreeMap<(&ConversationId, i32), Vec<Vec<usize>>> = BTreeMap::new();
    for (i, em) in messages.iter().enumerate() {
        let m = em.message();
        if let Some(&j) = first.get(&(&m.conversation_id, m.msg_id.as_i64())) {
            repeats.push((i, j));
            continue;
        }
        first.insert((&m.conversation_id, m.msg_id.as_i64()), i);
        let list = chunks
            .entry((&m.conversation_id, b.bucket_of(m.msg_id)))
            .or_default();
        let fits = list.last().is_some_and(|c| {
            c.len() < MAX_BATCH_ROWS
                && c.iter()
                    .map(|&k| messages[k].content().len())
                    .sum::<usize>()
                    + em.content().len()
                    <= MAX_BATCH_BYTES
        });
        if !fits {
            list.push(Vec::new());
        }
        if let Some(last) = list.last_mut() {
            last.push(i);
        }
    }
    let mut runs: Vec<BoxFuture<'_, Answers>> = Vec::new();
    for idx in chunks.into_values().flatten() {
        runs.push(
            async move {
                let rows: Vec<(&NewMessage, Timestamp, i64)> = idx
                    .iter()
                    .map(|&i| (messages[i].message(), created_at, rand::random()))
                    .collect();
                let results = insert_chunk(b, &rows, Singles::Together).await;
                idx.into_iter().zip(results).collect::<Vec<_>>()
            }
            .boxed(),
        );
    }
    let done: Vec<(usize, Result<Inserted>)> = futures::stream::iter(runs)
        .buffer_unordered(IN_FLIGHT / 2)
        .flat_map(futures::stream::iter)
        .collect()
        .await;
    let mut out: Vec<Option<Inserted>> = vec![None; messages.len()];
    let mut relist = HashSet::new();
    let mut strays: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    for (i, r) in done {
        let r = r?;
        let m = messages[i].message();
        if r == Inserted::New {
            relist.insert((&m.conversation_id, b.bucket_of(m.msg_id)));
        } else if m.attachment.is_some() {
            let found = r.clone();
            strays.push(async move { drop_stray_ref(b, m, &found).await }.boxed());
        }
        out[i] = Some(r);
    }
    run_all(strays).await?;
    for (i, j) in repeats {
        out[i] = Some(match &out[j] {
            Some(Inserted::Existing(stored)) => Inserted::Existing(stored.clone()),
            _ => Inserted::Existing(StoredMessage {
                message: messages[j].message().clone(),
                lifecycle: Lifecycle::new(created_at),
            }),
        });
    }
    let mut adds: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    for (c, k) in relist {
        adds.push(add_bucket(b, c, k).boxed());
    }
    run_all(adds).await?;
    out.into_iter()
        .map(|r| r.ok_or_else(|| Error::corrupt("a batch insert result is missing")))
        .collect()
}
