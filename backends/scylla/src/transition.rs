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
//! The decisions of one conversation made at the same time share their batch: see [`Lanes`].
//!
//! Not applied: another writer, purger or record won; decide again from a new read (the core's
//! [`Retry`]). A Paxos timeout leaves the outcome unknown: the next read is linearizable
//! (SERIAL), which completes any accepted proposal, and a record carrying this call's random
//! token is this call's own answer.

use imstore_core::backend::Fields;
use imstore_core::lifecycle::RequestRecord;
use imstore_core::transition::{Decider, Decision};
use imstore_core::{Error, ErrorKind, Lifecycle, Result, Retry, Timestamp, TransitionOutcome};
use scylla::statement::batch::{Batch, BatchStatement};
use scylla::value::MaybeUnset;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
    let applied = rows::lwt(res)?.applied;
    #[cfg(feature = "testing")]
    if b.inner().hidden.take(batch) {
        return Err(Error::new(
            ErrorKind::Unavailable,
            "the batch's outcome is hidden by the test, as a timeout hides it",
        ));
    }
    Ok(applied)
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
    let (record, fenced, head, row) = if serial {
        // One SERIAL read of the state partition completes any proposal accepted there (Paxos
        // state is per partition), so the partition's other rows are then read at the ordinary
        // level: three SERIAL reads more would each be a Paxos round contending with the
        // writers this call lost to. The message row lives in another partition.
        let (record, row) = futures::try_join!(
            read::request(b, req, true),
            read::message(b, conv, req.msg_id, Fields::NoContent, true),
        )?;
        let (fenced, head) = futures::try_join!(
            read::fenced(b, conv, req.msg_id, false),
            read::head(b, conv, false),
        )?;
        (record, fenced, head, row)
    } else {
        futures::try_join!(
            read::request(b, req, false),
            read::fenced(b, conv, req.msg_id, false),
            read::head(b, conv, false),
            read::message(b, conv, req.msg_id, Fields::NoContent, false),
        )?
    };
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
            // Taken before the read: a lane batch acknowledged after it may be unseen.
            let seen = b.inner().transition_lanes.seen();
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
            let applied = through_lane(b, seen, read.head, plan).await;
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

/// How a decision is persisted: its part of its conversation's next combined batch (see
/// [`Lanes`]).
pub(crate) enum Plan {
    /// A record (and the lifecycle it was judged on, rewritten as it was): claims no seq.
    Record {
        conv: String,
        msg_id: i64,
        request_id: String,
        statements: Vec<BatchStatement>,
        values: Vec<BoxedRow>,
    },
    /// A change: claims the next seq.
    Apply(Box<Part>),
}

impl Plan {
    fn conv(&self) -> &str {
        match self {
            Plan::Record { conv, .. } => conv,
            Plan::Apply(p) => &p.conv,
        }
    }

    fn msg_id(&self) -> i64 {
        match self {
            Plan::Record { msg_id, .. } => *msg_id,
            Plan::Apply(p) => p.msg_id,
        }
    }

    fn request_id(&self) -> &str {
        match self {
            Plan::Record { request_id, .. } => request_id,
            Plan::Apply(p) => &p.request_id,
        }
    }
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
/// Decisions per combined batch: about 2 KiB of mutations each, under the server's batch limits.
const PARTS_PER_BATCH: usize = 16;

/// Per lane, the messages and request ids its recent batches wrote that are remembered (the
/// oldest half is forgotten beyond it; forgetting only costs a doomed part one batch).
const REMEMBERED: usize = 1024;

/// The decisions waiting for their conversation's next combined batch, by conversation (a
/// conversation is in the map while its lane task runs), and a counter of acknowledged batches.
///
/// Every change claims the feed head `IF feed_head = <read>`; concurrent changes in one
/// conversation would each win a Paxos round only after losing several, and a record beside
/// them would contend with them for the partition's Paxos state. A lane writes whatever waits
/// as ONE conditional batch that claims `head + n` once and gives its n changes seqs
/// `head + 1 ..= head + n` (dense, as the feed window needs); records ride along and claim no
/// seq. Each decision keeps its own conditions (lifecycle version, sentinel, record absent), so
/// a batch applies only if every one still holds; a batch never holds two decisions of one
/// message or one request id, whose writes would merge. When a batch does not apply, every
/// decision in it is decided again from a fresh read, as a lost round always was.
///
/// One doomed decision fails the whole batch, so the lane answers "not applied" without a
/// round trip to a decision that cannot hold: one whose message or request id a batch of this
/// lane wrote after the decision's read began (its version or absent record is stale). And a
/// batch that does not apply leaves the head it claimed as the lane's lower bound of the head
/// (the head only grows), not nothing: else the next batch would claim from its decisions' own,
/// older reads and fail in turn.
#[derive(Default)]
pub(crate) struct Lanes {
    lanes: Mutex<HashMap<String, Lane>>,
    /// Batches acknowledged, or with an unknown outcome, by every lane of this backend.
    written: AtomicU64,
}

#[derive(Default)]
struct Lane {
    waiting: VecDeque<Waiting>,
    /// A lower bound of the feed head: the head the lane's last applied batch left, or the head
    /// its last unapplied batch claimed.
    head: Option<i64>,
    /// The `written` count after the last batch that wrote a message, by message.
    changed: HashMap<i64, u64>,
    /// The `written` count after the last batch that wrote a request record, by request id.
    recorded: HashMap<String, u64>,
}

struct Waiting {
    /// `written` before the decision's read began.
    seen: u64,
    /// The feed head the decision read.
    head: Option<i64>,
    plan: Plan,
    answer: futures::channel::oneshot::Sender<Result<bool>>,
}

impl Waiting {
    /// A batch of this lane wrote the decision's message or request after its read began.
    fn doomed(&self, lane: &Lane) -> bool {
        let after = |n: Option<&u64>| n.is_some_and(|n| *n > self.seen);
        after(lane.changed.get(&self.plan.msg_id()))
            || after(lane.recorded.get(self.plan.request_id()))
    }
}

/// Forgets the oldest half of `map` once it holds more than [`REMEMBERED`] entries.
fn forget_oldest<K: Eq + std::hash::Hash>(map: &mut HashMap<K, u64>) {
    if map.len() > REMEMBERED {
        let mut counts: Vec<u64> = map.values().copied().collect();
        counts.sort_unstable();
        let cut = counts[counts.len() / 2];
        map.retain(|_, n| *n > cut);
    }
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane>> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The count of batches written so far, taken before a decision's read.
    pub(crate) fn seen(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// The next batch of `conv`'s lane and the head it claims from, or `None` after closing the
    /// lane when nothing waits. Doomed decisions are answered "not applied" here.
    fn next(&self, conv: &str) -> Option<(Option<i64>, Vec<Waiting>)> {
        let mut lanes = self.lock();
        let lane = lanes.get_mut(conv)?;
        let mut taken = Vec::new();
        let mut later = VecDeque::new();
        let (mut msgs, mut reqs) = (HashSet::new(), HashSet::new());
        while let Some(w) = lane.waiting.pop_front() {
            if w.doomed(lane) {
                // A caller that stopped waiting has nobody to tell.
                let _ = w.answer.send(Ok(false));
            } else if taken.len() < PARTS_PER_BATCH
                && !msgs.contains(&w.plan.msg_id())
                && !reqs.contains(w.plan.request_id())
            {
                msgs.insert(w.plan.msg_id());
                reqs.insert(w.plan.request_id().to_owned());
                taken.push(w);
            } else {
                later.push_back(w);
            }
        }
        lane.waiting = later;
        if taken.is_empty() {
            lanes.remove(conv);
            return None;
        }
        let head = taken
            .iter()
            .map(|w| w.head)
            .chain([lane.head])
            .max()
            .flatten();
        Some((head, taken))
    }

    /// Records what a batch of `conv`'s lane did: the head it leaves (a lower bound), and, when it
    /// may have been written, what it wrote.
    fn settle(&self, conv: &str, head: Option<i64>, wrote: Option<(Vec<i64>, Vec<String>)>) {
        let mut lanes = self.lock();
        let Some(lane) = lanes.get_mut(conv) else {
            return;
        };
        lane.head = lane.head.max(head);
        if let Some((msgs, reqs)) = wrote {
            let n = self.written.fetch_add(1, Ordering::SeqCst) + 1;
            lane.changed.extend(msgs.into_iter().map(|m| (m, n)));
            lane.recorded.extend(reqs.into_iter().map(|r| (r, n)));
            forget_oldest(&mut lane.changed);
            forget_oldest(&mut lane.recorded);
        }
    }
}

/// Writes `plan` in its conversation's next combined batch (see [`Lanes`]): `[applied]`.
async fn through_lane(b: &ScyllaBackend, seen: u64, head: Option<i64>, plan: Plan) -> Result<bool> {
    let conv = plan.conv().to_owned();
    let (tx, rx) = futures::channel::oneshot::channel();
    let start = {
        let mut lanes = b.inner().transition_lanes.lock();
        let start = !lanes.contains_key(&conv);
        lanes
            .entry(conv.clone())
            .or_default()
            .waiting
            .push_back(Waiting {
                seen,
                head,
                plan,
                answer: tx,
            });
        start
    };
    if start {
        let b = b.clone();
        // Spawned, so a caller that stops waiting strands nobody in the lane.
        tokio::spawn(async move {
            while let Some((head, batch)) = b.inner().transition_lanes.next(&conv) {
                let (left, wrote) = run_lane_batch(&b, &conv, head, batch).await;
                b.inner().transition_lanes.settle(&conv, left, wrote);
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

/// Writes one combined batch of a lane and answers its decisions: the head it leaves (the head
/// it claimed when it did not apply), and the messages and request ids it wrote unless it
/// surely did not.
async fn run_lane_batch(
    b: &ScyllaBackend,
    conv: &str,
    head: Option<i64>,
    mut batch_of: Vec<Waiting>,
) -> (Option<i64>, Option<(Vec<i64>, Vec<String>)>) {
    let changes = batch_of
        .iter()
        .filter(|w| matches!(w.plan, Plan::Apply(_)))
        .count();
    let built = (|| {
        let st = b.st();
        let mut batch = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(2 + 4 * batch_of.len());
        // Every batch writes the head row (an idempotent overwrite of one row marker), so a
        // partition with state always has it and the head and hold are read by name.
        batch.append_statement(st.head_mark.clone());
        values.push(Box::new((conv.to_owned(),)));
        if changes == 0 {
            // Records alone claim no seq, so the head is no condition of theirs.
            for w in &mut batch_of {
                if let Plan::Record {
                    statements,
                    values: v,
                    ..
                } = &mut w.plan
                {
                    for s in statements.drain(..) {
                        batch.append_statement(s);
                    }
                    values.append(v);
                }
            }
            return Ok::<_, Error>((batch, values, head));
        }
        let n = i64::try_from(changes).unwrap_or(i64::MAX);
        let first = head
            .unwrap_or(0)
            .checked_add(1)
            .filter(|f| f.checked_add(n - 1).is_some())
            .ok_or_else(|| Error::new(ErrorKind::InvalidState, "feed sequence exhausted"))?;
        batch.append_statement(st.head_claim.clone());
        values.push(Box::new((first + n - 1, conv.to_owned(), head)));
        let mut seq = first;
        for w in &mut batch_of {
            match &mut w.plan {
                Plan::Apply(part) => {
                    part.append(b, seq, &mut batch, &mut values)?;
                    seq += 1;
                }
                Plan::Record {
                    statements,
                    values: v,
                    ..
                } => {
                    for s in statements.drain(..) {
                        batch.append_statement(s);
                    }
                    values.append(v);
                }
            }
        }
        Ok((batch, values, Some(first + n - 1)))
    })();
    let outcome = match built {
        Ok((batch, values, last)) => run_batch(b, &batch, values)
            .await
            .map(|applied| applied.then_some(last)),
        Err(e) => Err(e),
    };
    let wrote = match &outcome {
        Ok(None) => None,
        // Applied, or perhaps (a timeout): either way a decision read before it is stale.
        _ => Some((
            batch_of.iter().map(|w| w.plan.msg_id()).collect(),
            batch_of
                .iter()
                .map(|w| w.plan.request_id().to_owned())
                .collect(),
        )),
    };
    let left = match &outcome {
        Ok(Some(last)) => *last,
        _ => head,
    };
    for w in batch_of {
        let answer = match &outcome {
            Ok(applied) => Ok(applied.is_some()),
            Err(e) => Err(Error::new(e.kind(), e.to_string())),
        };
        // A caller that stopped waiting has nobody to tell.
        let _ = w.answer.send(answer);
    }
    (left, wrote)
}

/// How `decision` is persisted, or `None` when nothing is to be written.
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
    let live_version = match &read.fenced.state {
        Some(StateRow::Live { changed, .. }) => Some(changed.version),
        _ => None,
    };
    match decision {
        Decision::Answer(_) => Ok(None),
        Decision::Record { record, .. } => {
            let mut statements: Vec<BatchStatement> = Vec::with_capacity(2);
            let mut values: Vec<BoxedRow> = Vec::with_capacity(2);
            if let (Some(v), Some((_, current))) = (live_version, &read.message) {
                // Only while the message is still as judged.
                statements.push(st.state_write.clone().into());
                values.push(state_values(
                    (&conv, req.msg_id.as_i64()),
                    current,
                    current,
                    Some(v),
                    Vec::new(),
                )?);
            }
            statements.push(st.request_put.clone().into());
            values.push(record_values(record, token)?);
            Ok(Some(Plan::Record {
                conv,
                msg_id: req.msg_id.as_i64(),
                request_id: req.request_id.as_str().to_owned(),
                statements,
                values,
            }))
        }
        Decision::Apply { next, record, .. } => {
            let Some((_, current)) = &read.message else {
                return Err(Error::new(
                    ErrorKind::Backend,
                    "the decision applies a change to a message that was not read",
                ));
            };
            let event = decider.event(0, next);
            Ok(Some(Plan::Apply(Box::new(Part {
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
            }))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::oneshot;

    /// A record decision of `msg` under request `req`, read when `seen` batches were written,
    /// at feed head `head`; and where its answer arrives.
    fn waiting(
        seen: u64,
        head: Option<i64>,
        msg: i64,
        req: &str,
    ) -> (Waiting, oneshot::Receiver<Result<bool>>) {
        let (answer, rx) = oneshot::channel();
        let plan = Plan::Record {
            conv: "c".into(),
            msg_id: msg,
            request_id: req.into(),
            statements: Vec::new(),
            values: Vec::new(),
        };
        (
            Waiting {
                seen,
                head,
                plan,
                answer,
            },
            rx,
        )
    }

    fn push(lanes: &Lanes, w: Waiting) {
        lanes
            .lock()
            .entry("c".into())
            .or_default()
            .waiting
            .push_back(w);
    }

    fn taken(batch: &Option<(Option<i64>, Vec<Waiting>)>) -> Vec<(i64, String)> {
        batch.as_ref().map_or_else(Vec::new, |(_, ws)| {
            ws.iter()
                .map(|w| (w.plan.msg_id(), w.plan.request_id().to_owned()))
                .collect()
        })
    }

    /// A decision read before a batch of the lane wrote its message, or its request id, cannot
    /// hold: it is answered "not applied" without a round trip, and the rest go on.
    #[test]
    fn a_decision_read_before_the_lane_wrote_its_message_or_request_is_not_sent() {
        let lanes = Lanes::default();
        let (first, _) = waiting(0, Some(0), 1, "a");
        push(&lanes, first);
        assert_eq!(taken(&lanes.next("c")), vec![(1, "a".to_owned())]);
        lanes.settle("c", Some(1), Some((vec![1], vec!["a".into()])));
        let (same_msg, same_msg_rx) = waiting(0, Some(0), 1, "b");
        let (same_req, same_req_rx) = waiting(0, Some(0), 2, "a");
        let (other, _) = waiting(0, Some(0), 3, "c");
        let (after, _) = waiting(lanes.seen(), Some(1), 1, "d");
        for w in [same_msg, same_req, other, after] {
            push(&lanes, w);
        }
        let batch = lanes.next("c");
        assert_eq!(
            taken(&batch),
            vec![(3, "c".to_owned()), (1, "d".to_owned())],
            "the doomed two are not in the batch; one read after the write is"
        );
        for mut rx in [same_msg_rx, same_req_rx] {
            assert!(matches!(rx.try_recv(), Ok(Some(Ok(false)))));
        }
    }

    /// A batch that did not apply leaves the head it claimed as the lane's lower bound: the
    /// next batch claims from it, not from its decisions' older reads.
    #[test]
    fn a_batch_that_did_not_apply_keeps_the_head_it_claimed() {
        let lanes = Lanes::default();
        let (w, _) = waiting(0, Some(7), 1, "a");
        push(&lanes, w);
        let (head, _) = lanes.next("c").unwrap();
        assert_eq!(head, Some(7));
        // Not applied: nothing written, and the head stays a lower bound.
        lanes.settle("c", head, None);
        let (stale, _) = waiting(0, Some(3), 2, "b");
        push(&lanes, stale);
        let (head, batch) = lanes.next("c").unwrap();
        assert_eq!(head, Some(7), "claimed from the lane's bound");
        assert_eq!(batch.len(), 1);
        assert_eq!(
            lanes.seen(),
            0,
            "a batch that surely did not apply counts nothing"
        );
    }

    /// A lane with nothing but doomed decisions answers them and closes.
    #[test]
    fn a_lane_of_doomed_decisions_closes() {
        let lanes = Lanes::default();
        let (w, _) = waiting(0, None, 1, "a");
        push(&lanes, w);
        let _ = lanes.next("c");
        lanes.settle("c", Some(1), Some((vec![1], vec!["a".into()])));
        let (doomed, mut rx) = waiting(0, None, 1, "b");
        push(&lanes, doomed);
        assert!(lanes.next("c").is_none());
        assert!(matches!(rx.try_recv(), Ok(Some(Ok(false)))));
        assert!(lanes.lock().is_empty());
    }

    /// The memory of written messages stays bounded while a lane lives.
    #[test]
    fn the_lane_forgets_its_oldest_writes_beyond_its_bound() {
        let lanes = Lanes::default();
        let (w, _) = waiting(0, None, 0, "r");
        push(&lanes, w);
        for i in 0..(3 * REMEMBERED as i64) {
            lanes.settle("c", Some(i), Some((vec![i], vec![format!("r{i}")])));
        }
        let map = lanes.lock();
        let lane = map.get("c").unwrap();
        assert!(lane.changed.len() <= REMEMBERED + 1);
        assert!(lane.recorded.len() <= REMEMBERED + 1);
        assert!(lane.changed.contains_key(&(3 * REMEMBERED as i64 - 1)));
    }
}
