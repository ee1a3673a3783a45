//! The per-conversation change feed: one document per event, `seq` unique per conversation.
//!
//! An append reads the conversation's highest `seq` and inserts `seq + 1`; the unique index on
//! `(conversation_id, seq)` makes the insert the compare-and-set (a loser re-reads and retries).
//! So an event with seq `n + 1` is only ever written after the event with seq `n` was visible:
//! sequence numbers are gap-free at append time and follow commit order, and a reader that
//! pulls `seq > cursor` in seq order cannot skip an event that is appended later.
//!
//! Appends are idempotent: `(conversation_id, msg_id, version)` is unique too, so completing a
//! commit twice appends its event once. Purge deletes the events of purged messages, except the
//! conversation's highest seq, which is emptied instead ("hollow") so that it is never reused.

use std::time::Duration;

use futures::TryStreamExt;
use imstore_core::lifecycle::RequestRecord;
use imstore_core::{ChangeEvent, ConversationId, Error, ErrorKind, FeedCursor, Result, Timestamp};
use mongodb::Collection;
use mongodb::bson::{Document, doc};

use crate::doc::{get_i64, get_msg_id, get_status, get_user, get_version};
use crate::error::{is_duplicate_key, map};

#[derive(Clone, Debug)]
pub(crate) struct Feed {
    pub coll: Collection<Document>,
    pub max_attempts: u32,
}

/// A short, jittered pause after a lost compare-and-set, so contenders spread out.
pub(crate) async fn backoff(attempt: u32) {
    use std::hash::{BuildHasher, RandomState};
    let cap = 1u64 << attempt.min(5);
    let jitter = RandomState::new().hash_one(attempt) % (cap * 500);
    tokio::time::sleep(Duration::from_micros(jitter)).await;
}

impl Feed {
    async fn has_event(&self, r: &RequestRecord) -> Result<bool> {
        Ok(self
            .coll
            .find_one(doc! {
                "conversation_id": r.conversation_id.as_str(),
                "msg_id": r.msg_id.as_i64(),
                "version": i64::from(r.version),
            })
            .projection(doc! {"_id": 1})
            .await
            .map_err(map)?
            .is_some())
    }

    /// The highest seq of a conversation (0 when it has no event yet).
    async fn head(&self, conversation: &ConversationId) -> Result<i64> {
        let head = self
            .coll
            .find_one(doc! {"conversation_id": conversation.as_str()})
            .sort(doc! {"seq": -1})
            .projection(doc! {"seq": 1})
            .await
            .map_err(map)?;
        match head {
            Some(h) => get_i64(&h, "seq"),
            None => Ok(0),
        }
    }

    /// Appends the event of the transition recorded in `r`, once.
    pub(crate) async fn append(&self, r: &RequestRecord) -> Result<()> {
        for attempt in 0..self.max_attempts {
            if attempt > 0 {
                backoff(attempt).await;
            }
            let seq = self.head(&r.conversation_id).await? + 1;
            let event = doc! {
                "conversation_id": r.conversation_id.as_str(),
                "seq": seq,
                "msg_id": r.msg_id.as_i64(),
                "version": i64::from(r.version),
                "status": i32::from(r.status.code()),
                "at": r.at.as_millis(),
                "by": r.requester.as_str(),
            };
            match self.coll.insert_one(event).await {
                Ok(_) => return Ok(()),
                // Either the seq was taken (retry after the new head) or the event is already
                // there (a twin completed this commit): tell the two apart.
                Err(e) if is_duplicate_key(&e) => {
                    if self.has_event(r).await? {
                        return Ok(());
                    }
                }
                Err(e) => return Err(map(e)),
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            "feed append lost too many races for the next sequence number",
        ))
    }

    /// Up to `limit` events after `cursor`, in seq order.
    pub(crate) async fn read(
        &self,
        conversation: &ConversationId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<Vec<ChangeEvent>> {
        let after = i64::try_from(cursor.0).unwrap_or(i64::MAX);
        let docs: Vec<Document> = self
            .coll
            .find(doc! {
                "conversation_id": conversation.as_str(),
                "seq": {"$gt": after},
                "hollow": {"$ne": true},
            })
            .sort(doc! {"seq": 1})
            .limit(i64::from(limit))
            .await
            .map_err(map)?
            .try_collect()
            .await
            .map_err(map)?;
        docs.iter()
            .map(|ev| {
                Ok(ChangeEvent {
                    seq: u64::try_from(get_i64(ev, "seq")?)
                        .map_err(|_| crate::error::bad_field("seq", "is negative"))?,
                    conversation_id: conversation.clone(),
                    msg_id: get_msg_id(ev, "msg_id")?,
                    status: get_status(ev, "status")?,
                    version: get_version(ev, "version")?,
                    at: Timestamp::from_millis(get_i64(ev, "at")?),
                    by: get_user(ev, "by")?,
                })
            })
            .collect()
    }

    /// Removes the events of `msg_ids` (of one conversation); returns how many were removed.
    ///
    /// The conversation's highest seq is never deleted (a later append would reuse it and a
    /// reader already past it would miss that event): if it belongs to a purged message it is
    /// hollowed (status, author and time removed, skipped by readers) and deleted by a later
    /// purge once it is no longer the head.
    pub(crate) async fn remove_events(
        &self,
        conversation: &ConversationId,
        msg_ids: &[i64],
    ) -> Result<u64> {
        if msg_ids.is_empty() {
            return Ok(0);
        }
        let head = self.head(conversation).await?;
        let conv = conversation.as_str();
        let deleted = self
            .coll
            .delete_many(doc! {
                "conversation_id": conv,
                "msg_id": {"$in": msg_ids},
                "seq": {"$lt": head},
            })
            .await
            .map_err(map)?
            .deleted_count;
        let hollowed = self
            .coll
            .update_one(
                doc! {
                    "conversation_id": conv,
                    "seq": head,
                    "msg_id": {"$in": msg_ids},
                    "hollow": {"$ne": true},
                },
                doc! {"$set": {"hollow": true}, "$unset": {"status": "", "at": "", "by": ""}},
            )
            .await
            .map_err(map)?
            .modified_count;
        // Hollow events left by earlier purges that are no longer the head.
        self.coll
            .delete_many(doc! {"conversation_id": conv, "hollow": true, "seq": {"$lt": head}})
            .await
            .map_err(map)?;
        Ok(deleted + hollowed)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn backoff_is_short() {
        let t = std::time::Instant::now();
        super::backoff(30).await;
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
    }
}
