//! imstore: message lifecycle storage for IM services.
//!
//! Send, recall, restore, delete, retention purge and the change feed every device pulls, behind one
//! [`MessageStore`] trait. The in-memory reference store is always available; real backends are
//! chosen at compile time with cargo features:
//!
//! | feature    | module       | backend                                   |
//! |------------|--------------|-------------------------------------------|
//! | (always)   | [`memory`]   | [`MemoryStore`], the embedded default     |
//! | `postgres` | `postgres`   | PostgreSQL through sqlx                   |
//! | `mongodb`  | `mongodb`    | MongoDB through the official driver       |
//! | `scylla`   | `scylla`     | ScyllaDB / Cassandra through `scylla`     |
//!
//! At run time, [`open_url`] (or [`StoreUrl::parse`] and [`StoreUrl::open`]) opens the store a
//! URL names: `memory://`, `postgres://…`, `mongodb://…`, `scylla://host1,host2/keyspace`, with
//! credentials and TLS (see [`url`]).
//!
//! Every backend passes the same conformance suite (`imstore-conformance`), which you can run
//! against your own deployment.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use imstore_core::*;

pub mod url;
pub use url::{AnyStore, ServerUrl, StoreUrl, open as open_url};

// The README's usage snippet is a doctest of this crate, so it is compiled and run in CI.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The in-memory reference store: complete, concurrency-safe, not durable.
pub mod memory {
    pub use imstore_core::memory::{MemoryBackend, MemoryStore};
}

/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use imstore_postgres as postgres;

/// The MongoDB backend (feature `mongodb`).
#[cfg(feature = "mongodb")]
#[cfg_attr(docsrs, doc(cfg(feature = "mongodb")))]
pub use imstore_mongodb as mongodb;

/// The ScyllaDB / Cassandra backend (feature `scylla`).
#[cfg(feature = "scylla")]
#[cfg_attr(docsrs, doc(cfg(feature = "scylla")))]
pub use imstore_scylla as scylla;
