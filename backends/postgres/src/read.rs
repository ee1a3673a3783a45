//! Point reads and pages: one primary-key index scan each, whatever the conversation's length.

use std::future::Future;

use imstore_core::backend::{Fields, PageQuery};
use imstore_core::{ConversationId, Direction, MsgId, Result, StoredMessage};
use sqlx::postgres::PgPool;

use crate::error::{is_broken_connection, map};
use crate::rows::{self, MessageCols, message_columns, message_columns_no_content};

/// Runs a read-only statement, once more if the connection it got had died while idle.
///
/// The pool does not ping a connection before handing it out (a round trip per operation saved;
/// see the README), so a connection the server closed since its last use fails on first use;
/// sqlx then discards it, and a read, having changed nothing, can simply run again on another.
pub(crate) async fn reading<T, F, Fut>(mut run: F) -> std::result::Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, sqlx::Error>>,
{
    match run().await {
        Err(e) if is_broken_connection(&e) => run().await,
        other => other,
    }
}

/// One stored message, or `None`.
pub(crate) async fn fetch(
    pool: &PgPool,
    conversation: &ConversationId,
    msg_id: MsgId,
    fields: Fields,
) -> Result<Option<StoredMessage>> {
    let sql = match fields {
        Fields::All => concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE conversation_id = $1 AND msg_id = $2"
        ),
        Fields::NoContent => concat!(
            "SELECT ",
            message_columns_no_content!(),
            " FROM messages WHERE conversation_id = $1 AND msg_id = $2"
        ),
    };
    let row = reading(|| {
        sqlx::query(sql)
            .bind(conversation.as_str())
            .bind(msg_id.as_i64())
            .fetch_optional(pool)
    })
    .await
    .map_err(map)?;
    row.map(|row| rows::message(conversation, &row)).transpose()
}

/// Up to `query.fetch` messages after the cursor in the page's order: each query is a range scan
/// of the primary key in that order (no sort, no offset; see the README's EXPLAIN plans).
pub(crate) async fn page(
    pool: &PgPool,
    conversation: &ConversationId,
    query: PageQuery,
) -> Result<Vec<StoredMessage>> {
    let fetch = i64::from(query.fetch);
    let found = reading(|| {
        let q = match (query.direction, query.cursor) {
            (Direction::NewestFirst, None) => sqlx::query(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = $1 ORDER BY msg_id DESC LIMIT $2"
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
        q.fetch_all(pool)
    })
    .await
    .map_err(map)?;
    rows::each(&found, |row, cols: &MessageCols| {
        rows::message_at(conversation, row, cols)
    })
}
