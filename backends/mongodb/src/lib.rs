//! imstore on MongoDB 6/7/8 (replica set, sharded or standalone) and FerretDB v1.
//!
//! * [`MongoStore`] implements the whole [`imstore_core::MessageStore`] contract with
//!   single-document atomic writes only: no multi-document transactions, no `Client::bulk_write`.
//! * [`MongoConfig`] sets the connection, database, write concern (majority by default) and feed
//!   layout.
//!
//! One document per message (unique `{conversation_id: 1, msg_id: -1}`); a transition is one
//! compare-and-set on the message's version that also leaves a pending marker with the request
//! record; the change event is then appended to a per-conversation chunked feed, idempotently, by
//! the writer or by whoever finds the marker first. See `README.md` for the full design.

mod config;
mod doc;
mod error;
mod feed;
mod schema;
mod store;

pub use config::MongoConfig;
pub use store::MongoStore;
