//! The imstore backend for PostgreSQL: the message lifecycle contract on one SQL database.
//!
//! * [`PostgresStore`] implements [`imstore_core::MessageStore`]: every transition is one READ
//!   COMMITTED transaction holding the status change, its change event and its request record;
//!   the change feed's seq order is commit order; batch inserts are one UNNEST round trip;
//!   purges run in bounded batches that concurrent workers split without blocking.
//! * [`PostgresConfig`] says where the database is, how big the pool is, which schema the tables
//!   live in, and whether connecting applies the embedded migrations ([`MIGRATOR`]).
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
//! # let _ = store; Ok(()) }
//! ```

#![deny(missing_docs)]

mod config;
mod error;
mod store;

pub use config::{PostgresConfig, validate_schema_name};
pub use store::{MIGRATOR, PostgresStore};
