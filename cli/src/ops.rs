//! `imstore migrate`, `purge`, `rekey` and `stats`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use imstore::{
    AnyStore, Connect, KeyId, Policy, PurgeOptions, PurgeReport, RekeyOptions, RekeyReport,
    StoreUrl,
};
use imstore_mongodb::MongoBackend;
use imstore_postgres::{MIGRATOR, PostgresBackend, validate_schema_name};
use imstore_scylla::ScyllaBackend;
use indicatif::{ProgressBar, ProgressStyle};
use mongodb::bson::{Document, doc};
use sqlx::postgres::PgPool;
use tokio::sync::Notify;

use crate::settings::{Global, parse_duration};
use crate::{Failure, Outcome};

/// `imstore purge`.
#[derive(Args, Debug)]
pub struct PurgeArgs {
    /// Counts what a purge would remove now, per class, without removing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Runs a pass every DURATION (like 1h) until interrupted, instead of once.
    #[arg(long, value_parser = parse_duration)]
    pub every: Option<Duration>,
    /// Messages removed per batch (1..=10000).
    #[arg(long, default_value_t = 500)]
    pub batch: u32,
    /// Where the released attachment keys go, one JSON object per line: a file (appended to)
    /// or `-` for stdout (the summary then goes to stderr).
    #[arg(long, default_value = "-")]
    pub released_keys: String,
}

/// `imstore rekey`.
#[derive(Args, Debug)]
pub struct RekeyArgs {
    /// Messages looked at per batch (1..=10000).
    #[arg(long, default_value_t = 500)]
    pub batch: u32,
    /// Where the job records how far it got after every batch; a run started with the same
    /// file resumes there. Removed when the scan completes.
    #[arg(long, default_value = "imstore-rekey.state")]
    pub state: PathBuf,
    /// Also seals content stored without encryption (turning encryption on for an existing
    /// store; only for content known to be genuine).
    #[arg(long)]
    pub seal_plaintext: bool,
    /// Stops after this many batches, leaving the state file to resume from (bounded work per
    /// run, for a job scheduler's time slot).
    #[arg(long)]
    pub max_batches: Option<u64>,
}

async fn open(g: &Global, url: StoreUrl) -> Result<AnyStore, Failure> {
    Ok(url.open(g.settings()?).await?)
}

fn progress(message: &str) -> ProgressBar {
    // Drawn on stderr only when it is a terminal: logs and pipes get the summary alone.
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Creates or upgrades what the store needs; with `dry_run`, says what that would be.
pub async fn migrate(g: &Global, dry_run: bool) -> Outcome {
    let would = if dry_run { "would " } else { "" };
    match g.store_url()? {
        StoreUrl::Memory => {
            println!("memory:// keeps nothing between runs: there is no schema to create");
        }
        StoreUrl::Postgres(config) => {
            let admin = PgPool::connect(config.url())
                .await
                .map_err(|e| Failure::Failed(format!("cannot connect to PostgreSQL: {e}")))?;
            if let Some(schema) = config.schema() {
                validate_schema_name(schema)?;
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                )
                .bind(schema)
                .fetch_one(&admin)
                .await
                .map_err(|e| Failure::Failed(e.to_string()))?;
                if !exists {
                    println!("{would}create schema {schema}");
                    if dry_run {
                        let pending: Vec<_> = MIGRATOR
                            .iter()
                            .filter(|m| m.migration_type.is_up_migration())
                            .collect();
                        for m in pending {
                            println!("{would}apply migration {:04} {}", m.version, m.description);
                        }
                        return Ok(());
                    }
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "CREATE SCHEMA IF NOT EXISTS {schema}"
                    )))
                    .execute(&admin)
                    .await
                    .map_err(|e| Failure::Failed(format!("create schema {schema}: {e}")))?;
                }
            }
            let backend =
                PostgresBackend::connect(config.clone().with_migrate_on_connect(false)).await?;
            let applied: BTreeSet<i64> = applied_migrations(backend.pool()).await?;
            let pending: Vec<_> = MIGRATOR
                .iter()
                .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
                .collect();
            for m in &pending {
                println!("{would}apply migration {:04} {}", m.version, m.description);
            }
            if !dry_run {
                backend.migrate().await?;
            }
            if pending.is_empty() {
                println!(
                    "schema {} is up to date ({} migrations applied)",
                    config.schema().unwrap_or("(search_path)"),
                    applied.len()
                );
            }
        }
        StoreUrl::Mongodb(config) => {
            let database = config.database().to_string();
            if dry_run {
                println!(
                    "would ensure the collections messages, log and legal_holds of database \
                     {database} and their indexes (idempotent: the backend also does it on every \
                     connect)"
                );
            } else {
                MongoBackend::connect(config).await?;
                println!("database {database}: collections and indexes ensured");
            }
        }
        StoreUrl::Scylla(config) => {
            let keyspace = config.keyspace().to_string();
            let session =
                imstore_scylla::session_for(&config.clone().with_create_schema(false)).await?;
            let exists = imstore_scylla::schema::keyspaces(&session)
                .await?
                .contains(&keyspace);
            drop(session);
            if exists {
                println!(
                    "keyspace {keyspace} exists: {would}add the tables and columns newer versions \
                     need (idempotent)"
                );
            } else {
                println!(
                    "{would}create keyspace {keyspace} (replication {}) and its tables",
                    config.replication().to_cql()?
                );
            }
            if !dry_run {
                let backend = ScyllaBackend::connect(config.with_create_schema(true)).await?;
                backend.migrate().await?;
                println!("keyspace {keyspace} is up to date");
            }
        }
        _ => return Err(Failure::Usage("this backend has no migrations".into())),
    }
    Ok(())
}

async fn applied_migrations(pool: &PgPool) -> Result<BTreeSet<i64>, Failure> {
    let failed = |e: sqlx::Error| Failure::Failed(format!("read the applied migrations: {e}"));
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await
        .map_err(failed)?;
    if !exists {
        return Ok(BTreeSet::new());
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .map_err(failed)?;
    Ok(versions.into_iter().collect())
}

/// What a purge at `now` would remove, by class.
#[derive(Debug, Default)]
struct Backlog {
    recalled: i64,
    deleted: i64,
    history: i64,
    held: i64,
    events: i64,
    requests: i64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The cutoffs of a purge now under `policy`, as the core computes them (`PurgeJob`).
fn cutoffs(policy: &Policy) -> (i64, i64) {
    let now = now_ms();
    let retention = now.saturating_sub(policy.retention().as_millis() as i64);
    // No history limit: a cutoff before every possible created_at matches nothing.
    let history = policy
        .history_limit()
        .map_or(i64::MIN, |h| now.saturating_sub(h.as_millis() as i64));
    (retention, history)
}

/// The backlog of a PostgreSQL store: the purge's own candidate filter (the same cutoffs and
/// the same legal-hold rule), counted instead of deleted.
async fn postgres_backlog(pool: &PgPool, policy: &Policy) -> Result<Backlog, Failure> {
    let (retention, history) = cutoffs(policy);
    let row: (i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "WITH due AS ( \
             SELECT m.conversation_id, m.msg_id, \
                 (m.status = 1 AND m.recalled_at <= $1) AS recalled, \
                 (m.status = 2 AND m.deleted_at <= $1) AS deleted, \
                 coalesce(c.legal_hold, false) AS held \
             FROM messages m LEFT JOIN conversations c USING (conversation_id) \
             WHERE (m.status = 1 AND m.recalled_at <= $1) OR (m.status = 2 AND m.deleted_at <= $1) \
                 OR m.created_at <= $2) \
         SELECT \
             count(*) FILTER (WHERE recalled AND NOT held), \
             count(*) FILTER (WHERE deleted AND NOT held), \
             count(*) FILTER (WHERE NOT recalled AND NOT deleted AND NOT held), \
             count(*) FILTER (WHERE held), \
             (SELECT count(*) FROM change_events e JOIN due d \
                  ON e.conversation_id = d.conversation_id AND e.msg_id = d.msg_id \
                  WHERE NOT d.held), \
             (SELECT count(*) FROM requests WHERE at <= $1) \
         FROM due",
    )
    .bind(retention)
    .bind(history)
    .fetch_one(pool)
    .await
    .map_err(|e| Failure::Failed(format!("count the purge backlog: {e}")))?;
    Ok(Backlog {
        recalled: row.0,
        deleted: row.1,
        history: row.2,
        held: row.3,
        events: row.4,
        requests: row.5,
    })
}

async fn backlog(store: &AnyStore, policy: &Policy) -> Result<Option<Backlog>, Failure> {
    Ok(match store {
        // A memory:// store is new and empty on every run.
        AnyStore::Memory(_) => Some(Backlog::default()),
        AnyStore::Postgres(s) => Some(postgres_backlog(s.inner().pool(), policy).await?),
        _ => None,
    })
}

fn print_backlog(out: &mut dyn Write, b: &Backlog) -> std::io::Result<()> {
    writeln!(out, "purgeable now, by class:")?;
    writeln!(out, "  recalled, past retention:      {}", b.recalled)?;
    writeln!(out, "  deleted, past retention:       {}", b.deleted)?;
    writeln!(out, "  past the history limit:        {}", b.history)?;
    writeln!(out, "  due but under legal hold:      {} (kept)", b.held)?;
    writeln!(
        out,
        "would remove {} messages and {} change events",
        b.recalled + b.deleted + b.history,
        b.events
    )?;
    writeln!(out, "request records past retention: {}", b.requests)
}

/// One purge pass (every batch until nothing more is due), or a pass every `--every`.
pub async fn purge(g: &Global, args: &PurgeArgs) -> Outcome {
    if !(1..=PurgeOptions::MAX_BATCH).contains(&args.batch) {
        return Err(Failure::Usage(format!(
            "--batch must be between 1 and {}",
            PurgeOptions::MAX_BATCH
        )));
    }
    let policy = g.policy()?;
    let store = open(g, g.store_url()?).await?;
    let to_stdout = args.released_keys == "-";
    let mut human: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let io = |e: std::io::Error| Failure::Failed(format!("write: {e}"));
    if args.dry_run {
        let Some(b) = backlog(&store, &policy).await? else {
            return Err(Failure::Usage(format!(
                "purge --dry-run counts through the database's own queries, which imstore has \
                 for PostgreSQL only so far; the {} backend has no dry run",
                store.as_dyn().backend()
            )));
        };
        // Nothing else is written by a dry run: the counts go to stdout.
        print_backlog(&mut std::io::stdout(), &b).map_err(io)?;
        return Ok(());
    }
    let mut keys: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&args.released_keys)
                .map_err(|e| Failure::Usage(format!("cannot open {}: {e}", args.released_keys)))?,
        )
    };
    // With --every, Ctrl-C (SIGINT) ends the run after the batch in flight, never inside one.
    let stop = args.every.map(|_| {
        let stop = Arc::new((AtomicBool::new(false), Notify::new()));
        let signal = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                signal.0.store(true, Ordering::SeqCst);
                signal.1.notify_one();
            }
        });
        stop
    });
    let stopping = || stop.as_ref().is_some_and(|s| s.0.load(Ordering::SeqCst));
    loop {
        let started = Instant::now();
        let bar = progress("purging");
        let mut total = PurgeReport::default();
        let mut batches = 0u64;
        loop {
            let r = store
                .as_dyn()
                .purge(PurgeOptions {
                    batch_size: args.batch,
                })
                .await?;
            batches += 1;
            total.messages += r.messages;
            total.events += r.events;
            for key in &r.released_attachments {
                let line = serde_json::json!({ "released_attachment_key": key });
                writeln!(keys, "{line}").map_err(io)?;
            }
            keys.flush().map_err(io)?;
            total.released_attachments.extend(r.released_attachments);
            bar.set_message(format!(
                "purging: {} messages, {} events removed in {batches} batches",
                total.messages, total.events
            ));
            if !r.more || stopping() {
                break;
            }
        }
        bar.finish_and_clear();
        writeln!(
            human,
            "purge: removed {} messages and {} change events in {batches} batches ({:.1}s); \
             released {} attachment keys",
            total.messages,
            total.events,
            started.elapsed().as_secs_f64(),
            total.released_attachments.len()
        )
        .map_err(io)?;
        let (Some(every), Some(stop)) = (args.every, &stop) else {
            return Ok(());
        };
        if !stopping() {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.1.notified() => {}
            }
        }
        if stopping() {
            writeln!(human, "purge: interrupted, stopping").map_err(io)?;
            return Ok(());
        }
    }
}

/// Re-seals every message under the active key, batch by batch, recording its place in the
/// state file so that an interrupted run resumes.
pub async fn rekey(g: &Global, args: &RekeyArgs) -> Outcome {
    if !(1..=PurgeOptions::MAX_BATCH).contains(&args.batch) {
        return Err(Failure::Usage(format!(
            "--batch must be between 1 and {}",
            PurgeOptions::MAX_BATCH
        )));
    }
    let codec = g.codec()?;
    if !codec.encrypts() {
        return Err(Failure::Usage(
            "rekey needs the key ring: --key ID=HEX (or IMSTORE_KEYS), the active key first to \
             be used for new content"
                .into(),
        ));
    }
    let active = KeyId(
        g.active_key
            .unwrap_or_else(|| g.keys.iter().map(|(id, _)| *id).max().unwrap_or_default()),
    );
    let store = open(g, g.store_url()?).await?;
    let resume = match std::fs::read_to_string(&args.state) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Failure::Usage(format!(
                "cannot read {}: {e}",
                args.state.display()
            )));
        }
    };
    if resume.is_some() {
        println!("rekey: resuming from {}", args.state.display());
    }
    let mut options = RekeyOptions::batch(args.batch);
    options.resume = resume;
    if args.seal_plaintext {
        options = options.sealing_plaintext();
    }
    let started = Instant::now();
    let bar = progress("re-keying");
    let mut total = RekeyReport::default();
    let mut batches = 0u64;
    let mut complete = false;
    loop {
        let r = store.as_dyn().rekey(options.clone()).await?;
        total.scanned += r.scanned;
        total.rewritten += r.rewritten;
        total.skipped += r.skipped;
        total.undecodable += r.undecodable;
        bar.set_message(format!(
            "re-keying: {} scanned, {} rewritten, {} undecodable",
            total.scanned, total.rewritten, total.undecodable
        ));
        match &r.next {
            Some(next) => {
                // Written beside, then renamed: a crash leaves the old place or the new one.
                let tmp = args.state.with_extension("tmp");
                std::fs::write(&tmp, next)
                    .and_then(|()| std::fs::rename(&tmp, &args.state))
                    .map_err(|e| {
                        Failure::Failed(format!("record progress in {}: {e}", args.state.display()))
                    })?;
            }
            None => {
                let _ = std::fs::remove_file(&args.state);
                complete = true;
                break;
            }
        }
        batches += 1;
        if args.max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        options = options.after(&r);
    }
    bar.finish_and_clear();
    println!(
        "rekey: scanned {}, rewritten under key {} {}, skipped {} (changed meanwhile), \
         undecodable {} ({:.1}s)",
        total.scanned,
        active.0,
        total.rewritten,
        total.skipped,
        total.undecodable,
        started.elapsed().as_secs_f64()
    );
    if !complete {
        println!(
            "rekey: stopped after {batches} batches; run again with --state {} to resume",
            args.state.display()
        );
        return Ok(());
    }
    let usage = store.as_dyn().key_usage().await?;
    let others = usage.needing_other_than(active);
    println!(
        "keys in use: {:?} sealed per key id, {} unsealed, {} unreadable; {others} messages \
         still need a key other than {}",
        usage.sealed, usage.unsealed, usage.unreadable, active.0
    );
    if total.undecodable > 0 {
        return Err(Failure::Failed(format!(
            "{} messages could not be opened with the given keys and were left as they are",
            total.undecodable
        )));
    }
    Ok(())
}

/// Counts what the store holds, where the backend can count cheaply, and says so where not.
pub async fn stats(g: &Global) -> Outcome {
    let policy = g.policy()?;
    let store = open(g, g.store_url()?).await?;
    let failed = |e: String| Failure::Failed(format!("count: {e}"));
    match &store {
        AnyStore::Memory(_) => {
            println!(
                "memory:// is a new, empty store on every run: 0 messages, 0 events, 0 requests"
            );
        }
        AnyStore::Postgres(s) => {
            let pool = s.inner().pool();
            let (messages, events, requests, held): (i64, i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM change_events), \
                     (SELECT count(*) FROM requests), \
                     (SELECT count(*) FROM conversations WHERE legal_hold)",
            )
            .fetch_one(pool)
            .await
            .map_err(|e| failed(e.to_string()))?;
            println!("messages:                     {messages}");
            println!("change events:                {events}");
            println!("request records:              {requests}");
            println!("conversations on legal hold:  {held}");
        }
        AnyStore::Mongodb(s) => {
            let db = s.inner().database();
            let count = |coll: &'static str, filter: Document| async move {
                db.collection::<Document>(coll)
                    .count_documents(filter)
                    .await
                    .map_err(|e| failed(e.to_string()))
            };
            println!(
                "messages:                     {}",
                count("messages", doc! {}).await?
            );
            println!(
                "change events:                {}",
                count("log", doc! {"kind": "event"}).await?
            );
            println!(
                "request records:              {} (no-op and refused requests; an applied \
                 request's record is its change event's document)",
                count("log", doc! {"kind": "record"}).await?
            );
            println!(
                "conversations on legal hold:  {}",
                count("legal_holds", doc! {}).await?
            );
        }
        AnyStore::Scylla(s) => {
            println!(
                "keyspace {}: not counted. A COUNT over a Cassandra/ScyllaDB table reads every \
                 partition on every node; use `nodetool tablestats {}` for estimates.",
                s.inner().config().keyspace(),
                s.inner().config().keyspace()
            );
        }
        _ => println!("this backend exposes no counts"),
    }
    match backlog(&store, &policy).await? {
        Some(b) => print_backlog(&mut std::io::stdout(), &b).map_err(|e| failed(e.to_string()))?,
        None => println!(
            "purgeable backlog: not counted on {} (no dry-run query for this backend yet)",
            store.as_dyn().backend()
        ),
    }
    Ok(())
}
