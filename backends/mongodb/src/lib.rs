//! imstore on MongoDB 6/7/8 (replica set, sharded or standalone) and FerretDB v1.
//!
//! * [`MongoStore`] (`imstore_core::Store<MongoBackend>`) is what callers use: the core pipeline
//!   (validation, codec, replay and staleness order, rendering, spans) over [`MongoBackend`],
//!   which only persists.
//! * [`MongoConfig`] sets the connection, database, write and read concerns and the operation
//!   timeout; it is validated when the backend connects.
//!
//! Single-document writes only: no multi-document transaction, no `Client::bulk_write`. Every
//! contended decision is one insert into the `log` collection under three unique indexes (the
//! feed position, the message version, the request id), so a transition's event, its new
//! lifecycle and its request record are one document, committed together or not at all, and
//! visible to every reader from that insert on. See `README.md` for the design.
//!
//! ```no_run
//! # async fn demo() -> imstore_core::Result<()> {
//! use imstore_core::StoreSettings;
//! use imstore_mongodb::{MongoConfig, MongoStore};
//!
//! let config = MongoConfig::new("mongodb://127.0.0.1:27017/?replicaSet=rs0", "chat");
//! let store = MongoStore::connect(config, StoreSettings::default()).await?;
//! let database = store.inner().database(); // administration goes through the backend
//! # let _ = database; Ok(()) }
//! ```

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod doc;
mod error;
mod feed;
mod handle;
mod insert;
mod purge;
#[doc(hidden)]
pub mod queries;
mod read;
mod rekey;
mod schema;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod transition;

pub use config::{MongoConfig, validate_database_name};
pub use handle::{MongoBackend, MongoStore};
