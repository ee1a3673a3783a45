//! A transition: one consistent read, the core's decision, and ONE conditional batch on the
//! conversation's state partition that persists it.
//!
//! The read, in parallel: the request record, the lifecycle row with its bucket's purge sentinel
//! (one query, one snapshot), the feed head, and the message row (sender, created_at). Then
//! `decider.decide(...)`, and for
//!
//! * `Answer`: nothing is written;
//! * `Record`: the request record `IF at_ms = null` (insert-if-absent), with a rewrite of the
//!   lifecycle `IF version = <read>` when the message has one, so the recorded outcome is the
//!   state at commit time;
//! * `Apply`: the feed head `IF feed_head = <read>`, the lifecycle `IF version = <read> AND
//!   purging = null` (for a message that never changed, also the bucket's sentinel `IF at_ms =
//!   <read>`, so a purge that committed since the read fails the batch), the event under the new
//!   seq, and the request record `IF at_ms = null`.
//!
//! Changes of one conversation decided at the same time share their batch: see [`Lanes`].
//!
//! Not applied: another writer, purger or record won; decide again from a new read (the core's
//! [`Retry`]). A Paxos timeout leaves the outcome unknown: the next read is linearizable
//! (SERIAL), which completes any accepted proposal, and a record carrying this call's random
//! token is this call's own answer.

use imstore_core::backend::Fields;
use imstore_core::lifecycle::RequestRecord;
use imstore_core::transition::{Decider, Decision};
use imstore_core::{Error, ErrorKind, Lifecycle, Result, Retry, Timestamp, TransitionOutcome};
use scylla::statement::batch::Batch;
use scylla::value::MaybeUnset;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::index::enqueue_retention;
use crate::read::{self, Fenced, sentinel_key};
use crate::rows::BoxedRow;
use crate::rows::{self, StateRow};

/// A version as the `int` column stores it; beyond `i32::MAX` the counter is exhausted.
pub(crate) fn version_col(v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::new(ErrorKind::InvalidState, "version counter exhausted"))
}

/// Runs a conditional batch; `[applied]`.
pub(crate) async fn run_batch(
    b: &ScyllaBackend,
    batch: &Batch,
    values: Vec<BoxedRow>,
) -> Result<bool> {
    let res = b
        .session()
        .batch(batch, values)
        .await
        .map_err(error::execution)?;
    Ok(rows::lwt(res)?.applied)
}

/// A `None` that was `None` before too stays unset (no tombstone); otherwise the new value.
fn field<T>(next: Option<T>, before_was_none: bool) -> MaybeUnset<Option<T>> {
    match next {
        None if before_was_none => MaybeUnset::Unset,
        v => MaybeUnset::Set(v),
    }
}

/// The values of `state_write`: `next` over `before`, expecting `expected` (`None`: no row yet).
fn state_values(
    (conv, msg_id): (&str, i64),
    next: &Lifecycle,
    before: &Lifecycle,
    expected: Option<u32>,
    new_seqs: Vec<i64>,
) -> Result<BoxedRow> {
    Ok(Box::new((
        next.status.code() as i8,
        version_col(next.version)?,
        field(
            next.recalled_at.map(Timestamp::as_millis),
            before.recalled_at.is_none(),
        ),
        field(
            next.recalled_by.as_ref().map(|u| u.as_str().to_string()),
            before.recalled_by.is_none(),
        ),
        field(
            next.restored_at.map(Timestamp::as_millis),
            before.restored_at.is_none(),
        ),
        field(
            next.deleted_at.map(Timestamp::as_millis),
            before.deleted_at.is_none(),
        ),
        field(
            next.deleted_by.as_ref().map(|u| u.as_str().to_string()),
            before.deleted_by.is_none(),
        ),
        new_seqs,
        conv.to_string(),
        msg_id,
        expected.map(version_col).transpose()?,
    )))
}

/// The values of `request_put` for `record`, written by the call with `token`.
fn record_values(record: &RequestRecord, token: i64) -> Result<BoxedRow> {
    Ok(Box::new((
        record.action.as_str(),
        record.msg_id.as_i64(),
        record.requester.as_str().to_string(),
        record.status.code() as i8,
        version_col(record.version)?,
        record.changed,
        record.at.as_millis(),
        record
            .refusal
            .map_or(MaybeUnset::Unset, |k| MaybeUnset::Set(k.as_str())),
        token,
        record.conversation_id.as_str().to_string(),
        record.request_id.as_str().to_string(),
    )))
}

/// What one read found, for one decision.
struct Read {
    record: Option<(RequestRecord, Option<i64>)>,
    fenced: Fenced,
    head: Option<i64>,
    /// The message's sender and lifecycle, when it exists and no purge removed it.
    message: Option<(imstore_core::UserId, Lifecycle)>,
}

async fn read_all(b: &ScyllaBackend, decider: &Decider<'_>, serial: bool) -> Result<Read> {
    let req = decider.request();
    let conv = &req.conversation_id;
    let (record, fenced, head, row) = futures::try_join!(
        read::request(b, req, serial),
        read::fenced(b, conv, req.msg_id, serial),
        read::head(b, conv, serial),
        read::message(b, conv, req.msg_id, Fields::NoContent, serial),
    )?;
    let mut message = row.and_then(|m| {
        rows::lifecycle_of(fenced.state.as_ref(), m.created_at).map(|lc| (m.message.sender_id, lc))
    });
    if message.is_some() && !read::confirm_present(b, conv, req.msg_id, &fenced).await? {
        message = None;
    }
    Ok(Read {
        record,
        fenced,
        head: head.0,
        message,
    })
}

/// What the call's attempts carry from one to the next.
struct Progress {
    /// The last attempt's outcome is unknown (a Paxos timeout): read linearizably.
    serial: bool,
    /// The request record's purge entry is written (once per call, beside the first read; the
    /// record is purged with the retention, and a recall or delete makes the message purgeable
    /// at the same moment, so the one entry serves both).
    queued: bool,
}

/// Persists what `decider` decides (see the module docs) and returns the recorded answer.
pub(crate) async fn transition(
    b: &ScyllaBackend,
    decider: &Decider<'_>,
) -> Result<TransitionOutcome> {
    let token: i64 = rand::random();
    let progress = Mutex::new(Progress {
        serial: false,
        queued: false,
    });
    let progress = &progress;
    Retry::default()
        .run(move |_| async move {
            let (serial, queued) = {
                let p = progress.lock().unwrap_or_else(|p| p.into_inner());
                (p.serial, p.queued)
            };
            // The retention entry is written beside the first read, not after it: it depends
            // on the request alone, and the purge drops an entry whose message turns out not
            // purgeable (as after a crash between the entry and the batch), so one written for
            // a request that changes nothing costs a row, not a wrong answer. One round trip
            // fewer in series on every change.
            let (read, entry) = if queued {
                (read_all(b, decider, serial).await, Ok(()))
            } else {
                let req = decider.request();
                let due = decider.now().saturating_add(decider.policy().retention());
                futures::join!(
                    read_all(b, decider, serial),
                    enqueue_retention(
                        b,
                        &req.conversation_id,
                        req.msg_id,
                        req.request_id.as_str(),
                        due,
                    )
                )
            };
            entry?;
            progress.lock().unwrap_or_else(|p| p.into_inner()).queued = true;
            let read = match read {
                Ok(r) => r,
                Err(e) if serial && error::lwt_outcome_unknown(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            if let Some((record, Some(t))) = &read.record
                && *t == token
            {
                // This call's own write, whose acknowledgement a timeout swallowed.
                return Ok(Some(record.answer()));
            }
            let decision = decider.decide(
                read.record.as_ref().map(|(r, _)| r),
                read.message.as_ref().map(|(s, l)| (s, l)),
            );
            let Some(plan) = plan(b, decider, &read, &decision, token)? else {
                return Ok(Some(decision.into_answer()));
            };
            let applied = match plan {
                Plan::Record(batch, values) => run_batch(b, &batch, values).await,
                Plan::Apply { head, part } => through_lane(b, head, *part).await,
            };
            match applied {
                Ok(true) => Ok(Some(decision.into_answer())),
                Ok(false) => {
                    progress.lock().unwrap_or_else(|p| p.into_inner()).serial = false;
                    Ok(None)
                }
                Err(e) if error::lwt_outcome_unknown(&e) => {
                    progress.lock().unwrap_or_else(|p| p.into_inner()).serial = true;
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
        .await?
}

/// How a decision is persisted.
enum Plan {
    /// A record (and the lifecycle it was judged on) in a batch of its own: claims no seq.
    Record(Batch, Vec<BoxedRow>),
    /// A change: its part of its conversation's next combined batch (see [`Lanes`]).
    Apply {
        /// The feed head the decision read.
        head: Option<i64>,
        part: Box<Part>,
    },
}

/// One change's statements in a combined batch, but for its seq, which the batch assigns.
pub(crate) struct Part {
    conv: String,
    msg_id: i64,
    request_id: String,
    next: Lifecycle,
    current: Lifecycle,
    live_version: Option<u32>,
    /// The bucket's purge sentinel, for a message that never changed: its epoch as read, its key.
    fence: Option<(Option<i64>, i64)>,
    /// The event's status, version, time and actor.
    event: (i8, i32, i64, String),
    /// The request record's values (taken when the part is written).
    record: Option<BoxedRow>,
}

impl Part {
    /// Appends this change at `seq` to `batch`.
    fn append(
        &mut self,
        b: &ScyllaBackend,
        seq: i64,
        batch: &mut Batch,
        values: &mut Vec<BoxedRow>,
    ) -> Result<()> {
        let st = b.st();
        batch.append_statement(st.state_write.clone());
        values.push(state_values(
            (&self.conv, self.msg_id),
            &self.next,
            &self.current,
            self.live_version,
            vec![seq],
        )?);
        if let Some((e, key)) = self.fence {
            batch.append_statement(st.sentinel_fence.clone());
            values.push(Box::new((
                e.map_or(MaybeUnset::Unset, MaybeUnset::Set),
                self.conv.clone(),
                key,
                e,
            )));
        }
        let (status, version, at, by) = self.event.clone();
        batch.append_statement(st.event_put.clone());
        values.push(Box::new((
            self.conv.clone(),
            seq,
            self.msg_id,
            status,
            version,
            at,
            by,
        )));
        let record = self
            .record
            .take()
            .ok_or_else(|| Error::new(ErrorKind::Backend, "a change part was written twice"))?;
        batch.append_statement(st.request_put.clone());
        values.push(record);
        Ok(())
    }
}

/// Changes per combined batch: about 2 KiB of mutations each, under the server's batch limits.
const PARTS_PER_BATCH: usize = 16;

/// The changes waiting for their conversation's next combined batch, by conversation, with
/// the head the lane's last applied batch left (a conversation is in the map while its lane
/// task runs).
///
/// Every change claims the feed head `IF feed_head = <read>`; concurrent changes in one
/// conversation would each win a Paxos round only after losing several. A lane writes
/// whatever changes wait as ONE conditional batch that claims `head + n` once and gives the
/// changes seqs `head + 1 ..= head + n` (dense, as the feed window needs). Each change keeps
/// its own conditions (lifecycle version, sentinel, record absent), so a batch applies only if
/// every change in it still holds; a batch never holds two changes of one message or one
/// request id, whose writes would merge. When a batch does not apply, every change in it is
/// decided again from a fresh read, as a lost round always was.
#[derive(Default)]
pub(crate) struct Lanes(Mutex<HashMap<String, Lane>>);

#[derive(Default)]
struct Lane {
    waiting: VecDeque<Waiting>,
    /// The head after this lane's last applied batch (`None` after one that did not apply).
    head: Option<i64>,
}

struct Waiting {
    head: Option<i64>,
    part: Part,
    answer: futures::channel::oneshot::Sender<Result<bool>>,
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next batch of `conv`'s lane and the head it claims from, or `None` after closing the
    /// lane when nothing waits.
    fn next(&self, conv: &str) -> Option<(Option<i64>, Vec<Waiting>)> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(conv)?;
        if lane.waiting.is_empty() {
            lanes.remove(conv);
            return None;
        }
        let mut taken = Vec::new();
        let mut later = VecDeque::new();
        let (mut msgs, mut reqs) = (HashSet::new(), HashSet::new());
        while let Some(w) = lane.waiting.pop_front() {
            if taken.len() < PARTS_PER_BATCH
                && !msgs.contains(&w.part.msg_id)
                && !reqs.contains(&w.part.request_id)
            {
                msgs.insert(w.part.msg_id);
                reqs.insert(w.part.request_id.clone());
                taken.push(w);
            } else {
                later.push_back(w);
            }
        }
        lane.waiting = later;
        let head = taken
            .iter()
            .map(|w| w.head)
            .chain([lane.head])
            .max()
            .flatten();
        Some((head, taken))
    }

    fn settle(&self, conv: &str, head: Option<i64>) {
        if let Some(lane) = self.lock().get_mut(conv) {
            lane.head = head;
        }
    }
}

/// Writes `part` in its conversation's next combined batch (see [`Lanes`]): `[applied]`.
async fn through_lane(b: &ScyllaBackend, head: Option<i64>, part: Part) -> Result<bool> {
    let conv = part.conv.clone();
    let (tx, rx) = futures::channel::oneshot::channel();
    let start = {
        let mut lanes = b.inner().transition_lanes.lock();
        let start = !lanes.contains_key(&conv);
        lanes
            .entry(conv.clone())
            .or_default()
            .waiting
            .push_back(Waiting {
                head,
                part,
                answer: tx,
            });
        start
    };
    if start {
        let b = b.clone();
        // Spawned, so a caller that stops waiting strands nobody in the lane.
        tokio::spawn(async move {
            while let Some((head, batch)) = b.inner().transition_lanes.next(&conv) {
                let applied = run_lane_batch(&b, &conv, head, batch).await;
                b.inner().transition_lanes.settle(&conv, applied);
            }
        });
    }
    rx.await.map_err(|_| {
        Error::new(
            ErrorKind::Unavailable,
            "the transition's lane ended before answering",
        )
    })?
}
/// Writes one combined batch of a lane and answers its changes; the head it left when applied.
async fn run_lane_batch(
    b: &ScyllaBackend,
    conv: &str,
    head: Option<i64>,
    mut batch_of: Vec<Waiting>,
) -> Option<i64> {
    let built = (|| {
        let n = i64::try_from(batch_of.len()).unwrap_or(i64::MAX);
        let first = head
            .unwrap_or(0)
            .checked_add(1)
            .filter(|f| f.checked_add(n - 1).is_some())
            .ok_or_else(|| Error::new(ErrorKind::InvalidState, "feed sequence exhausted"))?;
        let st = b.st();
        let mut batch = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(2 + 4 * batch_of.len());
        // Every batch writes the head row, so the head and hold are read by name.
        batch.append_statement(st.head_mark.clone());
        values.push(Box::new((conv.to_owned(),)));
        batch.append_statement(st.head_claim.clone());
        values.push(Box::new((first + n - 1, conv.to_owned(), head)));
        for (i, w) in (0i64..).zip(batch_of.iter_mut()) {
            w.part.append(b, first + i, &mut batch, &mut values)?;
        }
        Ok::<_, Error>((batch, values, first + n - 1))
    })();
    let outcome = match built {
        Ok((batch, values, last)) => run_batch(b, &batch, values)
            .await
            .map(|applied| applied.then_some(last)),
        Err(e) => Err(e),
    };
    let left = outcome.as_ref().ok().copied().flatten();
    for w in batch_of {
        let answer = match &outcome {
            Ok(applied) => Ok(applied.is_some()),
            Err(e) => Err(Error::new(e.kind(), e.to_string())),
        };
        // A caller that stopped waiting has nobody to tell.
        let _ = w.answer.send(answer);
    }
    left
}

/// The conditional batch that persists `decision`, or `None` when nothing is to be written.
fn plan(
    b: &ScyllaBackend,
    decider: &Decider<'_>,
    read: &Read,
    decision: &Decision,
    token: i64,
) -> Result<Option<Plan>> {
    let req = decider.request();
    let conv = req.conversation_id.as_str().to_string();
    let st = b.st();
    let mut batch = b.conditional_batch();
    let mut values: Vec<BoxedRow> = Vec::with_capacity(6);
    let live_version = match &read.fenced.state {
        Some(StateRow::Live { changed, .. }) => Some(changed.version),
        _ => None,
    };
    if matches!(decision, Decision::Answer(_)) {
        return Ok(None);
    }
    // Every batch writes the head row (an idempotent overwrite of one row marker), so a partition
    // with state always has it and the head and hold are read by name.
    batch.append_statement(st.head_mark.clone());
    values.push(Box::new((conv.clone(),)));
    match decision {
        Decision::Answer(_) => return Ok(None),
        Decision::Record { record, .. } => {
            if let (Some(v), Some((_, current))) = (live_version, &read.message) {
                // Only while the message is still as judged.
                batch.append_statement(st.state_write.clone());
                values.push(state_values(
                    (&conv, req.msg_id.as_i64()),
                    current,
                    current,
                    Some(v),
                    Vec::new(),
                )?);
            }
            batch.append_statement(st.request_put.clone());
            values.push(record_values(record, token)?);
        }
        Decision::Apply { next, record, .. } => {
            let Some((_, current)) = &read.message else {
                return Err(Error::new(
                    ErrorKind::Backend,
                    "the decision applies a change to a message that was not read",
                ));
            };
            let event = decider.event(0, next);
            let part = Part {
                conv,
                msg_id: req.msg_id.as_i64(),
                request_id: req.request_id.as_str().to_owned(),
                next: next.clone(),
                current: current.clone(),
                live_version,
                // The message never changed: the absent lifecycle is only "never changed"
                // while no purge commits in its bucket, which stamps the sentinel.
                fence: live_version
                    .is_none()
                    .then(|| (read.fenced.epoch, sentinel_key(b.bucket_of(req.msg_id)))),
                event: (
                    event.status.code() as i8,
                    version_col(event.version)?,
                    event.at.as_millis(),
                    event.by.as_str().to_string(),
                ),
                record: Some(record_values(record, token)?),
            };
            return Ok(Some(Plan::Apply {
                head: read.head,
                part: Box::new(part),
            }));
        }
    }
    Ok(Some(Plan::Record(batch, values)))
}
