//! Inserts: one `insert_one` (or one unordered `insert_many`) under the unique message key;
//! a duplicate key is answered with the stored message, and core decides retry or conflict.

use imstore_core::backend::{EncodedMessage, Fields, Inserted};
use imstore_core::{Error, ErrorKind, Result, Retry, Timestamp};
use mongodb::bson::Document;
use mongodb::error::ErrorKind as DriverKind;

use crate::doc as d;
use crate::error::{DUPLICATE_KEY, is_duplicate_key, map};
use crate::handle::MongoBackend;
use crate::read;

/// The stored message a duplicate key points at; `None` when it is gone (its purge committed:
/// the insert is run again once the purge has deleted the document, so an answer never
/// contradicts a read that found the message purged).
async fn existing(b: &MongoBackend, message: &EncodedMessage) -> Result<Option<Inserted>> {
    let m = message.message();
    let row = read::committed(b, &m.conversation_id, m.msg_id, Fields::All).await?;
    Ok(row.map(|row| Inserted::Existing(row.stored)))
}

/// Writes one message unless its msg_id is stored.
pub(crate) async fn one(
    b: &MongoBackend,
    message: &EncodedMessage,
    created_at: Timestamp,
) -> Result<Inserted> {
    let doc = d::message_doc(message.message(), created_at);
    Retry::default()
        .run(|_| async {
            match b.messages.insert_one(doc.clone()).await {
                Ok(_) => Ok(Some(Inserted::New)),
                Err(e) if is_duplicate_key(&e) => existing(b, message).await,
                Err(e) => Err(map(e)),
            }
        })
        .await
}

/// The batch indexes an unordered `insert_many` refused as duplicates, or the error when it
/// failed otherwise (anything but duplicates is not the caller's answer).
fn duplicates(e: mongodb::error::Error) -> Result<Vec<usize>> {
    if let DriverKind::InsertMany(m) = e.kind.as_ref()
        && m.write_concern_error.is_none()
        && let Some(errors) = m.write_errors.as_deref()
        && errors.iter().all(|w| w.code == DUPLICATE_KEY)
    {
        return Ok(errors.iter().map(|w| w.index).collect());
    }
    Err(map(e))
}

/// Writes every message of the batch in one unordered `insert_many` (the driver splits it at
/// the server's message size), then answers each duplicate with its stored message.
pub(crate) async fn batch(
    b: &MongoBackend,
    messages: &[EncodedMessage],
    created_at: Timestamp,
) -> Result<Vec<Inserted>> {
    let docs: Vec<Document> = messages
        .iter()
        .map(|m| d::message_doc(m.message(), created_at))
        .collect();
    let dups = match b.messages.insert_many(docs).ordered(false).await {
        Ok(_) => Vec::new(),
        Err(e) => duplicates(e)?,
    };
    let mut out: Vec<Inserted> = messages.iter().map(|_| Inserted::New).collect();
    for i in dups {
        let (Some(slot), Some(m)) = (out.get_mut(i), messages.get(i)) else {
            return Err(Error::new(
                ErrorKind::Backend,
                "the server reported a write error for an unknown batch index",
            ));
        };
        *slot = match existing(b, m).await? {
            Some(found) => found,
            // Purged in between: store it now, as if the batch had run a moment later.
            None => one(b, m, created_at).await?,
        };
    }
    Ok(out)
}
