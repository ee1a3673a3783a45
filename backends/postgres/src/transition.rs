//! Transitions (recall, restore, delete): the core's decision, persisted in one atomic statement;
//! one round trip when this handle knows the message's state, two otherwise.
//!
//! Each attempt is autocommitted statements (READ COMMITTED), all on one pooled connection (so
//! a read and the write after it cost one hand-out and one release between them):
//!
//! 1. The state the decision is made on:
//!    * **Known state** (first attempt only, the message in the handle's [`StateCache`]):
//!      [`Decider::decide`] on "no request record" and the cached sender and lifecycle. If that
//!      decides `Apply`, one statement applies it (as in 2 below) only if the stored row still
//!      equals the cached state in every column the decision depends on and the id has no
//!      record; the same statement reads the record and the row from its snapshot. Applied:
//!      done, in one round trip. Not applied: the decision was made on a state that is not the
//!      stored one, so it is dropped, and the read is used as below.
//!    * **Otherwise**, one read, one snapshot: the request record of this id (if any) and the
//!      message's sender and lifecycle.
//!
//!    [`Decider::decide`] turns the read into a [`Decision`].
//! 2. The decision persisted in one statement, so it commits whole or not at all:
//!    * `Record` (a no-op or a refusal): the request record is inserted only if the message is
//!      still at the version the decision was made at *and* no record of the id exists. If it
//!      inserts nothing, the decision may be stale: read and decide again.
//!    * `Apply`: compare-and-set of the version, the conversation's next feed seq, the change
//!      event and the request record. If the compare-and-set matches nothing, nothing is
//!      written; if a record of the id appeared, the statement fails on the key and writes
//!      nothing. Either way: read and decide again.
//!
//! The rules stay in core: the database never decides, it only checks that the state a
//! decision was made on is the stored one (a version, or the whole cached state). The lost
//! attempts are re-run by [`Retry`], so every answer returned is one that a committed request
//! record states (see the README for why one order explains every answer).

use imstore_core::transition::{Decider, Decision};
use imstore_core::{
    Error, Lifecycle, Result, Retry, Timestamp, TransitionOutcome, TransitionRequest, UserId,
};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow};
use sqlx::query::Query;

use crate::cache::{Known, StateCache};
use crate::error::{Failed, is_broken_connection, is_unique_violation_on};
use crate::rows::{self, column};

/// The answer of an attempt that persisted its decision (a refusal is an `Err` answer).
type Answer = Result<TransitionOutcome>;

/// The one pooled connection an attempt runs all its statements on.
type Conn = PoolConnection<Postgres>;

/// The read of one attempt: the request record of the id (columns prefixed `r_`) and the
/// message, from one snapshot, request id bound as `$rid`.
macro_rules! read_sql {
    ($rid:literal) => {
        concat!(
            "SELECT r.request_id IS NOT NULL AS seen, r.action AS r_action, \
                 r.msg_id AS r_msg_id, r.requester AS r_requester, r.status AS r_status, \
                 r.version AS r_version, r.changed AS r_changed, r.at AS r_at, \
                 r.refusal AS r_refusal, \
                 m.msg_id IS NOT NULL AS found, m.sender_id, m.status, m.version, m.created_at, \
                 m.recalled_at, m.recalled_by, m.restored_at, m.deleted_at, m.deleted_by \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN requests r ON r.conversation_id = $1 AND r.request_id = ",
            $rid,
            " LEFT JOIN messages m ON m.conversation_id = $1 AND m.msg_id = $2"
        )
    };
}

/// The writes of an applied decision ([`bind_apply`] binds `$1`..`$19`), the compare-and-set
/// narrowed by `guard`:
///   * `cas`: compare-and-set on the version read. A concurrent writer holding the row makes it
///     wait; once that commits, the WHERE is re-checked on the new row version and matches
///     nothing, and every later step (all select from `cas`) writes nothing.
///   * `seq`: the conversation's next feed seq. The upsert locks the conversation row until
///     commit, so the next writer's seq is handed out only after this event is visible: seq
///     order is commit order.
///   * `event`: the change event under that seq.
///   * `record`: the request record. No ON CONFLICT: a record of this id committed first fails
///     the whole statement on the key, undoing the CAS and the event.
macro_rules! apply_ctes {
    ($guard:literal) => {
        concat!(
            "cas AS ( \
                 UPDATE messages SET status = $3, version = $4, recalled_at = $5, \
                     recalled_by = $6, restored_at = $7, deleted_at = $8, deleted_by = $9 \
                 WHERE conversation_id = $1 AND msg_id = $2 AND version = $10",
            $guard,
            " RETURNING 1), \
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
                 RETURNING 1)"
        )
    };
}

/// The number of rows an applied decision wrote (`cas` + `event` + `record`): 3, or 0 when the
/// compare-and-set matched nothing.
macro_rules! writes_sql {
    () => {
        "(SELECT count(*) FROM cas) + (SELECT count(*) FROM event) \
         + (SELECT count(*) FROM record) AS writes"
    };
}

/// Decides and persists `decider`'s request, re-reading after every lost race.
pub(crate) async fn transition(
    pool: &PgPool,
    cache: &StateCache,
    decider: &Decider<'_>,
) -> Result<TransitionOutcome> {
    // A write whose connection broke is not re-run here: it may or may not have committed,
    // and the caller, told `Unavailable` (temporary), retries with the same request id, which
    // the record read first then answers either way. Only the read re-runs (`reading`).
    Retry::default()
        .run(|n| async move {
            match attempt(pool, cache, decider, n == 1).await {
                Err(failed) => failed.retry(),
                Ok(answer) => answer.map(Some),
            }
        })
        .await
}

/// What the one-statement attempt on a cached state came to.
enum Speculation {
    /// The stored row was the cached state: the decision is applied and this is its answer.
    Applied(Answer),
    /// It was not (or the decision was not a change): the record and row as read instead.
    Read(PgRow),
}

async fn attempt(
    pool: &PgPool,
    cache: &StateCache,
    decider: &Decider<'_>,
    first: bool,
) -> std::result::Result<Answer, Failed> {
    let req = decider.request();
    // After a lost race the cache can only be older than what lost: read.
    let known = first
        .then(|| cache.get(&req.conversation_id, req.msg_id))
        .flatten();
    // Every statement of the attempt on one connection: a read and the write after it cost
    // their two statements, not also a second hand-out and a second release (sqlx pings every
    // connection it takes back: one more round trip on the wire per release).
    let conn = pool.acquire().await?;
    let (mut conn, row) = match known {
        Some(known) => match speculate(pool, conn, cache, decider, &known).await? {
            (_, Speculation::Applied(answer)) => return Ok(answer),
            (conn, Speculation::Read(row)) => (conn, row),
        },
        None => read(pool, conn, req).await?,
    };
    let record = column::<bool>(&row, "seen")?
        .then(|| rows::record(req, &row, "r_"))
        .transpose()?;
    let message = column::<bool>(&row, "found")?
        .then(|| {
            Ok::<_, Error>(Known {
                sender: rows::sender(&row)?,
                lifecycle: rows::lifecycle(&row)?,
            })
        })
        .transpose()?;
    match &message {
        Some(m) => cache.put(&req.conversation_id, req.msg_id, m.clone()),
        None => cache.forget(&req.conversation_id, req.msg_id),
    }
    let decision = decider.decide(
        record.as_ref(),
        message.as_ref().map(|m| (&m.sender, &m.lifecycle)),
    );
    persist(
        &mut conn,
        cache,
        decider,
        decision,
        message.as_ref().map(|m| &m.sender),
    )
    .await
}

/// The request record and the message, from one snapshot, on `conn`; run once more on a fresh
/// connection from `pool` if `conn` had died while idle (a read changed nothing: safe to repeat;
/// see `read::reading`). Returns the connection it ran on.
async fn read(
    pool: &PgPool,
    mut conn: Conn,
    req: &TransitionRequest,
) -> std::result::Result<(Conn, PgRow), Failed> {
    match read_once(&mut conn, req).await {
        Err(e) if is_broken_connection(&e) => {
            // Released first: with a pool of one, the fresh connection is this one's slot.
            conn.close_on_drop();
            drop(conn);
            let mut conn = pool.acquire().await?;
            let row = read_once(&mut conn, req).await?;
            Ok((conn, row))
        }
        Err(e) => Err(e.into()),
        Ok(row) => Ok((conn, row)),
    }
}

async fn read_once(
    conn: &mut PgConnection,
    req: &TransitionRequest,
) -> std::result::Result<PgRow, sqlx::Error> {
    sqlx::query(read_sql!("$3"))
        .bind(req.conversation_id.as_str())
        .bind(req.msg_id.as_i64())
        .bind(req.request_id.as_str())
        .fetch_one(conn)
        .await
}

/// Decides on the cached state `known` (and no record) and, when that is a change, applies it
/// in one statement that also reads the record and the row (from its snapshot, so from before
/// its own writes) for when the guard does not hold.
///
/// The guard: the row equals `known` in the sender and every lifecycle column (what
/// `Decider::decide` reads), and no record of the id is visible. Equal columns are the same
/// state, so the decision is the one a read at this statement's snapshot would have given, and
/// the statement is where the request takes effect. A record of the id committed after the
/// snapshot makes the record insert fail on the key (the statement undoes itself): a lost
/// attempt, re-run with a read.
async fn speculate(
    pool: &PgPool,
    mut conn: Conn,
    cache: &StateCache,
    decider: &Decider<'_>,
    known: &Known,
) -> std::result::Result<(Conn, Speculation), Failed> {
    let req = decider.request();
    let decision = decider.decide(None, Some((&known.sender, &known.lifecycle)));
    let Decision::Apply {
        next,
        expected,
        record,
    } = &decision
    else {
        // A no-op or a refusal is recorded at the version read, and a replay needs the record:
        // both come from a read; only a change is worth guessing.
        let (conn, row) = read(pool, conn, req).await?;
        return Ok((conn, Speculation::Read(row)));
    };
    let guess = &known.lifecycle;
    let statement = concat!(
        "WITH cur AS (",
        read_sql!("$13"),
        "), ",
        apply_ctes!(
            " AND sender_id = $20 AND status = $21 AND created_at = $22 \
              AND recalled_at IS NOT DISTINCT FROM $23 AND recalled_by IS NOT DISTINCT FROM $24 \
              AND restored_at IS NOT DISTINCT FROM $25 AND deleted_at IS NOT DISTINCT FROM $26 \
              AND deleted_by IS NOT DISTINCT FROM $27 \
              AND NOT EXISTS (SELECT 1 FROM requests \
                              WHERE conversation_id = $1 AND request_id = $13)"
        ),
        " SELECT cur.*, ",
        writes_sql!(),
        " FROM cur"
    );
    let applied = bind_apply(sqlx::query(statement), decider, next, *expected, record)
        .bind(known.sender.as_str())
        .bind(guess.status.code())
        .bind(guess.created_at.as_millis())
        .bind(guess.recalled_at.map(Timestamp::as_millis))
        .bind(guess.recalled_by.as_ref().map(UserId::as_str))
        .bind(guess.restored_at.map(Timestamp::as_millis))
        .bind(guess.deleted_at.map(Timestamp::as_millis))
        .bind(guess.deleted_by.as_ref().map(UserId::as_str))
        .fetch_one(&mut *conn)
        .await;
    let row = match applied {
        Ok(row) => row,
        Err(e) if is_unique_violation_on(&e, "requests") => return Err(Failed::Lost),
        Err(e) => return Err(e.into()),
    };
    match rows::count(&row, "writes")? {
        0 => Ok((conn, Speculation::Read(row))),
        3 => {
            remember(cache, req, known.sender.clone(), next.clone());
            Ok((conn, Speculation::Applied(decision.into_answer())))
        }
        n => Err(Error::corrupt(format!("a transition wrote {n} of its 3 rows")).into()),
    }
}

/// Binds `$1`..`$19` of [`apply_ctes!`].
fn bind_apply<'q>(
    query: Query<'q, Postgres, PgArguments>,
    decider: &'q Decider<'_>,
    next: &'q Lifecycle,
    expected: u32,
    record: &'q imstore_core::lifecycle::RequestRecord,
) -> Query<'q, Postgres, PgArguments> {
    let req = decider.request();
    let event = decider.event(0, next);
    query
        .bind(req.conversation_id.as_str())
        .bind(req.msg_id.as_i64())
        .bind(next.status.code())
        .bind(i64::from(next.version))
        .bind(next.recalled_at.map(Timestamp::as_millis))
        .bind(next.recalled_by.as_ref().map(UserId::as_str))
        .bind(next.restored_at.map(Timestamp::as_millis))
        .bind(next.deleted_at.map(Timestamp::as_millis))
        .bind(next.deleted_by.as_ref().map(UserId::as_str))
        .bind(i64::from(expected))
        .bind(event.at.as_millis())
        .bind(event.by.as_str().to_owned())
        .bind(req.request_id.as_str())
        .bind(record.action.as_str())
        .bind(record.requester.as_str())
        .bind(record.status.code())
        .bind(i64::from(record.version))
        .bind(record.changed)
        .bind(record.at.as_millis())
}

fn remember(cache: &StateCache, req: &TransitionRequest, sender: UserId, next: Lifecycle) {
    cache.put(
        &req.conversation_id,
        req.msg_id,
        Known {
            sender,
            lifecycle: next,
        },
    );
}

/// Persists a decision made on a read (step 2 of the module docs); `sender` is the message's,
/// as read, to remember the applied state under.
async fn persist(
    conn: &mut PgConnection,
    cache: &StateCache,
    decider: &Decider<'_>,
    decision: Decision,
    sender: Option<&UserId>,
) -> std::result::Result<Answer, Failed> {
    let req = decider.request();
    match &decision {
        Decision::Answer(_) => {}
        Decision::Record {
            record, expected, ..
        } => {
            // Inserted only if the message is still at `expected` (0: still absent) and the id
            // has no record. The version check is against this statement's snapshot, taken
            // after the read: equal versions mean the same state (every change bumps it), so
            // the answer holds at that instant, inside this call. A record committed by a
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
            .bind(req.conversation_id.as_str())
            .bind(req.request_id.as_str())
            .bind(record.action.as_str())
            .bind(req.msg_id.as_i64())
            .bind(record.requester.as_str())
            .bind(record.status.code())
            .bind(i64::from(record.version))
            .bind(record.changed)
            .bind(record.at.as_millis())
            .bind(record.refusal.map(|k| k.as_str()))
            .bind(i64::from(*expected))
            .execute(&mut *conn)
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
            let statement = concat!("WITH ", apply_ctes!(""), " SELECT ", writes_sql!());
            let applied = bind_apply(sqlx::query(statement), decider, next, *expected, record)
                .fetch_one(&mut *conn)
                .await;
            let writes = match applied {
                Ok(row) => rows::count(&row, "writes")?,
                Err(e) if is_unique_violation_on(&e, "requests") => return Err(Failed::Lost),
                Err(e) => return Err(e.into()),
            };
            match writes {
                // Lost the compare-and-set: nothing was written.
                0 => return Err(Failed::Lost),
                3 => {
                    if let Some(sender) = sender {
                        remember(cache, req, sender.clone(), next.clone());
                    }
                }
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
