//! `PostgresStore`: the lifecycle contract on PostgreSQL, one atomic statement per transition.
//!
//! The recall path (any transition) is [`PostgresStore::try_transition`]: one read returns the
//! request record and the lifecycle, `lifecycle::plan` decides, and one statement does the
//! compare-and-set on the version read, takes the conversation's next feed seq, appends the event
//! and inserts the request record: two round trips, one commit.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use imstore_core::lifecycle::{self, Plan, RequestRecord};
use imstore_core::telemetry::traced;
use imstore_core::{
    Action, Attachment, AttachmentAccess, AuditRecord, BatchOutcome, ChangeEvent, ChangePage,
    ConversationId, Direction, Error, ErrorKind, FeedCursor, InsertOutcome, Lifecycle, ListOptions,
    MessageStore, MessageType, MessageView, MsgId, NewMessage, Operation, Page, PurgeOptions,
    PurgeReport, Result, Status, StoreSettings, StoredMessage, Timestamp, TransitionOutcome,
    TransitionRequest, UserId, view,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};

use crate::config::PostgresConfig;
use crate::error::{BACKEND, corrupt, is_retryable, is_unique_violation_on, map};

/// The embedded schema migrations (`backends/postgres/migrations`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How many times one call re-runs its transaction after losing a race or a deadlock before
/// giving up with `Unavailable`. Each lost race means another writer made progress.
const MAX_ATTEMPTS: u32 = 200;

/// The advisory lock key that orders purge batches (shared) against placing a legal hold
/// (exclusive). Database-wide, so stores in other schemas of the same database share it: a hold
/// there waits for a purge batch here, which is coarse but brief and never wrong.
const LEGAL_HOLD_LOCK: i64 = 0x696d_7374_6f72_6501; // "imstore" + 1

/// The columns every message read decodes, in [`decode_message`]'s order.
macro_rules! message_columns {
    () => {
        "msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, \
         status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by"
    };
}

/// A [`MessageStore`] on PostgreSQL: every transition commits atomically with its change event and
/// request record; reads and pages cost the same whatever the conversation's length.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    settings: StoreSettings,
}

/// Why one attempt at a transaction stopped: a driver error (maybe retryable) or a contract error.
enum Fail {
    Db(sqlx::Error),
    Rule(Error),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Db(e)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Rule(e)
    }
}

fn not_found(msg_id: MsgId) -> Error {
    Error::new(ErrorKind::NotFound, format!("message {msg_id} not found"))
}

/// A short, growing pause before re-running a transaction that deadlocked or failed to serialize.
async fn backoff(attempt: u32) {
    let ms = u64::from(attempt.min(10)) * 2;
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn gave_up(attempts: u32) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("gave up after {attempts} attempts lost to concurrent writers"),
    )
}

fn column<'r, T>(row: &'r PgRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(name).map_err(map)
}

fn user_column(row: &PgRow, name: &str) -> Result<UserId> {
    UserId::new(column::<String>(row, name)?)
        .map_err(|_| corrupt(format!("stored {name} is not a valid user id")))
}

fn opt_user_column(row: &PgRow, name: &str) -> Result<Option<UserId>> {
    column::<Option<String>>(row, name)?
        .map(|s| {
            UserId::new(s).map_err(|_| corrupt(format!("stored {name} is not a valid user id")))
        })
        .transpose()
}

fn msg_id_column(row: &PgRow, name: &str) -> Result<MsgId> {
    MsgId::from_i64(column(row, name)?)
        .map_err(|_| corrupt(format!("stored {name} is not positive")))
}

fn version_column(row: &PgRow, name: &str) -> Result<u32> {
    u32::try_from(column::<i64>(row, name)?)
        .map_err(|_| corrupt(format!("stored {name} is out of range")))
}

fn opt_time(row: &PgRow, name: &str) -> Result<Option<Timestamp>> {
    Ok(column::<Option<i64>>(row, name)?.map(Timestamp::from_millis))
}

/// The lifecycle columns of a row (see `message_columns!`).
fn decode_lifecycle(row: &PgRow) -> Result<Lifecycle> {
    Ok(Lifecycle {
        status: Status::from_code(column(row, "status")?)?,
        version: version_column(row, "version")?,
        created_at: Timestamp::from_millis(column(row, "created_at")?),
        recalled_at: opt_time(row, "recalled_at")?,
        recalled_by: opt_user_column(row, "recalled_by")?,
        restored_at: opt_time(row, "restored_at")?,
        deleted_at: opt_time(row, "deleted_at")?,
        deleted_by: opt_user_column(row, "deleted_by")?,
    })
}

/// A message row as stored (content still encoded) in conversation `conversation`.
fn decode_message(conversation: &ConversationId, row: &PgRow) -> Result<StoredMessage> {
    let attachment = match column::<Option<String>>(row, "attachment_key")? {
        None => None,
        Some(key) => {
            let size = column::<Option<i64>>(row, "attachment_size")?
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| corrupt("stored attachment has no valid size"))?;
            let mime = column::<Option<String>>(row, "attachment_mime")?
                .ok_or_else(|| corrupt("stored attachment has no mime type"))?;
            Some(Attachment { key, size, mime })
        }
    };
    Ok(StoredMessage {
        message: NewMessage {
            msg_id: msg_id_column(row, "msg_id")?,
            conversation_id: conversation.clone(),
            sender_id: user_column(row, "sender_id")?,
            msg_type: MessageType::from_code(column(row, "msg_type")?)?,
            content: column(row, "content")?,
            attachment,
        },
        lifecycle: decode_lifecycle(row)?,
    })
}

fn decode_record(req: &TransitionRequest, row: &PgRow, prefix: &str) -> Result<RequestRecord> {
    let name = |c: &str| format!("{prefix}{c}");
    Ok(RequestRecord {
        conversation_id: req.conversation_id.clone(),
        request_id: req.request_id.clone(),
        action: Action::parse(&column::<String>(row, &name("action"))?)?,
        msg_id: msg_id_column(row, &name("msg_id"))?,
        requester: user_column(row, &name("requester"))?,
        status: Status::from_code(column(row, &name("status"))?)?,
        version: version_column(row, &name("version"))?,
        changed: column(row, &name("changed"))?,
        at: Timestamp::from_millis(column(row, &name("at"))?),
    })
}

fn decode_event(conversation: &ConversationId, row: &PgRow) -> Result<ChangeEvent> {
    Ok(ChangeEvent {
        seq: u64::try_from(column::<i64>(row, "seq")?)
            .map_err(|_| corrupt("stored seq is negative"))?,
        conversation_id: conversation.clone(),
        msg_id: msg_id_column(row, "msg_id")?,
        status: Status::from_code(column(row, "status")?)?,
        version: version_column(row, "version")?,
        at: Timestamp::from_millis(column(row, "at")?),
        by: user_column(row, "by_user")?,
    })
}

impl PostgresStore {
    /// Connects a pool as `config` says (with `search_path` set to its schema, if any), and
    /// applies pending migrations when `config.migrate_on_connect()`.
    pub async fn connect(config: PostgresConfig, settings: StoreSettings) -> Result<Self> {
        traced(Operation::Connect, BACKEND, None, None, async {
            config.validate()?;
            let mut options: PgConnectOptions = config
                .url()
                .parse()
                .map_err(|_| Error::invalid_input("url", "is not a valid PostgreSQL URL"))?;
            if let Some(schema) = config.schema() {
                options = options.options([("search_path", schema)]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections())
                .acquire_timeout(config.acquire_timeout())
                .connect_with(options)
                .await
                .map_err(map)?;
            let store = PostgresStore::with_pool(pool, settings);
            if config.migrate_on_connect() {
                store.migrate().await?;
            }
            Ok(store)
        })
        .await
    }

    /// A store over an existing pool, whose connections must already resolve the schema's
    /// tables (via `search_path`). Does not migrate.
    pub fn with_pool(pool: PgPool, settings: StoreSettings) -> Self {
        PostgresStore { pool, settings }
    }

    /// Applies the embedded migrations not yet applied in the connection's schema; idempotent,
    /// and safe to run from several processes at once (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| match e {
                sqlx::migrate::MigrateError::Execute(inner) => map(inner),
                other => Error::new(ErrorKind::Backend, "migration failed")
                    .with_source(other)
                    .with_backend(BACKEND),
            })
            .map_err(|e| e.with_operation(Operation::Connect))
    }

    /// Another store over the same pool with other settings (a new codec after key rotation, say).
    pub fn reconfigured(&self, settings: StoreSettings) -> Self {
        PostgresStore {
            pool: self.pool.clone(),
            settings,
        }
    }

    /// The connection pool, for tooling (re-key jobs, inspection); the store owns no other state.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The settings the store was built with.
    pub fn settings(&self) -> &StoreSettings {
        &self.settings
    }

    fn now(&self) -> Timestamp {
        self.settings.clock.now()
    }

    /// The message with its content decoded.
    fn decode_content(&self, mut stored: StoredMessage) -> Result<StoredMessage> {
        let m = &stored.message;
        stored.message.content =
            self.settings
                .codec
                .decode(&m.conversation_id, m.msg_id, &m.content)?;
        Ok(stored)
    }

    /// How `viewer` sees `stored` (content still encoded): decoded only when it is shown.
    fn view(&self, stored: StoredMessage, viewer: &UserId, now: Timestamp) -> Result<MessageView> {
        let s = &self.settings;
        view::render_encoded(stored, viewer, &s.policy, &s.codec, now)
    }

    async fn fetch_message(
        &self,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Result<StoredMessage> {
        let row = sqlx::query(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = $1 AND msg_id = $2"
        ))
        .bind(conversation.as_str())
        .bind(msg_id.as_i64())
        .fetch_optional(&self.pool)
        .await
        .map_err(map)?
        .ok_or_else(|| not_found(msg_id))?;
        decode_message(conversation, &row)
    }

    /// Stores validated messages (content already encoded, in `encoded`) with one UNNEST insert
    /// per round, and says for each what happened: inserted, already there, or a conflict.
    ///
    /// Rows the insert did not return were there already: they are read back and compared
    /// decoded (ciphertexts differ per nonce). A row that vanished in between (purged) is
    /// inserted again in the next round.
    async fn store_messages(
        &self,
        messages: &[NewMessage],
        encoded: &[Vec<u8>],
        now: Timestamp,
    ) -> Result<Vec<Result<InsertOutcome>>> {
        let mut results: Vec<Option<Result<InsertOutcome>>> =
            messages.iter().map(|_| None).collect();
        // Rows are inserted in key order, so two overlapping batches lock keys in the same order.
        let mut pending: Vec<usize> = (0..messages.len()).collect();
        pending.sort_by(|&a, &b| {
            let (x, y) = (&messages[a], &messages[b]);
            (x.conversation_id.as_str(), x.msg_id).cmp(&(y.conversation_id.as_str(), y.msg_id))
        });
        let mut attempt = 0;
        while !pending.is_empty() {
            attempt += 1;
            if attempt > MAX_ATTEMPTS {
                return Err(gave_up(MAX_ATTEMPTS));
            }
            let inserted = match self.insert_rows(messages, encoded, &pending, now).await {
                Ok(rows) => rows,
                Err(e) if is_retryable(&e) => {
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(map(e)),
            };
            let mut unclaimed: HashMap<(String, i64), usize> = HashMap::new();
            for key in inserted {
                *unclaimed.entry(key).or_default() += 1;
            }
            let mut existing = Vec::new();
            for &i in &pending {
                let m = &messages[i];
                let key = (m.conversation_id.as_str().to_owned(), m.msg_id.as_i64());
                match unclaimed.get_mut(&key) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        results[i] = Some(Ok(InsertOutcome::Inserted));
                    }
                    _ => existing.push(i),
                }
            }
            pending = self
                .compare_existing(messages, &existing, &mut results)
                .await?;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::new(ErrorKind::Backend, "message left unresolved")))
            })
            .collect())
    }

    /// One round trip: inserts the `pending` messages, returning the keys actually inserted.
    async fn insert_rows(
        &self,
        messages: &[NewMessage],
        encoded: &[Vec<u8>],
        pending: &[usize],
        now: Timestamp,
    ) -> std::result::Result<Vec<(String, i64)>, sqlx::Error> {
        let pick = || pending.iter().map(|&i| &messages[i]);
        let conversations: Vec<&str> = pick().map(|m| m.conversation_id.as_str()).collect();
        let ids: Vec<i64> = pick().map(|m| m.msg_id.as_i64()).collect();
        let senders: Vec<&str> = pick().map(|m| m.sender_id.as_str()).collect();
        let types: Vec<i32> = pick().map(|m| m.msg_type.code()).collect();
        let contents: Vec<&[u8]> = pending.iter().map(|&i| encoded[i].as_slice()).collect();
        let keys: Vec<Option<&str>> = pick()
            .map(|m| m.attachment.as_ref().map(|a| a.key.as_str()))
            .collect();
        // validate_message guarantees sizes fit in i64.
        let sizes: Vec<Option<i64>> = pick()
            .map(|m| m.attachment.as_ref().map(|a| a.size as i64))
            .collect();
        let mimes: Vec<Option<&str>> = pick()
            .map(|m| m.attachment.as_ref().map(|a| a.mime.as_str()))
            .collect();
        let rows = sqlx::query(
            "INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, \
                 attachment_key, attachment_size, attachment_mime, created_at) \
             SELECT u.*, $9::int8 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int4[], \
                 $5::bytea[], $6::text[], $7::int8[], $8::text[]) AS u \
             ON CONFLICT (conversation_id, msg_id) DO NOTHING \
             RETURNING conversation_id, msg_id",
        )
        .bind(conversations)
        .bind(ids)
        .bind(senders)
        .bind(types)
        .bind(contents)
        .bind(keys)
        .bind(sizes)
        .bind(mimes)
        .bind(now.as_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Compares the messages at `indices` with what is stored under their keys; returns the
    /// indices whose row has disappeared (to be inserted again).
    async fn compare_existing(
        &self,
        messages: &[NewMessage],
        indices: &[usize],
        results: &mut [Option<Result<InsertOutcome>>],
    ) -> Result<Vec<usize>> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let conversations: Vec<&str> = indices
            .iter()
            .map(|&i| messages[i].conversation_id.as_str())
            .collect();
        let ids: Vec<i64> = indices
            .iter()
            .map(|&i| messages[i].msg_id.as_i64())
            .collect();
        let rows = sqlx::query(concat!(
            "SELECT m.conversation_id, ",
            message_columns!(),
            " FROM messages m \
             JOIN UNNEST($1::text[], $2::int8[]) AS k(conv, id) \
               ON m.conversation_id = k.conv AND m.msg_id = k.id"
        ))
        .bind(conversations)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(map)?;
        let mut stored: HashMap<(String, i64), StoredMessage> = HashMap::new();
        for row in &rows {
            let conv = ConversationId::new(column::<String>(row, "conversation_id")?)
                .map_err(|_| corrupt("stored conversation_id is not a valid id"))?;
            let s = decode_message(&conv, row)?;
            stored.insert((conv.as_str().to_owned(), s.message.msg_id.as_i64()), s);
        }
        let mut missing = Vec::new();
        for &i in indices {
            let m = &messages[i];
            let key = (m.conversation_id.as_str().to_owned(), m.msg_id.as_i64());
            let Some(s) = stored.get(&key) else {
                missing.push(i);
                continue;
            };
            let decoded = self.decode_content(s.clone())?;
            results[i] = Some(if decoded.message.same_as(m) {
                Ok(InsertOutcome::AlreadyExists)
            } else {
                Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "msg_id {} is already stored with different fields",
                        m.msg_id
                    ),
                ))
            });
        }
        Ok(missing)
    }

    /// One attempt at a transition in at most two round trips, each one autocommitted statement.
    ///
    /// 1. One read returns the request record (if this request id was seen) and the lifecycle.
    /// 2. Core decides (`lifecycle::plan`). `Apply`: one statement does the version
    ///    compare-and-set, takes the conversation's next feed seq, appends the event and inserts
    ///    the request record; being one statement, it all commits or none of it does.
    ///    `Unchanged`: one insert of the request record.
    ///
    /// `Ok(None)` means a race was lost and the caller runs this again from the top: the CAS
    /// matched no row (a concurrent writer committed first), or a duplicate of this request
    /// committed its record first (the next attempt replays that record).
    async fn try_transition(
        &self,
        req: &TransitionRequest,
        now: Timestamp,
    ) -> std::result::Result<Option<TransitionOutcome>, Fail> {
        let conv = req.conversation_id.as_str();
        let msg_id = req.msg_id.as_i64();

        // 1. The request record, if any (its columns prefixed `r_`), and the lifecycle as
        //    committed now, from one snapshot.
        let row = sqlx::query(
            "SELECT r.request_id IS NOT NULL AS seen, r.action AS r_action, \
                 r.msg_id AS r_msg_id, r.requester AS r_requester, r.status AS r_status, \
                 r.version AS r_version, r.changed AS r_changed, r.at AS r_at, \
                 m.msg_id IS NOT NULL AS found, m.sender_id, m.status, m.version, m.created_at, \
                 m.recalled_at, m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN requests r ON r.conversation_id = $1 AND r.request_id = $3 \
             LEFT JOIN messages m ON m.conversation_id = $1 AND m.msg_id = $2",
        )
        .bind(conv)
        .bind(msg_id)
        .bind(req.request_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        // A request id seen before is answered with its first outcome.
        if column::<bool>(&row, "seen")? {
            return Ok(Some(decode_record(req, &row, "r_")?.replay(req)?));
        }
        if !column::<bool>(&row, "found")? {
            return Err(not_found(req.msg_id).into());
        }
        let sender = user_column(&row, "sender_id")?;
        let state = decode_lifecycle(&row)?;
        let plan = lifecycle::plan(req, &sender, &state, &self.settings.policy, now)?;
        let outcome = lifecycle::outcome(req.msg_id, &state, &plan);

        let Plan::Apply(next) = &plan else {
            // 2b. Nothing changes; the request record keeps the answer. If a duplicate of this
            //     request recorded first, ours is not inserted: run again and replay the winner's.
            let recorded = sqlx::query(
                "INSERT INTO requests (conversation_id, request_id, action, msg_id, requester, \
                     status, version, changed, at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (conversation_id, request_id) DO NOTHING",
            )
            .bind(conv)
            .bind(req.request_id.as_str())
            .bind(req.action.as_str())
            .bind(msg_id)
            .bind(req.requester.as_str())
            .bind(outcome.status.code())
            .bind(i64::from(outcome.version))
            .bind(outcome.changed)
            .bind(now.as_millis())
            .execute(&self.pool)
            .await?;
            return Ok((recorded.rows_affected() == 1).then_some(outcome));
        };

        // 2a. One statement, so one atomic commit:
        //   * `cas`: compare-and-set on the version read. A concurrent writer holding the row
        //     makes it wait; once that commits, the WHERE is re-checked on the new row version
        //     and matches nothing: every later step then reads no row and writes nothing.
        //   * `seq`: the conversation's next feed seq. The upsert locks the conversation row
        //     until commit, so the next writer's seq is handed out only after this event is
        //     visible: seq order is commit order.
        //   * `event`: the change event under that seq.
        //   * `record`: the request record. No ON CONFLICT: a duplicate of this request that
        //     recorded first makes the whole statement fail with a unique violation on
        //     `requests`, undoing the CAS and the event; the next attempt replays the winner.
        let applied = sqlx::query(
            "WITH cas AS ( \
                 UPDATE messages SET status = $3, version = $4, recalled_at = $5, \
                     recalled_by = $6, restored_at = $7, deleted_at = $8, deleted_by = $9 \
                 WHERE conversation_id = $1 AND msg_id = $2 AND version = $10 \
                 RETURNING 1), \
             seq AS ( \
                 INSERT INTO conversations (conversation_id, feed_seq) SELECT $1, 1 FROM cas \
                 ON CONFLICT (conversation_id) \
                 DO UPDATE SET feed_seq = conversations.feed_seq + 1 \
                 RETURNING feed_seq), \
             event AS ( \
                 INSERT INTO change_events \
                     (conversation_id, seq, msg_id, status, version, at, by_user) \
                 SELECT $1, seq.feed_seq, $2, $3, $4, $11, $12 FROM seq \
                 RETURNING 1), \
             record AS ( \
                 INSERT INTO requests (conversation_id, request_id, action, msg_id, requester, \
                     status, version, changed, at) \
                 SELECT $1, $13, $14, $2, $12, $3, $4, true, $11 FROM cas \
                 RETURNING 1) \
             SELECT (SELECT count(*) FROM cas) + (SELECT count(*) FROM event) \
                 + (SELECT count(*) FROM record) AS writes",
        )
        .bind(conv)
        .bind(msg_id)
        .bind(next.status.code())
        .bind(i64::from(next.version))
        .bind(next.recalled_at.map(Timestamp::as_millis))
        .bind(next.recalled_by.as_ref().map(UserId::as_str))
        .bind(next.restored_at.map(Timestamp::as_millis))
        .bind(next.deleted_at.map(Timestamp::as_millis))
        .bind(next.deleted_by.as_ref().map(UserId::as_str))
        .bind(i64::from(state.version))
        .bind(now.as_millis())
        .bind(req.requester.as_str())
        .bind(req.request_id.as_str())
        .bind(req.action.as_str())
        .fetch_one(&self.pool)
        .await;
        let writes: i64 = match applied {
            Ok(row) => row.try_get("writes")?,
            Err(e) if is_unique_violation_on(&e, "requests") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match writes {
            // Lost the compare-and-set: nothing was written.
            0 => Ok(None),
            3 => Ok(Some(outcome)),
            n => Err(corrupt(format!("a transition wrote {n} of its 3 rows")).into()),
        }
    }

    /// One purge batch in one transaction (see the README for why two workers never collide).
    async fn try_purge(
        &self,
        batch_size: u32,
        retention_cutoff: Timestamp,
        history_cutoff: Option<Timestamp>,
    ) -> std::result::Result<PurgeReport, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Shared with other purge workers, exclusive with a legal hold being placed: a hold
        // either commits before this batch's snapshot (and is seen), or waits for it to end.
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(LEGAL_HOLD_LOCK)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "WITH doomed AS MATERIALIZED ( \
                 SELECT m.conversation_id, m.msg_id FROM messages m \
                 WHERE ((m.status = 1 AND m.recalled_at <= $1) \
                     OR (m.status = 2 AND m.deleted_at <= $1) \
                     OR m.created_at <= $2) \
                   AND NOT EXISTS (SELECT 1 FROM conversations c \
                                   WHERE c.conversation_id = m.conversation_id AND c.legal_hold) \
                 LIMIT $3 \
                 FOR UPDATE OF m SKIP LOCKED), \
             gone AS ( \
                 DELETE FROM messages m USING doomed d \
                 WHERE m.conversation_id = d.conversation_id AND m.msg_id = d.msg_id \
                 RETURNING m.conversation_id, m.msg_id, m.attachment_key), \
             events AS ( \
                 DELETE FROM change_events e USING gone g \
                 WHERE e.conversation_id = g.conversation_id AND e.msg_id = g.msg_id \
                 RETURNING 1) \
             SELECT (SELECT count(*) FROM gone) AS messages, \
                    (SELECT count(*) FROM events) AS events, \
                    (SELECT coalesce(array_agg(attachment_key), '{}') FROM gone \
                     WHERE attachment_key IS NOT NULL) AS released",
        )
        .bind(retention_cutoff.as_millis())
        // No history limit: a cutoff before every possible created_at matches nothing.
        .bind(history_cutoff.map_or(i64::MIN, Timestamp::as_millis))
        .bind(i64::from(batch_size))
        .fetch_one(&mut *tx)
        .await?;
        let messages: i64 = row.try_get("messages")?;
        let events: i64 = row.try_get("events")?;
        let released: Vec<String> = row.try_get("released")?;

        // Request records past retention go too (outside held conversations), bounded per call.
        sqlx::query(
            "WITH old AS MATERIALIZED ( \
                 SELECT r.conversation_id, r.request_id FROM requests r \
                 WHERE r.at <= $1 \
                   AND NOT EXISTS (SELECT 1 FROM conversations c \
                                   WHERE c.conversation_id = r.conversation_id AND c.legal_hold) \
                 LIMIT $2 \
                 FOR UPDATE OF r SKIP LOCKED) \
             DELETE FROM requests r USING old o \
             WHERE r.conversation_id = o.conversation_id AND r.request_id = o.request_id",
        )
        .bind(retention_cutoff.as_millis())
        .bind(i64::from(PurgeOptions::MAX_BATCH))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let messages = u64::try_from(messages).unwrap_or(0);
        Ok(PurgeReport {
            messages,
            events: u64::try_from(events).unwrap_or(0),
            released_attachments: released,
            more: messages == u64::from(batch_size),
        })
    }
}

#[async_trait]
impl MessageStore for PostgresStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        let (conversation, msg_id) = (message.conversation_id.clone(), message.msg_id);
        traced(
            Operation::Insert,
            BACKEND,
            Some(&conversation),
            Some(msg_id),
            async {
                lifecycle::validate_message(&message, &self.settings.policy)?;
                let encoded = self.settings.codec.encode(
                    &message.conversation_id,
                    message.msg_id,
                    &message.content,
                )?;
                let now = self.now();
                let messages = [message];
                self.store_messages(&messages, &[encoded], now)
                    .await?
                    .pop()
                    .unwrap_or_else(|| Err(Error::new(ErrorKind::Backend, "no insert result")))
            },
        )
        .await
    }

    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        traced(
            Operation::Insert,
            BACKEND,
            messages.first().map(|m| &m.conversation_id),
            None,
            async {
                lifecycle::validate_batch(&messages, &self.settings.policy)?;
                let encoded = messages
                    .iter()
                    .map(|m| {
                        self.settings
                            .codec
                            .encode(&m.conversation_id, m.msg_id, &m.content)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let now = self.now();
                BatchOutcome::tally(self.store_messages(&messages, &encoded, now).await?)
            },
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
                let stored = self.fetch_message(conversation, msg_id).await?;
                self.view(stored, viewer, self.now())
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
        traced(Operation::List, BACKEND, Some(conversation), None, async {
            lifecycle::validate_conversation(conversation, &self.settings.policy)?;
            lifecycle::validate_page_size(options.limit, &self.settings.policy)?;
            let now = self.now();
            // One row more than the page says whether there is a next page. Each query is a
            // range scan of the primary key in the page's order: no sort, no offset.
            let fetch = i64::from(options.limit) + 1;
            let query = match (options.direction, options.cursor) {
                (Direction::NewestFirst, None) => sqlx::query(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = $1 \
                     ORDER BY msg_id DESC LIMIT $2"
                ))
                .bind(conversation.as_str())
                .bind(fetch),
                (Direction::NewestFirst, Some(c)) => sqlx::query(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = $1 AND msg_id < $2 \
                     ORDER BY msg_id DESC LIMIT $3"
                ))
                .bind(conversation.as_str())
                .bind(c.as_i64())
                .bind(fetch),
                (Direction::OldestFirst, cursor) => sqlx::query(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE conversation_id = $1 AND msg_id > $2 \
                     ORDER BY msg_id ASC LIMIT $3"
                ))
                .bind(conversation.as_str())
                // Every msg_id is positive, so 0 is before the first.
                .bind(cursor.map_or(0, MsgId::as_i64))
                .bind(fetch),
            };
            let rows = query.fetch_all(&self.pool).await.map_err(map)?;
            let more = rows.len() > options.limit as usize;
            let items = rows
                .iter()
                .take(options.limit as usize)
                .map(|row| self.view(decode_message(conversation, row)?, viewer, now))
                .collect::<Result<Vec<_>>>()?;
            Ok(Page::new(items, more))
        })
        .await
    }

    async fn transition(&self, request: TransitionRequest) -> Result<TransitionOutcome> {
        let op = request.action.operation();
        traced(
            op,
            BACKEND,
            Some(&request.conversation_id),
            Some(request.msg_id),
            async {
                let now = self.now();
                lifecycle::validate_request(&request, &self.settings.policy, now)?;
                for attempt in 1..=MAX_ATTEMPTS {
                    match self.try_transition(&request, now).await {
                        Ok(Some(outcome)) => return Ok(outcome),
                        // Lost the compare-and-set or the request-id race: read again.
                        Ok(None) => {}
                        Err(Fail::Db(e)) if is_retryable(&e) => backoff(attempt).await,
                        Err(Fail::Db(e)) => return Err(map(e)),
                        Err(Fail::Rule(e)) => return Err(e),
                    }
                }
                Err(gave_up(MAX_ATTEMPTS))
            },
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
                let stored = self.fetch_message(conversation, msg_id).await?;
                Ok(AuditRecord {
                    message: self.decode_content(stored)?,
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
                // The decision needs the lifecycle and the attachment, never the content.
                let mut stored = self.fetch_message(conversation, msg_id).await?;
                stored.message.content = Vec::new();
                Ok(view::attachment_access(
                    &stored,
                    viewer,
                    &self.settings.policy,
                    self.now(),
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
            async {
                lifecycle::validate_conversation(conversation, &self.settings.policy)?;
                lifecycle::validate_page_size(limit, &self.settings.policy)?;
                let after = i64::try_from(cursor.0)
                    .map_err(|_| Error::invalid_input("cursor", "is beyond any feed position"))?;
                let rows = sqlx::query(
                    "SELECT seq, msg_id, status, version, at, by_user FROM change_events \
                 WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                )
                .bind(conversation.as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .map_err(map)?;
                let events = rows
                    .iter()
                    .map(|row| decode_event(conversation, row))
                    .collect::<Result<Vec<_>>>()?;
                let next = events.last().map(|e| FeedCursor(e.seq)).unwrap_or(cursor);
                Ok(ChangePage { events, next })
            },
        )
        .await
    }

    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        traced(Operation::Purge, BACKEND, None, None, async {
            lifecycle::validate_purge(&options)?;
            let (retention_cutoff, history_cutoff) =
                lifecycle::purge_cutoffs(&self.settings.policy, self.now());
            for attempt in 1..=MAX_ATTEMPTS {
                match self
                    .try_purge(options.batch_size, retention_cutoff, history_cutoff)
                    .await
                {
                    Ok(report) => return Ok(report),
                    Err(e) if is_retryable(&e) => backoff(attempt).await,
                    Err(e) => return Err(map(e)),
                }
            }
            Err(gave_up(MAX_ATTEMPTS))
        })
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
                let mut tx = self.pool.begin().await.map_err(map)?;
                if held {
                    // Waits for purge batches already running (they may have read the conversation
                    // as not held); batches starting later see the hold once this commits.
                    sqlx::query("SELECT pg_advisory_xact_lock($1)")
                        .bind(LEGAL_HOLD_LOCK)
                        .execute(&mut *tx)
                        .await
                        .map_err(map)?;
                }
                sqlx::query(
                    "INSERT INTO conversations (conversation_id, legal_hold) VALUES ($1, $2) \
                 ON CONFLICT (conversation_id) DO UPDATE SET legal_hold = EXCLUDED.legal_hold",
                )
                .bind(conversation.as_str())
                .bind(held)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
                tx.commit().await.map_err(map)?;
                Ok(())
            },
        )
        .await
    }
}
