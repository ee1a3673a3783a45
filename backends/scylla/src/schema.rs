//! The keyspace and its twelve tables, created idempotently at start-up, the migrations of keyspaces
//! made by older versions, server detection, and the node's size limits.
//!
//! Only CQL that both Apache Cassandra (4/5) and ScyllaDB accept is sent to both; the
//! ScyllaDB-only options (`tablets`, `tombstone_gc`) are appended only when the server is ScyllaDB.

use imstore_core::Result;
use scylla::client::session::Session;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

use crate::config::{ScyllaConfig, validate_keyspace};
use crate::error;

/// Which server speaks CQL on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavour {
    /// ScyllaDB: LWT results carry the old row; keyspaces may default to tablets.
    Scylla,
    /// Apache Cassandra: LWT results carry the current row only when not applied.
    Cassandra,
}

/// The server's flavour and the version it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerInfo {
    /// ScyllaDB or Apache Cassandra.
    pub flavour: Flavour,
    /// `system.local.release_version` (ScyllaDB reports its Cassandra-compatible version here).
    pub release_version: String,
}

/// Detects the server: ScyllaDB announces shard information when a connection opens and has a
/// `system.scylla_local` table; Cassandra has neither.
pub async fn detect(session: &Session) -> Result<ServerInfo> {
    let state = session.get_cluster_state();
    let sharded = state.get_nodes_info().iter().any(|n| n.sharder().is_some());
    let flavour = if sharded
        || session
            .query_unpaged("SELECT key FROM system.scylla_local LIMIT 1", &[])
            .await
            .is_ok()
    {
        Flavour::Scylla
    } else {
        Flavour::Cassandra
    };
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("system.local", e))?;
    let release_version = rows
        .maybe_first_row::<(Option<String>,)>()
        .map_err(|e| error::decode("system.local", e))?
        .and_then(|(v,)| v)
        .unwrap_or_default();
    Ok(ServerInfo {
        flavour,
        release_version,
    })
}

/// Columns added to `conversation_state` after its first release, with their types: created by
/// the current DDL, added by [`ensure`] to keyspaces made before.
const ADDED_STATE_COLUMNS: [(&str, &str); 4] = [
    // The kind of a recorded refusal (`ErrorKind::as_str`); null for an applied outcome.
    ("refusal", "text"),
    // The random token of the transition call that wrote a request record.
    ("call_token", "bigint"),
    // On a purge marker: the attachment key the purge releases.
    ("release_key", "text"),
    // The highest feed seq whose event a purge removed: the feed's low-water mark.
    ("purged_through", "bigint static"),
];

/// The comment of a `conversation_state` table made with head rows (kind -1, k 0: written by
/// every batch on the partition, read by name for the feed head and the legal hold). A table
/// made before has another comment, and its partitions may have state but no head row.
pub const HEAD_ROWS: &str = "imstore conversation state, head rows";

/// The comment of a `conversation_state` table made with head rows AND sentinel mirrors: every
/// purge commit on it, since the table was made, also wrote the bucket's sentinel at the top of
/// the bucket's lifecycle range (`read::mirror_key`), so a newest-first slice of a bucket's
/// lifecycles carries the sentinel in the same snapshot. A table made before may hold buckets
/// purged without one, and keeps the page's separate lifecycle read.
pub const SENTINEL_MIRRORS: &str = "imstore conversation state, head rows, sentinel mirrors";

/// What the keyspace's `conversation_state` layout has (read from its table comment).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateLayout {
    /// Every partition with state has a head row ([`HEAD_ROWS`]).
    pub head_rows: bool,
    /// Every purged bucket has a sentinel mirror ([`SENTINEL_MIRRORS`]).
    pub sentinel_mirrors: bool,
}

/// The layout of the keyspace's `conversation_state` (see [`HEAD_ROWS`], [`SENTINEL_MIRRORS`]).
pub async fn state_layout(session: &Session, keyspace: &str) -> Result<StateLayout> {
    validate_keyspace(keyspace)?;
    let rows = session
        .query_unpaged(
            "SELECT comment FROM system_schema.tables WHERE keyspace_name = ? AND table_name = 'conversation_state'",
            (keyspace,),
        )
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("system_schema.tables", e))?;
    let comment = rows
        .maybe_first_row::<(Option<String>,)>()
        .map_err(|e| error::decode("system_schema.tables", e))?
        .and_then(|(c,)| c);
    let mirrors = comment.as_deref() == Some(SENTINEL_MIRRORS);
    Ok(StateLayout {
        head_rows: mirrors || comment.as_deref() == Some(HEAD_ROWS),
        sentinel_mirrors: mirrors,
    })
}

/// Whether the keyspace's `conversation_state` was made with head rows (see [`HEAD_ROWS`]).
pub async fn has_head_rows(session: &Session, keyspace: &str) -> Result<bool> {
    Ok(state_layout(session, keyspace).await?.head_rows)
}

/// The DDL of the twelve tables, in creation order, for `keyspace` on `flavour`.
pub fn table_ddl(keyspace: &str, flavour: Flavour) -> Vec<String> {
    // ScyllaDB: drop tombstones only after repair has propagated them, so a deleted message or
    // event cannot come back from a replica that missed the delete.
    let gc = match flavour {
        Flavour::Scylla => " AND tombstone_gc = {'mode': 'repair'}",
        Flavour::Cassandra => "",
    };
    vec![
        // Immutable message data, one partition per conversation and time bucket, newest first.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.messages (
                conversation_id text,
                bucket int,
                msg_id bigint,
                sender_id text,
                msg_type int,
                content blob,
                attachment_key text,
                attachment_size bigint,
                attachment_mime text,
                created_at bigint,
                insert_token bigint,
                PRIMARY KEY ((conversation_id, bucket), msg_id)
            ) WITH CLUSTERING ORDER BY (msg_id DESC){gc}"
        ),
        // The non-empty buckets of a conversation, newest first.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.buckets (
                conversation_id text,
                bucket int,
                PRIMARY KEY ((conversation_id), bucket)
            ) WITH CLUSTERING ORDER BY (bucket DESC){gc}"
        ),
        // Per conversation, one partition that every transition changes with ONE conditional
        // batch: the message's lifecycle (kind 0, k = msg_id; purging = the purge's commit
        // marker), the purge sentinel of a bucket (kind 0, k = -(bucket + 1), at_ms = epoch),
        // the change event (kind 1, k = feed seq), the request record (kind 2, request_id) and
        // the feed head and the purge's low-water mark of the feed (statics); the legal hold
        // (static) fences the purge's commit.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.conversation_state (
                conversation_id text,
                kind tinyint,
                k bigint,
                request_id text,
                feed_head bigint STATIC,
                legal_hold boolean STATIC,
                purged_through bigint static,
                msg_id bigint,
                status tinyint,
                version int,
                recalled_at bigint,
                recalled_by text,
                restored_at bigint,
                deleted_at bigint,
                deleted_by text,
                event_seqs set<bigint>,
                purging boolean,
                at_ms bigint,
                actor text,
                action text,
                changed boolean,
                refusal text,
                call_token bigint,
                release_key text,
                PRIMARY KEY ((conversation_id), kind, k, request_id)
            ) WITH compaction = {{'class': 'LeveledCompactionStrategy'}} AND comment = '{SENTINEL_MIRRORS}'{gc}"
        ),
        // Messages (request_id '') and request records that become purgeable after the
        // retention, by the day they do and then by the exact time.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.purge_queue (
                day int,
                due bigint,
                conversation_id text,
                msg_id bigint,
                request_id text,
                PRIMARY KEY ((day), due, conversation_id, msg_id, request_id)
            ) WITH comment = 'imstore purge index'{gc}"
        ),
        // The sharded retention queue: entries by due day and conversation shard, then time.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.retention_queue (
                day int,
                shard int,
                due bigint,
                conversation_id text,
                msg_id bigint,
                request_id text,
                PRIMARY KEY ((day, shard), due, conversation_id, msg_id, request_id)
            ) WITH comment = 'imstore retention queue'{gc}"
        ),
        // The sharded history-limit index: messages by accepted day and shard, then time.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.history_index (
                day int,
                shard int,
                created_at bigint,
                conversation_id text,
                msg_id bigint,
                PRIMARY KEY ((day, shard), created_at, conversation_id, msg_id)
            ) WITH comment = 'imstore history-limit index'{gc}"
        ),
        // Per queue, day and shard: every entry due before `through` is done.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.purge_progress (
                queue int,
                day int,
                shard int,
                through bigint,
                PRIMARY KEY ((queue, day), shard)
            ) WITH comment = 'imstore purge progress'{gc}"
        ),
        // Queue entries of held conversations, parked until the hold is lifted.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.held_entries (
                conversation_id text,
                queue int,
                due bigint,
                msg_id bigint,
                request_id text,
                PRIMARY KEY ((conversation_id), queue, due, msg_id, request_id)
            ) WITH comment = 'imstore parked purge entries'{gc}"
        ),
        // The conversations with parked entries (few: held conversations with a backlog).
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.held_conversations (
                part int,
                conversation_id text,
                PRIMARY KEY ((part), conversation_id)
            ) WITH comment = 'imstore held conversations with parked entries'{gc}"
        ),
        // The days that have purge_queue (shard 0), history_queue (shard 1), retention_queue
        // (shard 2) or history_index (shard 3) entries.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.purge_days (
                shard int,
                day int,
                PRIMARY KEY ((shard), day)
            ) WITH comment = 'imstore purge days'{gc}"
        ),
        // Every stored message holding an attachment, by its key: a key is released when the
        // purge removed the last message that references it (a file forwarded elsewhere under
        // the same key stays live).
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.attachment_refs (
                attachment_key text,
                conversation_id text,
                msg_id bigint,
                PRIMARY KEY ((attachment_key), conversation_id, msg_id)
            ) WITH comment = 'imstore attachment references'{gc}"
        ),
        // Every message by the day and time it was accepted: the history limit's index (the
        // insert does not know the policy; the purge does).
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.history_queue (
                day int,
                created_at bigint,
                conversation_id text,
                msg_id bigint,
                PRIMARY KEY ((day), created_at, conversation_id, msg_id)
            ) WITH comment = 'imstore history-limit index'{gc}"
        ),
    ]
}

fn is_refusal(e: &ExecutionError) -> bool {
    matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::SyntaxError | DbError::Invalid | DbError::ConfigError,
            _
        ))
    )
}

async fn run(session: &Session, cql: String) -> Result<()> {
    session
        .query_unpaged(cql, &[])
        .await
        .map_err(error::execution)?;
    Ok(())
}

async fn agree(session: &Session) -> Result<()> {
    session
        .await_schema_agreement()
        .await
        .map_err(error::schema_agreement)?;
    Ok(())
}

/// Creates the keyspace (if absent) and the tables (if absent), adds the columns newer versions
/// use to tables made before, and waits for schema agreement.
pub async fn ensure(session: &Session, config: &ScyllaConfig, flavour: Flavour) -> Result<()> {
    let ks = config.keyspace();
    validate_keyspace(ks)?;
    let replication = config.replication().to_cql()?;
    let plain = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND durable_writes = true"
    );
    if flavour == Flavour::Scylla {
        // LWT needs vnodes on ScyllaDB releases where tablets are the default; releases
        // that predate tablets refuse the option, and get the plain statement.
        let with_vnodes = format!("{plain} AND tablets = {{'enabled': false}}");
        match session.query_unpaged(with_vnodes, &[]).await {
            Ok(_) => {}
            Err(e) if is_refusal(&e) => run(session, plain).await?,
            Err(e) => return Err(error::execution(e)),
        }
    } else {
        run(session, plain).await?;
    }
    agree(session).await?;
    for ddl in table_ddl(ks, flavour) {
        run(session, ddl).await?;
    }
    migrate(session, ks).await?;
    agree(session).await
}

/// Adds the `conversation_state` columns that a keyspace made by an older version lacks
/// (`refusal`, `call_token`, `release_key`, `purged_through`); idempotent.
pub async fn migrate(session: &Session, keyspace: &str) -> Result<()> {
    validate_keyspace(keyspace)?;
    let rows = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? AND table_name = 'conversation_state'",
            (keyspace,),
        )
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("system_schema.columns", e))?;
    let have = rows
        .rows::<(String,)>()
        .map_err(|e| error::decode("system_schema.columns", e))?
        .map(|r| r.map(|(c,)| c))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| error::decode("system_schema.columns", e))?;
    for (column, ty) in ADDED_STATE_COLUMNS {
        if !have.iter().any(|c| c == column) {
            run(
                session,
                format!("ALTER TABLE {keyspace}.conversation_state ADD {column} {ty}"),
            )
            .await?;
        }
    }
    Ok(())
}

/// Drops the keyspace and everything in it (tests and tear-down).
pub async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    validate_keyspace(keyspace)?;
    run(session, format!("DROP KEYSPACE IF EXISTS {keyspace}")).await?;
    agree(session).await
}

/// Empties every table of the keyspace, leaving the schema (tests reuse keyspaces this way).
pub async fn truncate_keyspace(session: &Session, keyspace: &str, flavour: Flavour) -> Result<()> {
    validate_keyspace(keyspace)?;
    let tables: Vec<String> = table_ddl(keyspace, flavour)
        .iter()
        .filter_map(|ddl| {
            let start = ddl.find(&format!("{keyspace}."))? + keyspace.len() + 1;
            let end = start + ddl[start..].find(' ')?;
            Some(ddl[start..end].to_string())
        })
        .collect();
    for table in tables {
        run(session, format!("TRUNCATE TABLE {keyspace}.{table}")).await?;
    }
    Ok(())
}

/// The names of every keyspace of the cluster.
pub async fn keyspaces(session: &Session) -> Result<Vec<String>> {
    let rows = session
        .query_unpaged("SELECT keyspace_name FROM system_schema.keyspaces", &[])
        .await
        .map_err(error::execution)?
        .into_rows_result()
        .map_err(|e| error::decode("system_schema.keyspaces", e))?;
    rows.rows::<(String,)>()
        .map_err(|e| error::decode("system_schema.keyspaces", e))?
        .map(|r| r.map(|(k,)| k))
        .collect::<std::result::Result<Vec<String>, _>>()
        .map_err(|e| error::decode("system_schema.keyspaces", e))
}

/// The commitlog segment both servers ship with by default (32 MiB on Cassandra; ScyllaDB's
/// newer default is 64 MiB): the limit assumed when the node's settings cannot be read.
const DEFAULT_SEGMENT_BYTES: usize = 32 * 1024 * 1024;

/// The largest mutation the node accepts and the largest request frame it reads, whichever is
/// smaller, in bytes.
///
/// A mutation may be at most half a commitlog segment (`max_mutation_size`, on Cassandra also
/// settable on its own), and on Cassandra a protocol-v4 request frame at most
/// `native_transport_max_frame_size` (16 MiB by default). Read from `system_views.settings`
/// (Cassandra 4+) or `system.config` (ScyllaDB); when neither is readable, half of the default
/// 32 MiB segment.
pub async fn max_mutation_bytes(session: &Session, flavour: Flavour) -> usize {
    let query = match flavour {
        Flavour::Scylla => "SELECT name, value FROM system.config",
        Flavour::Cassandra => "SELECT name, value FROM system_views.settings",
    };
    let settings: Vec<(String, Option<String>)> = match session.query_unpaged(query, &[]).await {
        Ok(res) => match res.into_rows_result() {
            Ok(rows) => rows
                .rows::<(String, Option<String>)>()
                .map(|it| it.filter_map(|r| r.ok()).collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        },
        Err(_) => Vec::new(),
    };
    limit_from_settings(&settings)
}

/// [`max_mutation_bytes`] from `(name, value)` pairs of the node's settings.
fn limit_from_settings(settings: &[(String, Option<String>)]) -> usize {
    let get = |names: &[&str]| {
        settings.iter().find_map(|(n, v)| {
            names
                .contains(&n.as_str())
                .then(|| v.as_deref().and_then(|v| parse_size(n, v)))
                .flatten()
        })
    };
    let segment = get(&["commitlog_segment_size", "commitlog_segment_size_in_mb"])
        .unwrap_or(DEFAULT_SEGMENT_BYTES);
    let mutation = get(&["max_mutation_size", "max_mutation_size_in_kb"]).unwrap_or(segment / 2);
    let frame = get(&[
        "native_transport_max_frame_size",
        "native_transport_max_frame_size_in_mb",
    ])
    .unwrap_or(usize::MAX);
    mutation.min(segment / 2).min(frame)
}

/// A size setting as bytes: `32MiB`-style values, or a bare number in the unit its name says
/// (`_in_mb`, `_in_kb`).
fn parse_size(name: &str, value: &str) -> Option<usize> {
    let v = value.trim().trim_matches('"');
    let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
    let n: usize = digits.parse().ok()?;
    let unit = v[digits.len()..].trim().to_ascii_lowercase();
    let scale = match unit.as_str() {
        "" if name.ends_with("_in_mb") => 1 << 20,
        "" if name.ends_with("_in_kb") => 1 << 10,
        "" | "b" => 1,
        "kib" | "kb" => 1 << 10,
        "mib" | "mb" => 1 << 20,
        "gib" | "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_only_options_stay_off_cassandra() {
        for ddl in table_ddl("ks", Flavour::Cassandra) {
            assert!(!ddl.contains("tombstone_gc"), "{ddl}");
            assert!(!ddl.contains("tablets"), "{ddl}");
            // Compaction classes both servers know.
            assert!(!ddl.contains("Unified") && !ddl.contains("Incremental"));
        }
        assert!(
            table_ddl("ks", Flavour::Scylla)
                .iter()
                .all(|d| d.contains("tombstone_gc"))
        );
    }

    #[test]
    fn every_added_column_is_in_the_current_ddl() {
        let ddl = &table_ddl("ks", Flavour::Cassandra)[2];
        for (column, ty) in ADDED_STATE_COLUMNS {
            assert!(ddl.contains(&format!("{column} {ty},")), "{column}");
        }
    }

    #[test]
    fn limits_come_from_the_segment_the_mutation_and_the_frame() {
        let s = |pairs: &[(&str, Option<&str>)]| {
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.map(str::to_string)))
                .collect::<Vec<_>>()
        };
        // Cassandra 5 defaults.
        let c5 = s(&[
            ("commitlog_segment_size", Some("32MiB")),
            ("max_mutation_size", None),
            ("native_transport_max_frame_size", Some("16MiB")),
        ]);
        assert_eq!(limit_from_settings(&c5), 16 << 20);
        // ScyllaDB: a 64 MB segment, frames up to 256 MB.
        let scylla = s(&[
            ("commitlog_segment_size_in_mb", Some("64")),
            ("native_transport_max_frame_size_in_mb", Some("256")),
        ]);
        assert_eq!(limit_from_settings(&scylla), 32 << 20);
        // An explicit, smaller mutation limit wins; nothing readable falls back to 16 MiB.
        let small = s(&[
            ("commitlog_segment_size", Some("32MiB")),
            ("max_mutation_size", Some("4MiB")),
        ]);
        assert_eq!(limit_from_settings(&small), 4 << 20);
        assert_eq!(limit_from_settings(&[]), 16 << 20);
    }
}
