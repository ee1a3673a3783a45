//! imstore on MongoDB 6/7/8 (replica set, sharded or standalone) and FerretDB v1.
//!
//! * [`MongoStore`] implements the whole [`imstore_core::MessageStore`] contract with
//!   single-document writes only: no multi-document transactions, no `Client::bulk_write`.
//! * [`MongoConfig`] sets the connection, database, write concern (majority by default) and how
//!   long an unfinished commit is left to its writer before others complete it.
//!
//! One document per message (unique `{conversation_id: 1, msg_id: -1}`). A transition commits by
//! inserting version `v + 1` into a per-message commit log under a unique index, the one write
//! that is a true compare-and-set on every MongoDB deployment and on FerretDB v1; its event, its
//! request outcome and the message's new lifecycle follow, idempotently, written by the
//! committer or by whoever finds the commit unfinished. See `README.md` for the full design.

#![deny(missing_docs)]

mod config;
mod doc;
mod error;
mod feed;
mod schema;
mod store;

pub use config::MongoConfig;
pub use store::MongoStore;
