//! [`MongoStore`]: the contract on MongoDB (and FerretDB), without multi-document transactions.
//!
//! Every contended decision is the insert of a document under a unique index, the one write that
//! is atomic on every MongoDB deployment and on FerretDB v1 alike (FerretDB v1 applies an update
//! by reading the matching documents and then rewriting them by `_id`, so a filter on the version
//! is not a compare-and-set there). The recall path ([`MongoStore::transition`]):
//! 1. read the message and the request id's claim/outcome: an outcome is replayed (or is a
//!    conflict when the id was used for another request);
//! 2. `lifecycle::plan` decides; the claim is inserted (unique per conversation + request id);
//! 3. COMMIT: insert the commit record `{msg, version: v + 1, next lifecycle, request record}`
//!    into `changes`, unique on `(msg, version)`; the loser of a race gets a duplicate key and
//!    starts again from a fresh read;
//! 4. complete: append the event (idempotent), insert the outcome (first one wins), write the
//!    new lifecycle onto the message document, mark the record done. A process that dies after 3
//!    leaves an unfinished record; the next transition of that message or the next feed read of
//!    that conversation completes it (after `takeover_after`).

use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use imstore_core::lifecycle::{self, Plan, RequestRecord};
use imstore_core::telemetry::traced;
use imstore_core::{
    AttachmentAccess, AuditRecord, BatchOutcome, ChangePage, ConversationId, Direction, Error,
    ErrorKind, FeedCursor, InsertOutcome, ListOptions, MessageStore, MessageView, MsgId,
    NewMessage, Operation, Page, PurgeOptions, PurgeReport, Result, StoreSettings, StoredMessage,
    Timestamp, TransitionOutcome, TransitionRequest, UserId, view,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Document, doc};
use mongodb::options::{ClientOptions, CollectionOptions};
use mongodb::{Client, Collection, Database};

use crate::config::MongoConfig;
use crate::doc::{self as d, Commit, CommitKind, Row};
use crate::error::{DUPLICATE_KEY, is_duplicate_key, map};
use crate::feed::{Feed, backoff};
use crate::schema;

const BACKEND: &str = "mongodb";

/// How many messages of one purge batch are worked on concurrently.
const PURGE_CONCURRENCY: usize = 8;

/// How long (wall-clock) the commit record of a purge is kept as a tombstone.
const TOMBSTONE_MS: i64 = 24 * 60 * 60 * 1000;

/// A [`MessageStore`] over one MongoDB database; cheap to clone, safe to share.
#[derive(Clone, Debug)]
pub struct MongoStore {
    settings: StoreSettings,
    config: Arc<MongoConfig>,
    db: Database,
    messages: Collection<Document>,
    changes: Collection<Document>,
    requests: Collection<Document>,
    holds: Collection<Document>,
    feed: Feed,
}

fn tag(op: Operation) -> impl Fn(Error) -> Error {
    move |e| e.with_operation(op).with_backend(BACKEND)
}

fn not_found(msg_id: MsgId) -> Error {
    Error::new(ErrorKind::NotFound, format!("message {msg_id} not found"))
}

/// The filter selecting one message by its key.
fn key(conversation: &ConversationId, msg_id: MsgId) -> Document {
    doc! {"conversation_id": conversation.as_str(), "msg_id": msg_id.as_i64()}
}

impl MongoStore {
    /// Connects to `config.url` and opens the store (see [`MongoStore::with_client`]).
    pub async fn connect(config: MongoConfig, settings: StoreSettings) -> Result<Self> {
        let options = ClientOptions::parse(&config.url)
            .await
            .map_err(map)
            .map_err(tag(Operation::Connect))?;
        let client = Client::with_options(options)
            .map_err(map)
            .map_err(tag(Operation::Connect))?;
        Self::with_client(client, config, settings).await
    }

    /// Opens the store over `config.database` with an existing client, building its indexes
    /// (idempotent); several stores may share one client and one database.
    pub async fn with_client(
        client: Client,
        config: MongoConfig,
        settings: StoreSettings,
    ) -> Result<Self> {
        let db = client.database(&config.database);
        let options = CollectionOptions::builder()
            .write_concern(config.write_concern.clone())
            .build();
        let coll = |name: &str| db.collection_with_options::<Document>(name, options.clone());
        let store = MongoStore {
            messages: coll(schema::MESSAGES),
            changes: coll(schema::CHANGES),
            requests: coll(schema::REQUESTS),
            holds: coll(schema::HOLDS),
            feed: Feed {
                coll: coll(schema::EVENTS),
                max_attempts: config.max_cas_attempts.max(1),
            },
            settings,
            config: Arc::new(config),
            db,
        };
        schema::ensure_indexes(
            &store.messages,
            &store.changes,
            &store.feed.coll,
            &store.requests,
        )
        .await
        .map_err(tag(Operation::Connect))?;
        Ok(store)
    }

    /// The settings the store was opened with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    /// The database the store lives in.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn now(&self) -> Timestamp {
        self.settings.clock.now()
    }

    async fn load(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<Option<Row>> {
        match self
            .messages
            .find_one(key(conversation, msg_id))
            .await
            .map_err(map)?
        {
            Some(doc) => d::row_of(&doc).map(Some),
            None => Ok(None),
        }
    }

    fn decode(&self, message: &NewMessage) -> Result<NewMessage> {
        let content = self.settings.codec.decode(
            &message.conversation_id,
            message.msg_id,
            &message.content,
        )?;
        Ok(NewMessage {
            content,
            ..message.clone()
        })
    }

    fn view(&self, row: Row, viewer: &UserId, now: Timestamp) -> Result<MessageView> {
        let stored = StoredMessage {
            message: row.message,
            lifecycle: row.lifecycle,
        };
        let s = &self.settings;
        view::render_encoded(stored, viewer, &s.policy, &s.codec, now)
    }

    /// What a duplicate key on insert means: the same message again, or a conflicting one;
    /// `None` when the stored message vanished (purged) between the insert and this read.
    async fn resolve_duplicate(&self, message: &NewMessage) -> Result<Option<InsertOutcome>> {
        let Some(row) = self.load(&message.conversation_id, message.msg_id).await? else {
            return Ok(None);
        };
        if self.decode(&row.message)?.same_as(message) {
            Ok(Some(InsertOutcome::AlreadyExists))
        } else {
            Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "msg_id {} is already stored with different fields",
                    message.msg_id
                ),
            ))
        }
    }

    async fn insert_one(&self, message: &NewMessage) -> Result<InsertOutcome> {
        lifecycle::validate_message(message, &self.settings.policy)?;
        let encoded = self.settings.codec.encode(
            &message.conversation_id,
            message.msg_id,
            &message.content,
        )?;
        let doc = d::message_doc(message, encoded, self.now());
        for _ in 0..3 {
            match self.messages.insert_one(doc.clone()).await {
                Ok(_) => return Ok(InsertOutcome::Inserted),
                Err(e) if is_duplicate_key(&e) => {
                    if let Some(outcome) = self.resolve_duplicate(message).await? {
                        return Ok(outcome);
                    }
                }
                Err(e) => return Err(map(e)),
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "msg_id {} kept changing concurrently; retry",
                message.msg_id
            ),
        ))
    }

    async fn insert_many(&self, messages: &[NewMessage]) -> Result<BatchOutcome> {
        lifecycle::validate_batch(messages, &self.settings.policy)?;
        if messages.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let now = self.now();
        let docs = messages
            .iter()
            .map(|m| {
                let encoded =
                    self.settings
                        .codec
                        .encode(&m.conversation_id, m.msg_id, &m.content)?;
                Ok(d::message_doc(m, encoded, now))
            })
            .collect::<Result<Vec<_>>>()?;
        let duplicates: Vec<usize> = match self.messages.insert_many(docs).ordered(false).await {
            Ok(_) => Vec::new(),
            Err(e) => {
                let dups = match e.kind.as_ref() {
                    mongodb::error::ErrorKind::InsertMany(m) if m.write_concern_error.is_none() => {
                        match m.write_errors.as_deref() {
                            Some(errs) if errs.iter().all(|w| w.code == DUPLICATE_KEY) => {
                                Some(errs.iter().map(|w| w.index).collect())
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                match dups {
                    Some(dups) => dups,
                    None => return Err(map(e)),
                }
            }
        };
        let inserted = messages.len() - duplicates.len();
        let mut results: Vec<Result<InsertOutcome>> =
            (0..inserted).map(|_| Ok(InsertOutcome::Inserted)).collect();
        for i in duplicates {
            let Some(m) = messages.get(i) else {
                return Err(Error::new(
                    ErrorKind::Backend,
                    "the server reported a write error for an unknown batch index",
                ));
            };
            results.push(match self.resolve_duplicate(m).await {
                Ok(Some(r)) => Ok(r),
                // Purged in between: store it now, as if the batch had run a moment later.
                Ok(None) => self.insert_one(m).await,
                Err(e) => Err(e),
            });
        }
        BatchOutcome::tally(results)
    }

    async fn load_claim(&self, req: &TransitionRequest) -> Result<d::Claim> {
        let docs: Vec<Document> = self
            .requests
            .find(doc! {
                "conversation_id": req.conversation_id.as_str(),
                "request_id": req.request_id.as_str(),
            })
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        d::claim_of(&docs)
    }

    /// Inserts the outcome of `record` unless one exists; true if this call inserted it.
    async fn settle(&self, record: &RequestRecord, token: ObjectId) -> Result<bool> {
        match self
            .requests
            .insert_one(d::outcome_doc(record, token))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(map(e)),
        }
    }

    /// Completes a committed transition: appends its event, settles its request, writes the new
    /// lifecycle onto the message, marks the record done. Idempotent; the message document is
    /// written last, so a message that shows version `v` has its event `v` in the feed.
    async fn complete(&self, commit: &Commit) -> Result<bool> {
        let CommitKind::Apply { next, record } = &commit.kind else {
            return Ok(false);
        };
        self.feed.append(record).await?;
        let settled = self.settle(record, commit.token).await?;
        self.messages
            .update_one(
                doc! {"_id": commit.msg, "version": i64::from(commit.version) - 1},
                d::lifecycle_update(next),
            )
            .await
            .map_err(map)?;
        self.changes
            .update_one(
                doc! {"msg": commit.msg, "version": i64::from(commit.version)},
                doc! {"$set": {"done": true}},
            )
            .await
            .map_err(map)?;
        Ok(settled)
    }

    fn stale(&self, commit: &Commit) -> bool {
        let after = i64::try_from(self.config.takeover_after.as_millis()).unwrap_or(i64::MAX);
        d::wall_now().saturating_sub(commit.wall) >= after
    }

    /// Deals with a commit after the version of `row` (one that beat us, or one whose writer
    /// has not written the message document yet): nothing while its writer is within
    /// `takeover_after` (the caller retries), complete it after that. A purge means the message
    /// is gone. Returns true when such a commit exists, so `row` is not the current state.
    async fn unblock(&self, row: &Row) -> Result<bool> {
        let blocking = self
            .changes
            .find_one(doc! {"msg": row.id, "version": i64::from(row.lifecycle.version) + 1})
            .await
            .map_err(map)?;
        let Some(blocking) = blocking else {
            return Ok(false);
        };
        let commit = d::commit_of(&blocking)?;
        match commit.kind {
            CommitKind::Purge { .. } => return Err(not_found(row.message.msg_id)),
            // Done, yet the message we read is still at the version before: we read it just
            // before the lifecycle write landed, or (FerretDB v1, whose updates are not atomic
            // with their filter) a late duplicate write of an older commit overwrote it. Either
            // way completing again is idempotent and heals the message document.
            CommitKind::Apply { .. } if commit.done || self.stale(&commit) => {
                self.complete(&commit).await?;
            }
            CommitKind::Apply { .. } => {}
        }
        Ok(true)
    }

    /// The answer for the request whose own outcome is `mine` (token `token`), once its outcome
    /// is stored: its own if it was stored first, else the first one, replayed.
    async fn answer(
        &self,
        req: &TransitionRequest,
        mine: TransitionOutcome,
        token: ObjectId,
        settled_here: bool,
    ) -> Result<TransitionOutcome> {
        if settled_here {
            return Ok(mine);
        }
        let claim = self.load_claim(req).await?;
        match &claim.outcome {
            Some((_, t)) if *t == token => Ok(mine),
            Some((first, _)) => match claim.record(&req.conversation_id, &req.request_id, first) {
                Some(record) => record.replay(req),
                None => Ok(first.clone()),
            },
            None => Ok(mine),
        }
    }

    /// Completes the unfinished transitions of a conversation whose writers are overdue, so that
    /// a feed read never waits forever for a process that died after its commit.
    async fn repair_conversation(&self, conversation: &ConversationId) -> Result<()> {
        let docs: Vec<Document> = self
            .changes
            .find(doc! {"conversation_id": conversation.as_str(), "done": false})
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        for doc in docs {
            let commit = d::commit_of(&doc)?;
            if matches!(commit.kind, CommitKind::Apply { .. }) && self.stale(&commit) {
                self.complete(&commit).await?;
            }
        }
        Ok(())
    }

    async fn transition_inner(&self, req: &TransitionRequest) -> Result<TransitionOutcome> {
        let policy = &self.settings.policy;
        let now = self.now();
        lifecycle::validate_request(req, policy, now)?;
        let mut claimed = false;
        for attempt in 0..self.config.max_cas_attempts.max(1) {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let row = self.load(&req.conversation_id, req.msg_id).await?;
            let claim = self.load_claim(req).await?;
            if claim.identity.is_some() {
                // Core decides whether this is the same request (replay) or a reused id (conflict).
                let (seen, _) = claim.outcome.clone().unwrap_or((
                    TransitionOutcome {
                        msg_id: req.msg_id,
                        status: imstore_core::Status::Normal,
                        version: 0,
                        changed: false,
                        replayed: true,
                    },
                    ObjectId::new(),
                ));
                if let Some(record) = claim.record(&req.conversation_id, &req.request_id, &seen) {
                    let replay = record.replay(req)?;
                    if claim.outcome.is_some() {
                        return Ok(replay);
                    }
                }
                // Claimed without an outcome: a twin of this request is in flight (or died
                // before committing); go on, the outcome insert decides which answer stands.
            }
            let Some(row) = row else {
                return Err(not_found(req.msg_id));
            };
            // The message document trails its commit log: plan only from a version with no
            // commit after it (else complete that commit, or wait for its writer, and re-read).
            if self.unblock(&row).await? {
                continue;
            }
            let plan = lifecycle::plan(req, &row.message.sender_id, &row.lifecycle, policy, now)?;
            let outcome = lifecycle::outcome(req.msg_id, &row.lifecycle, &plan);
            let record = RequestRecord::new(req, &outcome, now);
            if claim.identity.is_none() && !claimed {
                match self.requests.insert_one(d::claim_doc(&record)).await {
                    Ok(_) => claimed = true,
                    Err(e) if is_duplicate_key(&e) => continue,
                    Err(e) => return Err(map(e)),
                }
            }
            let token = ObjectId::new();
            match plan {
                Plan::Unchanged => {
                    // Nothing changes on the message: only the outcome is recorded.
                    let settled = self.settle(&record, token).await?;
                    return self.answer(req, outcome, token, settled).await;
                }
                Plan::Apply(next) => {
                    let commit = Commit {
                        msg: row.id,
                        conversation_id: req.conversation_id.clone(),
                        msg_id: req.msg_id,
                        version: next.version,
                        token,
                        wall: d::wall_now(),
                        done: false,
                        kind: CommitKind::Apply { next, record },
                    };
                    match self.changes.insert_one(d::commit_doc(&commit)).await {
                        Ok(_) => {}
                        Err(e) if is_duplicate_key(&e) => {
                            self.unblock(&row).await?;
                            continue;
                        }
                        Err(e) => return Err(map(e)),
                    }
                    let settled = self.complete(&commit).await?;
                    return self.answer(req, outcome, token, settled).await;
                }
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            "the message changed too often under this request; retry",
        ))
    }

    async fn list_inner(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page> {
        lifecycle::validate_conversation(conversation, &self.settings.policy)?;
        lifecycle::validate_page_size(options.limit, &self.settings.policy)?;
        let now = self.now();
        let mut filter = doc! {"conversation_id": conversation.as_str()};
        let (op, order) = match options.direction {
            Direction::NewestFirst => ("$lt", -1),
            Direction::OldestFirst => ("$gt", 1),
        };
        if let Some(c) = options.cursor {
            filter.insert("msg_id", doc! {op: c.as_i64()});
        }
        let limit = options.limit as usize;
        let docs: Vec<Document> = self
            .messages
            .find(filter)
            .sort(doc! {"msg_id": order})
            .limit(limit as i64 + 1)
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        let more = docs.len() > limit;
        let items = docs
            .iter()
            .take(limit)
            .map(|doc| self.view(d::row_of(doc)?, viewer, now))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page::new(items, more))
    }

    async fn changes_inner(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        lifecycle::validate_conversation(conversation, &self.settings.policy)?;
        lifecycle::validate_page_size(limit, &self.settings.policy)?;
        self.repair_conversation(conversation).await?;
        let events = self.feed.read(conversation, cursor, limit).await?;
        let next = events.last().map(|e| FeedCursor(e.seq)).unwrap_or(cursor);
        Ok(ChangePage { events, next })
    }

    async fn held_conversations(&self) -> Result<Vec<String>> {
        let docs: Vec<Document> = self
            .holds
            .find(doc! {"held": true})
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        docs.iter()
            .map(|doc| d::get_str(doc, "_id").map(str::to_string))
            .collect()
    }

    /// Finishes a purge commit: removes the message's events, the message and its other commit
    /// records. Returns the attachment key when this call removed the message.
    async fn finish_purge(&self, commit: &Commit) -> Result<(bool, u64, Option<String>)> {
        let events = self
            .feed
            .remove_events(&commit.conversation_id, &[commit.msg_id.as_i64()])
            .await?;
        let gone = self
            .messages
            .delete_one(doc! {"_id": commit.msg})
            .await
            .map_err(map)?
            .deleted_count
            == 1;
        // The purge record itself stays as a tombstone: a transition that read the message before
        // it was purged still finds version v + 1 taken and reports NotFound.
        self.changes
            .delete_many(doc! {"msg": commit.msg, "kind": "apply"})
            .await
            .map_err(map)?;
        self.changes
            .update_one(
                doc! {"msg": commit.msg, "version": i64::from(commit.version)},
                doc! {"$set": {"done": true}},
            )
            .await
            .map_err(map)?;
        let attachment = match &commit.kind {
            CommitKind::Purge { attachment } => attachment.clone(),
            CommitKind::Apply { .. } => None,
        };
        Ok((gone, events, attachment))
    }

    async fn purge_inner(&self, options: PurgeOptions) -> Result<PurgeReport> {
        lifecycle::validate_purge(&options)?;
        let now = self.now();
        let (retention_cutoff, history_cutoff) =
            lifecycle::purge_cutoffs(&self.settings.policy, now);
        let held = self.held_conversations().await?;
        self.requests
            .delete_many(doc! {
                "at": {"$lte": retention_cutoff.as_millis()},
                "conversation_id": {"$nin": &held},
            })
            .await
            .map_err(map)?;
        let mut report = PurgeReport::default();

        // Purges whose worker died after committing: finish them (their messages are already
        // purged as far as every reader is concerned).
        let stalled: Vec<Document> = self
            .changes
            .find(doc! {"done": false, "kind": "purge"})
            .limit(i64::from(options.batch_size))
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        for doc in &stalled {
            let commit = d::commit_of(doc)?;
            if self.stale(&commit) {
                let (gone, events, attachment) = self.finish_purge(&commit).await?;
                report.events += events;
                if gone {
                    report.messages += 1;
                    report.released_attachments.extend(attachment);
                }
            }
        }

        // Purge tombstones only guard against transitions that read a message before it was
        // purged; after a day no such request is still in flight.
        self.changes
            .delete_many(doc! {
                "done": true,
                "kind": "purge",
                "wall": {"$lt": d::wall_now().saturating_sub(TOMBSTONE_MS)},
            })
            .await
            .map_err(map)?;

        let mut expired = vec![doc! {"retired_at": {"$lte": retention_cutoff.as_millis()}}];
        if let Some(h) = history_cutoff {
            expired.push(doc! {"created_at": {"$lte": h.as_millis()}});
        }
        let budget = u64::from(options.batch_size).saturating_sub(report.messages);
        let candidates: Vec<Document> = if budget == 0 {
            Vec::new()
        } else {
            self.messages
                .find(doc! {
                    "conversation_id": {"$nin": &held},
                    "$or": expired,
                })
                .projection(doc! {"content": 0})
                .limit(budget as i64)
                .await
                .map_err(map)?
                .try_collect()
                .await
                .map_err(map)?
        };
        let full = budget == 0 || candidates.len() as u64 == budget;
        let rows = candidates
            .iter()
            .map(d::row_of)
            .collect::<Result<Vec<_>>>()?;

        // COMMIT each purge as version v + 1 of its message: it wins against any transition (or
        // other purge worker) that read the same version, so the eligibility decided from that
        // version still holds and no two workers purge the same message.
        let token = ObjectId::new();
        let won: Vec<Option<Commit>> = futures::stream::iter(rows)
            .map(|row| async move {
                let commit = Commit {
                    msg: row.id,
                    conversation_id: row.message.conversation_id.clone(),
                    msg_id: row.message.msg_id,
                    version: row.lifecycle.version.saturating_add(1),
                    token,
                    wall: d::wall_now(),
                    done: false,
                    kind: CommitKind::Purge {
                        attachment: row.message.attachment.as_ref().map(|a| a.key.clone()),
                    },
                };
                match self.changes.insert_one(d::commit_doc(&commit)).await {
                    Ok(_) => Ok(Some(commit)),
                    Err(e) if is_duplicate_key(&e) => Ok(None),
                    Err(e) => Err(map(e)),
                }
            })
            .buffer_unordered(PURGE_CONCURRENCY)
            .try_collect()
            .await?;
        let won: Vec<Commit> = won.into_iter().flatten().collect();

        let finished: Vec<(bool, u64, Option<String>)> = futures::stream::iter(won)
            .map(|commit| async move { self.finish_purge(&commit).await })
            .buffer_unordered(PURGE_CONCURRENCY)
            .try_collect()
            .await?;
        for (gone, events, attachment) in finished {
            report.events += events;
            if gone {
                report.messages += 1;
                report.released_attachments.extend(attachment);
            }
        }
        report.more = full;
        Ok(report)
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        let (conv, id) = (&message.conversation_id, message.msg_id);
        traced(
            Operation::Insert,
            BACKEND,
            Some(conv),
            Some(id),
            self.insert_one(&message),
        )
        .await
    }

    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        let conv = messages.first().map(|m| &m.conversation_id);
        traced(
            Operation::Insert,
            BACKEND,
            conv,
            None,
            self.insert_many(&messages),
        )
        .await
    }

    async fn get(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<MessageView> {
        traced(
            Operation::Get,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let now = self.now();
                let row = self
                    .load(conversation, msg_id)
                    .await?
                    .ok_or_else(|| not_found(msg_id))?;
                self.view(row, viewer, now)
            },
        )
        .await
    }

    async fn list(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page> {
        traced(
            Operation::List,
            BACKEND,
            Some(conversation),
            None,
            self.list_inner(conversation, viewer, options),
        )
        .await
    }

    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
        traced(
            request.action.operation(),
            BACKEND,
            Some(&request.conversation_id),
            Some(request.msg_id),
            self.transition_inner(&request),
        )
        .await
    }

    async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord> {
        traced(
            Operation::Audit,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let row = self
                    .load(conversation, msg_id)
                    .await?
                    .ok_or_else(|| not_found(msg_id))?;
                Ok(AuditRecord {
                    message: StoredMessage {
                        message: self.decode(&row.message)?,
                        lifecycle: row.lifecycle,
                    },
                })
            },
        )
        .await
    }

    async fn attachment_access(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<AttachmentAccess> {
        traced(
            Operation::AttachmentAccess,
            BACKEND,
            Some(conversation),
            Some(msg_id),
            async {
                let now = self.now();
                let doc = self
                    .messages
                    .find_one(key(conversation, msg_id))
                    .projection(doc! {"content": 0})
                    .await
                    .map_err(map)?
                    .ok_or_else(|| not_found(msg_id))?;
                let row = d::row_of(&doc)?;
                Ok(view::attachment_access(
                    &StoredMessage {
                        message: row.message,
                        lifecycle: row.lifecycle,
                    },
                    viewer,
                    &self.settings.policy,
                    now,
                ))
            },
        )
        .await
    }

    async fn changes_since(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        traced(
            Operation::Changes,
            BACKEND,
            Some(conversation),
            None,
            self.changes_inner(conversation, cursor, limit),
        )
        .await
    }

    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        traced(
            Operation::Purge,
            BACKEND,
            None,
            None,
            self.purge_inner(options),
        )
        .await
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        traced(
            Operation::LegalHold,
            BACKEND,
            Some(conversation),
            None,
            async {
                lifecycle::validate_conversation(conversation, &self.settings.policy)?;
                self.holds
                    .update_one(
                        doc! {"_id": conversation.as_str()},
                        doc! {"$set": {"held": held}},
                    )
                    .upsert(true)
                    .await
                    .map_err(map)?;
                Ok(())
            },
        )
        .await
    }
}
