//! Transitions (recall, restore, delete): one read, the core's decision, one atomic statement.
//!
//! Each attempt is two autocommitted statements (READ COMMITTED):
//!
//! 1. One read, one snapshot: the request record of this id (if any) and the message's sender
//!    and lifecycle. [`Decider::decide`] turns them into a [`Decision`].
//! 2. The decision persisted in one statement, so it commits whole or not at all:
//!    * `Record` (a no-op or a refusal): the request record is inserted only if the message is
//!      still at the version the decision was made at *and* no record of the id exists. If it
//!      inserts nothing, the decision may be stale: read and decide again.
//!    * `Apply`: compare-and-set of the version, the conversation's next feed seq, the change
//!      event and the request record. If the compare-and-set matches nothing, nothing is
//!      written; if a record of the id appeared, the statement fails on the key and writes
//!      nothing. Either way: read and decide again.
//!
//! The lost attempts are re-run by [`Retry`], so every answer returned is one that a committed
//! request record states (see the README for why one order explains every answer).

use imstore_core::transition::{Decider, Decision};
use imstore_core::{Error, Result, Retry, Timestamp, TransitionOutcome, UserId};
use sqlx::postgres::PgPool;

use crate::error::{Failed, is_unique_violation_on};
use crate::read::reading;
use crate::rows::{self, column};

/// The answer of an attempt that persisted its decision (a refusal is an `Err` answer).
type Answer = Result<TransitionOutcome>;

/// Decides and persists `decider`'s request, re-reading after every lost race.
pub(crate) async fn transition(pool: &PgPool, decider: &Decider<'_>) -> Result<TransitionOutcome> {
    // A write whose connection broke is not re-run here: it may or may not have committed,
    // and the caller, told `Unavailable` (temporary), retries with the same request id, which
    // the record read first then answers either way. Only the read re-runs (`reading`).
    Retry::default()
        .run(|_| async move {
            match attempt(pool, decider).await {
                Err(failed) => failed.retry(),
                Ok(answer) => answer.map(Some),
            }
        })
        .await
}

async fn attempt(pool: &PgPool, decider: &Decider<'_>) -> std::result::Result<Answer, Failed> {
    let req = decider.request();
    let conv = req.conversation_id.as_str();
    let msg_id = req.msg_id.as_i64();

    // 1. The request record (columns prefixed `r_`) and the message, from one snapshot.
    let row = reading(|| {
        sqlx::query(
            "SELECT r.request_id IS NOT NULL AS seen, r.action AS r_action, \
                 r.msg_id AS r_msg_id, r.requester AS r_requester, r.status AS r_status, \
                 r.version AS r_version, r.changed AS r_changed, r.at AS r_at, \
                 r.refusal AS r_refusal, \
                 m.msg_id IS NOT NULL AS found, m.sender_id, m.status, m.version, m.created_at, \
                 m.recalled_at, m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN requests r ON r.conversation_id = $1 AND r.request_id = $3 \
             LEFT JOIN messages m ON m.conversation_id = $1 AND m.msg_id = $2",
        )
        .bind(conv)
        .bind(msg_id)
        .bind(req.request_id.as_str())
        .fetch_one(pool)
    })
    .await?;
    let record = column::<bool>(&row, "seen")?
        .then(|| rows::record(req, &row, "r_"))
        .transpose()?;
    let message = column::<bool>(&row, "found")?
        .then(|| Ok::<_, Error>((rows::sender(&row)?, rows::lifecycle(&row)?)))
        .transpose()?;
    let decision = decider.decide(record.as_ref(), message.as_ref().map(|(s, l)| (s, l)));

    // 2. Persist it.
    match &decision {
        Decision::Answer(_) => {}
        Decision::Record {
            record, expected, ..
        } => {
            // Inserted only if the message is still at `expected` (0: still absent) and the id
            // has no record. The version check is against this statement's snapshot, taken
            // after the read above: equal versions mean the same state (every change bumps it),
            // so the answer holds at that instant, inside this call. A record committed by a
            // duplicate of this request makes ON CONFLICT skip the insert (after waiting for
            // it, if still in flight). Either way nothing inserted means: decide again.
            let inserted = sqlx::query(
                "INSERT INTO requests (conversation_id, request_id, action, msg_id, requester, \
                     status, version, changed, at, refusal) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
                 WHERE COALESCE((SELECT version FROM messages \
                                 WHERE conversation_id = $1 AND msg_id = $4), 0) = $11 \
                 ON CONFLICT (conversation_id, request_id) DO NOTHING",
            )
            .bind(conv)
            .bind(req.request_id.as_str())
            .bind(record.action.as_str())
            .bind(msg_id)
            .bind(record.requester.as_str())
            .bind(record.status.code())
            .bind(i64::from(record.version))
            .bind(record.changed)
            .bind(record.at.as_millis())
            .bind(record.refusal.map(|k| k.as_str()))
            .bind(i64::from(*expected))
            .execute(pool)
            .await?;
            if inserted.rows_affected() != 1 {
                return Err(Failed::Lost);
            }
        }
        Decision::Apply {
            next,
            expected,
            record,
        } => {
            // One statement, so one atomic commit:
            //   * `cas`: compare-and-set on the version read. A concurrent writer holding the
            //     row makes it wait; once that commits, the WHERE is re-checked on the new row
            //     version and matches nothing, and every later step (all select from `cas`)
            //     writes nothing.
            //   * `seq`: the conversation's next feed seq. The upsert locks the conversation
            //     row until commit, so the next writer's seq is handed out only after this event
            //     is visible: seq order is commit order.
            //   * `event`: the change event under that seq.
            //   * `record`: the request record. No ON CONFLICT: a record of this id committed
            //     first fails the whole statement on the key, undoing the CAS and the event.
            let event = decider.event(0, next);
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
                     INSERT INTO requests (conversation_id, request_id, action, msg_id, \
                         requester, status, version, changed, at) \
                     SELECT $1, $13, $14, $2, $15, $16, $17, $18, $19 FROM cas \
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
            .bind(i64::from(*expected))
            .bind(event.at.as_millis())
            .bind(event.by.as_str())
            .bind(req.request_id.as_str())
            .bind(record.action.as_str())
            .bind(record.requester.as_str())
            .bind(record.status.code())
            .bind(i64::from(record.version))
            .bind(record.changed)
            .bind(record.at.as_millis())
            .fetch_one(pool)
            .await;
            let writes = match applied {
                Ok(row) => rows::count(&row, "writes")?,
                Err(e) if is_unique_violation_on(&e, "requests") => return Err(Failed::Lost),
                Err(e) => return Err(e.into()),
            };
            match writes {
                // Lost the compare-and-set: nothing was written.
                0 => return Err(Failed::Lost),
                3 => {}
                n => {
                    return Err(
                        Error::corrupt(format!("a transition wrote {n} of its 3 rows")).into(),
                    );
                }
            }
        }
    }
    Ok(decision.into_answer())
}
