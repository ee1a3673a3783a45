//! The imstore backend for PostgreSQL: the message lifecycle contract on one SQL database.
//!
//! [`PostgresStore`] is the core's pipeline ([`imstore_core::Store`]) over [`PostgresBackend`]:
//! core validates every argument, runs the codec, decides every transition and renders every
//! view; this crate only persists. Every transition is one atomic statement (the status change,
//! its change event and its request record commit together), after one read unless the handle
//! already knows the message's state (then it is one round trip in all); the change feed's
//! seq order is commit order; batch inserts are one UNNEST statement per 64 MiB of content;
//! purges run in bounded batches that concurrent workers split without blocking.
//! [`PostgresConfig`] says where the database is, how the pool behaves, which schema the tables
//! live in, and whether connecting applies the embedded migrations ([`MIGRATOR`]).
//!
//! ```no_run
//! # async fn demo() -> imstore_core::Result<()> {
//! use imstore_core::StoreSettings;
//! use imstore_postgres::{PostgresConfig, PostgresStore};
//!
//! let config = PostgresConfig::new("postgres://imstore:imstore@127.0.0.1:5432/imstore")
//!     .with_schema("chat")
//!     .with_max_connections(16);
//! let store = PostgresStore::connect(config, StoreSettings::default()).await?;
//! store.inner().migrate().await?; // idempotent; already done on connect by default
//! # Ok(()) }
//! ```

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cache;
mod config;
mod error;
mod feed;
mod handle;
mod insert;
mod purge;
mod read;
mod rekey;
mod rows;
mod schema;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod transition;

pub use config::{PostgresConfig, validate_schema_name};
pub use handle::{PostgresBackend, PostgresStore};
pub use schema::MIGRATOR;
