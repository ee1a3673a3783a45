//! imstore on ScyllaDB or Apache Cassandra (CQL protocol v4, `scylla` driver 1.x).
//!
//! * Messages are partitioned by `(conversation_id, bucket)` (the bucket is the msg_id's time
//!   divided by [`ScyllaConfig::bucket_width`], 10 days by default) and clustered newest first;
//!   a per-conversation `buckets` index lets pages skip empty buckets.
//! * Every transition is ONE conditional batch on the conversation's `conversation_state`
//!   partition: lifecycle `IF version = ?`, feed seq `IF feed_head = ?`, the event, and the
//!   request record; so the change feed and request records can never disagree with a message.
//! * Retention goes through a `purge_queue` keyed by the day messages become purgeable, so the
//!   purge never scans live partitions.
//!
//! See `README.md` for the schema, the consistency levels and what differs on ScyllaDB.

#![deny(missing_docs)]

mod config;
mod error;
mod rows;
pub mod schema;
mod statements;
mod store;

pub use config::{DEFAULT_BUCKET_WIDTH, Replication, ScyllaConfig, validate_keyspace};
pub use schema::{Flavour, ServerInfo};
pub use store::{ScyllaStore, session_for};
