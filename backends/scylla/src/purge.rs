//! The purge, and the legal hold that fences it.
//!
//! The indexes it reads are in `index.rs`: `purge_queue` for the retention, `history_queue`
//! for the history limit (without one, its days older than the retention are dropped: a history
//! limit is never shorter than the retention, so they can never become due).
//!
//! Removing one message: (1) ONE conditional batch on the conversation's state partition turns
//! its lifecycle into the purge marker `IF version = <read> AND purging = null AND legal_hold !=
//! true`, stamps its bucket's sentinel with a new epoch and deletes its change events: this is
//! the purge's commit, atomic with the feed (it also raises the feed's low-water mark
//! `purged_through`) and fenced by the legal hold and by transitions; (2) `DELETE FROM messages
//! ... IF EXISTS` (applied: this purger counts the message), and the message's reference to its
//! attachment; (3) delete the marker `IF purging = true` (applied: this purger reports the
//! attachment key it holds, if no other stored message references it);
//! (4) drop the queue entry. A purger that dies after (1) leaves the marker and the entry; the
//! next purge finishes (2)–(4), even under a legal hold placed since (the message was purged
//! before the hold: readers have seen it gone since (1)).
//!
//! A call settles up to [`SHARDS_IN_FLIGHT`] shard-days of a day at the same time, each in a
//! run of its own: their conversations are disjoint, and they share the call's batch through a
//! [`Budget`] each entry reserves from, so the call still removes at most `batch_size`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt};

use imstore_core::backend::{Fields, PurgeJob};
use imstore_core::{ConversationId, MsgId, PurgeReport, Result, Retry, Timestamp};
use scylla::response::PagingState;
use scylla::statement::batch::Batch;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::index::{
    self, HISTORY_SHARD, MARK_LAG_MS, QUEUE_SHARDS, Queue, RETENTION_SHARD, days,
    enqueue_retention, is_empty, page_of, page_with, retention_due,
};
use crate::read::{self, day_of, sentinel_key};
use crate::rows::BoxedRow;
use crate::rows::{self, StateRow};

/// Places or lifts the hold, as a Paxos round on the conversation's state partition (with its
/// head row, so the hold is read by name): `IF legal_hold != <new>`.
///
/// A plain write is not enough. A purge commit is a Paxos round that reads the hold, then
/// proposes and commits: one that read the hold just before a plain write landed would commit
/// after the write was acknowledged and remove a message of a conversation already held. A
/// round of our own first completes any proposal already accepted on the partition (so such a
/// commit lands BEFORE the hold is acknowledged, and the caller's next read sees it), and its
/// higher ballot makes any proposal not yet accepted fail and read again, finding the hold.
/// That holds even when the round does not apply because the hold is already so.
pub(crate) async fn set_legal_hold(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    held: bool,
) -> Result<()> {
    let st = b.st();
    let conv = conversation.as_str();
    Retry::default()
        .run(|_| async move {
            let mut batch = b.conditional_batch();
            batch.append_statement(st.head_mark.clone());
            batch.append_statement(st.hold_put.clone());
            let values: Vec<BoxedRow> = vec![
                Box::new((conv.to_owned(),)),
                Box::new((held, conv.to_owned(), held)),
            ];
            match crate::transition::run_batch(b, &batch, values).await {
                // Not applied: the hold was already so; the round fenced the partition anyway.
                Ok(_) => Ok(Some(())),
                // Unknown outcome: setting it again is harmless.
                Err(e) if error::lwt_outcome_unknown(&e) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
}

/// What became of one message the purge looked at.
enum Verdict {
    /// Removed now, or already gone: its entry can go.
    Done,
    /// Not purgeable yet; worth another look at this time, if ever.
    NotYet(Option<Timestamp>),
    /// A transition or a legal hold got there first: keep the entry for the next call.
    Busy,
}

/// Messages of one conversation committed by one purge commit: the batch holds a row per
/// message, its events and a sentinel per bucket, so 50 stays well under the servers' batch size
/// limits (Cassandra fails a batch at 50 KiB) while one Paxos round removes 50 messages.
const GROUP_MESSAGES: usize = 50;

/// Conversations of one queue page whose groups a shard-day's run settles at the same time.
/// With [`SHARDS_IN_FLIGHT`] shard-days, at most 32 group commits are in flight per call: one
/// conversation's backlog is still settled a group at a time, but a page of several
/// conversations no longer waits for each in turn (a group is about five round trips, three of
/// them Paxos rounds).
const CONVERSATIONS_IN_FLIGHT: usize = 4;

/// Emptied-bucket checks a call runs at the same time (each its own partition).
const BUCKET_CHECKS_IN_FLIGHT: usize = 16;

/// Queue entries per unlogged batch removing them (one partition).
const UNQUEUE_ROWS: usize = 100;

/// A message of a group the purge commits together.
struct Candidate {
    id: MsgId,
    bucket: i32,
    /// Its attachment's key, released with it.
    key: Option<String>,
    /// The lifecycle's version as read (`None`: never changed).
    version: Option<u32>,
    /// Its change events, deleted by the commit.
    seqs: Vec<i64>,
    never_changed: bool,
}

/// Shard-days of one day a purge call settles at the same time. Their conversations are
/// disjoint (a conversation has one shard), so they never contend for a partition.
const SHARDS_IN_FLIGHT: usize = 8;

/// The messages the shard-days settled at the same time may still remove: each entry reserves
/// one before it is settled and gives it back when it removed nothing, so the call never
/// removes more than its batch.
struct Budget {
    limit: u64,
    reserved: AtomicU64,
    counted: AtomicU64,
    /// An entry found the budget taken by others in flight: the call is not done.
    refused: AtomicBool,
}

impl Budget {
    fn reserve(&self) -> bool {
        if self.reserved.fetch_add(1, Ordering::SeqCst) < self.limit {
            return true;
        }
        self.reserved.fetch_sub(1, Ordering::SeqCst);
        self.refused.store(true, Ordering::SeqCst);
        false
    }

    fn settle(&self, removed: u64) {
        if removed == 0 {
            self.reserved.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.counted.fetch_add(removed, Ordering::SeqCst);
        }
    }

    /// Settles `reserved` entries of a group at once, `removed` of which removed their message.
    fn settle_group(&self, reserved: u64, removed: u64) {
        self.counted.fetch_add(removed, Ordering::SeqCst);
        self.reserved
            .fetch_sub(reserved.saturating_sub(removed), Ordering::SeqCst);
    }

    fn full(&self) -> bool {
        self.counted.load(Ordering::SeqCst) >= self.limit || self.refused.load(Ordering::SeqCst)
    }
}

/// One purge call, or one shard-day of it (with the call's [`Budget`]).
struct Run<'a, 'j> {
    b: &'a ScyllaBackend,
    job: &'a PurgeJob<'j>,
    /// Set in a shard-day's run: the batch shared with the other shard-days in flight.
    budget: Option<Arc<Budget>>,
    /// A shard-day stopped because the others in flight held the rest of the batch: more may
    /// be eligible although fewer than a batch were removed.
    cut_short: bool,
    report: PurgeReport,
    holds: HashMap<ConversationId, bool>,
    touched: HashSet<(ConversationId, i32)>,
    /// The tokens of this call's purge commits: a marker carrying one is this call's own.
    mine: HashSet<i64>,
    /// The messages of this call's commits whose outcome a timeout hid, until settled.
    unsettled: Unsettled,
    /// The stray tokens (see [`Strays`]) this call adopted, shared by its runs: a sibling run
    /// meeting another marker of one is its owner too, and the call hands them back at its end.
    adopted: Adopted,
    /// A conditional write of this call timed out: the next read is SERIAL, which completes
    /// any accepted proposal, so what it shows is the outcome.
    serial: bool,
}

/// How long a purge marker belongs to the call that committed it: another purger leaves a
/// marker younger than this to its owner (so one caller finishes and counts each message, and
/// two do not race its conditional deletes), and finishes an older one, whose owner died.
const MARKER_OWNED_MS: i64 = 60_000;

/// Tokens of purge commits a call of this handle made, whose outcome a timeout hid, and that
/// the call ended without settling (its SERIAL re-reads kept timing out, or its budget ran out
/// first), with when the call registered them. Within [`MARKER_OWNED_MS`] every other purger
/// leaves such a marker to its owner, which has ended: without this, the messages stayed
/// marked and uncounted until the marker aged, and a `purge_all` ended with them still there
/// (a 3-node cluster run of `concurrent_purges_never_double_count`: 34 of 40 counted).
/// A later call takes a token out (so one call at a time holds it) and finishes the markers as
/// their owner would; it hands the token back when it ends, since a token may carry more
/// markers than the adopting call's batch reaches (a group commit of 10, adopted by a call of
/// batch 3: without the hand-back the other 7 stayed marked, uncounted, and `purge_all` ended
/// with them; CI of 46ff9bf: 43 of 48 counted).
#[derive(Debug, Default)]
pub(crate) struct Strays(std::sync::Mutex<HashMap<i64, i64>>);

impl Strays {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, i64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `token` over: true for the one call that adopts it, until it hands it back.
    fn adopt(&self, token: i64) -> bool {
        self.lock().remove(&token).is_some()
    }

    /// Registers the unsettled and adopted tokens of an ending call; forgets those old enough
    /// for any purger to finish their markers. A token whose markers are all finished stays
    /// until then and matches nothing.
    fn register(&self, tokens: impl IntoIterator<Item = i64>, now: i64) {
        let mut strays = self.lock();
        strays.retain(|_, at| now.saturating_sub(*at) < MARKER_OWNED_MS);
        strays.extend(tokens.into_iter().map(|t| (t, now)));
    }
}

/// The messages of this call's hidden commits not settled yet, with their commit's token
/// (shared by the call's runs: a group hidden in one is settled by the one-at-a-time path).
type Unsettled = Arc<std::sync::Mutex<HashMap<(ConversationId, MsgId), i64>>>;

/// The stray tokens a call adopted (shared by the call's runs).
type Adopted = Arc<std::sync::Mutex<HashSet<i64>>>;

fn unsettled(u: &Unsettled) -> std::sync::MutexGuard<'_, HashMap<(ConversationId, MsgId), i64>> {
    u.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which conditional step of a message's purge an earlier attempt already sent with its outcome
/// hidden by a timeout (a group's batch): a "not applied" answer to that step's retry is then
/// no proof that somebody else did it, since the hidden attempt may have.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sent {
    /// Neither step: a "not applied" is another writer's doing.
    Nothing,
    /// The row delete (step 2).
    RowDelete,
    /// The marker's delete (step 3).
    Unmark,
}

/// Runs `st` (a conditional write) until the server answers; a timeout, whose outcome is
/// unknown, is settled by `settle` (a SERIAL read): `Some(applied)` when it tells, `None` to
/// write again. `hidden`: an earlier attempt of this same write outside this call had its
/// outcome hidden. After any hidden attempt, a "not applied" is settled by `settle` too (it
/// may be that attempt's own effect): `Some(applied)` when it tells, `None` keeps "not applied".
async fn conditional<V, F, Fut>(
    b: &ScyllaBackend,
    st: &PreparedStatement,
    values: V,
    hidden: bool,
    mut settle: F,
) -> Result<bool>
where
    V: scylla::serialize::row::SerializeRow + Clone,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<bool>>>,
{
    let retry = Retry::default();
    let mut attempt = 1;
    let mut hidden = hidden;
    loop {
        match b
            .session()
            .execute_unpaged(st, values.clone())
            .await
            .map_err(error::execution)
        {
            Ok(res) => {
                let applied = rows::lwt(res)?.applied;
                if applied || !hidden {
                    return Ok(applied);
                }
                match settle().await {
                    Ok(Some(applied)) => return Ok(applied),
                    Ok(None) => return Ok(false),
                    // The read timed out: write (and read) again.
                    Err(e) if e.is_temporary() && attempt < retry.max_attempts => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if !e.is_temporary() || attempt >= retry.max_attempts => return Err(e),
            // A SERIAL read is a Paxos round too, and times out the same way: write again.
            Err(_) => {
                hidden = true;
                match settle().await {
                    Ok(Some(applied)) => return Ok(applied),
                    Ok(None) => {}
                    Err(e) if e.is_temporary() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        tokio::time::sleep(retry.delay(attempt)).await;
        attempt += 1;
    }
}

fn ids(conv: String, msg_id: i64) -> Result<(ConversationId, MsgId)> {
    Ok((
        ConversationId::new(conv).map_err(|_| error::corrupt("purge entry"))?,
        MsgId::from_i64(msg_id).map_err(|_| error::corrupt("purge entry"))?,
    ))
}

impl<'a, 'j> Run<'a, 'j> {
    fn full(&self) -> bool {
        match &self.budget {
            Some(budget) => budget.full(),
            None => self.report.messages >= u64::from(self.job.batch_size()),
        }
    }

    /// A run of its own for one shard-day, sharing `budget`.
    fn shard_run(&self, budget: &Arc<Budget>) -> Run<'a, 'j> {
        Run {
            b: self.b,
            job: self.job,
            budget: Some(budget.clone()),
            cut_short: false,
            report: PurgeReport::default(),
            holds: self.holds.clone(),
            touched: HashSet::new(),
            // The call's own commits so far: a marker of one of them is still this call's.
            mine: self.mine.clone(),
            unsettled: self.unsettled.clone(),
            adopted: self.adopted.clone(),
            serial: false,
        }
    }

    /// Takes in what a shard-day's (or a conversation's) run did.
    fn absorb(&mut self, other: Run<'_, '_>) {
        self.report.messages += other.report.messages;
        self.report.events += other.report.events;
        // Two runs may each see the last reference to a key shared across conversations go:
        // the call reports it once.
        for key in other.report.released_attachments {
            if !self.report.released_attachments.contains(&key) {
                self.report.released_attachments.push(key);
            }
        }
        // A conditional write of the other run timed out: this run's next read is SERIAL too.
        self.serial |= other.serial;
        self.touched.extend(other.touched);
        self.mine.extend(other.mine);
        for (conv, held) in other.holds {
            self.holds.insert(conv, held);
        }
    }

    /// Whether this call owns the stray token `t`: adopted now or by a run of the call before.
    fn adopt(&mut self, t: i64) -> bool {
        let mut adopted = self.adopted.lock().unwrap_or_else(|p| p.into_inner());
        let owned = adopted.contains(&t) || self.b.inner().purge_strays.adopt(t);
        if owned {
            adopted.insert(t);
            self.mine.insert(t);
        }
        owned
    }

    async fn held(&mut self, conv: &ConversationId) -> Result<bool> {
        if let Some(h) = self.holds.get(conv) {
            return Ok(*h);
        }
        let h = read::legal_hold(self.b, conv).await?;
        self.holds.insert(conv.clone(), h);
        Ok(h)
    }

    /// Steps (2) and (3) of a committed purge (see the module docs). `owned`: this call made
    /// the commit, and is the only one finishing it (see [`MARKER_OWNED_MS`]), so a delete whose
    /// outcome a timeout hid and that a SERIAL read shows done is its own.
    async fn finish(
        &mut self,
        conv: &ConversationId,
        msg_id: MsgId,
        row_present: bool,
        release_key: Option<String>,
        owned: bool,
        sent: Sent,
    ) -> Result<()> {
        let (b, bucket) = (self.b, self.b.bucket_of(msg_id));
        if row_present {
            let key = (conv.as_str().to_string(), bucket, msg_id.as_i64());
            let hidden = sent == Sent::RowDelete;
            let deleted = conditional(b, &b.st().msg_delete, key, hidden, || async {
                let row = read::message(b, conv, msg_id, Fields::NoContent, true).await?;
                Ok(match row {
                    Some(_) => None,
                    None => Some(owned),
                })
            })
            .await?;
            if deleted {
                self.report.messages += 1;
                self.touched.insert((conv.clone(), bucket));
            }
        }
        // The message no longer references its file: drop its reference before the marker,
        // so a purger that dies in between leaves the marker, and the next one reports the key.
        if let Some(key) = &release_key {
            b.session()
                .execute_unpaged(
                    &b.st().ref_remove,
                    (key.as_str(), conv.as_str(), msg_id.as_i64()),
                )
                .await
                .map_err(error::execution)?;
        }
        let unmarked = conditional(
            b,
            &b.st().state_delete,
            (conv.as_str().to_string(), msg_id.as_i64()),
            sent == Sent::Unmark,
            || async {
                let fenced = read::fenced(b, conv, msg_id, true).await?;
                Ok(match fenced.state {
                    Some(StateRow::Purged { .. }) => None,
                    _ => Some(owned),
                })
            },
        )
        .await?;
        if let (true, Some(key)) = (unmarked, release_key) {
            // Released only when no stored message references the file any more (a copy
            // forwarded into another conversation keeps it live).
            if is_empty(b, &b.st().ref_any, (key.as_str(),)).await? {
                self.report.released_attachments.push(key);
            }
        }
        Ok(())
    }

    /// Finishes a purge a dead purger committed in a held conversation; true when it did.
    async fn finish_committed(&mut self, conv: &ConversationId, msg_id: MsgId) -> Result<bool> {
        let state = read::state(self.b, conv, msg_id).await?;
        let Some(StateRow::Purged { release_key, .. }) = state else {
            return Ok(false);
        };
        let row = read::message(self.b, conv, msg_id, Fields::NoContent, false).await?;
        self.finish(
            conv,
            msg_id,
            row.is_some(),
            release_key,
            false,
            Sent::Nothing,
        )
        .await?;
        Ok(true)
    }

    /// Removes one message if the job says it is purgeable now (see the module docs), deciding
    /// again from a new read when its commit loses to a transition or to another purger
    /// raising the feed's low-water mark; a legal hold placed meanwhile keeps its entry.
    async fn message(&mut self, conv: &ConversationId, msg_id: MsgId) -> Result<Verdict> {
        let retry = Retry::default();
        for attempt in 1..=retry.max_attempts {
            if let Some(verdict) = self.try_message(conv, msg_id).await? {
                return Ok(verdict);
            }
            if read::legal_hold(self.b, conv).await? {
                self.holds.insert(conv.clone(), true);
                return Ok(Verdict::Busy);
            }
            tokio::time::sleep(retry.delay(attempt)).await;
        }
        Ok(Verdict::Busy)
    }

    /// One attempt of [`Run::message`]; `None` when the commit was not applied.
    async fn try_message(
        &mut self,
        conv: &ConversationId,
        msg_id: MsgId,
    ) -> Result<Option<Verdict>> {
        let b = self.b;
        let serial = std::mem::take(&mut self.serial);
        let read = futures::try_join!(
            read::message(b, conv, msg_id, Fields::NoContent, serial),
            read::fenced(b, conv, msg_id, serial)
        );
        let (row, fenced) = match read {
            Ok(read) => read,
            // A SERIAL read timed out (a Paxos round, contended like the writes): read again.
            Err(e) if serial && e.is_temporary() => {
                self.serial = true;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Some(StateRow::Purged {
            release_key,
            marked,
            event_seqs,
        }) = fenced.state
        {
            let (at, token) = marked.unwrap_or_default();
            let owned = token.is_some_and(|t| self.mine.contains(&t) || self.adopt(t));
            let now = self.job.now().as_millis();
            if !owned && at.is_some_and(|at| now.saturating_sub(at) < MARKER_OWNED_MS) {
                // Another call's commit, being finished by it.
                return Ok(Some(Verdict::Busy));
            }
            if owned {
                // This call's commit, whose outcome a timeout hid: its events went with it
                // and were not counted then (a finished commit leaves no marker behind).
                self.report.events += event_seqs.len() as u64;
            }
            self.finish(
                conv,
                msg_id,
                row.is_some(),
                release_key,
                owned,
                Sent::Nothing,
            )
            .await?;
            unsettled(&self.unsettled).remove(&(conv.clone(), msg_id));
            return Ok(Some(Verdict::Done));
        }
        // No marker: a hidden commit of this call did not apply to it (or was finished).
        unsettled(&self.unsettled).remove(&(conv.clone(), msg_id));
        // Gone already, or never written (an insert that failed after indexing it); or purged
        // by another purger between the two reads (the re-check, as for any reader).
        let Some(row) = row else {
            return Ok(Some(Verdict::Done));
        };
        if !read::confirm_present(b, conv, msg_id, &fenced).await? {
            return Ok(Some(Verdict::Done));
        }
        let state = fenced.state;
        let Some(lc) = rows::lifecycle_of(state.as_ref(), row.created_at) else {
            return Ok(Some(Verdict::Done));
        };
        if !self.job.purgeable(&lc) {
            return Ok(Some(Verdict::NotYet(retention_due(&lc, self.job.policy()))));
        }
        let key = row.message.attachment.as_ref().map(|a| a.key.clone());
        let seqs = match &state {
            Some(StateRow::Live { event_seqs, .. }) => event_seqs.clone(),
            _ => Vec::new(),
        };
        let mut commit = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(seqs.len() + 4);
        // The head row, so that the statics this commit raises are read by name.
        commit.append_statement(b.st().head_mark.clone());
        values.push(Box::new((conv.as_str().to_string(),)));
        let token = rand::random::<i64>();
        self.mine.insert(token);
        commit.append_statement(b.st().purge_commit.clone());
        values.push(Box::new((
            key.clone().map_or(MaybeUnset::Unset, MaybeUnset::Set),
            self.job.now().as_millis(),
            token,
            conv.as_str().to_string(),
            msg_id.as_i64(),
            state
                .as_ref()
                .and_then(StateRow::version)
                .map(crate::transition::version_col)
                .transpose()?,
        )));
        let sentinel = sentinel_key(b.bucket_of(msg_id));
        if state.is_none() {
            // A never-changed message: "no lifecycle row" holds again once another purger has
            // finished it, so the commit also expects the sentinel as read (as a transition's
            // batch does); otherwise the version condition fences it.
            commit.append_statement(b.st().sentinel_fence.clone());
            values.push(Box::new((
                rand::random::<i64>(),
                conv.as_str().to_string(),
                sentinel,
                fenced.epoch,
            )));
        } else {
            commit.append_statement(b.st().sentinel_set.clone());
            values.push(Box::new((
                rand::random::<i64>(),
                conv.as_str().to_string(),
                sentinel,
            )));
        }
        mirror(
            b,
            &mut commit,
            &mut values,
            conv.as_str(),
            b.bucket_of(msg_id),
        );
        for seq in &seqs {
            commit.append_statement(b.st().event_delete.clone());
            values.push(Box::new((conv.as_str().to_string(), *seq)));
        }
        // The feed's low-water mark only ever rises: the commit expects the value it read.
        if let Some(&top) = seqs.iter().max()
            && top > fenced.purged_through.unwrap_or(0)
        {
            commit.append_statement(b.st().purged_through_raise.clone());
            values.push(Box::new((
                top,
                conv.as_str().to_string(),
                fenced.purged_through,
            )));
        }
        match crate::transition::run_batch(b, &commit, values).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            // Unknown: the next attempt reads at SERIAL and finds this call's marker, or none.
            Err(e) if e.is_temporary() => {
                self.serial = true;
                unsettled(&self.unsettled).insert((conv.clone(), msg_id), token);
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        self.report.events += seqs.len() as u64;
        self.finish(conv, msg_id, true, key, true, Sent::Nothing)
            .await?;
        Ok(Some(Verdict::Done))
    }

    /// What becomes of one entry of `queue` whose conversation is not held: `true` keeps it
    /// where it is (a lost race; read again by the next call). Not purgeable yet: queued again at
    /// its new due (never before the next call's reach), and this entry goes.
    async fn settle(
        &mut self,
        queue: Queue,
        conv: &ConversationId,
        id: MsgId,
        request_id: &str,
    ) -> Result<bool> {
        let b = self.b;
        match queue {
            Queue::Retention => {
                if !request_id.is_empty() {
                    let cutoff = self.job.retention_cutoff().as_millis();
                    // Writing it again settles a timeout: the record is gone either way.
                    conditional(
                        b,
                        &b.st().request_expire,
                        (conv.as_str().to_string(), request_id.to_string(), cutoff),
                        false,
                        || async { Ok(None) },
                    )
                    .await?;
                }
                Ok(match self.message(conv, id).await? {
                    Verdict::Done | Verdict::NotYet(None) => false,
                    Verdict::NotYet(Some(d)) => {
                        let soonest = self
                            .job
                            .now()
                            .saturating_add(std::time::Duration::from_millis(1));
                        enqueue_retention(b, conv, id, "", d.max(soonest)).await?;
                        false
                    }
                    Verdict::Busy => true,
                })
            }
            Queue::History => Ok(matches!(self.message(conv, id).await?, Verdict::Busy)),
        }
    }

    /// Parks an entry of a held conversation: it leaves the queue (so it does not pin the
    /// shard-day's mark) and is read again once the hold is lifted ([`Run::parked`]).
    async fn park(
        &self,
        queue: Queue,
        conv: &ConversationId,
        (due, msg_id, request_id): (i64, i64, &str),
    ) -> Result<()> {
        let b = self.b;
        b.session()
            .execute_unpaged(
                &b.st().held_park,
                (conv.as_str(), queue.code(), due, msg_id, request_id),
            )
            .await
            .map_err(error::execution)?;
        b.session()
            .execute_unpaged(&b.st().held_note, (conv.as_str(),))
            .await
            .map_err(error::execution)?;
        Ok(())
    }

    /// One entry of a sharded queue: `true` keeps it in place.
    async fn entry(&mut self, queue: Queue, entry: &index::Entry) -> Result<bool> {
        let (due, conv, msg_id, request_id) = entry;
        let (conv, id) = ids(conv.clone(), *msg_id)?;
        if !self.held(&conv).await? {
            let keep = self.settle(queue, &conv, id, request_id).await?;
            if !(keep && self.held(&conv).await?) {
                return Ok(keep);
            }
            // A hold placed meanwhile: parked like the rest of the conversation's backlog.
        } else {
            // A purge that committed before the hold is finished all the same; the record of a
            // held conversation is kept until the hold is lifted.
            let finished = self.finish_committed(&conv, id).await?;
            if finished && request_id.is_empty() {
                return Ok(false);
            }
        }
        self.park(queue, &conv, (*due, *msg_id, request_id)).await?;
        Ok(false)
    }

    /// The parked entries of conversations whose hold was lifted, settled as the queues' are;
    /// a conversation still held costs one read of its hold.
    async fn parked(&mut self) -> Result<()> {
        let b = self.b;
        let mut paging = Some(PagingState::start());
        let mut convs = Vec::new();
        while let Some(p) = paging.take() {
            let (rows, next) = page_with::<(String,)>(b, &b.st().held_list, (), p).await?;
            convs.extend(rows.into_iter().map(|(c,)| c));
            paging = next;
        }
        for conv in convs {
            let conv =
                ConversationId::new(conv).map_err(|_| error::corrupt("held conversation"))?;
            if self.held(&conv).await? {
                continue;
            }
            let started = now_micros();
            let mut kept = false;
            let mut paging = Some(PagingState::start());
            while let Some(p) = paging.take() {
                let (rows, next) = page_with::<(i32, i64, i64, String)>(
                    b,
                    &b.st().held_entries_of,
                    (conv.as_str(),),
                    p,
                )
                .await?;
                paging = next;
                for (code, due, msg_id, request_id) in rows {
                    let queue =
                        Queue::from_code(code).ok_or_else(|| error::corrupt("parked entry"))?;
                    let id = MsgId::from_i64(msg_id).map_err(|_| error::corrupt("parked entry"))?;
                    if self.settle(queue, &conv, id, &request_id).await? {
                        kept = true;
                    } else {
                        b.session()
                            .execute_unpaged(
                                &b.st().held_entry_remove,
                                (conv.as_str(), code, due, msg_id, request_id.as_str()),
                            )
                            .await
                            .map_err(error::execution)?;
                    }
                    if self.full() {
                        return Ok(());
                    }
                }
            }
            if !kept {
                // At the time the backlog was first read: a conversation parked since (a hold
                // placed and an entry parked meanwhile) is noted later and stays noted.
                b.session()
                    .execute_unpaged(&b.st().held_forget, (started, conv.as_str()))
                    .await
                    .map_err(error::execution)?;
            }
        }
        Ok(())
    }

    /// One sharded queue, day by day and shard by shard, each shard-day read from its mark.
    async fn sharded(&mut self, queue: Queue) -> Result<()> {
        let b = self.b;
        let now = self.job.now().as_millis();
        let upto = match queue {
            Queue::Retention => now,
            Queue::History => match self.job.history_cutoff() {
                Some(c) => c.as_millis(),
                None => return self.drop_history_days().await,
            },
        };
        let safe = now.saturating_sub(MARK_LAG_MS);
        let last = day_of(Timestamp::from_millis(upto));
        let mut after = i32::MIN;
        loop {
            let list = days(b, queue.code(), after, last).await?;
            if list.is_empty() {
                return Ok(());
            }
            for day in list {
                after = day;
                let marks = index::progress(b, queue, day).await?;
                let day_end = (i64::from(day) + 1).saturating_mul(DAY_MS);
                let open: Vec<(i32, i64)> = (0..QUEUE_SHARDS)
                    .map(|shard| (shard, marks.get(&shard).copied().unwrap_or(i64::MIN)))
                    .filter(|(_, from)| *from < day_end)
                    .collect();
                let budget = Arc::new(Budget {
                    limit: u64::from(self.job.batch_size()).saturating_sub(self.report.messages),
                    reserved: AtomicU64::new(0),
                    counted: AtomicU64::new(0),
                    refused: AtomicBool::new(false),
                });
                let this = &*self;
                let runs: Vec<Result<(i64, Run<'a, 'j>)>> = futures::stream::iter(open)
                    .map(|(shard, from)| {
                        let mut run = this.shard_run(&budget);
                        async move {
                            if run.full() {
                                return Ok((from, run));
                            }
                            let through =
                                run.shard_day(queue, (day, shard), from, upto, safe).await?;
                            if through > from {
                                b.session()
                                    .execute_unpaged(
                                        &b.st().progress_set,
                                        (queue.code(), day, shard, through),
                                    )
                                    .await
                                    .map_err(error::execution)?;
                            }
                            Ok((through, run))
                        }
                    })
                    .buffer_unordered(SHARDS_IN_FLIGHT)
                    .collect()
                    .await;
                let mut done = true;
                let mut failed = None;
                for r in runs {
                    match r {
                        Ok((through, run)) => {
                            done &= through >= day_end;
                            self.absorb(run);
                        }
                        Err(e) => {
                            failed.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                if budget.full() {
                    self.cut_short |= budget.refused.load(Ordering::SeqCst);
                    return Ok(());
                }
                if done && day_end <= safe {
                    self.drop_day(queue, day).await?;
                }
            }
        }
    }

    /// Settles the entries of one shard-day due in `[from, upto]`; returns its new mark: the
    /// first entry kept in place, or where a full batch stopped, or the end of what was read,
    /// never later than `safe` (an entry can still land there).
    async fn shard_day(
        &mut self,
        queue: Queue,
        key: (i32, i32),
        from: i64,
        upto: i64,
        safe: i64,
    ) -> Result<i64> {
        let b = self.b;
        let mut through = upto.saturating_add(1).min(safe);
        let mut paging = Some(PagingState::start());
        while let Some(p) = paging.take() {
            let (entries, next) = index::shard_page(b, queue, key, (from, upto), p).await?;
            paging = next;
            let settled = self.in_groups(queue, key, &entries).await?;
            for (entry, _) in entries.into_iter().zip(settled).filter(|(_, s)| !s) {
                if let Some(budget) = self.budget.clone() {
                    if !budget.reserve() {
                        return Ok(through.min(entry.0).max(from));
                    }
                    let before = self.report.messages;
                    let kept = self.entry(queue, &entry).await;
                    budget.settle(self.report.messages - before);
                    if kept? {
                        through = through.min(entry.0);
                        if self.full() {
                            return Ok(through.max(from));
                        }
                        continue;
                    }
                } else if self.entry(queue, &entry).await? {
                    through = through.min(entry.0);
                    if self.full() {
                        return Ok(through.min(entry.0).max(from));
                    }
                    continue;
                }
                {
                    let (day, shard) = key;
                    let (due, conv, msg_id, request_id) = &entry;
                    match queue {
                        Queue::Retention => {
                            b.session()
                                .execute_unpaged(
                                    &b.st().rq_remove,
                                    (
                                        day,
                                        shard,
                                        *due,
                                        conv.as_str(),
                                        *msg_id,
                                        request_id.as_str(),
                                    ),
                                )
                                .await
                        }
                        Queue::History => {
                            b.session()
                                .execute_unpaged(
                                    &b.st().hq_remove,
                                    (day, shard, *due, conv.as_str(), *msg_id),
                                )
                                .await
                        }
                    }
                    .map_err(error::execution)?;
                }
                if self.full() {
                    return Ok(through.min(entry.0).max(from));
                }
            }
        }
        Ok(through.max(from))
    }

    /// The entries of one queue page that purge together (see [`GROUP_MESSAGES`]): message
    /// entries of conversations not held, a group per commit. The conversations of the page are
    /// settled side by side, up to [`CONVERSATIONS_IN_FLIGHT`] at once, each in a run of its own
    /// sharing the call's budget (their partitions are disjoint, as the shards' are); the groups
    /// of one conversation go one after another, since each commit is a Paxos round on its state
    /// partition and two at once would only make each other retry.
    /// Returns which entries it settled and removed from the queue; the rest (request records,
    /// held conversations, markers, messages not purgeable or not found, a group whose commit
    /// lost a race) go through [`Run::entry`] one at a time, as before.
    async fn in_groups(
        &mut self,
        queue: Queue,
        key: (i32, i32),
        entries: &[index::Entry],
    ) -> Result<Vec<bool>> {
        let mut settled = vec![false; entries.len()];
        let Some(budget) = self.budget.clone() else {
            return Ok(settled);
        };
        // Owned ids: a borrowed one makes the stream's closure not general enough for `Send`.
        let mut by_conv: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, (_, conv, _, _)) in entries.iter().enumerate() {
            match by_conv.iter_mut().find(|(c, _)| c == conv) {
                Some((_, list)) => list.push(i),
                None => by_conv.push((conv.clone(), vec![i])),
            }
        }
        let this = &*self;
        let runs: Vec<Result<(Run<'a, 'j>, Vec<usize>)>> = futures::stream::iter(by_conv)
            .map(|(conv, list)| {
                let mut run = this.shard_run(&budget);
                let budget = &budget;
                async move {
                    let done = run.conversation(conv, list, entries, budget).await?;
                    Ok((run, done))
                }
            })
            .buffer_unordered(CONVERSATIONS_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = None;
        for r in runs {
            match r {
                Ok((run, done)) => {
                    for i in done {
                        settled[i] = true;
                    }
                    self.absorb(run);
                }
                // What the others settled is still removed from the queue below.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let done: Vec<&index::Entry> = entries
            .iter()
            .zip(&settled)
            .filter_map(|(e, s)| s.then_some(e))
            .collect();
        self.unqueue(queue, key, &done).await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(settled),
        }
    }

    /// The groups of one conversation's entries `list` (indexes into `entries`) in a queue
    /// page; returns the indexes it settled.
    async fn conversation(
        &mut self,
        conv: String,
        list: Vec<usize>,
        entries: &[index::Entry],
        budget: &Budget,
    ) -> Result<Vec<usize>> {
        let mut settled = Vec::new();
        // A malformed entry is reported by the one-at-a-time path.
        let Ok(conv) = ConversationId::new(conv) else {
            return Ok(settled);
        };
        if self.held(&conv).await? {
            return Ok(settled);
        }
        let mut ids: Vec<(MsgId, Vec<usize>)> = Vec::new();
        for i in list {
            let Ok(id) = MsgId::from_i64(entries[i].2) else {
                continue;
            };
            match ids.iter_mut().find(|(m, _)| *m == id) {
                Some((_, at)) => at.push(i),
                None => ids.push((id, vec![i])),
            }
        }
        for chunk in ids.chunks(GROUP_MESSAGES) {
            if budget.full() {
                break;
            }
            let msgs: Vec<MsgId> = chunk.iter().map(|(id, _)| *id).collect();
            let records: Vec<&str> = chunk
                .iter()
                .flat_map(|(_, at)| at.iter().map(|&i| entries[i].3.as_str()))
                .filter(|r| !r.is_empty())
                .collect();
            for done in self.group(&conv, &msgs, &records, budget).await? {
                if let Some((_, at)) = chunk.iter().find(|(id, _)| *id == done) {
                    settled.extend(at.iter().copied());
                }
            }
        }
        Ok(settled)
    }

    /// Purges the purgeable messages among `ids` (one conversation) with one commit, one
    /// conditional delete per bucket and one marker delete for them all: the steps (1)-(3) of
    /// the module docs, on a group. Returns the messages it removed (or found removed by its
    /// own commit); a message it leaves out, or a group whose commit did not apply, is left to
    /// the one-at-a-time path, which reads it again.
    async fn group(
        &mut self,
        conv: &ConversationId,
        ids: &[MsgId],
        records: &[&str],
        budget: &Budget,
    ) -> Result<Vec<MsgId>> {
        let b = self.b;
        let cutoff = self.job.retention_cutoff().as_millis();
        let mut by_bucket: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
        for id in ids {
            by_bucket
                .entry(b.bucket_of(*id))
                .or_default()
                .push(id.as_i64());
        }
        // The rows and the lifecycles of each bucket side by side, as a point read does, and
        // beside them the expiry of the entries' request records (due with their entries,
        // whatever becomes of the messages, as in `Run::settle`).
        let (reads, ()) = futures::try_join!(
            futures::future::try_join_all(by_bucket.iter().map(|(bucket, ids)| async {
                futures::try_join!(
                    read::messages_meta(b, conv, *bucket, ids.clone()),
                    read::fenced_chunk(b, conv, *bucket, ids, false)
                )
            })),
            expire_records(b, conv, records, cutoff)
        )?;
        let mut cands: Vec<Candidate> = Vec::new();
        let mut epochs: HashMap<i32, Option<i64>> = HashMap::new();
        let mut purged_through = None;
        for ((bucket, ids), (mut found, (mut states, epoch, through))) in
            by_bucket.iter().zip(reads)
        {
            purged_through = purged_through.max(through);
            epochs.insert(*bucket, epoch);
            let mut doubtful = Vec::new();
            for id in ids {
                let Some(row) = found.remove(id) else {
                    continue;
                };
                let state = states.remove(id);
                if matches!(state, Some(StateRow::Purged { .. })) {
                    continue;
                }
                let Some(lc) = rows::lifecycle_of(state.as_ref(), row.created_at) else {
                    continue;
                };
                if !self.job.purgeable(&lc) {
                    continue;
                }
                // No lifecycle in a bucket ever purged: read as the page walk reads it (the
                // row may have been read before another purger deleted it).
                if state.is_none() && epoch.is_some() {
                    doubtful.push(*id);
                }
                let never_changed = state.is_none();
                cands.push(Candidate {
                    id: MsgId::from_i64(*id).map_err(|_| error::corrupt("purge entry"))?,
                    bucket: *bucket,
                    key: row.message.attachment.map(|a| a.key),
                    version: state.as_ref().and_then(StateRow::version),
                    seqs: match state {
                        Some(StateRow::Live { event_seqs, .. }) => event_seqs,
                        _ => Vec::new(),
                    },
                    never_changed,
                });
            }
            if !doubtful.is_empty() {
                let there = read::still_there(b, conv, *bucket, doubtful.clone()).await?;
                cands.retain(|c| {
                    let id = c.id.as_i64();
                    !doubtful.contains(&id) || there.contains(&id)
                });
            }
        }
        let mut reserved = 0;
        cands.retain(|_| {
            let ok = budget.reserve();
            reserved += u64::from(ok);
            ok
        });
        if cands.is_empty() {
            return Ok(Vec::new());
        }
        let before = self.report.messages;
        let result = self
            .commit_group(conv, &cands, &epochs, purged_through)
            .await;
        budget.settle_group(reserved, self.report.messages - before);
        result
    }

    /// The commit of a group and its finish; see [`Run::group`].
    async fn commit_group(
        &mut self,
        conv: &ConversationId,
        cands: &[Candidate],
        epochs: &HashMap<i32, Option<i64>>,
        purged_through: Option<i64>,
    ) -> Result<Vec<MsgId>> {
        let b = self.b;
        let c = conv.as_str();
        let mut commit = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::new();
        commit.append_statement(b.st().head_mark.clone());
        values.push(Box::new((c.to_owned(),)));
        let token = rand::random::<i64>();
        self.mine.insert(token);
        for cand in cands {
            commit.append_statement(b.st().purge_commit.clone());
            values.push(Box::new((
                cand.key.clone().map_or(MaybeUnset::Unset, MaybeUnset::Set),
                self.job.now().as_millis(),
                token,
                c.to_owned(),
                cand.id.as_i64(),
                cand.version
                    .map(crate::transition::version_col)
                    .transpose()?,
            )));
        }
        let buckets: std::collections::BTreeSet<i32> = cands.iter().map(|c| c.bucket).collect();
        for bucket in buckets {
            let sentinel = sentinel_key(bucket);
            // As in the one-at-a-time commit: a never-changed message expects the sentinel as
            // read, since "no lifecycle row" holds again once another purger finished it.
            if cands.iter().any(|c| c.bucket == bucket && c.never_changed) {
                commit.append_statement(b.st().sentinel_fence.clone());
                values.push(Box::new((
                    rand::random::<i64>(),
                    c.to_owned(),
                    sentinel,
                    epochs.get(&bucket).copied().flatten(),
                )));
            } else {
                commit.append_statement(b.st().sentinel_set.clone());
                values.push(Box::new((rand::random::<i64>(), c.to_owned(), sentinel)));
            }
            mirror(b, &mut commit, &mut values, c, bucket);
        }
        let seqs: Vec<i64> = cands.iter().flat_map(|c| c.seqs.iter().copied()).collect();
        for seq in &seqs {
            commit.append_statement(b.st().event_delete.clone());
            values.push(Box::new((c.to_owned(), *seq)));
        }
        if let Some(&top) = seqs.iter().max()
            && top > purged_through.unwrap_or(0)
        {
            commit.append_statement(b.st().purged_through_raise.clone());
            values.push(Box::new((top, c.to_owned(), purged_through)));
        }
        match crate::transition::run_batch(b, &commit, values).await {
            Ok(true) => {}
            Ok(false) => return Ok(Vec::new()),
            // Unknown: the one-at-a-time path reads at SERIAL (completing this round, if it
            // was accepted) and finishes the markers that carry this call's token.
            Err(e) if e.is_temporary() => {
                self.serial = true;
                let mut u = unsettled(&self.unsettled);
                for cand in cands {
                    u.insert((conv.clone(), cand.id), token);
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        }
        self.report.events += seqs.len() as u64;
        // (2) The message rows, one conditional batch per bucket partition: applied, every row
        // was there and this call counts them all; otherwise each is settled alone.
        let mut by_bucket: std::collections::BTreeMap<i32, Vec<&Candidate>> = Default::default();
        for cand in cands {
            by_bucket.entry(cand.bucket).or_default().push(cand);
        }
        let deletes = futures::future::join_all(by_bucket.iter().map(|(bucket, group)| {
            let mut batch = b.conditional_batch();
            let mut values: Vec<BoxedRow> = Vec::with_capacity(group.len());
            for cand in group {
                batch.append_statement(b.st().msg_delete.clone());
                values.push(Box::new((c.to_owned(), *bucket, cand.id.as_i64())));
            }
            async move { crate::transition::run_batch(b, &batch, values).await }
        }))
        .await;
        let mut alone = Vec::new();
        let mut rest = Vec::new();
        for ((bucket, group), deleted) in by_bucket.into_iter().zip(deletes) {
            match deleted {
                Ok(true) => {
                    self.report.messages += group.len() as u64;
                    self.touched.insert((conv.clone(), bucket));
                    rest.extend(group);
                }
                Ok(false) => alone.extend(group.into_iter().map(|c| (c, Sent::Nothing))),
                // Perhaps deleted: a row found gone is this call's doing (the marker is fresh
                // and its own, and only a marker's owner deletes its rows).
                Err(e) if e.is_temporary() => {
                    alone.extend(group.into_iter().map(|c| (c, Sent::RowDelete)))
                }
                Err(e) => return Err(e),
            }
        }
        for (cand, sent) in alone {
            self.finish(conv, cand.id, true, cand.key.clone(), true, sent)
                .await?;
        }
        // (3) The references, then the markers in one conditional delete.
        futures::future::try_join_all(rest.iter().filter_map(|cand| {
            let key = cand.key.as_deref()?;
            Some(async move {
                b.session()
                    .execute_unpaged(&b.st().ref_remove, (key, c, cand.id.as_i64()))
                    .await
                    .map_err(error::execution)
            })
        }))
        .await?;
        let mut unmark = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(rest.len());
        for cand in &rest {
            unmark.append_statement(b.st().state_delete.clone());
            values.push(Box::new((c.to_owned(), cand.id.as_i64())));
        }
        let unmarked = if rest.is_empty() {
            Ok(true)
        } else {
            crate::transition::run_batch(b, &unmark, values).await
        };
        match unmarked {
            Ok(true) => {
                for key in rest.iter().filter_map(|c| c.key.clone()) {
                    if is_empty(b, &b.st().ref_any, (key.as_str(),)).await?
                        && !self.report.released_attachments.contains(&key)
                    {
                        self.report.released_attachments.push(key);
                    }
                }
            }
            Ok(false) => {
                for cand in &rest {
                    self.finish(conv, cand.id, false, cand.key.clone(), true, Sent::Nothing)
                        .await?;
                }
            }
            // Perhaps unmarked: a marker found gone is this call's doing, and its files are
            // still to report.
            Err(e) if e.is_temporary() => {
                for cand in &rest {
                    self.finish(conv, cand.id, false, cand.key.clone(), true, Sent::Unmark)
                        .await?;
                }
            }
            Err(e) => return Err(e),
        }
        Ok(cands.iter().map(|c| c.id).collect())
    }

    /// Removes the queue entries of `done` (one shard-day) in unlogged batches of its one
    /// partition.
    async fn unqueue(
        &self,
        queue: Queue,
        (day, shard): (i32, i32),
        done: &[&index::Entry],
    ) -> Result<()> {
        use scylla::statement::batch::{Batch, BatchType};
        let b = self.b;
        let config = b.config();
        let writes = done.chunks(UNQUEUE_ROWS).map(|chunk| {
            let mut batch = Batch::new(BatchType::Unlogged);
            batch.set_consistency(config.consistency());
            batch.set_request_timeout(Some(config.request_timeout()));
            // Deleting the same rows again is harmless.
            batch.set_is_idempotent(true);
            let mut values: Vec<BoxedRow> = Vec::with_capacity(chunk.len());
            for (due, conv, msg_id, request_id) in chunk.iter().copied() {
                match queue {
                    Queue::Retention => {
                        batch.append_statement(b.st().rq_remove.clone());
                        values.push(Box::new((
                            day,
                            shard,
                            *due,
                            conv.clone(),
                            *msg_id,
                            request_id.clone(),
                        )));
                    }
                    Queue::History => {
                        batch.append_statement(b.st().hq_remove.clone());
                        values.push(Box::new((day, shard, *due, conv.clone(), *msg_id)));
                    }
                }
            }
            async move {
                b.session()
                    .batch(&batch, values)
                    .await
                    .map(|_| ())
                    .map_err(error::execution)
            }
        });
        futures::future::try_join_all(writes).await?;
        Ok(())
    }

    /// A day every shard of which is done: its partitions, marks and day row go.
    async fn drop_day(&self, queue: Queue, day: i32) -> Result<()> {
        let b = self.b;
        let drop = match queue {
            Queue::Retention => &b.st().rq_drop,
            Queue::History => &b.st().hq_drop,
        };
        for shard in 0..QUEUE_SHARDS {
            b.session()
                .execute_unpaged(drop, (day, shard))
                .await
                .map_err(error::execution)?;
        }
        b.session()
            .execute_unpaged(&b.st().progress_drop, (queue.code(), day))
            .await
            .map_err(error::execution)?;
        b.session()
            .execute_unpaged(&b.st().days_remove, (queue.code(), day))
            .await
            .map_err(error::execution)?;
        Ok(())
    }

    /// No history limit: history days older than the retention can never become due under any
    /// valid policy (a history limit is never shorter than the retention), so they go whole.
    async fn drop_history_days(&self) -> Result<()> {
        let last = day_of(self.job.retention_cutoff()).saturating_sub(1);
        let mut after = i32::MIN;
        loop {
            let list = days(self.b, Queue::History.code(), after, last).await?;
            if list.is_empty() {
                return Ok(());
            }
            for day in list {
                after = day;
                self.drop_day(Queue::History, day).await?;
            }
        }
    }

    /// The legacy unsharded retention queue of keyspaces made before the sharded one.
    async fn legacy_retention_queue(&mut self) -> Result<()> {
        let b = self.b;
        let now = self.job.now();
        let today = day_of(now);
        let cutoff = self.job.retention_cutoff().as_millis();
        let mut after = i32::MIN;
        loop {
            let list = days(b, RETENTION_SHARD, after, today).await?;
            if list.is_empty() {
                return Ok(());
            }
            for day in list {
                after = day;
                let mut paging = Some(PagingState::start());
                while let Some(p) = paging.take() {
                    let (entries, next) = page_of::<(i64, String, i64, String)>(
                        b,
                        &b.st().queue_due,
                        (day, now.as_millis()),
                        p,
                    )
                    .await?;
                    paging = next;
                    for (due, conv, msg_id, request_id) in entries {
                        let (conv, id) = ids(conv, msg_id)?;
                        let remove = (day, due, conv.as_str().to_string(), msg_id, request_id);
                        let request_id = &remove.4;
                        let keep = if self.held(&conv).await? {
                            // Kept, record included, until the hold is lifted; a purge that
                            // committed before the hold is finished all the same.
                            let finished = self.finish_committed(&conv, id).await?;
                            !finished || !request_id.is_empty()
                        } else {
                            if !request_id.is_empty() {
                                b.session()
                                    .execute_unpaged(
                                        &b.st().request_expire,
                                        (conv.as_str(), request_id.as_str(), cutoff),
                                    )
                                    .await
                                    .map_err(error::execution)?;
                            }
                            match self.message(&conv, id).await? {
                                Verdict::Done | Verdict::NotYet(None) => false,
                                Verdict::NotYet(Some(d))
                                    if d.as_millis() != due || !request_id.is_empty() =>
                                {
                                    enqueue_retention(b, &conv, id, "", d).await?;
                                    false
                                }
                                Verdict::NotYet(Some(_)) | Verdict::Busy => true,
                            }
                        };
                        if !keep {
                            b.session()
                                .execute_unpaged(&b.st().queue_remove, remove)
                                .await
                                .map_err(error::execution)?;
                        }
                        if self.full() {
                            return Ok(());
                        }
                    }
                }
                // A past day whose queue is empty is forgotten (no entry can land in the past).
                if day < today - 1 && is_empty(b, &b.st().queue_any, (day,)).await? {
                    b.session()
                        .execute_unpaged(&b.st().days_remove, (RETENTION_SHARD, day))
                        .await
                        .map_err(error::execution)?;
                }
            }
        }
    }

    /// The legacy unsharded history index of keyspaces made before the sharded one.
    async fn legacy_history_queue(&mut self) -> Result<()> {
        let b = self.b;
        let Some(cutoff) = self.job.history_cutoff() else {
            // No history limit: days older than the retention can never become due under any
            // valid policy, so the index of them goes, a partition at a time.
            let last = day_of(self.job.retention_cutoff()).saturating_sub(1);
            let mut after = i32::MIN;
            loop {
                let list = days(b, HISTORY_SHARD, after, last).await?;
                if list.is_empty() {
                    return Ok(());
                }
                for day in list {
                    after = day;
                    b.session()
                        .execute_unpaged(&b.st().history_drop_day, (day,))
                        .await
                        .map_err(error::execution)?;
                    b.session()
                        .execute_unpaged(&b.st().days_remove, (HISTORY_SHARD, day))
                        .await
                        .map_err(error::execution)?;
                }
            }
        };
        let last = day_of(cutoff);
        let mut after = i32::MIN;
        loop {
            let list = days(b, HISTORY_SHARD, after, last).await?;
            if list.is_empty() {
                return Ok(());
            }
            for day in list {
                after = day;
                let mut paging = Some(PagingState::start());
                while let Some(p) = paging.take() {
                    let (entries, next) = page_of::<(i64, String, i64)>(
                        b,
                        &b.st().history_due,
                        (day, cutoff.as_millis()),
                        p,
                    )
                    .await?;
                    paging = next;
                    for (created_at, conv, msg_id) in entries {
                        let (conv, id) = ids(conv, msg_id)?;
                        let keep = if self.held(&conv).await? {
                            !self.finish_committed(&conv, id).await?
                        } else {
                            matches!(self.message(&conv, id).await?, Verdict::Busy)
                        };
                        if !keep {
                            b.session()
                                .execute_unpaged(
                                    &b.st().history_remove,
                                    (day, created_at, conv.as_str(), msg_id),
                                )
                                .await
                                .map_err(error::execution)?;
                        }
                        if self.full() {
                            return Ok(());
                        }
                    }
                }
                if day < last && is_empty(b, &b.st().history_any, (day,)).await? {
                    b.session()
                        .execute_unpaged(&b.st().days_remove, (HISTORY_SHARD, day))
                        .await
                        .map_err(error::execution)?;
                }
            }
        }
    }

    /// Unlists a bucket the purge emptied, so page walks stop reading its tombstones.
    ///
    /// The removal carries the time just before the purge saw the bucket empty: an insert
    /// re-lists its bucket after writing its message, so any insert this check did not see
    /// re-lists it later than that and wins; one that landed meanwhile is re-listed here.
    async fn drop_bucket_if_empty(&self, conv: &ConversationId, bucket: i32) -> Result<()> {
        let b = self.b;
        let seen_at = now_micros();
        if !is_empty(b, &b.st().msg_any, (conv.as_str(), bucket)).await? {
            return Ok(());
        }
        b.session()
            .execute_unpaged(&b.st().bucket_remove, (seen_at, conv.as_str(), bucket))
            .await
            .map_err(error::execution)?;
        if !is_empty(b, &b.st().msg_any, (conv.as_str(), bucket)).await? {
            let mut add = b.st().bucket_add.clone();
            add.set_timestamp(Some(seen_at + 1));
            b.session()
                .execute_unpaged(&add, (conv.as_str(), bucket))
                .await
                .map_err(error::execution)?;
        }
        Ok(())
    }
}

/// Expires the request records `ids` of one conversation whose retention has passed, in one
/// conditional batch (`IF at_ms <= cutoff` each). One record gone already (expired with its
/// other queue entry, across a page's or a call's boundary) or younger makes the whole batch not
/// apply: then the records are read, and those still there and due go in one batch again. Only
/// when that does not apply either (a record changed in between) is each expired alone. A
/// timeout is settled by writing again: the record is gone either way.
async fn expire_records(
    b: &ScyllaBackend,
    conv: &ConversationId,
    ids: &[&str],
    cutoff: i64,
) -> Result<()> {
    let mut ids: Vec<&str> = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let batch_of = |ids: &[&str]| {
        let mut batch = b.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(ids.len());
        for id in ids {
            batch.append_statement(b.st().request_expire.clone());
            values.push(Box::new((
                conv.as_str().to_owned(),
                (*id).to_owned(),
                cutoff,
            )));
        }
        (batch, values)
    };
    let (batch, values) = batch_of(&ids);
    match crate::transition::run_batch(b, &batch, values).await {
        Ok(true) => return Ok(()),
        Ok(false) => {
            // Measured before this second batch: the one-at-a-time fallback took 50 Paxos
            // rounds in series for one stale record, and was most of a purge call's time.
            let owned: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
            let mut due: HashSet<String> = HashSet::new();
            let mut paging = Some(PagingState::start());
            while let Some(p) = paging.take() {
                let (rows, next) = page_with::<(String, Option<i64>)>(
                    b,
                    &b.st().request_ages,
                    (conv.as_str(), owned.clone()),
                    p,
                )
                .await?;
                paging = next;
                due.extend(
                    rows.into_iter()
                        .filter(|(_, at)| at.is_some_and(|at| at <= cutoff))
                        .map(|(id, _)| id),
                );
            }
            ids.retain(|id| due.contains(*id));
            if ids.is_empty() {
                return Ok(());
            }
            let (batch, values) = batch_of(&ids);
            match crate::transition::run_batch(b, &batch, values).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) if e.is_temporary() => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) if e.is_temporary() => {}
        Err(e) => return Err(e),
    }
    for id in ids {
        conditional(
            b,
            &b.st().request_expire,
            (conv.as_str().to_owned(), id.to_owned(), cutoff),
            false,
            || async { Ok(None) },
        )
        .await?;
    }
    Ok(())
}

/// Milliseconds in a day (the queues' day partitions).
const DAY_MS: i64 = 86_400_000;

/// The wall clock in microseconds, the unit of CQL write timestamps.
fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// One purge batch: the retention queue, then the history index, at most `batch_size` messages.
pub(crate) async fn purge(b: &ScyllaBackend, job: &PurgeJob<'_>) -> Result<PurgeReport> {
    let mut run = Run {
        b,
        job,
        budget: None,
        cut_short: false,
        report: PurgeReport::default(),
        holds: HashMap::new(),
        touched: HashSet::new(),
        mine: HashSet::new(),
        unsettled: Unsettled::default(),
        adopted: Adopted::default(),
        serial: false,
    };
    let done = run_call(&mut run).await;
    // Commits whose outcome stayed hidden: a later call adopts their markers, and this one
    // says there is more, so that `purge_all` makes that call (registered on error too).
    let mut left: Vec<i64> = unsettled(&run.unsettled).values().copied().collect();
    let stranded = !left.is_empty();
    // Adopted tokens go back too: this call may have stopped before their last marker (when it
    // did, its batch is full and it says more).
    left.extend(
        run.adopted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(),
    );
    b.inner().purge_strays.register(left, job.now().as_millis());
    done?;
    run.report.more = run.full() || run.cut_short || stranded;
    Ok(run.report)
}

/// The steps of one purge call (see [`purge`]).
async fn run_call(run: &mut Run<'_, '_>) -> Result<()> {
    run.parked().await?;
    if !run.full() {
        run.sharded(Queue::Retention).await?;
    }
    if !(run.full() || run.cut_short) {
        run.legacy_retention_queue().await?;
    }
    if !(run.full() || run.cut_short) {
        run.sharded(Queue::History).await?;
    }
    if !(run.full() || run.cut_short) {
        run.legacy_history_queue().await?;
    }
    // Side by side: each is a read of its own bucket partition (and perhaps a write there), and
    // a call touches a bucket per conversation it purged (measured 1-40 ms a call in series on
    // a 100,000 backlog: small, but nothing orders them).
    let touched = std::mem::take(&mut run.touched);
    let run_ref = &*run;
    futures::stream::iter(touched)
        .map(|(conv, bucket)| async move { run_ref.drop_bucket_if_empty(&conv, bucket).await })
        .buffer_unordered(BUCKET_CHECKS_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Adds the bucket's sentinel mirror to a purge commit: "this bucket was purged", at the top of
/// the bucket's lifecycle range where a latest page's slice reads it (`read::top_states`). Only
/// its presence is read, so any value marks it; written on every keyspace, read only on one
/// made with mirrors (`schema::SENTINEL_MIRRORS`).
fn mirror(
    b: &ScyllaBackend,
    commit: &mut Batch,
    values: &mut Vec<BoxedRow>,
    conversation: &str,
    bucket: i32,
) {
    commit.append_statement(b.st().mirror_set.clone());
    values.push(Box::new((
        rand::random::<i64>(),
        conversation.to_owned(),
        read::mirror_key(b, bucket),
        read::MIRROR_ID,
    )));
}
