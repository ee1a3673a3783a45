//! The retention purge and legal holds.
//!
//! A message is purged by inserting its `purge` entry into the log as version `v + 1` at feed
//! position `head + 1`: the same compare-and-set as a transition, so it wins or loses against
//! every transition and every other purger that read version `v`, and from that insert on every
//! reader finds the message gone. The entry is then finished (idempotent, by this purger or the
//! next one if it dies): the message's events leave the feed (kept as `gone` entries, which
//! hold their feed positions and request records), the document is deleted, the attachment key
//! is reported if no other message references it.
//!
//! A legal hold is ordered against running purges by its fence: `set_legal_hold(true)` records
//! the hold, then takes the conversation's next feed position. A purge reads the feed head,
//! then the hold, then inserts at `head + 1`; if the hold was recorded before that head was
//! read, the purge sees it, and if not, the fence came after the head, so it took `head + 1`
//! (the purge loses) or a later position (the purge committed before the fence, before
//! `set_legal_hold` returned). No message of a held conversation is purged after it returns.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use imstore_core::backend::PurgeJob;
use imstore_core::{ConversationId, PurgeReport, Result, Retry};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};

use crate::doc::{self as d, Row, kind, todo};
use crate::error::map;
use crate::feed;
use crate::handle::MongoBackend;
use crate::queries;
use crate::read::{self, Freshness};
use crate::transition::{insert_entry, write_cache, write_document};

/// How many messages of one purge batch are worked on concurrently.
const CONCURRENCY: usize = 8;

/// How long (wall clock) an entry that holds a feed position or a message version without being
/// an event stays: longer than any request or purge still in flight could have read the head or
/// the version it guards, so neither is ever handed out twice.
const TOMBSTONE_MS: i64 = 24 * 60 * 60 * 1000;

/// What finishing one purge did.
#[derive(Default)]
struct Finished {
    /// This call deleted the message document.
    deleted: bool,
    /// Change events the message had (counted by whoever deleted it).
    events: u64,
    /// The attachment key, when no stored message references it any more.
    released: Option<String>,
}

impl Finished {
    fn add_to(self, report: &mut PurgeReport) {
        if self.deleted {
            report.messages += 1;
            report.events += self.events;
        }
        report.released_attachments.extend(self.released);
    }
}

/// Finishes a committed purge: events off the feed, document deleted, key reported, `todo`
/// cleared. Safe to run twice or concurrently: the document is deleted (and counted) once; the
/// key may be reported twice, never not at all.
async fn finish(b: &MongoBackend, entry: &Document) -> Result<Finished> {
    let id = d::get_oid(entry, "_id")?;
    let msg = d::get_oid(entry, "msg")?;
    let version = d::get_version(entry, "version")?;
    b.log
        .update_many(
            queries::events_of(msg).filter,
            doc! {"$set": {"kind": kind::GONE, "wall": d::wall_now()}, "$unset": {"todo": ""}},
        )
        .await
        .map_err(map)?;
    let deleted = b
        .messages
        .delete_one(queries::message_by_id(msg, None).filter)
        .await
        .map_err(map)?
        .deleted_count
        == 1;
    let released = match entry.get_str("attachment") {
        Ok(key) => {
            let referenced = queries::find_one(b, queries::attachment_referenced(key))
                .await?
                .is_some();
            (!referenced).then(|| key.to_string())
        }
        Err(_) => None,
    };
    b.log
        .update_one(
            queries::entry_by_id(id).filter,
            doc! {"$unset": {"todo": ""}},
        )
        .await
        .map_err(map)?;
    // Versions 2..=v each have one event; the purge is version v + 1.
    let events = u64::from(version.saturating_sub(2));
    Ok(Finished {
        deleted,
        events,
        released,
    })
}

/// True when `conversation` is under legal hold.
async fn held(b: &MongoBackend, conversation: &ConversationId) -> Result<bool> {
    Ok(queries::find_one(b, queries::hold(conversation.as_str()))
        .await?
        .is_some())
}

/// Purges one candidate if it is still purgeable and its conversation is not held; re-reads
/// after a lost race.
async fn purge_one(b: &MongoBackend, job: &PurgeJob<'_>, first: Row) -> Result<Finished> {
    let conversation = first.stored.message.conversation_id.clone();
    let msg_id = first.stored.message.msg_id;
    let mut known = Some(first);
    let entry = Retry::default()
        .run(|_| {
            let given = known.take();
            let conversation = &conversation;
            async move {
                let row = match given {
                    Some(row) => row,
                    None => {
                        let fields = imstore_core::backend::Fields::NoContent;
                        match read::committed(b, conversation, msg_id, fields).await? {
                            Some(row) => row,
                            None => return Ok(Some(None)),
                        }
                    }
                };
                if !job.purgeable(&row.stored.lifecycle) {
                    return Ok(Some(None));
                }
                // Head first, then the hold: see the module docs.
                let head = feed::position(b, conversation).await?;
                if held(b, conversation).await? {
                    return Ok(Some(None));
                }
                let id = ObjectId::new();
                let version = row.stored.lifecycle.version.saturating_add(1);
                let entry = d::purge_doc(id, &row, head.saturating_add(1), version, d::wall_now());
                Ok(insert_entry(b, entry.clone()).await?.then_some(Some(entry)))
            }
        })
        .await?;
    match entry {
        Some(entry) => finish(b, &entry).await,
        None => Ok(Finished::default()),
    }
}

/// One purge batch (see the module docs), bounded by `job.batch_size()` messages.
pub(crate) async fn batch(b: &MongoBackend, job: &PurgeJob<'_>) -> Result<PurgeReport> {
    let size = u64::from(job.batch_size());
    let limit = i64::from(job.batch_size());
    let cutoff = job.retention_cutoff().as_millis();
    let old = d::wall_now().saturating_sub(TOMBSTONE_MS);
    let mut report = PurgeReport::default();

    // Request records live for the retention period, held conversations included, as on the
    // reference store (a request that old is refused as stale if it comes again).
    b.log
        .delete_many(queries::expired_records(cutoff).filter)
        .await
        .map_err(map)?;

    // Purges left unfinished (by a dead purger, or in flight: finishing twice is harmless).
    let stalled = queries::find(b, queries::unfinished(todo::FINISH, limit)).await?;
    let finished: Vec<Finished> = futures::stream::iter(stalled.clone())
        .map(|entry| async move { finish(b, &entry).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    finished.into_iter().for_each(|f| f.add_to(&mut report));

    // Documents a dead committer left behind their log: written now, so that the candidate
    // query below (by index on the documents) finds what the log made purgeable.
    let behind = queries::find(b, queries::unfinished(todo::CACHE, limit)).await?;
    futures::stream::iter(behind)
        .map(|e| async move {
            let next = d::next_of(&e)?;
            write_cache(b, d::get_oid(&e, "msg")?, d::get_oid(&e, "_id")?, &next).await
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    let budget = size.saturating_sub(report.messages);
    let mut full = budget == 0 || stalled.len() as u64 == size;
    if budget > 0 {
        let q = queries::purge_candidates(
            cutoff,
            job.history_cutoff().map(|h| h.as_millis()),
            i64::try_from(budget).unwrap_or(i64::MAX),
        );
        let candidates = queries::find(b, q).await?;
        full |= candidates.len() as u64 == budget;
        let rows = candidates
            .iter()
            .map(d::row_of)
            .collect::<Result<Vec<_>>>()?;
        let mut due = Vec::new();
        for (row, freshness) in read::current(b, rows).await? {
            match freshness {
                // Its purge entry is finished by the stalled pass of this or the next batch.
                Freshness::Purged => {}
                _ if job.purgeable(&row.stored.lifecycle) => due.push(row),
                // The document claimed more than the log: correct it, so it is not found again.
                Freshness::Behind => {
                    write_document(b, row.id, &row.stored.lifecycle).await?;
                }
                Freshness::Current => {}
            }
        }
        let due = park_held(b, due).await?;
        let finished: Vec<Finished> = futures::stream::iter(due)
            .map(|row| purge_one(b, job, row))
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        finished.into_iter().for_each(|f| f.add_to(&mut report));
    }
    sweep(b, limit, old, cutoff).await?;
    report.more = full;
    Ok(report)
}

/// `due` without the messages of held conversations, which are parked instead: marked
/// `parked: <conversation>`, which takes them out of the candidate indexes (their first key is
/// `parked`), so no later batch walks a held conversation's expired backlog again. Releasing the
/// hold un-parks them ([`set_legal_hold`]). The hold is read again after parking: a release that
/// ran in between (its un-parking before this parking landed) is seen, and the parking undone.
async fn park_held(b: &MongoBackend, due: Vec<Row>) -> Result<Vec<Row>> {
    let mut by_conversation: BTreeMap<ConversationId, Vec<Row>> = BTreeMap::new();
    for row in due {
        by_conversation
            .entry(row.stored.message.conversation_id.clone())
            .or_default()
            .push(row);
    }
    let mut free = Vec::new();
    for (conversation, rows) in by_conversation {
        if !held(b, &conversation).await? {
            free.extend(rows);
            continue;
        }
        let ids: Vec<ObjectId> = rows.iter().map(|r| r.id).collect();
        let filter = queries::messages_by_ids(&ids).filter;
        b.messages
            .update_many(
                filter.clone(),
                doc! {"$set": {"parked": conversation.as_str()}},
            )
            .await
            .map_err(map)?;
        if !held(b, &conversation).await? {
            b.messages
                .update_many(filter, doc! {"$unset": {"parked": ""}})
                .await
                .map_err(map)?;
            free.extend(rows);
        }
    }
    Ok(free)
}

/// Deletes what only guards a feed position once nothing in flight can need it: finished purge
/// entries and fences older than [`TOMBSTONE_MS`] unless one holds its conversation's highest
/// position (never reused), and `gone` events past retention and as old unless one is its
/// conversation's highest (`purged_through` never goes down). Up to `limit` entries per batch;
/// an entry kept as its conversation's highest is not looked at again for a day.
async fn sweep(b: &MongoBackend, limit: i64, old: i64, cutoff: i64) -> Result<()> {
    let now = d::wall_now();
    let stale = queries::find(b, queries::sweepable(old, cutoff, limit)).await?;
    // Per conversation: (tombstones, gone events).
    let mut by_conversation: BTreeMap<String, (Vec<ObjectId>, Vec<ObjectId>)> = BTreeMap::new();
    for e in &stale {
        let entry = by_conversation
            .entry(d::get_str(e, "conversation_id")?.to_string())
            .or_default();
        let id = d::get_oid(e, "_id")?;
        match d::get_str(e, "kind")? {
            kind::GONE => entry.1.push(id),
            _ => entry.0.push(id),
        }
    }
    for (conversation, (tombstones, gone)) in by_conversation {
        let Ok(conv) = ConversationId::new(conversation.as_str()) else {
            continue;
        };
        for (ids, top) in [
            (tombstones, feed::position(b, &conv).await?),
            (gone, feed::highest_gone(b, &conv).await?),
        ] {
            if !ids.is_empty() {
                b.log
                    .delete_many(queries::entries_below(&ids, top).filter)
                    .await
                    .map_err(map)?;
                // The one kept (its conversation's highest) leaves the sweep's range for a
                // day: kept entries, one or two per conversation ever purged, would otherwise
                // fill every later sweep's limit and stop it from reaching anything deletable.
                b.log
                    .update_many(
                        queries::entries_from(&ids, top).filter,
                        doc! {"$set": {"wall": now}},
                    )
                    .await
                    .map_err(map)?;
            }
        }
    }
    Ok(())
}

/// Records the hold, then (when placing one) takes the conversation's next feed position as its
/// fence, so that no purge that read the hold as absent can commit after this returns.
pub(crate) async fn set_legal_hold(
    b: &MongoBackend,
    conversation: &ConversationId,
    on: bool,
) -> Result<()> {
    b.holds
        .update_one(
            queries::hold_document(conversation.as_str()).filter,
            doc! {"$set": {"held": on}},
        )
        .upsert(true)
        .await
        .map_err(map)?;
    if !on {
        // Released: its parked messages are purge candidates again (after the flag, so that a
        // purge parking them meanwhile reads the release and undoes its parking).
        b.messages
            .update_many(
                queries::parked(conversation.as_str()).filter,
                doc! {"$unset": {"parked": ""}},
            )
            .await
            .map_err(map)?;
        return Ok(());
    }
    Retry::default()
        .run(|_| async {
            let head = feed::position(b, conversation).await?;
            let fence = d::fence_doc(conversation, head.saturating_add(1), d::wall_now());
            Ok(insert_entry(b, fence).await?.then_some(()))
        })
        .await
}
