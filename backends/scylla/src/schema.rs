//! The keyspace and its five tables, created idempotently at start-up, and server detection.
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
pub enum Flavour {
    /// ScyllaDB: LWT results carry the old row; keyspaces may default to tablets.
    Scylla,
    /// Apache Cassandra: LWT results carry the current row only when not applied.
    Cassandra,
}

/// The server's flavour and the version it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// The DDL of the five tables, in creation order, for `keyspace` on `flavour`.
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
        // batch: the message's lifecycle (kind 0, k = msg_id), the change event (kind 1,
        // k = feed seq), the request record (kind 2, request_id) and the feed head (static);
        // the legal hold (static) fences the purge's conditional mark.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.conversation_state (
                conversation_id text,
                kind tinyint,
                k bigint,
                request_id text,
                feed_head bigint STATIC,
                legal_hold boolean STATIC,
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
                PRIMARY KEY ((conversation_id), kind, k, request_id)
            ) WITH compaction = {{'class': 'LeveledCompactionStrategy'}}{gc}"
        ),
        // Messages (request_id '') and request records that become purgeable, by the day they
        // do and then by the exact time.
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
        // The days that have purge_queue entries.
        format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.purge_days (
                shard int,
                day int,
                PRIMARY KEY ((shard), day)
            ) WITH comment = 'imstore purge days'{gc}"
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

/// Creates the keyspace (if absent) and the tables (if absent), waiting for schema agreement.
pub async fn ensure(session: &Session, config: &ScyllaConfig, flavour: Flavour) -> Result<()> {
    validate_keyspace(&config.keyspace)?;
    let ks = &config.keyspace;
    let replication = config.replication.to_cql()?;
    let plain = format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication} AND durable_writes = true"
    );
    if flavour == Flavour::Scylla {
        // LWT needs vnodes on ScyllaDB releases where tablets are the default; releases
        // that predate tablets refuse the option, and get the plain statement.
        let with_vnodes = format!("{plain} AND tablets = {{'enabled': false}}");
        match session.query_unpaged(with_vnodes, &[]).await {
            Ok(_) => {}
            Err(e) if is_refusal(&e) => {
                session
                    .query_unpaged(plain, &[])
                    .await
                    .map_err(error::execution)?;
            }
            Err(e) => return Err(error::execution(e)),
        }
    } else {
        session
            .query_unpaged(plain, &[])
            .await
            .map_err(error::execution)?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(error::schema_agreement)?;
    for ddl in table_ddl(ks, flavour) {
        session
            .query_unpaged(ddl, &[])
            .await
            .map_err(error::execution)?;
    }
    session
        .await_schema_agreement()
        .await
        .map_err(error::schema_agreement)?;
    Ok(())
}

/// Drops the keyspace and everything in it (tests and tear-down).
pub async fn drop_keyspace(session: &Session, keyspace: &str) -> Result<()> {
    validate_keyspace(keyspace)?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
        .await
        .map_err(error::execution)?;
    session
        .await_schema_agreement()
        .await
        .map_err(error::schema_agreement)?;
    Ok(())
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
}
