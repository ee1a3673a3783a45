//! What the core's re-key job needs: a scan of every stored content, and a compare-and-set of
//! one message's stored bytes.
//!
//! The scan walks the `messages` table in token order (`token(conversation_id, bucket)`, then
//! each partition in its clustering order), which a concurrent insert or purge never reorders:
//! every message present for the whole scan is visited exactly once. A page may end inside a
//! partition, so the resume token names the last message: `<token>:<bucket>:<msg_id>:<conversation>`
//! (the conversation last, so an id holding `:` still parses).

use imstore_core::backend::{ContentScan, StoredContent};
use std::sync::atomic::{AtomicBool, Ordering};

use imstore_core::{ConversationId, Error, MsgId, Result, Retry};

#[cfg(feature = "testing")]
use crate::testing::Fault;

use crate::error;
use crate::handle::ScyllaBackend;
use crate::rows;

type ScanCols = (i64, String, i32, i64, Option<Vec<u8>>);

/// Where a scan stands: the last message visited.
struct Position {
    token: i64,
    bucket: i32,
    msg_id: i64,
    conversation: String,
}

fn parse(token: &str) -> Result<Position> {
    let bad = || Error::invalid_input("resume", "not a scan token of this backend");
    let mut parts = token.splitn(4, ':');
    let mut next = || parts.next().ok_or_else(bad);
    let token = next()?.parse().map_err(|_| bad())?;
    let bucket = next()?.parse().map_err(|_| bad())?;
    let msg_id = next()?.parse().map_err(|_| bad())?;
    let conversation = next()?.to_string();
    ConversationId::new(conversation.as_str()).map_err(|_| bad())?;
    Ok(Position {
        token,
        bucket,
        msg_id,
        conversation,
    })
}

/// A scanned message: its partition's token, its content, its bucket.
type Scanned = (i64, StoredContent, i32);

/// Appends the rows of one scan query to `out`.
fn rows_of(
    res: std::result::Result<
        scylla::response::query_result::QueryResult,
        scylla::errors::ExecutionError,
    >,
    out: &mut Vec<Scanned>,
) -> Result<()> {
    let rows = res
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("message scan", e))?;
    for row in rows
        .rows::<ScanCols>()
        .map_err(|e| error::decode("message scan", e))?
    {
        let (token, conv, bucket, id, content) =
            row.map_err(|e| error::decode("message scan", e))?;
        out.push((
            token,
            StoredContent {
                conversation: ConversationId::new(conv)
                    .map_err(|_| error::corrupt("conversation_id"))?,
                msg_id: MsgId::from_i64(id).map_err(|_| error::corrupt("msg_id"))?,
                content: content.ok_or_else(|| error::corrupt("content"))?,
            },
            bucket,
        ));
    }
    Ok(())
}

/// Up to `limit` stored contents after the message `after` names (see the module docs).
pub(crate) async fn scan_contents(
    b: &ScyllaBackend,
    after: Option<&str>,
    limit: u32,
) -> Result<ContentScan> {
    let want = limit as usize;
    let lim = |have: usize| i32::try_from(want - have).unwrap_or(i32::MAX);
    let mut found = Vec::with_capacity(want);
    // Murmur3 never hands out its smallest token, so "above it" is every partition.
    let mut from = i64::MIN;
    if let Some(token) = after {
        let at = parse(token)?;
        // The rest of the partition the last page ended in (clustered newest first).
        let res = b
            .session()
            .execute_unpaged(
                &b.st().msg_scan_rest,
                (at.conversation.as_str(), at.bucket, at.msg_id, lim(0)),
            )
            .await;
        rows_of(res, &mut found)?;
        from = at.token;
    }
    if found.len() < want {
        let res = b
            .session()
            .execute_unpaged(&b.st().msg_scan, (from, lim(found.len())))
            .await;
        rows_of(res, &mut found)?;
    }
    let next = (found.len() >= want && want > 0)
        .then(|| found.last())
        .flatten()
        .map(|(t, c, bucket)| format!("{t}:{bucket}:{}:{}", c.msg_id.as_i64(), c.conversation));
    Ok(ContentScan {
        contents: found.into_iter().map(|(_, c, _)| c).collect(),
        next,
    })
}

/// Replaces a message's stored content if it is still exactly `expected` (a conditional write,
/// as every write of a message row is); false when the message is gone or its bytes changed.
///
/// A Paxos timeout (contention, a slow replica) leaves the write's outcome unknown: a SERIAL
/// read completes any accepted proposal, and the bytes say which write won (the replacement is
/// this call's own: fresh nonce). That read is a Paxos round too and times out the same way,
/// with the outcome still unknown: it is read again, never written blind (a second write would
/// find its own bytes, not `expected`, and call a won swap lost).
pub(crate) async fn replace_content(
    b: &ScyllaBackend,
    conversation: &ConversationId,
    msg_id: MsgId,
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool> {
    let key = (conversation.as_str(), b.bucket_of(msg_id), msg_id.as_i64());
    // False while the last swap's outcome is unknown: the next attempt only reads.
    let write = AtomicBool::new(true);
    let write = &write;
    Retry::default()
        .run(|_| async move {
            if write.load(Ordering::Relaxed) {
                match swap(b, key, expected, replacement).await {
                    Ok(applied) => return Ok(Some(applied)),
                    Err(e) if !e.is_temporary() => return Err(e),
                    Err(_) => {}
                }
            }
            match serial_content(b, key).await {
                Ok(Some(now)) if now == replacement => Ok(Some(true)),
                // Not applied (yet): the swap is still this call's to make.
                Ok(Some(now)) if now == expected => {
                    write.store(true, Ordering::Relaxed);
                    Ok(None)
                }
                Ok(_) => Ok(Some(false)),
                Err(e) if !e.is_temporary() => Err(e),
                Err(_) => {
                    write.store(false, Ordering::Relaxed);
                    Ok(None)
                }
            }
        })
        .await
}

/// One conditional content swap: `[applied]`.
async fn swap(
    b: &ScyllaBackend,
    key: (&str, i32, i64),
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool> {
    let st = &b.st().msg_replace_content;
    #[cfg(feature = "testing")]
    b.inner().hidden.strike(st, Fault::Refuse)?;
    let res = b
        .session()
        .execute_unpaged(st, (replacement, key.0, key.1, key.2, expected))
        .await
        .map_err(error::execution)?;
    let applied = rows::lwt(res)?.applied;
    #[cfg(feature = "testing")]
    b.inner().hidden.strike(st, Fault::Hide)?;
    Ok(applied)
}

/// The stored content as a SERIAL read sees it, any accepted proposal completed first.
async fn serial_content(b: &ScyllaBackend, key: (&str, i32, i64)) -> Result<Option<Vec<u8>>> {
    let st = &b.st().msg_content_serial;
    #[cfg(feature = "testing")]
    b.inner().hidden.strike(st, Fault::Refuse)?;
    let res = b
        .session()
        .execute_unpaged(st, key)
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("message content", e))?;
    Ok(res
        .maybe_first_row::<(Option<Vec<u8>>,)>()
        .map_err(|e| error::decode("message content", e))?
        .and_then(|(c,)| c))
}
