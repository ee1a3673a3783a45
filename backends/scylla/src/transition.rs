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
    decider: &Decider<'_>,
    next: &Lifecycle,
    before: &Lifecycle,
    expected: Option<u32>,
    new_seqs: Vec<i64>,
) -> Result<BoxedRow> {
    let req = decider.request();
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
        req.conversation_id.as_str().to_string(),
        req.msg_id.as_i64(),
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
    /// The request record's purge entry is written (once per call).
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
            let serial = progress.lock().unwrap_or_else(|p| p.into_inner()).serial;
            let read = match read_all(b, decider, serial).await {
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
            let Some((batch, values)) = plan(b, decider, &read, &decision, token)? else {
                return Ok(Some(decision.into_answer()));
            };
            let queued = progress.lock().unwrap_or_else(|p| p.into_inner()).queued;
            if !queued {
                // The record is purged with the retention; a recall or delete makes the message
                // purgeable at the same moment, so the one entry serves both.
                let req = decider.request();
                let due = decider.now().saturating_add(decider.policy().retention());
                enqueue_retention(
                    b,
                    &req.conversation_id,
                    req.msg_id,
                    req.request_id.as_str(),
                    due,
                )
                .await?;
                progress.lock().unwrap_or_else(|p| p.into_inner()).queued = true;
            }
            match run_batch(b, &batch, values).await {
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

/// The conditional batch that persists `decision`, or `None` when nothing is to be written.
fn plan(
    b: &ScyllaBackend,
    decider: &Decider<'_>,
    read: &Read,
    decision: &Decision,
    token: i64,
) -> Result<Option<(Batch, Vec<BoxedRow>)>> {
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
                    decider,
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
            let seq =
                read.head.unwrap_or(0).checked_add(1).ok_or_else(|| {
                    Error::new(ErrorKind::InvalidState, "feed sequence exhausted")
                })?;
            batch.append_statement(st.head_claim.clone());
            values.push(Box::new((seq, conv.clone(), read.head)));
            batch.append_statement(st.state_write.clone());
            values.push(state_values(
                decider,
                next,
                current,
                live_version,
                vec![seq],
            )?);
            if live_version.is_none() {
                // The message never changed: the absent lifecycle is only "never changed" while
                // no purge commits in its bucket, which stamps the sentinel.
                let e = read.fenced.epoch;
                batch.append_statement(st.sentinel_fence.clone());
                values.push(Box::new((
                    e.map_or(MaybeUnset::Unset, MaybeUnset::Set),
                    conv.clone(),
                    sentinel_key(b.bucket_of(req.msg_id)),
                    e,
                )));
            }
            let event = decider.event(u64::try_from(seq).unwrap_or(0), next);
            batch.append_statement(st.event_put.clone());
            values.push(Box::new((
                conv,
                seq,
                req.msg_id.as_i64(),
                event.status.code() as i8,
                version_col(event.version)?,
                event.at.as_millis(),
                event.by.as_str().to_string(),
            )));
            batch.append_statement(st.request_put.clone());
            values.push(record_values(record, token)?);
        }
    }
    Ok(Some((batch, values)))
}
