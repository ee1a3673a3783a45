//! imstore on ScyllaDB or Apache Cassandra (CQL protocol v4, `scylla` driver 1.x).
//!
//! [`ScyllaStore`] is the core pipeline ([`imstore_core::Store`]) over [`ScyllaBackend`]: core
//! validates, encodes, decides and renders; this crate only persists.
//!
//! * Messages are partitioned by `(conversation_id, bucket)` (the bucket is the msg_id's time
//!   divided by the bucket width, 10 days by default) and clustered newest first; a
//!   per-conversation `buckets` index lets pages skip empty buckets.
//! * Every transition is ONE conditional batch on the conversation's `conversation_state`
//!   partition: lifecycle `IF version = ?`, feed seq `IF feed_head = ?`, the event, and the
//!   request record `IF at_ms = null`; so the change feed and request records can never disagree
//!   with a message.
//! * Retention goes through a `purge_queue` keyed by the day messages become purgeable, and the
//!   history limit through a `history_queue` keyed by the day they were accepted, so the purge
//!   never scans live partitions.
//!
//! ```no_run
//! # async fn demo() -> imstore_core::Result<()> {
//! use imstore_core::{MessageStore, StoreSettings};
//! use imstore_scylla::{ScyllaConfig, ScyllaStore};
//!
//! let config = ScyllaConfig::new(["10.0.0.1:9042"], "imstore");
//! let store = ScyllaStore::connect(config, StoreSettings::default()).await?;
//! assert_eq!(store.backend(), "scylla");
//! println!("{:?}", store.inner().server());
//! # Ok(())
//! # }
//! ```
//!
//! See `README.md` for the schema, the consistency levels and what differs on ScyllaDB.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod feed;
mod handle;
mod index;
mod insert;
mod purge;
mod read;
mod rekey;
mod rows;
pub mod schema;
mod statements;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod transition;

pub use config::{
    Credentials, DEFAULT_BUCKET_WIDTH, Replication, ScyllaConfig, ScyllaTls, validate_keyspace,
};
pub use handle::{ScyllaBackend, ScyllaStore, session_for};
pub use schema::{Flavour, ServerInfo};
