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
//! 3. Lock, in key order, the conversation rows (purge marks) and the attachment reference
//!    counts the deletion will change, and take over outbox entries past their lease.
//! 4. One statement deletes the locked messages and every change event of theirs, raises each
//!    conversation's `purged_through` to the highest seq removed, decrements the reference
//!    counts of their attachment keys (a key reaching zero is released: into the outbox, owned
//!    by this transaction), and deletes request records past retention.
//!
//! After the commit, the call deletes its own outbox entries and returns their keys.
//!
//! Why no event of a purged message survives, even while transitions race the batch: an event
//! is only ever appended by the statement that compare-and-sets its message row, holding that
//! row's lock until it commits. A row such a statement holds is skipped in step 2; a row locked
//! in step 2 can get no new event until this batch commits, and then the row is gone, so the
//! waiting compare-and-set matches nothing and appends nothing. Step 4 takes its snapshot after
//! step 2 holds the locks, so it sees every event those messages ever got, including one
//! committed after step 2 began (which a single statement's snapshot would miss: that was the
//! leak of a history-limit purge racing deletes).
//!
//! Released keys are reported **at least once**: a key enters the outbox in the transaction
//! that removes its last message, so it is durable exactly when the removal is. The call that
//! committed it returns it and then deletes the entry; if that call dies (or loses its
//! connection) between its commit and that delete, the entry outlives its lease
//! (`OUTBOX_LEASE_MS`, five minutes of store time) and the first purge call after that takes it
//! over and reports it (again, if the first call's caller did get it). Without a crash, each key
//! is reported exactly once.

use imstore_core::backend::PurgeJob;
use imstore_core::{ConversationId, PurgeOptions, PurgeReport, Result, Retry};
use sqlx::postgres::PgPool;

use crate::error::{Failed, map};
use crate::rows::{self, Cols, LifecycleCols, column};

/// The advisory lock key that orders purge batches (shared) against placing a legal hold
/// (exclusive). Database-wide, so stores in other schemas of the same database share it: a hold
/// there waits for a purge batch here, which is coarse but brief and never wrong.
const LEGAL_HOLD_LOCK: i64 = 0x696d_7374_6f72_6501; // "imstore" + 1

/// How long an outbox entry belongs to the call that released (or took over) it: that call
/// removes it milliseconds after committing, so an entry older than this was left by a call
/// that died or lost its connection in between, and the next purge call reports it again.
const OUTBOX_LEASE_MS: i64 = 5 * 60 * 1000;

/// The most outbox entries one purge call takes over.
const OUTBOX_TAKEOVER: i64 = 1_000;

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
    let now = job.now().as_millis();
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(LEGAL_HOLD_LOCK)
        .execute(&mut *tx)
        .await?;
    // No history limit: a cutoff before every possible created_at matches nothing.
    let history_cutoff = job.history_cutoff().map_or(i64::MIN, |t| t.as_millis());
    let candidates = sqlx::query(
        "SELECT m.conversation_id, m.status, m.version, m.created_at, m.recalled_at, \
             m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by, m.msg_id, \
             m.attachment_key \
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
    let mut keys = Vec::new();
    // Every candidate row has the same columns: their positions are looked up once.
    if let Some(first) = candidates.first() {
        let cols = LifecycleCols::of(first)?;
        for row in &candidates {
            // The SQL filter is the index-friendly form of the rule; the rule itself decides.
            if job.purgeable(&rows::lifecycle_at(row, &cols)?) {
                conversations.push(column::<String>(row, "conversation_id")?);
                ids.push(column::<i64>(row, "msg_id")?);
                keys.extend(column::<Option<String>>(row, "attachment_key")?);
            }
        }
    }

    // Lock what the deletion will change besides the messages, each table in key order (so two
    // workers sharing conversations or keys never wait on each other in a cycle): the feed rows
    // whose purge mark may rise, and the reference counts of the removed messages' keys, which
    // must not move between this statement and the next (that one decides "released" from the
    // count it reads). Take over outbox entries whose reporting call has not removed them
    // within the lease: that call died (or its cleanup failed) after committing.
    let locked = sqlx::query(
        "WITH convs AS ( \
             SELECT conversation_id FROM conversations WHERE conversation_id = ANY($1) \
             ORDER BY conversation_id FOR UPDATE), \
         keys AS ( \
             SELECT attachment_key FROM attachments WHERE attachment_key = ANY($2) \
             ORDER BY attachment_key FOR UPDATE), \
         orphans AS ( \
             UPDATE released_attachments o SET owner = txid_current(), released_at = $3 \
             FROM (SELECT attachment_key FROM released_attachments WHERE released_at <= $4 \
                   ORDER BY attachment_key LIMIT $5 FOR UPDATE SKIP LOCKED) x \
             WHERE o.attachment_key = x.attachment_key \
             RETURNING o.attachment_key, o.owner) \
         SELECT (SELECT count(*) FROM convs) AS convs, (SELECT count(*) FROM keys) AS keys, \
             (SELECT coalesce(array_agg(attachment_key), '{}') FROM orphans) AS orphans, \
             (SELECT max(owner) FROM orphans) AS owner",
    )
    .bind(&conversations)
    .bind(&keys)
    .bind(now)
    .bind(now.saturating_sub(OUTBOX_LEASE_MS))
    .bind(OUTBOX_TAKEOVER)
    .fetch_one(&mut *tx)
    .await?;
    let mut released: Vec<String> = column(&locked, "orphans")?;
    let mut owner: Option<i64> = column(&locked, "owner")?;
    let mut report = PurgeReport {
        more: full,
        ..PurgeReport::default()
    };

    if !ids.is_empty() {
        // One statement: the messages, all their events (raising each conversation's purge
        // mark to the highest seq removed), the references of their attachment keys (a key
        // whose count reaches zero is released: its row goes, and it enters the outbox owned
        // by this transaction), and request records past retention.
        let row = sqlx::query(
            "WITH gone AS ( \
                 DELETE FROM messages m USING UNNEST($1::text[], $2::int8[]) AS d(conv, id) \
                 WHERE m.conversation_id = d.conv AND m.msg_id = d.id \
                 RETURNING m.attachment_key), \
             events AS ( \
                 DELETE FROM change_events e USING UNNEST($1::text[], $2::int8[]) AS d(conv, id) \
                 WHERE e.conversation_id = d.conv AND e.msg_id = d.id \
                 RETURNING e.conversation_id, e.seq), \
             marks AS ( \
                 UPDATE conversations c SET purged_through = GREATEST(c.purged_through, x.seq) \
                 FROM (SELECT conversation_id, max(seq) AS seq FROM events \
                       GROUP BY conversation_id) x \
                 WHERE c.conversation_id = x.conversation_id), \
             uses AS ( \
                 SELECT attachment_key, count(*) AS n FROM gone \
                 WHERE attachment_key IS NOT NULL GROUP BY attachment_key), \
             freed AS ( \
                 DELETE FROM attachments a USING uses u \
                 WHERE a.attachment_key = u.attachment_key AND a.refs <= u.n \
                 RETURNING a.attachment_key), \
             still AS ( \
                 UPDATE attachments a SET refs = a.refs - u.n FROM uses u \
                 WHERE a.attachment_key = u.attachment_key AND a.refs > u.n), \
             outbox AS ( \
                 INSERT INTO released_attachments (attachment_key, owner, released_at) \
                 SELECT attachment_key, txid_current(), $5 FROM freed ORDER BY attachment_key \
                 ON CONFLICT (attachment_key) \
                 DO UPDATE SET owner = EXCLUDED.owner, released_at = EXCLUDED.released_at), \
             old AS MATERIALIZED ( \
                 SELECT r.conversation_id, r.request_id FROM requests r \
                 WHERE r.at <= $3 \
                   AND NOT EXISTS (SELECT 1 FROM conversations c \
                                   WHERE c.conversation_id = r.conversation_id \
                                     AND c.legal_hold) \
                 LIMIT $4 \
                 FOR UPDATE OF r SKIP LOCKED), \
             records AS ( \
                 DELETE FROM requests r USING old o \
                 WHERE r.conversation_id = o.conversation_id \
                   AND r.request_id = o.request_id) \
             SELECT (SELECT count(*) FROM gone) AS messages, \
                    (SELECT count(*) FROM events) AS events, \
                    (SELECT coalesce(array_agg(attachment_key), '{}') FROM freed) AS released, \
                    txid_current() AS owner",
        )
        .bind(&conversations)
        .bind(&ids)
        .bind(job.retention_cutoff().as_millis())
        // Request records past retention protect nothing (the skew check refuses requests
        // that old), so they go whatever the message budget, at most this many per batch.
        .bind(i64::from(PurgeOptions::MAX_BATCH))
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        report.messages = rows::count(&row, "messages")?;
        report.events = rows::count(&row, "events")?;
        released.extend(column::<Vec<String>>(&row, "released")?);
        owner = Some(column(&row, "owner")?);
    }
    tx.commit().await?;

    released.sort();
    released.dedup();
    if let Some(owner) = owner.filter(|_| !released.is_empty()) {
        clear_outbox(pool, &released, owner).await;
    }
    report.released_attachments = released;
    Ok(report)
}

/// Removes this call's outbox entries once its transaction committed: the keys are about to be
/// returned. Best effort: if it fails (the connection dropped), the entries stay and a purge
/// call after the lease reports them again, which is the at-least-once side of the trade.
async fn clear_outbox(pool: &PgPool, keys: &[String], owner: i64) {
    let cleared = sqlx::query(
        "DELETE FROM released_attachments WHERE attachment_key = ANY($1) AND owner = $2",
    )
    .bind(keys)
    .bind(owner)
    .execute(pool)
    .await;
    if let Err(e) = cleared {
        tracing::warn!(
            error = %e,
            keys = keys.len(),
            "released attachment keys stay in the outbox and will be reported again"
        );
    }
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
