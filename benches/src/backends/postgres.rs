//! PostgreSQL: imstore-postgres in a fresh schema made by the crate's testing factory, against
//! sqlx with the minimal statement on the same tables (`messages`, `change_events`) and the same
//! primary keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imstore_core::{NewMessage, StoreSettings};
use imstore_postgres::PostgresStore;
use imstore_postgres::testing::PgFactory;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::harness::R;
use crate::now_ms;
use crate::target::{Handle, Raw, SyncStores, Target};
use crate::wire::{CountingProxy, Protocol, pg_host_port, pg_url_via};

/// Connections per pool: the same for imstore's pool and the baseline's, so that neither side
/// queues more at concurrency 64.
const POOL: u32 = 24;

/// The schema prefix of bench runs (what `drop_leftovers` sweeps).
const PREFIX: &str = "bench_pg";

/// The PostgreSQL target over schema `schema`.
pub struct PgTarget {
    factory: PgFactory,
    schema: String,
    version: String,
    base: PostgresStore,
    admin: PgPool,
    raw: Arc<PgRaw>,
}

impl PgTarget {
    /// Creates schema `schema` through the testing factory and connects imstore (which
    /// migrates it) and the baseline.
    pub async fn connect(url: &str, schema: String) -> R<Self> {
        let factory = PgFactory::new(url).with_prefix(PREFIX).with_pool_size(POOL);
        let admin = factory.admin().await.clone();
        let version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&admin)
            .await?;
        factory.create_schema(&schema).await;
        let base =
            PostgresStore::connect(factory.config(&schema), StoreSettings::default()).await?;
        let options: PgConnectOptions = url.parse()?;
        // The pool behaves as imstore's does (`PostgresConfig` default): no ping before a
        // connection is handed out, so the baseline's statement is not charged a round trip
        // that imstore does not make.
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .test_before_acquire(false)
            .connect_with(options.options([("search_path", schema.as_str())]))
            .await?;
        Ok(PgTarget {
            factory,
            schema,
            version,
            base,
            admin,
            raw: Arc::new(PgRaw { pool }),
        })
    }
}

#[async_trait]
impl Target for PgTarget {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn namespace(&self) -> String {
        format!("schema {}", self.schema)
    }
    fn server_version(&self) -> Option<String> {
        Some(self.version.clone())
    }
    async fn open(&self, settings: StoreSettings) -> R<Handle> {
        Ok(Handle {
            store: Arc::new(self.base.reconfigured(settings)?),
            close: None,
        })
    }
    async fn open_isolated(&self, settings: StoreSettings) -> R<Handle> {
        let config = self
            .factory
            .config(&self.schema)
            .with_max_connections(1)
            .with_migrate_on_connect(false);
        let store = PostgresStore::connect(config, settings).await?;
        let pool = store.inner().pool().clone();
        Ok(Handle {
            store: Arc::new(store),
            // A server process flushes its table statistics when it exits: closing the pool
            // makes the counters complete instead of waiting for the idle flush.
            close: Some(Box::pin(async move { pool.close().await })),
        })
    }
    async fn open_sync(&self, settings: StoreSettings) -> R<SyncStores> {
        let timed = Arc::new(self.base.reconfigured(settings.clone())?);
        let url = self.factory.url();
        let proxy = Arc::new(CountingProxy::start(&pg_host_port(url)?, Protocol::Postgres).await?);
        let config = PgFactory::new(pg_url_via(url, proxy.addr)?)
            .config(&self.schema)
            .with_max_connections(2)
            .with_migrate_on_connect(false);
        let counted = Arc::new(PostgresStore::connect(config, settings).await?);
        Ok(SyncStores {
            timed,
            counted,
            requests: Some(Arc::new(move || proxy.count())),
            method: "wire: Sync and Query messages the client sent (each answered by one \
                     ReadyForQuery), counted by a loopback proxy"
                .into(),
        })
    }
    fn raw(&self) -> Arc<dyn Raw> {
        self.raw.clone()
    }
    fn write_method(&self) -> String {
        "server: pg_stat_user_tables n_tup_ins + n_tup_upd + n_tup_del deltas of the bench schema \
         (rows inserted, updated, deleted), read after the recalling connection closed"
            .into()
    }
    async fn write_counters(&self) -> R<Option<BTreeMap<String, u64>>> {
        // Counters of exited sessions reach the shared statistics a moment later: read until
        // two reads agree.
        let mut last: Option<BTreeMap<String, u64>> = None;
        for _ in 0..20 {
            let mut conn = self.admin.acquire().await?;
            sqlx::query("SELECT pg_stat_clear_snapshot()")
                .execute(&mut *conn)
                .await?;
            let rows = sqlx::query(
                "SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables \
                 WHERE schemaname = $1 AND relname <> '_sqlx_migrations'",
            )
            .bind(&self.schema)
            .fetch_all(&mut *conn)
            .await?;
            let mut now = BTreeMap::new();
            for r in rows {
                let t: String = r.try_get(0)?;
                for (i, op) in [(1, "ins"), (2, "upd"), (3, "del")] {
                    let n: i64 = r.try_get(i)?;
                    now.insert(format!("{t}.{op}"), n as u64);
                }
            }
            if last.as_ref() == Some(&now) {
                return Ok(Some(now));
            }
            last = Some(now);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(last)
    }
    async fn quiesce(&self) -> R<()> {
        self.raw.pool.close().await;
        self.base.inner().pool().close().await;
        Ok(())
    }
    async fn drop_namespace(&self) -> R<()> {
        self.raw.pool.close().await;
        self.base.inner().pool().close().await;
        self.factory.drop_schema(&self.schema).await;
        self.admin.close().await;
        Ok(())
    }
}

/// sqlx on its own pool, `search_path` set to the bench schema.
pub struct PgRaw {
    pool: PgPool,
}

#[async_trait]
impl Raw for PgRaw {
    async fn send(&self, m: &NewMessage) -> R<()> {
        sqlx::query(
            "INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(m.conversation_id.as_str())
        .bind(m.msg_id.as_i64())
        .bind(m.sender_id.as_str())
        .bind(m.msg_type.code())
        .bind(m.content.as_slice())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        let convs: Vec<&str> = ms.iter().map(|m| m.conversation_id.as_str()).collect();
        let ids: Vec<i64> = ms.iter().map(|m| m.msg_id.as_i64()).collect();
        let senders: Vec<&str> = ms.iter().map(|m| m.sender_id.as_str()).collect();
        let types: Vec<i32> = ms.iter().map(|m| m.msg_type.code()).collect();
        let contents: Vec<&[u8]> = ms.iter().map(|m| m.content.as_slice()).collect();
        sqlx::query(
            "INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, created_at) \
             SELECT u.*, $6::int8 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int4[], $5::bytea[]) AS u",
        )
        .bind(convs)
        .bind(ids)
        .bind(senders)
        .bind(types)
        .bind(contents)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64) -> R<()> {
        let c: Vec<u8> = sqlx::query_scalar(
            "SELECT content FROM messages WHERE conversation_id = $1 AND msg_id = $2",
        )
        .bind(conv)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        std::hint::black_box(c);
        Ok(())
    }
    async fn latest(&self, conv: &str, limit: u32) -> R<usize> {
        let rows = sqlx::query(
            "SELECT msg_id, sender_id, status, content FROM messages WHERE conversation_id = $1 \
             ORDER BY msg_id DESC LIMIT $2",
        )
        .bind(conv)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.len())
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, at: i64) -> R<()> {
        sqlx::query(
            "UPDATE messages SET status = 1, version = version + 1, recalled_at = $3, recalled_by = $4 \
             WHERE conversation_id = $1 AND msg_id = $2 AND status = 0",
        )
        .bind(conv)
        .bind(id)
        .bind(at)
        .bind(by)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    async fn restore(&self, conv: &str, id: i64, at: i64) -> R<()> {
        sqlx::query(
            "UPDATE messages SET status = 0, version = version + 1, recalled_at = NULL, restored_at = $3 \
             WHERE conversation_id = $1 AND msg_id = $2 AND status = 1",
        )
        .bind(conv)
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let rows = sqlx::query(
            "SELECT seq, msg_id, status, version FROM change_events \
             WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(conv)
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.len())
    }
}

/// Drops every `bench_pg_*` schema (left behind by interrupted runs, whatever their age: run it
/// when no bench is running); returns their names.
pub async fn drop_leftovers(url: &str) -> R<Vec<String>> {
    let factory = PgFactory::new(url)
        .with_prefix(PREFIX)
        .with_leftover_age(Duration::ZERO);
    let names = factory.sweep_leftovers().await;
    factory.admin().await.close().await;
    Ok(names)
}
