//! PostgreSQL: imstore-postgres in a fresh schema made by the crate's testing factory, against
//! sqlx with the minimal statement on the same tables (`messages`, `change_events`) and the same
//! primary keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use imstore_core::{NewMessage, StoreSettings};
use imstore_postgres::testing::PgFactory;
use imstore_postgres::{PostgresConfig, PostgresStore};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::harness::R;
use crate::now_ms;
use crate::target::{Fair, Handle, Raw, SyncStores, Target};
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
        // A server process flushes its table statistics when it exits: closing the pool makes
        // the counters complete instead of waiting for the idle flush.
        own_pool(
            self.factory.config(&self.schema).with_max_connections(1),
            settings,
        )
        .await
    }
    async fn open_group(&self, settings: StoreSettings) -> R<Handle> {
        own_pool(self.factory.config(&self.schema), settings).await
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
    fn fair(&self) -> Option<Arc<dyn Fair>> {
        Some(Arc::new(PgFair {
            pool: self.raw.pool.clone(),
        }))
    }
    fn pools(&self) -> Option<serde_json::Value> {
        let size = |p: &PgPool| serde_json::json!({"size": p.size(), "idle": p.num_idle()});
        Some(serde_json::json!({
            "imstore": size(self.base.inner().pool()),
            "baseline": size(&self.raw.pool),
        }))
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
    async fn settle(&self) -> R<Option<String>> {
        let tables: Vec<(String, i64)> = sqlx::query_as(
            "SELECT relname::text, n_dead_tup FROM pg_stat_user_tables \
             WHERE schemaname = $1 ORDER BY relname",
        )
        .bind(&self.schema)
        .fetch_all(&self.admin)
        .await?;
        for (t, _) in &tables {
            // VACUUM cannot run in a transaction block: the simple protocol, one statement. The
            // names are the bench's own schema and the tables the server listed, quoted.
            let sql = format!("VACUUM (ANALYZE) \"{}\".\"{t}\"", self.schema);
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&self.admin)
                .await?;
        }
        let dead: Vec<String> = tables
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} {n}"))
            .collect();
        Ok(Some(format!(
            "VACUUM (ANALYZE) of every table; dead rows before: {}",
            if dead.is_empty() {
                "none".into()
            } else {
                dead.join(", ")
            }
        )))
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

/// A store on a pool of its own (the schema already migrated), the pool closed by the handle.
async fn own_pool(config: PostgresConfig, settings: StoreSettings) -> R<Handle> {
    let store = PostgresStore::connect(config.with_migrate_on_connect(false), settings).await?;
    let pool = store.inner().pool().clone();
    Ok(Handle {
        store: Arc::new(store),
        close: Some(Box::pin(async move { pool.close().await })),
    })
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
    fn round_trips(&self, _path: &str) -> Option<u32> {
        Some(1)
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

/// The fair baseline: sqlx on the baseline's pool, each job one statement (one round trip) that
/// carries every guarantee imstore's path gives.
pub struct PgFair {
    pool: PgPool,
}

/// The columns a view is built from: the message, its attachment and its whole lifecycle.
macro_rules! view_columns {
    () => {
        "msg_id, sender_id, msg_type, content, attachment_key, attachment_size, attachment_mime, \
         status, version, created_at, recalled_at, recalled_by, restored_at, deleted_at, deleted_by"
    };
}

/// A row as a viewer sees it: content kept only when shown (normal, or the sender's own recalled
/// message, which the sender may re-edit).
fn pg_view(row: &sqlx::postgres::PgRow, viewer: &str) -> R<()> {
    // By position, in the order of `view_columns!` (a by-name read hashes and compares the
    // name on every call; imstore resolves the positions once per result set).
    let sender: String = row.try_get(1)?;
    let status: i16 = row.try_get(7)?;
    let shown = status == 0 || (status == 1 && sender == viewer);
    let view = (
        row.try_get::<i64, _>(0)?,
        row.try_get::<i32, _>(2)?,
        row.try_get::<i64, _>(8)?,
        row.try_get::<i64, _>(9)?,
        row.try_get::<Option<i64>, _>(10)?,
        row.try_get::<Option<String>, _>(11)?,
        row.try_get::<Option<i64>, _>(12)?,
        row.try_get::<Option<i64>, _>(13)?,
        row.try_get::<Option<String>, _>(14)?,
        (
            row.try_get::<Option<String>, _>(4)?,
            row.try_get::<Option<i64>, _>(5)?,
            row.try_get::<Option<String>, _>(6)?,
        ),
        shown.then(|| row.try_get::<Vec<u8>, _>(3)).transpose()?,
    );
    std::hint::black_box((sender, view));
    Ok(())
}

/// A fair transition's one statement: the replay check (`prior`), the compare-and-set with the
/// action's rules in its WHERE (`guard`; `$4` the requester, `$5` now, `$6` the window), the
/// next feed seq (the upsert holds the conversation row until commit, so seq order is commit
/// order), the event with the new `status` and the request record, all or nothing.
macro_rules! fair_transition_sql {
    ($set:literal, $guard:literal, $status:literal, $action:literal) => {
        concat!(
            "WITH prior AS ( \
                 SELECT changed FROM requests WHERE conversation_id = $1 AND request_id = $3), \
             cas AS ( \
                 UPDATE messages SET ",
            $set,
            " WHERE conversation_id = $1 AND msg_id = $2 AND ",
            $guard,
            " AND NOT EXISTS (SELECT 1 FROM prior) RETURNING version), \
             seq AS ( \
                 INSERT INTO conversations (conversation_id, feed_seq) SELECT $1, 1 FROM cas \
                 ON CONFLICT (conversation_id) DO UPDATE SET feed_seq = conversations.feed_seq + 1 \
                 RETURNING feed_seq), \
             event AS ( \
                 INSERT INTO change_events (conversation_id, seq, msg_id, status, version, at, by_user) \
                 SELECT $1, seq.feed_seq, $2, ",
            $status,
            ", cas.version, $5, $4 FROM seq, cas RETURNING 1), \
             record AS ( \
                 INSERT INTO requests (conversation_id, request_id, action, msg_id, requester, \
                     status, version, changed, at) \
                 SELECT $1, $3, '",
            $action,
            "', $2, $4, ",
            $status,
            ", cas.version, true, $5 FROM cas RETURNING 1) \
             SELECT (SELECT count(*) FROM cas) + (SELECT count(*) FROM event) \
                 + (SELECT count(*) FROM record) AS writes, \
                 (SELECT changed FROM prior) AS replayed"
        )
    };
}

impl PgFair {
    /// Runs a [`fair_transition_sql!`] statement: applied (three rows written) or answered by
    /// the record of an earlier call under `request`; anything else is an error.
    #[allow(clippy::too_many_arguments)]
    async fn transition(
        &self,
        sql: &'static str,
        action: &str,
        conv: &str,
        id: i64,
        by: &str,
        request: &str,
        window_ms: i64,
    ) -> R<()> {
        let row = sqlx::query(sql)
            .bind(conv)
            .bind(id)
            .bind(request)
            .bind(by)
            .bind(now_ms())
            .bind(window_ms)
            .fetch_one(&self.pool)
            .await?;
        let writes: i64 = row.try_get("writes")?;
        let replayed: Option<bool> = row.try_get("replayed")?;
        match (writes, replayed) {
            (3, _) | (_, Some(true)) => Ok(()),
            _ => Err(format!("fair {action} of {id} did not apply ({writes} writes)").into()),
        }
    }
}

#[async_trait]
impl Fair for PgFair {
    fn round_trips(&self, path: &str) -> Option<u32> {
        matches!(
            path,
            "send" | "batch_send_1000" | "point_read" | "latest_page" | "recall" | "feed_page"
        )
        .then_some(1)
    }
    async fn send(&self, m: &NewMessage) -> R<()> {
        self.send_batch(std::slice::from_ref(m)).await
    }
    async fn send_batch(&self, ms: &[NewMessage]) -> R<()> {
        // Never overwrites. The happy path is the one statement; only when some id existed
        // does a second read judge them: same sender, type and content is a retry.
        let convs: Vec<&str> = ms.iter().map(|m| m.conversation_id.as_str()).collect();
        let ids: Vec<i64> = ms.iter().map(|m| m.msg_id.as_i64()).collect();
        let senders: Vec<&str> = ms.iter().map(|m| m.sender_id.as_str()).collect();
        let types: Vec<i32> = ms.iter().map(|m| m.msg_type.code()).collect();
        let contents: Vec<&[u8]> = ms.iter().map(|m| m.content.as_slice()).collect();
        let inserted: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO messages (conversation_id, msg_id, sender_id, msg_type, content, created_at) \
             SELECT u.*, $6::int8 FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int4[], $5::bytea[]) AS u \
             ON CONFLICT (conversation_id, msg_id) DO NOTHING RETURNING conversation_id, msg_id",
        )
        .bind(&convs)
        .bind(&ids)
        .bind(senders)
        .bind(types)
        .bind(contents)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        if inserted.len() == ms.len() {
            return Ok(());
        }
        let new: std::collections::HashSet<(String, i64)> = inserted.into_iter().collect();
        for m in ms {
            let k = (m.conversation_id.as_str().to_owned(), m.msg_id.as_i64());
            if new.contains(&k) {
                continue;
            }
            let (sender, ty, content): (String, i32, Vec<u8>) = sqlx::query_as(
                "SELECT sender_id, msg_type, content FROM messages \
                 WHERE conversation_id = $1 AND msg_id = $2",
            )
            .bind(&k.0)
            .bind(k.1)
            .fetch_one(&self.pool)
            .await?;
            if sender != m.sender_id.as_str() || ty != m.msg_type.code() || content != m.content {
                return Err(format!("conflict: {} exists with other content", k.1).into());
            }
        }
        Ok(())
    }
    async fn get(&self, conv: &str, id: i64, viewer: &str) -> R<()> {
        let row = sqlx::query(concat!(
            "SELECT ",
            view_columns!(),
            " FROM messages WHERE conversation_id = $1 AND msg_id = $2"
        ))
        .bind(conv)
        .bind(id)
        .fetch_one(&self.pool)
        .await?;
        pg_view(&row, viewer)
    }
    async fn latest(&self, conv: &str, limit: u32, viewer: &str) -> R<usize> {
        // One more than asked says whether older messages exist.
        let rows = sqlx::query(concat!(
            "SELECT ",
            view_columns!(),
            " FROM messages WHERE conversation_id = $1 ORDER BY msg_id DESC LIMIT $2"
        ))
        .bind(conv)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let page = &rows[..rows.len().min(limit as usize)];
        for r in page {
            pg_view(r, viewer)?;
        }
        std::hint::black_box(rows.len() > page.len());
        Ok(page.len())
    }
    async fn recall(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        // The rules in the statement: no record of the request, the message normal, sent by
        // the requester and inside the window.
        const SQL: &str = fair_transition_sql!(
            "status = 1, version = version + 1, recalled_at = $5, recalled_by = $4",
            "status = 0 AND sender_id = $4 AND created_at >= $5 - $6",
            "1",
            "recall"
        );
        self.transition(SQL, "recall", conv, id, by, request, window_ms)
            .await
    }
    async fn restore(&self, conv: &str, id: i64, by: &str, request: &str, window_ms: i64) -> R<()> {
        // Only the sender, only of their own recall, inside the restore window.
        const SQL: &str = fair_transition_sql!(
            "status = 0, version = version + 1, recalled_at = NULL, restored_at = $5",
            "status = 1 AND sender_id = $4 AND recalled_by = $4 AND recalled_at >= $5 - $6",
            "0",
            "restore"
        );
        self.transition(SQL, "restore", conv, id, by, request, window_ms)
            .await
    }
    async fn feed(&self, conv: &str, after: u64, limit: u32) -> R<usize> {
        let rows = sqlx::query(
            "SELECT COALESCE(c.feed_seq, 0) AS head, COALESCE(c.purged_through, 0) AS purged, \
                 e.seq, e.msg_id, e.status, e.version, e.at, e.by_user \
             FROM (VALUES (1)) AS one (x) \
             LEFT JOIN conversations c ON c.conversation_id = $1 \
             LEFT JOIN LATERAL ( \
                 SELECT seq, msg_id, status, version, at, by_user FROM change_events \
                 WHERE conversation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) e ON true \
             ORDER BY e.seq",
        )
        .bind(conv)
        .bind(after as i64)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        // Every column a device needs: the event (who changed it and when, to show "recalled
        // by X at T") with the head and the purge mark (to see a gap).
        let mut n = 0;
        for r in &rows {
            // By position, in the SELECT's order.
            let event: FeedRow = (
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
                r.try_get(5)?,
                r.try_get(6)?,
                r.try_get(7)?,
            );
            if event.0.is_some() {
                n += 1;
            }
            let marks: (i64, i64) = (r.try_get(0)?, r.try_get(1)?);
            std::hint::black_box((marks, event));
        }
        Ok(n)
    }
}

/// An event of a feed page: seq, msg_id, status, version, at, by (all null past the last).
type FeedRow = (
    Option<i64>,
    Option<i64>,
    Option<i16>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

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
