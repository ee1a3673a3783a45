//! A transition (recall, restore, delete): one read, core's decision, one insert.
//!
//! 1. Read, at once: the log entry holding the request id (its record), the message document
//!    brought up to its log ([`read::current`]), and the conversation's feed head.
//! 2. `decider.decide(record, message)`.
//! 3. Persist the decision as ONE insert into `log`, under three unique indexes: the request id
//!    (so a request has one first outcome), and for an applied change the message version
//!    `v + 1` (the compare-and-set against every other transition and the purge) and the feed
//!    position `head + 1` (the event's place in the feed). The insert is the commit: the event,
//!    the new lifecycle and the request record are one document, so they are visible together
//!    or not at all, and every reader sees them from that moment on.
//! 4. A duplicate key on any of the three means a lost race: read again and decide again (core's
//!    [`Retry`]); a replay of the winner's record is what a loser then gets.
//! 5. After an applied change, write the new lifecycle onto the message document (a cache of the
//!    log, so that pages and purge candidates are found by index) and clear the entry's `todo`.
//!    If the process dies before, readers still see the commit, and the next purge batch writes
//!    the document.

use imstore_core::backend::Fields;
use imstore_core::lifecycle::RequestRecord;
use imstore_core::transition::{Decider, Decision};
use imstore_core::{Lifecycle, Result, Retry, TransitionOutcome};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use crate::queries;

use crate::doc as d;
use crate::error::{is_duplicate_key, map};
use crate::handle::MongoBackend;
use crate::read;
use crate::{doc::Row, feed};

/// Persists what `decider` decides, re-reading after a lost race, and returns its answer.
pub(crate) async fn run(b: &MongoBackend, decider: &Decider<'_>) -> Result<TransitionOutcome> {
    Retry::default()
        .run(|_| attempt(b, decider))
        .await
        .and_then(|answer| answer)
}

/// The request record stored under the request's id, if any.
async fn record(b: &MongoBackend, decider: &Decider<'_>) -> Result<Option<RequestRecord>> {
    let req = decider.request();
    let q = queries::request_record(req.conversation_id.as_str(), req.request_id.as_str());
    queries::find_one(b, q)
        .await?
        .map(|doc| d::record_of(&doc))
        .transpose()
}

/// The message as committed (`None`: missing or purged).
async fn message(b: &MongoBackend, decider: &Decider<'_>) -> Result<Option<Row>> {
    let req = decider.request();
    read::committed(b, &req.conversation_id, req.msg_id, Fields::NoContent).await
}

/// Inserts one log entry; false when a unique key was taken (the race was lost).
pub(crate) async fn insert_entry(b: &MongoBackend, entry: Document) -> Result<bool> {
    match b.log.insert_one(entry).await {
        Ok(_) => Ok(true),
        Err(e) if is_duplicate_key(&e) => Ok(false),
        Err(e) => Err(map(e)),
    }
}

/// One read-decide-insert round; `None` when it lost a race and must run again.
async fn attempt(
    b: &MongoBackend,
    decider: &Decider<'_>,
) -> Result<Option<Result<TransitionOutcome>>> {
    let conversation = &decider.request().conversation_id;
    let (record, row, head) = futures::try_join!(
        record(b, decider),
        message(b, decider),
        feed::position(b, conversation)
    )?;
    let decision = decider.decide(
        record.as_ref(),
        row.as_ref()
            .map(|r| (&r.stored.message.sender_id, &r.stored.lifecycle)),
    );
    match &decision {
        Decision::Answer(_) => {}
        Decision::Record { record, .. } => {
            if !insert_entry(b, d::record_doc(record)).await? {
                return Ok(None);
            }
        }
        Decision::Apply { next, record, .. } => {
            let Some(row) = &row else {
                return Err(imstore_core::Error::corrupt(
                    "core applied a transition to a message that was not read",
                ));
            };
            let id = ObjectId::new();
            let entry = d::event_doc(id, row.id, head.saturating_add(1), next, record);
            if !insert_entry(b, entry).await? {
                return Ok(None);
            }
            // Committed: the answer stands whatever happens to this follow-up write.
            let _ = write_cache(b, row.id, id, next).await;
        }
    }
    Ok(Some(decision.into_answer()))
}

/// Brings message document `msg` up to `next`, never back (the filter takes only an older
/// version; on FerretDB, whose updates do not re-check their filter, a late write can still
/// land over a newer one, which readers do not notice because they read the log too).
pub(crate) async fn write_document(
    b: &MongoBackend,
    msg: ObjectId,
    next: &Lifecycle,
) -> Result<()> {
    b.messages
        .update_one(
            queries::message_by_id(msg, Some(i64::from(next.version))).filter,
            d::lifecycle_update(next),
        )
        .await
        .map_err(map)?;
    Ok(())
}

/// [`write_document`], then clears the `todo` of the log entry `entry` that committed `next`.
/// Idempotent, safe to race.
pub(crate) async fn write_cache(
    b: &MongoBackend,
    msg: ObjectId,
    entry: ObjectId,
    next: &Lifecycle,
) -> Result<()> {
    write_document(b, msg, next).await?;
    b.log
        .update_one(
            queries::entry_by_id(entry).filter,
            doc! {"$unset": {"todo": ""}},
        )
        .await
        .map_err(map)?;
    Ok(())
}
