//! Every statement the store runs, prepared once at start-up with the configured consistency.

use futures::future::try_join_all;
use imstore_core::Result;
use scylla::client::session::Session;
use scylla::statement::Consistency;
use scylla::statement::SerialConsistency;
use scylla::statement::prepared::PreparedStatement;

use crate::config::ScyllaConfig;
use crate::error;

/// Whether a statement may be retried by the driver, and how it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A plain read or an idempotent plain write: the driver may retry it.
    Idempotent,
    /// A conditional (Paxos) write: never retried blindly; the store re-reads instead.
    Conditional,
    /// A linearizable read (SERIAL / LOCAL_SERIAL), used to settle a conditional write whose
    /// outcome a timeout left unknown.
    SerialRead,
}

macro_rules! statements {
    ($($name:ident: $mode:ident => $cql:literal,)*) => {
        /// The prepared statements, one field per statement.
        #[derive(Debug)]
        pub(crate) struct Statements {
            $(pub(crate) $name: PreparedStatement,)*
        }

        impl Statements {
            /// Prepares every statement against `config.keyspace`.
            pub(crate) async fn prepare(session: &Session, config: &ScyllaConfig) -> Result<Self> {
                let ks = config.keyspace();
                let texts: Vec<(String, Mode)> = vec![
                    $((format!($cql, ks = ks), Mode::$mode),)*
                ];
                let prepared = try_join_all(texts.into_iter().map(|(cql, mode)| async move {
                    let mut p = session.prepare(cql).await.map_err(error::prepare)?;
                    configure(&mut p, mode, config);
                    Ok::<_, imstore_core::Error>(p)
                }))
                .await?;
                let mut it = prepared.into_iter();
                Ok(Statements {
                    $($name: it.next().ok_or_else(|| {
                        imstore_core::Error::new(
                            imstore_core::ErrorKind::Backend,
                            "fewer prepared statements than statement texts",
                        )
                    })?,)*
                })
            }
        }
    };
}

fn configure(p: &mut PreparedStatement, mode: Mode, config: &ScyllaConfig) {
    p.set_request_timeout(Some(config.request_timeout()));
    p.set_serial_consistency(Some(config.serial_consistency()));
    match mode {
        Mode::Idempotent => {
            p.set_consistency(config.consistency());
            p.set_is_idempotent(true);
        }
        Mode::Conditional => {
            p.set_consistency(config.consistency());
            p.set_is_idempotent(false);
        }
        Mode::SerialRead => {
            p.set_consistency(match config.serial_consistency() {
                SerialConsistency::Serial => Consistency::Serial,
                SerialConsistency::LocalSerial => Consistency::LocalSerial,
            });
            p.set_is_idempotent(true);
        }
    }
}

statements! {
    // --- messages: immutable after the conditional insert; deleted only by the purge.
    msg_insert: Conditional => "INSERT INTO {ks}.messages (conversation_id, bucket, msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at, insert_token) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS",
    msg_get: Idempotent => "SELECT sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at, insert_token FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?",
    msg_get_serial: SerialRead => "SELECT sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at, insert_token FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?",
    msg_get_meta: Idempotent => "SELECT sender_id, msg_type, attachment_key, attachment_size, attachment_mime, created_at FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?",
    msg_meta_in: Idempotent => "SELECT msg_id, sender_id, msg_type, attachment_key, attachment_size, attachment_mime, created_at FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id IN ?",
    msg_exists: Idempotent => "SELECT msg_id FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id IN ?",
    // Newest first from the newest message: no bound, so the largest msg_id is included.
    msg_page_newest: Idempotent => "SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT ?",
    msg_page_desc: Idempotent => "SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id < ? LIMIT ?",
    msg_page_asc: Idempotent => "SELECT msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, created_at FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id > ? ORDER BY msg_id ASC LIMIT ?",
    msg_delete: Conditional => "DELETE FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ? IF EXISTS",
    // The re-key job's scan, in token order, and its compare-and-set on the stored bytes.
    msg_scan: Idempotent => "SELECT token(conversation_id, bucket), conversation_id, bucket, msg_id, content FROM {ks}.messages WHERE token(conversation_id, bucket) > ? LIMIT ?",
    msg_scan_rest: Idempotent => "SELECT token(conversation_id, bucket), conversation_id, bucket, msg_id, content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id < ? LIMIT ?",
    // The stored bytes at SERIAL: settles a re-key write whose outcome a timeout left unknown.
    msg_content_serial: SerialRead => "SELECT content FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? AND msg_id = ?",
    msg_replace_content: Conditional => "UPDATE {ks}.messages SET content = ? WHERE conversation_id = ? AND bucket = ? AND msg_id = ? IF content = ?",
    msg_any: Idempotent => "SELECT msg_id FROM {ks}.messages WHERE conversation_id = ? AND bucket = ? LIMIT 1",

    // --- buckets: the non-empty buckets of a conversation.
    bucket_add: Idempotent => "INSERT INTO {ks}.buckets (conversation_id, bucket) VALUES (?, ?)",
    // Removal at the time the purge saw the bucket empty, so any add after that wins.
    bucket_remove: Idempotent => "DELETE FROM {ks}.buckets USING TIMESTAMP ? WHERE conversation_id = ? AND bucket = ?",
    buckets_desc: Idempotent => "SELECT bucket FROM {ks}.buckets WHERE conversation_id = ? AND bucket <= ? LIMIT ?",
    buckets_asc: Idempotent => "SELECT bucket FROM {ks}.buckets WHERE conversation_id = ? AND bucket >= ? ORDER BY bucket ASC LIMIT ?",

    // --- conversation_state, kind 0: lifecycles (k = msg_id) and bucket sentinels (k < 0).
    state_get: Idempotent => "SELECT status, version, recalled_at, recalled_by, restored_at, deleted_at, deleted_by, event_seqs, purging, release_key FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = ''",
    // Lifecycles with their buckets' sentinels, in ONE single-partition read (one snapshot).
    state_fenced: Idempotent => "SELECT k, status, version, recalled_at, recalled_by, restored_at, deleted_at, deleted_by, event_seqs, purging, release_key, at_ms, purged_through, call_token, request_id FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k IN ? AND request_id = ''",
    state_fenced_serial: SerialRead => "SELECT k, status, version, recalled_at, recalled_by, restored_at, deleted_at, deleted_by, event_seqs, purging, release_key, at_ms, purged_through, call_token, request_id FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k IN ? AND request_id = ''",
    state_write: Conditional => "UPDATE {ks}.conversation_state SET status = ?, version = ?, recalled_at = ?, recalled_by = ?, restored_at = ?, deleted_at = ?, deleted_by = ?, event_seqs = event_seqs + ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF version = ? AND purging = null",
    // The purge's commit: the lifecycle becomes a marker, refused under legal hold.
    // The marker carries the committing call's time and token (at_ms, call_token: unused on
    // lifecycle rows otherwise), so a timed-out commit is recognised as this call's own.
    purge_commit: Conditional => "UPDATE {ks}.conversation_state SET purging = true, release_key = ?, at_ms = ?, call_token = ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF version = ? AND purging = null AND legal_hold != true",
    sentinel_set: Idempotent => "UPDATE {ks}.conversation_state SET at_ms = ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = ''",
    // The sentinel's mirror (see `read::mirror_key`), written beside it by every purge commit.
    mirror_set: Idempotent => "UPDATE {ks}.conversation_state SET at_ms = ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = ?",
    // One bucket's lifecycles newest first from the top of its id range, the sentinel's mirror
    // first: one single-partition read, so one snapshot (a latest page, beside its rows).
    state_top: Idempotent => "SELECT k, status, version, recalled_at, recalled_by, restored_at, deleted_at, deleted_by, event_seqs, purging, release_key, at_ms, purged_through, call_token, request_id FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k >= ? AND k <= ? ORDER BY kind DESC, k DESC, request_id DESC LIMIT ?",
    sentinel_fence: Conditional => "UPDATE {ks}.conversation_state SET at_ms = ? WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF at_ms = ?",
    // Raises the feed's low-water mark, in the purge's commit (only ever upwards: expects the
    // value read).
    purged_through_raise: Conditional => "UPDATE {ks}.conversation_state SET purged_through = ? WHERE conversation_id = ? IF purged_through = ?",
    state_delete: Conditional => "DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 0 AND k = ? AND request_id = '' IF purging = true",
    // The hold is written with the head row, so reading it never scans the partition. Every read
    // of statics also selects `k`: Cassandra refuses a static-only selection that names a row,
    // and on a partition with no rows but statics, a scan returns k null.
    // Through Paxos, with the head row in the same batch: see `purge::set_legal_hold`.
    hold_put: Conditional => "UPDATE {ks}.conversation_state SET legal_hold = ? WHERE conversation_id = ? IF legal_hold != ?",
    hold_get: Idempotent => "SELECT legal_hold, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = -1 AND k = 0 AND request_id = ''",
    // A keyspace made before head rows: the first row of the partition carries the statics, and
    // reaching it passes every tombstone in front of it.
    hold_scan: Idempotent => "SELECT legal_hold, k FROM {ks}.conversation_state WHERE conversation_id = ? LIMIT 1",

    // --- conversation_state, kind -1: the head row (k = 0), never deleted, written by every
    // batch on the partition and by the legal hold. The statics come with it, read by name:
    // the read never passes the tombstones of purged lifecycles, events and request records.
    head_mark: Idempotent => "INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id) VALUES (?, -1, 0, '')",
    // --- conversation_state, kind 1: the feed; feed_head (static) is its last seq.
    head_get: Idempotent => "SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = -1 AND k = 0 AND request_id = ''",
    head_get_serial: SerialRead => "SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = -1 AND k = 0 AND request_id = ''",
    // The heads of many conversations in one request: the head row of each partition asked,
    // read by the coordinator concurrently.
    heads_in: Idempotent => "SELECT conversation_id, feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id IN ? AND kind = -1 AND k = 0 AND request_id = ''",
    // The same three reads on a keyspace made before head rows (see `hold_scan`).
    head_scan: Idempotent => "SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? LIMIT 1",
    head_scan_serial: SerialRead => "SELECT feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id = ? LIMIT 1",
    heads_scan_in: Idempotent => "SELECT conversation_id, feed_head, purged_through, k FROM {ks}.conversation_state WHERE conversation_id IN ? PER PARTITION LIMIT 1",
    head_claim: Conditional => "UPDATE {ks}.conversation_state SET feed_head = ? WHERE conversation_id = ? IF feed_head = ?",
    event_put: Conditional => "INSERT INTO {ks}.conversation_state (conversation_id, kind, k, request_id, msg_id, status, version, at_ms, actor) VALUES (?, 1, ?, '', ?, ?, ?, ?, ?)",
    event_delete: Conditional => "DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 1 AND k = ? AND request_id = ''",
    // Seqs are dense (each batch claims head + 1), so the window (after, after + limit] holds at
    // most `limit` rows, live or purged: the read passes at most that many tombstones, and none
    // from a cursor at or above the low-water mark (every purged seq is at or below it).
    events_after: Idempotent => "SELECT k, msg_id, status, version, at_ms, actor, feed_head, purged_through FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 1 AND k > ? AND k <= ? LIMIT ?",

    // --- conversation_state, kind 2: request records.
    request_get: Idempotent => "SELECT action, msg_id, actor, status, version, changed, at_ms, refusal, call_token FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ?",
    request_get_serial: SerialRead => "SELECT action, msg_id, actor, status, version, changed, at_ms, refusal, call_token FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ?",
    // Insert-if-absent: a record is the first outcome of its id and is never overwritten.
    request_put: Conditional => "UPDATE {ks}.conversation_state SET action = ?, msg_id = ?, actor = ?, status = ?, version = ?, changed = ?, at_ms = ?, refusal = ?, call_token = ? WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ? IF at_ms = null",
    request_ages: Idempotent => "SELECT request_id, at_ms FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id IN ?",
    request_expire: Conditional => "DELETE FROM {ks}.conversation_state WHERE conversation_id = ? AND kind = 2 AND k = 0 AND request_id = ? IF at_ms <= ?",

    // --- attachment references.
    ref_add: Idempotent => "INSERT INTO {ks}.attachment_refs (attachment_key, conversation_id, msg_id) VALUES (?, ?, ?)",
    ref_remove: Idempotent => "DELETE FROM {ks}.attachment_refs WHERE attachment_key = ? AND conversation_id = ? AND msg_id = ?",
    ref_any: Idempotent => "SELECT msg_id FROM {ks}.attachment_refs WHERE attachment_key = ? LIMIT 1",

    // --- the sharded queues (days in purge_days shards 2 and 3), read from progress marks.
    rq_add: Idempotent => "INSERT INTO {ks}.retention_queue (day, shard, due, conversation_id, msg_id, request_id) VALUES (?, ?, ?, ?, ?, ?)",
    rq_remove: Idempotent => "DELETE FROM {ks}.retention_queue WHERE day = ? AND shard = ? AND due = ? AND conversation_id = ? AND msg_id = ? AND request_id = ?",
    rq_scan: Idempotent => "SELECT due, conversation_id, msg_id, request_id FROM {ks}.retention_queue WHERE day = ? AND shard = ? AND due >= ? AND due <= ?",
    rq_drop: Idempotent => "DELETE FROM {ks}.retention_queue WHERE day = ? AND shard = ?",
    hq_add: Idempotent => "INSERT INTO {ks}.history_index (day, shard, created_at, conversation_id, msg_id) VALUES (?, ?, ?, ?, ?)",
    hq_remove: Idempotent => "DELETE FROM {ks}.history_index WHERE day = ? AND shard = ? AND created_at = ? AND conversation_id = ? AND msg_id = ?",
    hq_scan: Idempotent => "SELECT created_at, conversation_id, msg_id FROM {ks}.history_index WHERE day = ? AND shard = ? AND created_at >= ? AND created_at <= ?",
    hq_drop: Idempotent => "DELETE FROM {ks}.history_index WHERE day = ? AND shard = ?",
    progress_get: Idempotent => "SELECT shard, through FROM {ks}.purge_progress WHERE queue = ? AND day = ?",
    progress_set: Idempotent => "INSERT INTO {ks}.purge_progress (queue, day, shard, through) VALUES (?, ?, ?, ?)",
    progress_drop: Idempotent => "DELETE FROM {ks}.purge_progress WHERE queue = ? AND day = ?",
    // --- the parked entries of held conversations, read again once the hold is lifted.
    held_park: Idempotent => "INSERT INTO {ks}.held_entries (conversation_id, queue, due, msg_id, request_id) VALUES (?, ?, ?, ?, ?)",
    held_note: Idempotent => "INSERT INTO {ks}.held_conversations (part, conversation_id) VALUES (0, ?)",
    held_list: Idempotent => "SELECT conversation_id FROM {ks}.held_conversations WHERE part = 0",
    held_entries_of: Idempotent => "SELECT queue, due, msg_id, request_id FROM {ks}.held_entries WHERE conversation_id = ?",
    held_entry_remove: Idempotent => "DELETE FROM {ks}.held_entries WHERE conversation_id = ? AND queue = ? AND due = ? AND msg_id = ? AND request_id = ?",
    // At the time the purge started reading the backlog, so an entry parked since survives.
    held_forget: Idempotent => "DELETE FROM {ks}.held_conversations USING TIMESTAMP ? WHERE part = 0 AND conversation_id = ?",

    // --- legacy unsharded retention index (shard 0 of purge_days) and history index (shard 1),
    // drained by the purge, written by nothing.
    queue_remove: Idempotent => "DELETE FROM {ks}.purge_queue WHERE day = ? AND due = ? AND conversation_id = ? AND msg_id = ? AND request_id = ?",
    queue_due: Idempotent => "SELECT due, conversation_id, msg_id, request_id FROM {ks}.purge_queue WHERE day = ? AND due <= ?",
    queue_any: Idempotent => "SELECT due FROM {ks}.purge_queue WHERE day = ? LIMIT 1",
    history_remove: Idempotent => "DELETE FROM {ks}.history_queue WHERE day = ? AND created_at = ? AND conversation_id = ? AND msg_id = ?",
    history_due: Idempotent => "SELECT created_at, conversation_id, msg_id FROM {ks}.history_queue WHERE day = ? AND created_at <= ?",
    history_any: Idempotent => "SELECT created_at FROM {ks}.history_queue WHERE day = ? LIMIT 1",
    history_drop_day: Idempotent => "DELETE FROM {ks}.history_queue WHERE day = ?",
    days_add: Idempotent => "INSERT INTO {ks}.purge_days (shard, day) VALUES (?, ?)",
    days_list: Idempotent => "SELECT day FROM {ks}.purge_days WHERE shard = ? AND day > ? AND day <= ? LIMIT ?",
    days_remove: Idempotent => "DELETE FROM {ks}.purge_days WHERE shard = ? AND day = ?",
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_is_the_default() {
        let config = ScyllaConfig::new(["127.0.0.1:9042"], "ks");
        assert_eq!(config.serial_consistency(), SerialConsistency::Serial);
    }
}
