//! The embedded migrations.

use imstore_core::{Error, ErrorKind, Result};
use sqlx::postgres::PgPool;

use crate::error::map;

/// The embedded schema migrations (`backends/postgres/migrations`): `0001` the tables, `0002`
/// the `refusal` column of request records. Applied ones are never edited.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the migrations not yet applied in the pool's schema; idempotent, and safe from
/// several processes at once (sqlx takes an advisory lock).
pub(crate) async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => map(inner),
        other => Error::new(ErrorKind::Backend, "migration failed").with_source(other),
    })
}
