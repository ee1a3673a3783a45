//! What the core's re-key job needs: a resumable scan over every stored content, and a
//! compare-and-set of one message's content bytes.
//!
//! The scan is keyset pagination on the primary key `(conversation_id, msg_id)`: each page is
//! one forward range scan of `messages_pkey` after the last key of the previous page, so a page
//! costs its size whatever the table's, and every message that exists for the whole scan is
//! visited exactly once (a key is never revisited, and rows inserted or purged behind the
//! cursor do not shift it, as an OFFSET would). The token is `<msg_id>:<conversation_id>`: the
//! msg_id first, so a conversation id holding `:` still parses.

use imstore_core::backend::{ContentScan, StoredContent};
use imstore_core::{ConversationId, Error, MsgId, Result};
use sqlx::postgres::PgPool;

use crate::error::map;
use crate::read::reading;
use crate::rows::{self, column};

/// The position after `content` in the scan, as a token.
fn token(content: &StoredContent) -> String {
    format!("{}:{}", content.msg_id, content.conversation)
}

/// The position a token names; anything this module did not write is `InvalidInput` on
/// `resume` (the caller's `RekeyOptions::resume`).
fn parse_token(token: &str) -> Result<(ConversationId, MsgId)> {
    let bad = || Error::invalid_input("resume", "is not a scan token of this store");
    let (id, conversation) = token.split_once(':').ok_or_else(bad)?;
    let id = id
        .parse::<u64>()
        .ok()
        .and_then(|n| MsgId::new(n).ok())
        .ok_or_else(bad)?;
    let conversation = ConversationId::new(conversation).map_err(|_| bad())?;
    Ok((conversation, id))
}

/// Up to `limit` contents after the token's position, in primary-key order, and the token of
/// the next page when there is one.
pub(crate) async fn scan_contents(
    pool: &PgPool,
    after: Option<&str>,
    limit: u32,
) -> Result<ContentScan> {
    let after = after.map(parse_token).transpose()?;
    // One row more than asked says whether another page follows, so the last page says `None`
    // instead of sending the caller for an empty one.
    let fetch = i64::from(limit) + 1;
    let found = reading(|| match &after {
        None => sqlx::query(
            "SELECT conversation_id, msg_id, content FROM messages \
             ORDER BY conversation_id, msg_id LIMIT $1",
        )
        .bind(fetch)
        .fetch_all(pool),
        // A row comparison on the whole primary key: an index range scan that starts right
        // after the position (the same collation orders the index and the comparison).
        Some((conversation, id)) => sqlx::query(
            "SELECT conversation_id, msg_id, content FROM messages \
             WHERE (conversation_id, msg_id) > ($1, $2) \
             ORDER BY conversation_id, msg_id LIMIT $3",
        )
        .bind(conversation.as_str())
        .bind(id.as_i64())
        .bind(fetch)
        .fetch_all(pool),
    })
    .await
    .map_err(map)?;
    let more = found.len() > limit as usize;
    let contents = found
        .iter()
        .take(limit as usize)
        .map(|row| {
            Ok(StoredContent {
                conversation: rows::conversation(row, "conversation_id")?,
                msg_id: MsgId::from_i64(column(row, "msg_id")?)
                    .map_err(|_| Error::corrupt("stored msg_id is not a valid msg_id"))?,
                content: column(row, "content")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = if more {
        contents.last().map(token)
    } else {
        None
    };
    Ok(ContentScan { contents, next })
}

/// Replaces the content of one message if it is still exactly `expected`: one conditional
/// UPDATE of the `content` column only (status, version and the feed are never touched). A
/// concurrent writer of the row (a transition, a purge, another re-key) holds its lock; the
/// condition is then re-checked on the row it committed, so a replaced or purged content is
/// never overwritten.
pub(crate) async fn replace_content(
    pool: &PgPool,
    conversation: &ConversationId,
    msg_id: MsgId,
    expected: &[u8],
    replacement: &[u8],
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE messages SET content = $4 \
         WHERE conversation_id = $1 AND msg_id = $2 AND content = $3",
    )
    .bind(conversation.as_str())
    .bind(msg_id.as_i64())
    .bind(expected)
    .bind(replacement)
    .execute(pool)
    .await
    .map_err(map)?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_invalid_input_on_resume() {
        let c = StoredContent {
            conversation: ConversationId::new("room:42").unwrap(),
            msg_id: MsgId::new(7 << 22).unwrap(),
            content: Vec::new(),
        };
        let (conv, id) = parse_token(&token(&c)).unwrap();
        assert_eq!((conv, id), (c.conversation, c.msg_id));
        for bad in [
            "", "x", "12", ":room", "0:room", "-1:room", "abc:room", "1:",
        ] {
            let e = parse_token(bad).unwrap_err();
            assert_eq!(e.kind(), imstore_core::ErrorKind::InvalidInput, "{bad:?}");
            assert_eq!(e.field(), Some("resume"), "{bad:?}");
        }
    }
}
