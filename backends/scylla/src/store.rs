//! `ScyllaStore`: the contract on ScyllaDB or Apache Cassandra, through one shared `Session`.
//!
//! The recall path: [`ScyllaStore::transition`] → `apply_transition`: read (message, lifecycle,
//! feed head, request record) → `lifecycle::plan` → ONE conditional batch on the conversation's
//! `conversation_state` partition that writes the lifecycle `IF version = ?`, claims the next feed
//! seq `IF feed_head = ?`, appends the event and stores the request record `IF at_ms = ?`.
//! Losing the condition (or a Paxos timeout) means re-read and re-plan.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{FutureExt, StreamExt, TryStreamExt};
use imstore_core::lifecycle::{self, Plan, RequestRecord};
use imstore_core::telemetry::op_span;
use imstore_core::{
    AttachmentAccess, AuditRecord, BatchOutcome, ChangeEvent, ChangePage, ConversationId,
    Direction, Error, ErrorKind, FeedCursor, InsertOutcome, Lifecycle, ListOptions, MessageStore,
    MessageView, MsgId, NewMessage, Operation, Page, PurgeOptions, PurgeReport, Result, Status,
    StoreSettings, StoredMessage, Timestamp, TransitionOutcome, TransitionRequest, UserId, view,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::MaybeUnset;
use tracing::Instrument;

use crate::config::ScyllaConfig;
use crate::error;
use crate::rows::{self, EventCols, LwtResult, MessageRow, RequestCols, StateCols, StateRow};
use crate::schema::{self, ServerInfo};
use crate::statements::Statements;

const BACKEND: &str = "scylla";
const DAY_MS: i64 = 86_400_000;
/// Buckets fetched per round trip while walking a conversation's bucket index.
const BUCKET_CHUNK: i32 = 8;
/// Purge-queue rows fetched per page.
const QUEUE_PAGE: i32 = 256;
/// Rows per conditional insert batch (one partition).
const MAX_BATCH_ROWS: usize = 50;
/// Encoded content per conditional insert batch: under Cassandra's default 50 KiB
/// `batch_size_fail_threshold`, with room for the other columns.
const MAX_BATCH_BYTES: usize = 32 * 1024;

/// A [`MessageStore`] on ScyllaDB or Apache Cassandra; cheap to clone, safe to share.
#[derive(Clone)]
pub struct ScyllaStore {
    inner: Arc<Inner>,
}

struct Inner {
    session: Arc<Session>,
    config: ScyllaConfig,
    settings: StoreSettings,
    st: Statements,
    server: ServerInfo,
    /// Days already written to `purge_days` by this process (a day row is never removed while
    /// new entries can still land in it, so remembering it is safe).
    known_days: Mutex<HashSet<i32>>,
}

impl std::fmt::Debug for ScyllaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaStore")
            .field("keyspace", &self.inner.config.keyspace)
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

/// One row of `purge_queue`: a message, and a request record when `request_id` is not empty.
struct QueueEntry {
    day: i32,
    due: i64,
    conv: ConversationId,
    msg_id: MsgId,
    request_id: String,
}

/// Converts what a statement binds into a boxed row, so one batch can mix statement shapes.
type BoxedRow = Box<dyn SerializeRow + Send + Sync>;

/// Messages of one partition inserted together, each with its encoded content.
type Chunk<'a> = Vec<(&'a NewMessage, Vec<u8>)>;

fn tag(op: Operation) -> impl Fn(Error) -> Error {
    move |e| e.with_operation(op).with_backend(BACKEND)
}

fn not_found(msg_id: MsgId) -> Error {
    Error::new(ErrorKind::NotFound, format!("message {msg_id} not found"))
}

/// A `None` that was `None` before too stays unset (no tombstone); otherwise the new value.
fn field<T>(next: Option<T>, before_was_none: bool) -> MaybeUnset<Option<T>> {
    match next {
        None if before_was_none => MaybeUnset::Unset,
        v => MaybeUnset::Set(v),
    }
}

/// A version as the `int` column stores it; beyond `i32::MAX` the counter is exhausted.
fn version_col(v: u32) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::new(ErrorKind::InvalidState, "version counter exhausted"))
}

fn day_of(t: i64) -> i32 {
    i32::try_from(t.div_euclid(DAY_MS)).unwrap_or(if t < 0 { i32::MIN } else { i32::MAX })
}

/// When a message in state `lc` becomes purgeable under `policy`, if ever.
fn purge_due(lc: &Lifecycle, policy: &imstore_core::Policy) -> Option<Timestamp> {
    let retention = policy.retention();
    let by_status = match lc.status {
        Status::Recalled => lc.recalled_at.map(|t| t.saturating_add(retention)),
        Status::Deleted => lc.deleted_at.map(|t| t.saturating_add(retention)),
        Status::Normal => None,
    };
    let by_history = policy
        .history_limit()
        .map(|h| lc.created_at.saturating_add(h));
    match (by_status, by_history) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn backoff(attempt: u32) {
    let cap = 2u64 << attempt.min(5);
    let ms = rand::random_range(1..=cap);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

impl ScyllaStore {
    /// Connects to `config.nodes`, creates the schema if asked, and prepares every statement.
    pub async fn connect(config: ScyllaConfig, settings: StoreSettings) -> Result<Self> {
        let session = connect_session(&config)
            .await
            .map_err(tag(Operation::Connect))?;
        ScyllaStore::with_session(Arc::new(session), config, settings).await
    }

    /// A store over an existing session (one session per application, shared by every store).
    pub async fn with_session(
        session: Arc<Session>,
        config: ScyllaConfig,
        settings: StoreSettings,
    ) -> Result<Self> {
        async {
            config.validate()?;
            let server = schema::detect(&session).await?;
            if config.create_schema {
                schema::ensure(&session, &config, server.flavour).await?;
            }
            let st = Statements::prepare(&session, &config).await?;
            Ok(ScyllaStore {
                inner: Arc::new(Inner {
                    session,
                    config,
                    settings,
                    st,
                    server,
                    known_days: Mutex::new(HashSet::new()),
                }),
            })
        }
        .instrument(op_span(Operation::Connect, BACKEND, None, None))
        .await
        .map_err(tag(Operation::Connect))
    }

    /// The shared driver session.
    pub fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    /// The server this store talks to (ScyllaDB or Cassandra, and its version).
    pub fn server(&self) -> &ServerInfo {
        &self.inner.server
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &ScyllaConfig {
        &self.inner.config
    }

    /// The bucket a message id falls in (its timestamp divided by the bucket width).
    pub fn bucket_of(&self, msg_id: MsgId) -> i32 {
        let ms = msg_id.timestamp().as_millis() - imstore_core::ids::MSG_ID_EPOCH_MS;
        i32::try_from(ms.div_euclid(self.inner.config.bucket_ms())).unwrap_or(i32::MAX)
    }

    /// The stored (encoded) content of a message, bypassing the codec; `None` if absent.
    pub async fn raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read_message(conversation, msg_id, false)
            .await?
            .map(|m| m.message.content))
    }

    /// Overwrites the stored content bytes of a message (tests of tampering); false if absent.
    pub async fn set_raw_content(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) -> Result<bool> {
        let res = self
            .session()
            .execute_unpaged(
                &self.inner.st.msg_set_content,
                (
                    bytes,
                    conversation.as_str(),
                    self.bucket_of(msg_id),
                    msg_id.as_i64(),
                ),
            )
            .await
            .map_err(error::execution)?;
        Ok(rows::lwt(res)?.applied)
    }

    fn now(&self) -> Timestamp {
        self.inner.settings.clock.now()
    }

    fn policy(&self) -> &imstore_core::Policy {
        &self.inner.settings.policy
    }

    // ---------------------------------------------------------------- reads

    async fn read_message(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        serial: bool,
    ) -> Result<Option<MessageRow>> {
        let st = if serial {
            &self.inner.st.msg_get_serial
        } else {
            &self.inner.st.msg_get
        };
        let res = self
            .session()
            .execute_unpaged(
                st,
                (
                    conversation.as_str(),
                    self.bucket_of(msg_id),
                    msg_id.as_i64(),
                ),
            )
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

    async fn read_state(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        serial: bool,
    ) -> Result<Option<StateRow>> {
        let st = if serial {
            &self.inner.st.state_get_serial
        } else {
            &self.inner.st.state_get
        };
        let res = self
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

    async fn read_head(&self, conversation: &ConversationId, serial: bool) -> Result<Option<i64>> {
        let st = if serial {
            &self.inner.st.head_get_serial
        } else {
            &self.inner.st.head_get
        };
        let res = self
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

    async fn read_request(
        &self,
        req: &TransitionRequest,
        serial: bool,
    ) -> Result<Option<RequestRecord>> {
        let st = if serial {
            &self.inner.st.request_get_serial
        } else {
            &self.inner.st.request_get
        };
        let res = self
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

    async fn legal_hold(&self, conversation: &ConversationId) -> Result<bool> {
        let res = self
            .session()
            .execute_unpaged(&self.inner.st.hold_get, (conversation.as_str(),))
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

    /// The message and its lifecycle, or `NotFound` (also while a purge is removing it).
    async fn load(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<StoredMessage> {
        let (msg, state) = futures::try_join!(
            self.read_message(conversation, msg_id, false),
            self.read_state(conversation, msg_id, false)
        )?;
        let msg = msg.ok_or_else(|| not_found(msg_id))?;
        if state.as_ref().is_some_and(|s| s.purging) {
            return Err(not_found(msg_id));
        }
        Ok(StoredMessage {
            lifecycle: rows::lifecycle_of(state.as_ref(), msg.created_at),
            message: msg.message,
        })
    }

    /// `stored` with its content decoded (or emptied when it is not to be shown).
    fn decoded(&self, mut stored: StoredMessage, with_content: bool) -> Result<StoredMessage> {
        stored.message.content = if with_content {
            self.inner.settings.codec.decode(
                &stored.message.conversation_id,
                stored.message.msg_id,
                &stored.message.content,
            )?
        } else {
            Vec::new()
        };
        Ok(stored)
    }

    fn view(&self, stored: StoredMessage, viewer: &UserId, now: Timestamp) -> Result<MessageView> {
        let s = &self.inner.settings;
        view::render_encoded(stored, viewer, &s.policy, &s.codec, now)
    }

    // ---------------------------------------------------------------- writes

    /// Records that `(conversation, msg_id)`, and the request record `request_id` when not
    /// empty, become purgeable at `due`; written BEFORE the write that makes it so, so a crash
    /// leaves at worst a stale entry the purge discards.
    async fn enqueue_purge(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        request_id: &str,
        due: Timestamp,
    ) -> Result<()> {
        let day = day_of(due.as_millis());
        let known = self
            .inner
            .known_days
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&day);
        if !known {
            self.session()
                .execute_unpaged(&self.inner.st.days_add, (day,))
                .await
                .map_err(error::execution)?;
            self.inner
                .known_days
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(day);
        }
        self.session()
            .execute_unpaged(
                &self.inner.st.queue_add,
                (
                    day,
                    due.as_millis(),
                    conversation.as_str(),
                    msg_id.as_i64(),
                    request_id,
                ),
            )
            .await
            .map_err(error::execution)?;
        Ok(())
    }

    async fn add_bucket(&self, conversation: &ConversationId, bucket: i32) -> Result<()> {
        self.session()
            .execute_unpaged(&self.inner.st.bucket_add, (conversation.as_str(), bucket))
            .await
            .map_err(error::execution)?;
        Ok(())
    }

    /// The values of `msg_insert` for one message.
    fn insert_values(
        &self,
        m: &NewMessage,
        encoded: &[u8],
        now: Timestamp,
        token: i64,
    ) -> Result<BoxedRow> {
        let att = m.attachment.as_ref();
        let size = att
            .map(|a| i64::try_from(a.size))
            .transpose()
            .map_err(|_| Error::invalid_input("attachment.size", "must fit in 63 bits"))?;
        Ok(Box::new((
            m.conversation_id.as_str().to_string(),
            self.bucket_of(m.msg_id),
            m.msg_id.as_i64(),
            m.sender_id.as_str().to_string(),
            m.msg_type.code(),
            encoded.to_vec(),
            att.map_or(MaybeUnset::Unset, |a| MaybeUnset::Set(a.key.clone())),
            size.map_or(MaybeUnset::Unset, MaybeUnset::Set),
            att.map_or(MaybeUnset::Unset, |a| MaybeUnset::Set(a.mime.clone())),
            now.as_millis(),
            token,
        )))
    }

    /// Inserts one validated, encoded message whose bucket is already indexed.
    ///
    /// `IF NOT EXISTS` decides: applied is `Inserted`; otherwise the stored row (returned by the
    /// server, or re-read at SERIAL) is compared field by field after decoding: the same message
    /// is `AlreadyExists`, another one `Conflict`. A row carrying this call's `token` is this
    /// call's own write whose acknowledgement a timeout swallowed: `Inserted`.
    async fn insert_one(
        &self,
        m: &NewMessage,
        encoded: &[u8],
        now: Timestamp,
        token: i64,
    ) -> Result<InsertOutcome> {
        for attempt in 0..self.inner.config.max_cas_attempts {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let values = self.insert_values(m, encoded, now, token)?;
            let existing = match self
                .session()
                .execute_unpaged(&self.inner.st.msg_insert, values)
                .await
            {
                Ok(res) => {
                    let LwtResult { applied, columns } = rows::lwt(res)?;
                    if applied {
                        return Ok(InsertOutcome::Inserted);
                    }
                    match rows::message_from_lwt(&columns) {
                        Some((cols, token)) => {
                            let mut row = rows::message(&m.conversation_id, m.msg_id, cols)?;
                            row.insert_token = token;
                            Some(row)
                        }
                        None => {
                            self.read_message(&m.conversation_id, m.msg_id, true)
                                .await?
                        }
                    }
                }
                Err(e) => {
                    let e = error::execution(e);
                    if !error::lwt_outcome_unknown(&e) {
                        return Err(e);
                    }
                    match self.read_message(&m.conversation_id, m.msg_id, true).await {
                        Ok(found) => found,
                        Err(e) if error::lwt_outcome_unknown(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            let Some(existing) = existing else {
                // Not there after all (a timed-out attempt that was not applied): try again.
                continue;
            };
            if existing.insert_token == Some(token) {
                return Ok(InsertOutcome::Inserted);
            }
            let stored = NewMessage {
                content: self.inner.settings.codec.decode(
                    &m.conversation_id,
                    m.msg_id,
                    &existing.message.content,
                )?,
                ..existing.message
            };
            return if stored.same_as(m) {
                Ok(InsertOutcome::AlreadyExists)
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "msg_id {} is already stored with different fields",
                        m.msg_id
                    ),
                ))
            };
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            "the insert's outcome stayed unknown after every attempt",
        ))
    }

    /// Inserts messages of ONE partition: first as one conditional batch (one Paxos round when
    /// they are all new, the common case), and one by one when any exists or the outcome is
    /// unknown (each then tells inserted, retry or conflict, recognising its own token).
    async fn insert_chunk(&self, chunk: Chunk<'_>, now: Timestamp) -> Vec<Result<InsertOutcome>> {
        let tokens: Vec<i64> = chunk.iter().map(|_| rand::random::<i64>()).collect();
        if chunk.len() > 1 {
            let mut batch = self.conditional_batch();
            let mut values: Vec<BoxedRow> = Vec::with_capacity(chunk.len());
            let mut ok = true;
            for ((m, enc), token) in chunk.iter().zip(&tokens) {
                match self.insert_values(m, enc, now, *token) {
                    Ok(v) => {
                        batch.append_statement(self.inner.st.msg_insert.clone());
                        values.push(v);
                    }
                    Err(_) => ok = false,
                }
            }
            if ok {
                match self.run_batch(&batch, values).await {
                    Ok(true) => return chunk.iter().map(|_| Ok(InsertOutcome::Inserted)).collect(),
                    Ok(false) => {}
                    Err(e) if error::lwt_outcome_unknown(&e) => {}
                    Err(e) => {
                        let kind = e.kind();
                        let msg = e.to_string();
                        let mut out = vec![Err(e)];
                        out.extend((1..chunk.len()).map(|_| Err(Error::new(kind, msg.clone()))));
                        return out;
                    }
                }
            }
        }
        let singles: Vec<_> = chunk
            .iter()
            .zip(&tokens)
            .map(|((m, enc), token)| self.insert_one(m, enc, now, *token))
            .collect();
        futures::future::join_all(singles).await
    }

    async fn do_insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        let policy = self.policy();
        lifecycle::validate_batch(&messages, policy)?;
        let codec = &self.inner.settings.codec;
        let encoded = messages
            .iter()
            .map(|m| codec.encode(&m.conversation_id, m.msg_id, &m.content))
            .collect::<Result<Vec<_>>>()?;
        let now = self.now();
        let buckets: HashSet<(&ConversationId, i32)> = messages
            .iter()
            .map(|m| (&m.conversation_id, self.bucket_of(m.msg_id)))
            .collect();
        let adds: Vec<_> = buckets
            .into_iter()
            .map(|(c, b)| self.add_bucket(c, b).boxed())
            .collect();
        futures::stream::iter(adds)
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        if let Some(h) = policy.history_limit() {
            let queued: Vec<_> = messages
                .iter()
                .map(|m| {
                    self.enqueue_purge(&m.conversation_id, m.msg_id, "", now.saturating_add(h))
                        .boxed()
                })
                .collect();
            futures::stream::iter(queued)
                .buffer_unordered(16)
                .try_collect::<Vec<()>>()
                .await?;
        }
        // Identical repeats inside the batch (validated above) are retries of the first.
        let mut outcome = BatchOutcome::default();
        let mut seen = HashSet::new();
        let mut chunks: HashMap<(&ConversationId, i32), Vec<Chunk<'_>>> = HashMap::new();
        for (m, enc) in messages.iter().zip(encoded) {
            if !seen.insert((&m.conversation_id, m.msg_id)) {
                outcome.already_existed += 1;
                continue;
            }
            let list = chunks
                .entry((&m.conversation_id, self.bucket_of(m.msg_id)))
                .or_default();
            let fits = list.last().is_some_and(|c: &Chunk<'_>| {
                c.len() < MAX_BATCH_ROWS
                    && c.iter().map(|(_, e)| e.len()).sum::<usize>() + enc.len() <= MAX_BATCH_BYTES
            });
            if !fits {
                list.push(Vec::new());
            }
            if let Some(last) = list.last_mut() {
                last.push((m, enc));
            }
        }
        let inserts: Vec<_> = chunks
            .into_values()
            .flatten()
            .map(|chunk| self.insert_chunk(chunk, now).boxed())
            .collect();
        let results: Vec<Result<InsertOutcome>> = futures::stream::iter(inserts)
            .buffer_unordered(8)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        let mut conflict = None;
        for r in results {
            match r {
                Ok(InsertOutcome::Inserted) => outcome.inserted += 1,
                Ok(InsertOutcome::AlreadyExists) => outcome.already_existed += 1,
                Err(e) if e.kind() == ErrorKind::Conflict => conflict = conflict.or(Some(e)),
                Err(e) => return Err(e),
            }
        }
        match conflict {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }

    /// An empty conditional batch (its statements must share one partition).
    fn conditional_batch(&self) -> Batch {
        let mut b = Batch::new(BatchType::Unlogged);
        b.set_consistency(self.inner.config.consistency);
        b.set_serial_consistency(Some(self.inner.config.serial_consistency));
        b.set_request_timeout(Some(self.inner.config.request_timeout));
        b.set_is_idempotent(false);
        b
    }

    /// The values of `state_write`: `next` over `before` (`None` when no row exists yet).
    #[allow(clippy::too_many_arguments)]
    fn state_write_values(
        conversation: &ConversationId,
        msg_id: MsgId,
        next: &Lifecycle,
        before: &Lifecycle,
        expected_version: Option<u32>,
        new_seqs: Vec<i64>,
        purging: bool,
    ) -> Result<BoxedRow> {
        let expected_version = expected_version.map(version_col).transpose()?;
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
            if purging {
                MaybeUnset::Set(true)
            } else {
                MaybeUnset::Unset
            },
            conversation.as_str().to_string(),
            msg_id.as_i64(),
            expected_version,
            None::<bool>,
        )))
    }

    async fn run_batch(&self, batch: &Batch, values: Vec<BoxedRow>) -> Result<bool> {
        let res = self
            .session()
            .batch(batch, values)
            .await
            .map_err(error::execution)?;
        Ok(rows::lwt(res)?.applied)
    }

    async fn apply_transition(&self, req: &TransitionRequest) -> Result<TransitionOutcome> {
        let policy = self.policy();
        let now = self.now();
        lifecycle::validate_request(req, policy, now)?;
        let conv = &req.conversation_id;
        let mut attempted: Option<TransitionOutcome> = None;
        let mut serial = false;
        let mut record_queued = false;
        for attempt in 0..self.inner.config.max_cas_attempts {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let reads = futures::try_join!(
                self.read_message(conv, req.msg_id, serial),
                self.read_state(conv, req.msg_id, serial),
                self.read_head(conv, serial),
                self.read_request(req, serial),
            );
            let (msg, state, head, record) = match reads {
                Ok(r) => r,
                Err(e) if error::lwt_outcome_unknown(&e) && attempted.is_some() => continue,
                Err(e) => return Err(e),
            };
            // A request id seen before is answered with its first outcome until the purge
            // removes its record (after the retention, unless the conversation is held).
            if let Some(r) = record {
                if let Some(mine) = &attempted {
                    // Our own attempt whose answer a timeout swallowed.
                    if r.at == now
                        && r.version == mine.version
                        && r.status == mine.status
                        && r.changed == mine.changed
                        && r.replay(req).is_ok()
                    {
                        return Ok(mine.clone());
                    }
                }
                return r.replay(req);
            }
            let msg = msg.ok_or_else(|| not_found(req.msg_id))?;
            if state.as_ref().is_some_and(|s| s.purging) {
                return Err(not_found(req.msg_id));
            }
            let current = rows::lifecycle_of(state.as_ref(), msg.created_at);
            let plan = lifecycle::plan(req, &msg.message.sender_id, &current, policy, now)?;
            let outcome = lifecycle::outcome(req.msg_id, &current, &plan);

            let mut batch = self.conditional_batch();
            let mut values: Vec<BoxedRow> = Vec::with_capacity(4);
            let expected_version = state.as_ref().map(|s| s.version);
            // The request record is purged with the retention; a recall or delete makes the
            // message purgeable at the same moment, so one entry serves both.
            let record_due = now.saturating_add(policy.retention());
            if !record_queued {
                self.enqueue_purge(conv, req.msg_id, req.request_id.as_str(), record_due)
                    .await?;
                record_queued = true;
            }
            match &plan {
                Plan::Apply(next) => {
                    if let Some(due) = purge_due(next, policy).filter(|d| *d != record_due) {
                        self.enqueue_purge(conv, req.msg_id, "", due).await?;
                    }
                    let seq = head.unwrap_or(0) + 1;
                    batch.append_statement(self.inner.st.head_claim.clone());
                    values.push(Box::new((seq, conv.as_str().to_string(), head)));
                    batch.append_statement(self.inner.st.state_write.clone());
                    values.push(Self::state_write_values(
                        conv,
                        req.msg_id,
                        next,
                        &current,
                        expected_version,
                        vec![seq],
                        false,
                    )?);
                    batch.append_statement(self.inner.st.event_put.clone());
                    values.push(Box::new((
                        conv.as_str().to_string(),
                        seq,
                        req.msg_id.as_i64(),
                        outcome.status.code() as i8,
                        version_col(outcome.version)?,
                        now.as_millis(),
                        req.requester.as_str().to_string(),
                    )));
                }
                Plan::Unchanged => {
                    // Rewrite the same state under the same condition, so the recorded outcome
                    // is the state at the moment the record commits.
                    batch.append_statement(self.inner.st.state_write.clone());
                    values.push(Self::state_write_values(
                        conv,
                        req.msg_id,
                        &current,
                        &current,
                        expected_version,
                        Vec::new(),
                        false,
                    )?);
                }
            }
            batch.append_statement(self.inner.st.request_put.clone());
            values.push(Box::new((
                req.action.as_str(),
                req.msg_id.as_i64(),
                req.requester.as_str().to_string(),
                outcome.status.code() as i8,
                version_col(outcome.version)?,
                outcome.changed,
                now.as_millis(),
                conv.as_str().to_string(),
                req.request_id.as_str().to_string(),
                None::<i64>,
            )));
            match self.run_batch(&batch, values).await {
                Ok(true) => return Ok(outcome),
                Ok(false) => serial = false,
                Err(e) if error::lwt_outcome_unknown(&e) => {
                    attempted = Some(outcome);
                    serial = true;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            "the transition lost every compare-and-set round; retry later",
        ))
    }

    // ---------------------------------------------------------------- list

    async fn bucket_chunk(
        &self,
        conversation: &ConversationId,
        from: i32,
        direction: Direction,
    ) -> Result<Vec<i32>> {
        let st = match direction {
            Direction::NewestFirst => &self.inner.st.buckets_desc,
            Direction::OldestFirst => &self.inner.st.buckets_asc,
        };
        let res = self
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

    async fn bucket_page(
        &self,
        conversation: &ConversationId,
        bucket: i32,
        bound: i64,
        limit: i32,
        direction: Direction,
    ) -> Result<Vec<(MsgId, MessageRow)>> {
        let st = match direction {
            Direction::NewestFirst => &self.inner.st.msg_page_desc,
            Direction::OldestFirst => &self.inner.st.msg_page_asc,
        };
        let res = self
            .session()
            .execute_unpaged(st, (conversation.as_str(), bucket, bound, limit))
            .await
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
            out.push((id, rows::message(conversation, id, (a, b, c, d, e, f, g))?));
        }
        Ok(out)
    }

    async fn states_between(
        &self,
        conversation: &ConversationId,
        lo: MsgId,
        hi: MsgId,
    ) -> Result<HashMap<i64, StateRow>> {
        let res = self
            .session()
            .execute_unpaged(
                &self.inner.st.state_range,
                (conversation.as_str(), lo.as_i64(), hi.as_i64()),
            )
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
            let (k, a, b, c, d, e, f, g, h, i) =
                row.map_err(|e| error::decode("lifecycle rows", e))?;
            out.insert(k, rows::state((a, b, c, d, e, f, g, h, i))?);
        }
        Ok(out)
    }

    async fn do_list(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page> {
        let policy = self.policy();
        lifecycle::validate_conversation(conversation, policy)?;
        lifecycle::validate_page_size(options.limit, policy)?;
        let now = self.now();
        let limit = options.limit as usize;
        let want = limit + 1;
        let dir = options.direction;
        let (mut from, bound) = match (dir, options.cursor) {
            (Direction::NewestFirst, Some(c)) => (self.bucket_of(c), c.as_i64()),
            (Direction::NewestFirst, None) => (i32::MAX, i64::MAX),
            (Direction::OldestFirst, Some(c)) => (self.bucket_of(c), c.as_i64()),
            (Direction::OldestFirst, None) => (i32::MIN, 0),
        };
        // Walk only the non-empty buckets, a few at a time, until the page (plus one) is full.
        let mut found: Vec<(MsgId, MessageRow)> = Vec::new();
        'walk: loop {
            let chunk = self.bucket_chunk(conversation, from, dir).await?;
            for &b in &chunk {
                let need = i32::try_from(want - found.len()).unwrap_or(i32::MAX);
                found.extend(self.bucket_page(conversation, b, bound, need, dir).await?);
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
        let more = found.len() > limit;
        found.truncate(limit);
        let states = match (
            found.iter().map(|(id, _)| *id).min(),
            found.iter().map(|(id, _)| *id).max(),
        ) {
            (Some(lo), Some(hi)) => self.states_between(conversation, lo, hi).await?,
            _ => HashMap::new(),
        };
        let mut items = Vec::with_capacity(found.len());
        for (id, row) in found {
            let state = states.get(&id.as_i64());
            if state.is_some_and(|s| s.purging) {
                continue;
            }
            let stored = StoredMessage {
                lifecycle: rows::lifecycle_of(state, row.created_at),
                message: row.message,
            };
            items.push(self.view(stored, viewer, now)?);
        }
        Ok(Page::new(items, more))
    }

    // ---------------------------------------------------------------- feed

    async fn do_changes(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        let policy = self.policy();
        lifecycle::validate_conversation(conversation, policy)?;
        lifecycle::validate_page_size(limit, policy)?;
        let after = i64::try_from(cursor.0).unwrap_or(i64::MAX);
        let res = self
            .session()
            .execute_unpaged(
                &self.inner.st.events_after,
                (
                    conversation.as_str(),
                    after,
                    i32::try_from(limit).unwrap_or(i32::MAX),
                ),
            )
            .await
            .map_err(error::execution)?
            .into_rows_result()
            .map_err(|e| error::decode("change events", e))?;
        let events = res
            .rows::<EventCols>()
            .map_err(|e| error::decode("change events", e))?
            .map(|r| {
                r.map_err(|e| error::decode("change events", e))
                    .and_then(|cols| rows::event(conversation, cols))
            })
            .collect::<Result<Vec<ChangeEvent>>>()?;
        let next = events.last().map(|e| FeedCursor(e.seq)).unwrap_or(cursor);
        Ok(ChangePage { events, next })
    }

    // ---------------------------------------------------------------- purge

    async fn do_purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        if options.batch_size == 0 || options.batch_size > 10_000 {
            return Err(Error::invalid_input(
                "batch_size",
                "must be between 1 and 10000",
            ));
        }
        let now = self.now();
        let today = day_of(now.as_millis());
        let budget = u64::from(options.batch_size);
        let mut report = PurgeReport::default();
        let mut holds: HashMap<ConversationId, bool> = HashMap::new();
        let mut touched: HashSet<(ConversationId, i32)> = HashSet::new();
        let mut after_day = i32::MIN;
        'days: loop {
            let res = self
                .session()
                .execute_unpaged(&self.inner.st.days_list, (after_day, today, 32i32))
                .await
                .map_err(error::execution)?
                .into_rows_result()
                .map_err(|e| error::decode("purge days", e))?;
            let days = res
                .rows::<(i32,)>()
                .map_err(|e| error::decode("purge days", e))?
                .map(|r| r.map(|(d,)| d))
                .collect::<std::result::Result<Vec<i32>, _>>()
                .map_err(|e| error::decode("purge days", e))?;
            if days.is_empty() {
                break;
            }
            for day in days {
                after_day = day;
                let mut paging = PagingState::start();
                loop {
                    let mut st: PreparedStatement = self.inner.st.queue_due.clone();
                    st.set_page_size(QUEUE_PAGE);
                    let (res, next) = self
                        .session()
                        .execute_single_page(&st, (day, now.as_millis()), paging)
                        .await
                        .map_err(error::execution)?;
                    let res = res
                        .into_rows_result()
                        .map_err(|e| error::decode("purge queue", e))?;
                    let entries = res
                        .rows::<(i64, String, i64, String)>()
                        .map_err(|e| error::decode("purge queue", e))?
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(|e| error::decode("purge queue", e))?;
                    for (due, conv, msg_id, request_id) in entries {
                        let conv =
                            ConversationId::new(conv).map_err(|_| error::corrupt("purge entry"))?;
                        let msg_id =
                            MsgId::from_i64(msg_id).map_err(|_| error::corrupt("purge entry"))?;
                        let held = match holds.get(&conv) {
                            Some(h) => *h,
                            None => {
                                let h = self.legal_hold(&conv).await?;
                                holds.insert(conv.clone(), h);
                                h
                            }
                        };
                        if held {
                            // Kept in the queue: purged once the hold is released.
                            continue;
                        }
                        let entry = QueueEntry {
                            day,
                            due,
                            conv,
                            msg_id,
                            request_id,
                        };
                        self.purge_entry(&entry, now, &mut report, &mut touched)
                            .await?;
                        if report.messages >= budget {
                            break 'days;
                        }
                    }
                    match next.into_paging_control_flow() {
                        ControlFlow::Continue(ps) => paging = ps,
                        ControlFlow::Break(()) => break,
                    }
                }
                // A past day whose queue is empty is forgotten (no entry can land in the past).
                if day < today - 1 && self.queue_empty(day).await? {
                    self.session()
                        .execute_unpaged(&self.inner.st.days_remove, (day,))
                        .await
                        .map_err(error::execution)?;
                }
            }
        }
        for (conv, bucket) in touched {
            self.drop_bucket_if_empty(&conv, bucket).await?;
        }
        report.more = report.messages >= budget;
        Ok(report)
    }

    async fn queue_empty(&self, day: i32) -> Result<bool> {
        let res = self
            .session()
            .execute_unpaged(&self.inner.st.queue_any, (day,))
            .await
            .map_err(error::execution)?
            .into_rows_result()
            .map_err(|e| error::decode("purge queue", e))?;
        Ok(res.rows_num() == 0)
    }

    async fn bucket_empty(&self, conv: &ConversationId, bucket: i32) -> Result<bool> {
        let res = self
            .session()
            .execute_unpaged(&self.inner.st.msg_any, (conv.as_str(), bucket))
            .await
            .map_err(error::execution)?
            .into_rows_result()
            .map_err(|e| error::decode("bucket", e))?;
        Ok(res.rows_num() == 0)
    }

    /// Unlists a bucket the purge emptied, so page walks stop reading its tombstones; re-lists
    /// it if a message landed in the meantime.
    async fn drop_bucket_if_empty(&self, conv: &ConversationId, bucket: i32) -> Result<()> {
        if !self.bucket_empty(conv, bucket).await? {
            return Ok(());
        }
        self.session()
            .execute_unpaged(&self.inner.st.bucket_remove, (conv.as_str(), bucket))
            .await
            .map_err(error::execution)?;
        if !self.bucket_empty(conv, bucket).await? {
            self.add_bucket(conv, bucket).await?;
        }
        Ok(())
    }

    async fn remove_entry(&self, e: &QueueEntry) -> Result<()> {
        self.session()
            .execute_unpaged(
                &self.inner.st.queue_remove,
                (
                    e.day,
                    e.due,
                    e.conv.as_str(),
                    e.msg_id.as_i64(),
                    e.request_id.as_str(),
                ),
            )
            .await
            .map_err(error::execution)?;
        Ok(())
    }

    /// Purges one queue entry: its request record if it names one (only if older than the
    /// retention), then the message if it is (still) purgeable: (1) mark its lifecycle `purging`
    /// under its version, (2) delete the message `IF EXISTS`, (3) delete its lifecycle and events
    /// in one conditional batch, (4) drop the queue entry. Steps 2 and 3 decide what is counted,
    /// so two purgers never count the same message or event; a crash resumes from the mark.
    async fn purge_entry(
        &self,
        entry: &QueueEntry,
        now: Timestamp,
        report: &mut PurgeReport,
        touched: &mut HashSet<(ConversationId, i32)>,
    ) -> Result<()> {
        let policy = self.policy();
        let (conv, msg_id, due) = (&entry.conv, entry.msg_id, entry.due);
        if !entry.request_id.is_empty() {
            let (retention_cutoff, _) = lifecycle::purge_cutoffs(policy, now);
            self.session()
                .execute_unpaged(
                    &self.inner.st.request_expire,
                    (
                        conv.as_str(),
                        entry.request_id.as_str(),
                        retention_cutoff.as_millis(),
                    ),
                )
                .await
                .map_err(error::execution)?;
        }
        let (msg, state) = futures::try_join!(
            self.read_message(conv, msg_id, false),
            self.read_state(conv, msg_id, false)
        )?;
        let resuming = state.as_ref().is_some_and(|s| s.purging);
        if !resuming {
            let Some(m) = &msg else {
                // Gone already (or never written: an insert that failed after queueing).
                return self.remove_entry(entry).await;
            };
            let lc = rows::lifecycle_of(state.as_ref(), m.created_at);
            if !lifecycle::purgeable(&lc, policy, now) {
                match purge_due(&lc, policy) {
                    None => self.remove_entry(entry).await?,
                    Some(d) if d.as_millis() != due || !entry.request_id.is_empty() => {
                        self.enqueue_purge(conv, msg_id, "", d).await?;
                        self.remove_entry(entry).await?;
                    }
                    Some(_) => {}
                }
                return Ok(());
            }
            let mut mark = self.conditional_batch();
            mark.append_statement(self.inner.st.state_mark.clone());
            let values = vec![Self::state_write_values(
                conv,
                msg_id,
                &lc,
                &lc,
                state.as_ref().map(|s| s.version),
                Vec::new(),
                true,
            )?];
            if !self.run_batch(&mark, values).await? {
                // A transition or another purger got there first, or a legal hold was just
                // placed (the mark is conditional on it): the next call looks again.
                return Ok(());
            }
        }
        if let Some(m) = &msg {
            let bucket = self.bucket_of(msg_id);
            let res = self
                .session()
                .execute_unpaged(
                    &self.inner.st.msg_delete,
                    (conv.as_str(), bucket, msg_id.as_i64()),
                )
                .await
                .map_err(error::execution)?;
            if rows::lwt(res)?.applied {
                report.messages += 1;
                if let Some(a) = &m.message.attachment {
                    report.released_attachments.push(a.key.clone());
                }
                touched.insert((conv.clone(), bucket));
            }
        }
        let seqs = state.map(|s| s.event_seqs).unwrap_or_default();
        let mut cleanup = self.conditional_batch();
        let mut values: Vec<BoxedRow> = Vec::with_capacity(seqs.len() + 1);
        cleanup.append_statement(self.inner.st.state_delete.clone());
        values.push(Box::new((conv.as_str().to_string(), msg_id.as_i64())));
        for seq in &seqs {
            cleanup.append_statement(self.inner.st.event_delete.clone());
            values.push(Box::new((conv.as_str().to_string(), *seq)));
        }
        if self.run_batch(&cleanup, values).await? {
            report.events += seqs.len() as u64;
        }
        self.remove_entry(entry).await
    }
}

async fn connect_session(config: &ScyllaConfig) -> Result<Session> {
    config.validate()?;
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .serial_consistency(Some(config.serial_consistency))
        .request_timeout(Some(config.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .default_execution_profile_handle(profile.into_handle());
    builder = if config.fetch_schema_metadata {
        builder.keyspaces_to_fetch([config.keyspace.clone()])
    } else {
        builder.fetch_schema_metadata(false)
    };
    builder.build().await.map_err(error::new_session)
}

/// Opens a session the way [`ScyllaStore::connect`] does, for callers that share it between
/// several stores (one session per application).
pub async fn session_for(config: &ScyllaConfig) -> Result<Session> {
    connect_session(config)
        .await
        .map_err(tag(Operation::Connect))
}

#[async_trait]
impl MessageStore for ScyllaStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        let span = op_span(
            Operation::Insert,
            BACKEND,
            Some(&message.conversation_id),
            Some(message.msg_id),
        );
        async {
            let policy = self.policy();
            lifecycle::validate_message(&message, policy)?;
            let encoded = self.inner.settings.codec.encode(
                &message.conversation_id,
                message.msg_id,
                &message.content,
            )?;
            let now = self.now();
            // The bucket is indexed (and the purge queued) before the message exists, so a
            // crash in between leaves an empty bucket or a stale entry, never a lost message.
            self.add_bucket(&message.conversation_id, self.bucket_of(message.msg_id))
                .await?;
            if let Some(h) = policy.history_limit() {
                self.enqueue_purge(
                    &message.conversation_id,
                    message.msg_id,
                    "",
                    now.saturating_add(h),
                )
                .await?;
            }
            self.insert_one(&message, &encoded, now, rand::random::<i64>())
                .await
        }
        .instrument(span)
        .await
        .map_err(tag(Operation::Insert))
    }

    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        let span = op_span(
            Operation::Insert,
            BACKEND,
            messages.first().map(|m| &m.conversation_id),
            None,
        );
        self.do_insert_batch(messages)
            .instrument(span)
            .await
            .map_err(tag(Operation::Insert))
    }

    async fn get(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<MessageView> {
        let span = op_span(Operation::Get, BACKEND, Some(conversation), Some(msg_id));
        async {
            let now = self.now();
            let stored = self.load(conversation, msg_id).await?;
            self.view(stored, viewer, now)
        }
        .instrument(span)
        .await
        .map_err(tag(Operation::Get))
    }

    async fn list(
        &self,
        conversation: &ConversationId,
        viewer: &UserId,
        options: ListOptions,
    ) -> Result<Page> {
        let span = op_span(Operation::List, BACKEND, Some(conversation), None);
        self.do_list(conversation, viewer, options)
            .instrument(span)
            .await
            .map_err(tag(Operation::List))
    }

    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
        let op = request.action.operation();
        let span = op_span(
            op,
            BACKEND,
            Some(&request.conversation_id),
            Some(request.msg_id),
        );
        self.apply_transition(&request)
            .instrument(span)
            .await
            .map_err(tag(op))
    }

    async fn audit(&self, conversation: &ConversationId, msg_id: MsgId) -> Result<AuditRecord> {
        let span = op_span(Operation::Audit, BACKEND, Some(conversation), Some(msg_id));
        async {
            let stored = self.load(conversation, msg_id).await?;
            Ok(AuditRecord {
                message: self.decoded(stored, true)?,
            })
        }
        .instrument(span)
        .await
        .map_err(tag(Operation::Audit))
    }

    async fn attachment_access(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
        viewer: &UserId,
    ) -> Result<AttachmentAccess> {
        let span = op_span(
            Operation::AttachmentAccess,
            BACKEND,
            Some(conversation),
            Some(msg_id),
        );
        async {
            let now = self.now();
            let stored = self.load(conversation, msg_id).await?;
            Ok(view::attachment_access(&stored, viewer, self.policy(), now))
        }
        .instrument(span)
        .await
        .map_err(tag(Operation::AttachmentAccess))
    }

    async fn changes_since(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        let span = op_span(Operation::Changes, BACKEND, Some(conversation), None);
        self.do_changes(conversation, cursor, limit)
            .instrument(span)
            .await
            .map_err(tag(Operation::Changes))
    }

    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        let span = op_span(Operation::Purge, BACKEND, None, None);
        self.do_purge(options)
            .instrument(span)
            .await
            .map_err(tag(Operation::Purge))
    }

    async fn set_legal_hold(&self, conversation: &ConversationId, held: bool) -> Result<()> {
        let span = op_span(Operation::LegalHold, BACKEND, Some(conversation), None);
        async {
            lifecycle::validate_conversation(conversation, self.policy())?;
            self.session()
                .execute_unpaged(&self.inner.st.hold_set, (held, conversation.as_str()))
                .await
                .map_err(error::execution)?;
            Ok(())
        }
        .instrument(span)
        .await
        .map_err(tag(Operation::LegalHold))
    }
}
