//! Purge batches and legal holds: bounded batches that concurrent workers split without
//! blocking, ordered against holds by an advisory lock.
//!
//! A batch is one transaction: `pg_advisory_xact_lock_shared(K)` (shared with other purge
//! workers, exclusive with a hold being placed, so a hold either committed before this batch's
//! reads or waits for it), then one statement that locks the candidates with
//! `FOR UPDATE OF m SKIP LOCKED` (filtered by the job's cutoffs), deletes them and their change
//! events, and request records past retention.

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
             RETURNING 1), \
         old AS MATERIALIZED ( \
             SELECT r.conversation_id, r.request_id FROM requests r \
             WHERE r.at <= $1 \
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
    .bind(job.retention_cutoff().as_millis())
    .bind(history_cutoff)
    .bind(i64::from(job.batch_size()))
    // Request records past retention protect nothing (the skew check refuses requests that
    // old), so they go whatever the message budget, at most this many per batch.
    .bind(i64::from(PurgeOptions::MAX_BATCH))
    .fetch_one(&mut *tx)
    .await?;
    let messages = rows::count(&row, "messages")?;
    let report = PurgeReport {
        messages,
        events: rows::count(&row, "events")?,
        released_attachments: column(&row, "released")?,
        more: messages == u64::from(job.batch_size()),
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
