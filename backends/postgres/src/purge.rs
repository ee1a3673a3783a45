//! Purge batches and legal holds: bounded batches that concurrent workers split without
//! blocking, ordered against holds by an advisory lock.
//!
//! A batch is one transaction:
//!
//! 1. `pg_advisory_xact_lock_shared(K)`: shared with other purge workers, exclusive with a hold
//!    being placed, so a hold either committed before this batch's reads or waits for it.
//! 2. Lock the candidates: `SELECT ... FOR UPDATE OF m SKIP LOCKED`, filtered in SQL by the
//!    job's cutoffs (the partial indexes serve it) and then by `PurgeJob::purgeable`, the rule
//!    itself, on the rows as locked.
//! 3. One statement deletes the locked messages, every change event of theirs, and request
//!    records past retention.
//!
//! Why no event of a purged message survives, even while transitions race the batch: an event
//! is only ever appended by the statement that compare-and-sets its message row, holding that
//! row's lock until it commits. A row such a statement holds is skipped in step 2; a row locked
//! in step 2 can get no new event until this batch commits, and then the row is gone, so the
//! waiting compare-and-set matches nothing and appends nothing. Step 3 takes its snapshot after
//! step 2 holds the locks, so it sees every event those messages ever got, including one
//! committed after step 2 began (which a single statement's snapshot would miss: that was the
//! leak of a history-limit purge racing deletes).

use imstore_core::backend::PurgeJob;
use imstore_core::{ConversationId, PurgeOptions, PurgeReport, Result, Retry};
use sqlx::postgres::PgPool;

use crate::error::{Failed, map};
use crate::rows::{self, column};

/// The advisory lock key that orders purge batches (shared) against placing a legal hold
/// (exclusive). Database-wide, so stores in other schemas of the same database share it: a hold
/// there waits for a purge batch here, which is coarse but brief and never wrong.
const LEGAL_HOLD_LOCK: i64 = 0x696d_7374_6f72_6501; // "imstore" + 1

/// One purge batch, re-run when the server aborts it to break a deadlock.
pub(crate) async fn purge(pool: &PgPool, job: &PurgeJob<'_>) -> Result<PurgeReport> {
    Retry::default()
        .run(|_| async move {
            match batch(pool, job).await {
                Ok(report) => Ok(Some(report)),
                Err(failed) => failed.retry(),
            }
        })
        .await
}

async fn batch(pool: &PgPool, job: &PurgeJob<'_>) -> std::result::Result<PurgeReport, Failed> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(LEGAL_HOLD_LOCK)
        .execute(&mut *tx)
        .await?;
    // No history limit: a cutoff before every possible created_at matches nothing.
    let history_cutoff = job.history_cutoff().map_or(i64::MIN, |t| t.as_millis());
    let candidates = sqlx::query(
        "SELECT m.conversation_id, m.status, m.version, m.created_at, m.recalled_at, \
             m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by, m.msg_id \
         FROM messages m \
         WHERE ((m.status = 1 AND m.recalled_at <= $1) \
             OR (m.status = 2 AND m.deleted_at <= $1) \
             OR m.created_at <= $2) \
           AND NOT EXISTS (SELECT 1 FROM conversations c \
                           WHERE c.conversation_id = m.conversation_id AND c.legal_hold) \
         LIMIT $3 \
         FOR UPDATE OF m SKIP LOCKED",
    )
    .bind(job.retention_cutoff().as_millis())
    .bind(history_cutoff)
    .bind(i64::from(job.batch_size()))
    .fetch_all(&mut *tx)
    .await?;
    let full = candidates.len() >= job.batch_size() as usize;
    let mut conversations = Vec::with_capacity(candidates.len());
    let mut ids = Vec::with_capacity(candidates.len());
    for row in &candidates {
        // The SQL filter is the index-friendly form of the rule; the rule itself decides.
        if job.purgeable(&rows::lifecycle(row)?) {
            conversations.push(column::<String>(row, "conversation_id")?);
            ids.push(column::<i64>(row, "msg_id")?);
        }
    }
    let row = sqlx::query(
        "WITH gone AS ( \
             DELETE FROM messages m USING UNNEST($1::text[], $2::int8[]) AS d(conv, id) \
             WHERE m.conversation_id = d.conv AND m.msg_id = d.id \
             RETURNING m.conversation_id, m.msg_id, m.attachment_key), \
         events AS ( \
             DELETE FROM change_events e USING UNNEST($1::text[], $2::int8[]) AS d(conv, id) \
             WHERE e.conversation_id = d.conv AND e.msg_id = d.id \
             RETURNING 1), \
         old AS MATERIALIZED ( \
             SELECT r.conversation_id, r.request_id FROM requests r \
             WHERE r.at <= $3 \
               AND NOT EXISTS (SELECT 1 FROM conversations c \
                               WHERE c.conversation_id = r.conversation_id AND c.legal_hold) \
             LIMIT $4 \
             FOR UPDATE OF r SKIP LOCKED), \
         records AS ( \
             DELETE FROM requests r USING old o \
             WHERE r.conversation_id = o.conversation_id AND r.request_id = o.request_id) \
         SELECT (SELECT count(*) FROM gone) AS messages, \
                (SELECT count(*) FROM events) AS events, \
                (SELECT coalesce(array_agg(attachment_key), '{}') FROM gone \
                 WHERE attachment_key IS NOT NULL) AS released",
    )
    .bind(&conversations)
    .bind(&ids)
    .bind(job.retention_cutoff().as_millis())
    // Request records past retention protect nothing (the skew check refuses requests that
    // old), so they go whatever the message budget, at most this many per batch.
    .bind(i64::from(PurgeOptions::MAX_BATCH))
    .fetch_one(&mut *tx)
    .await?;
    let report = PurgeReport {
        messages: rows::count(&row, "messages")?,
        events: rows::count(&row, "events")?,
        released_attachments: column(&row, "released")?,
        more: full,
    };
    tx.commit().await?;
    Ok(report)
}

/// Places or lifts a hold. Placing one waits for the purge batches in flight (they may have
/// read the conversation as not held); batches starting later read the committed hold.
pub(crate) async fn set_legal_hold(
    pool: &PgPool,
    conversation: &ConversationId,
    held: bool,
) -> Result<()> {
    let mut tx = pool.begin().await.map_err(map)?;
    if held {
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
    tx.commit().await.map_err(map)
}
