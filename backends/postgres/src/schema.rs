//! The embedded migrations, and the checks a fresh pool passes before the store uses it.

use imstore_core::{Error, ErrorKind, Result};
use sqlx::postgres::PgPool;

use crate::error::{map, map_connect};
use crate::rows::column;

/// The embedded schema migrations (`backends/postgres/migrations`): `0001` the tables, `0002`
/// the `refusal` column of request records, `0003` the feed's purge mark, the attachment
/// reference counts and the outbox of released keys. Applied ones are never edited.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies the migrations not yet applied in the pool's schema; idempotent, and safe from
/// several processes at once (sqlx takes an advisory lock).
pub(crate) async fn migrate(pool: &PgPool) -> Result<()> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(inner) => map_connect(inner),
        other => Error::new(ErrorKind::Backend, "migration failed").with_source(other),
    })
}

/// Refuses a database the store cannot serve faithfully, on the first connection:
/// a configured schema that does not exist is `InvalidInput` on `schema` (the caller's
/// configuration), and a database not encoded in UTF-8 is `Backend` (ids that are valid
/// everywhere else would fail there, one by one, with `untranslatable character`).
pub(crate) async fn check_database(pool: &PgPool, schema: Option<&str>) -> Result<()> {
    let row = sqlx::query(
        "SELECT current_setting('server_encoding') AS encoding, \
             $1::text IS NULL OR EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
                 AS schema_exists",
    )
    .bind(schema)
    .fetch_one(pool)
    .await
    .map_err(map)?;
    if !column::<bool>(&row, "schema_exists")? {
        return Err(Error::invalid_input(
            "schema",
            "does not exist in the database; create it before connecting",
        ));
    }
    let encoding: String = column(&row, "encoding")?;
    if encoding != "UTF8" {
        return Err(Error::new(
            ErrorKind::Backend,
            format!("the database is encoded in {encoding}; imstore needs UTF8"),
        ));
    }
    Ok(())
}
