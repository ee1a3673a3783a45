//! `imstore conformance` and `imstore check`: the suite and the history checker against the
//! server a URL names, every case in a namespace the backend's shipped factory creates.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clap::Args;
use futures::future::LocalBoxFuture;
use futures::{FutureExt, StreamExt};
use imstore::{
    ConversationId, MessageStore, MsgId, Policy, RestoreVisibility, StoreSettings, StoreUrl,
};
use imstore_conformance::history::{Workload, check as check_history, record};
use imstore_conformance::memory::MemoryFactory;
use imstore_conformance::{Harness, Setup, StoreFactory};
use imstore_mongodb::testing::MongoFactory;
use imstore_postgres::testing::PgFactory;
use imstore_scylla::Replication;
use imstore_scylla::testing::ScyllaFactory;

use crate::settings::{Global, parse_duration};
use crate::{Failure, Outcome};

/// `imstore conformance`.
#[derive(Args, Debug)]
pub struct ConformanceArgs {
    /// Runs only the cases whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// How many cases run at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// A case running longer than this fails.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub case_timeout: Duration,
    /// Lists the cases and exits.
    #[arg(long)]
    pub list: bool,
}

/// `imstore check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Calls recorded per history (two histories: restores visible to everyone, then to the
    /// sender only).
    #[arg(long, default_value_t = 1_500)]
    pub ops: usize,
    /// The seed of the workload (the second history uses the next one).
    #[arg(long, default_value_t = 14)]
    pub seed: u64,
}

/// The backend's shipped factory for the server a URL names.
// One per run, never moved after it is built: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Factory {
    Memory(MemoryFactory),
    Postgres(PgFactory),
    Mongodb(MongoFactory),
    /// The factory and the keyspace prefix of this run.
    Scylla(ScyllaFactory, String),
}

/// The factory for `g`'s URL, which must not name a namespace: the suite runs only in
/// namespaces it creates, and drops only those.
fn factory(g: &Global) -> Result<(Factory, &'static str), Failure> {
    let server = StoreUrl::parse_server(g.url()?, &g.credentials())?;
    if let Some(ns) = &server.namespace {
        return Err(Failure::Usage(format!(
            "the URL names the namespace {ns:?}; the conformance suite runs only in namespaces \
             it creates itself (and drops them), never in an existing one: give the server \
             without a {} (for example {})",
            match server.store.backend() {
                "postgres" => "schema= parameter",
                "mongodb" => "database",
                _ => "keyspace",
            },
            match server.store.backend() {
                "postgres" => "postgres://user@host/db",
                "mongodb" => "mongodb://host/",
                _ => "scylla://host1,host2",
            }
        )));
    }
    let backend = server.store.backend();
    let f = match server.store {
        StoreUrl::Memory => Factory::Memory(MemoryFactory::default()),
        StoreUrl::Postgres(c) => Factory::Postgres(PgFactory::new(c.url())),
        StoreUrl::Mongodb(c) => Factory::Mongodb(MongoFactory::new(c.url())),
        StoreUrl::Scylla(c) => {
            // Keyspaces of this run only (`cli<5 hex digits>_…`): a finished case's keyspace is
            // emptied and reused (DDL is what a case costs on Cassandra, and concurrent DROPs
            // time out), and `Factory::cleanup` drops them all, no other run's, at the end.
            let prefix = run_prefix();
            let mut f = ScyllaFactory::new(&c.nodes().join(","))
                .with_tls(c.tls().cloned())
                .with_prefix(&prefix);
            // A test cluster is often one node: replication 1 unless the URL says otherwise.
            f = f.with_replication(if server.params.iter().any(|p| p == "rf" || p == "dc") {
                c.replication().clone()
            } else {
                Replication::Everywhere(1)
            });
            if let Some(cred) = c.credentials() {
                f = f.with_credentials(cred.clone());
            }
            Factory::Scylla(f, prefix)
        }
        _ => {
            return Err(Failure::Usage(
                "this backend has no conformance factory".into(),
            ));
        }
    };
    Ok((f, backend))
}

/// A keyspace prefix no other run shares: `cli` and five hex digits of this process and time.
fn run_prefix() -> String {
    use std::hash::{BuildHasher, RandomState};
    let salt = RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("cli{:05x}", salt & 0xf_ffff)
}

impl Factory {
    /// Drops what the run left on the server: the Scylla keyspaces of this run's prefix (other
    /// factories drop each namespace when its case finishes).
    async fn cleanup(&self) {
        let Factory::Scylla(f, prefix) = self else {
            return;
        };
        // DDL is what a loaded Cassandra times out first: a few tries before giving up.
        for attempt in 1..=5 {
            match f.sweep_leftovers(Duration::ZERO).await {
                Ok(_) => return,
                Err(e) if attempt == 5 => {
                    eprintln!("imstore: could not drop this run's keyspaces ({prefix}_…): {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(2 * attempt)).await,
            }
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $f:ident => $e:expr) => {
        match $self {
            Factory::Memory($f) => $e,
            Factory::Postgres($f) => $e,
            Factory::Mongodb($f) => $e,
            Factory::Scylla($f, _) => $e,
        }
    };
}

#[async_trait]
impl StoreFactory for Factory {
    type Store = Arc<dyn MessageStore>;

    async fn create_namespace(&self) -> String {
        dispatch!(self, f => f.create_namespace().await)
    }

    async fn try_open(
        &self,
        namespace: &str,
        settings: StoreSettings,
    ) -> imstore::Result<Arc<dyn MessageStore>> {
        dispatch!(self, f => Ok(Arc::new(f.try_open(namespace, settings).await?)))
    }

    async fn raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
    ) -> Option<Vec<u8>> {
        dispatch!(self, f => f.raw_content(namespace, conversation, msg_id).await)
    }

    async fn set_raw_content(
        &self,
        namespace: &str,
        conversation: &ConversationId,
        msg_id: MsgId,
        bytes: Vec<u8>,
    ) {
        dispatch!(self, f => f.set_raw_content(namespace, conversation, msg_id, bytes).await)
    }

    async fn drop_namespace(&self, namespace: &str) {
        dispatch!(self, f => f.drop_namespace(namespace).await)
    }
}

type CaseFn = for<'a> fn(&'a Factory) -> LocalBoxFuture<'a, ()>;

macro_rules! case_table {
    ($($case:ident),* $(,)?) => {
        mod runners {
            use super::Factory;
            use futures::future::{FutureExt, LocalBoxFuture};
            $(
                pub(super) fn $case(f: &Factory) -> LocalBoxFuture<'_, ()> {
                    imstore_conformance::cases::$case(f).boxed_local()
                }
            )*
        }
        /// Every case of the suite, by name, in the suite's order.
        fn cases() -> Vec<(&'static str, CaseFn)> {
            vec![$((stringify!($case), runners::$case as CaseFn)),*]
        }
    };
}
imstore_conformance::__with_cases!([case_table]);

tokio::task_local! {
    /// The index of the case whose future is being polled, so the panic hook can file the
    /// message under it.
    static CASE: usize;
}

/// Panic messages of the cases, by index.
static CAPTURED: Mutex<BTreeMap<usize, Vec<String>>> = Mutex::new(BTreeMap::new());

fn capture_panics() {
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        match CASE.try_with(|i| *i) {
            Ok(i) => CAPTURED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(i)
                .or_default()
                .push(text),
            // A task a case spawned: no case to file it under, so it goes out as it is.
            Err(_) => eprintln!("{text}"),
        }
    }));
}

/// Runs the suite; prints a libtest-style report; fails when a case fails.
pub async fn conformance(g: &Global, args: &ConformanceArgs) -> Outcome {
    let all = cases();
    let total = all.len();
    let selected: Vec<(usize, &'static str, CaseFn)> = all
        .into_iter()
        .enumerate()
        .filter(|(_, (name, _))| {
            args.filter
                .as_ref()
                .is_none_or(|f| name.contains(f.as_str()))
        })
        .map(|(i, (n, f))| (i, n, f))
        .collect();
    if args.list {
        for (_, name, _) in &selected {
            println!("{name}: test");
        }
        return Ok(());
    }
    let (factory, backend) = factory(g)?;
    if args.jobs == 0 {
        return Err(Failure::Usage("--jobs must be at least 1".into()));
    }
    capture_panics();
    let started = Instant::now();
    println!(
        "\nrunning {} tests (imstore conformance on {backend})",
        selected.len()
    );
    let factory = &factory;
    let timeout = args.case_timeout;
    let mut outcomes = futures::stream::iter(selected.iter().map(|&(i, name, case)| async move {
        let run = CASE.scope(i, AssertUnwindSafe(case(factory)).catch_unwind());
        let ok = match tokio::time::timeout(timeout, run).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                CAPTURED
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(i)
                    .or_default()
                    .push(format!("timed out after {timeout:?}"));
                false
            }
        };
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        (i, name, ok)
    }))
    .buffer_unordered(args.jobs);
    let mut failed = Vec::new();
    let mut passed = 0;
    while let Some((i, name, ok)) = outcomes.next().await {
        if ok {
            passed += 1;
        } else {
            failed.push((i, name));
        }
    }
    drop(outcomes);
    let _ = std::panic::take_hook();
    factory.cleanup().await;
    failed.sort();
    if !failed.is_empty() {
        println!("\nfailures:\n");
        let captured = CAPTURED.lock().unwrap_or_else(|p| p.into_inner());
        for (i, name) in &failed {
            println!("---- {name} stdout ----");
            for line in captured.get(i).into_iter().flatten() {
                println!("{line}");
            }
            println!();
        }
        println!("failures:");
        for (_, name) in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; \
         finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        total - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{} of {} conformance cases failed on {backend}",
            failed.len(),
            selected.len()
        )))
    }
}

/// Records two concurrent histories against the server and says whether the contract's
/// sequential state machine explains them.
pub async fn check(g: &Global, args: &CheckArgs) -> Outcome {
    let (factory, backend) = factory(g)?;
    if args.ops == 0 {
        return Err(Failure::Usage("--ops must be at least 1".into()));
    }
    let mut violations = 0;
    for (i, visibility) in [RestoreVisibility::Everyone, RestoreVisibility::SenderOnly]
        .into_iter()
        .enumerate()
    {
        let policy = Policy::builder().restore_visibility(visibility).build()?;
        let h = Harness::start(
            &factory,
            Setup {
                policy: policy.clone(),
                ..Setup::default()
            },
        )
        .await;
        let workload = Workload {
            ops: args.ops,
            seed: args.seed.wrapping_add(i as u64),
            ..Workload::for_policy(&policy)
        };
        let started = Instant::now();
        let history = record(&h.store, &h.clock, &workload).await;
        let recorded = started.elapsed();
        let seen = match visibility {
            RestoreVisibility::Everyone => "restores visible to everyone",
            _ => "restores visible to the sender only",
        };
        match check_history(&history, &policy) {
            Ok(summary) => println!(
                "history {} on {backend} ({seen}, seed {}, recorded in {:.1}s): linearizable, and \
                 every device's feed held each committed change exactly once ({summary})",
                i + 1,
                workload.seed,
                recorded.as_secs_f64()
            ),
            Err(v) => {
                violations += 1;
                println!(
                    "history {} on {backend} ({seen}, seed {}): NOT linearizable: {v}",
                    i + 1,
                    workload.seed
                );
            }
        }
        h.finish().await;
    }
    factory.cleanup().await;
    if violations == 0 {
        println!("verdict: the store behaved as the contract's state machine in both histories");
        Ok(())
    } else {
        Err(Failure::Failed(format!(
            "{violations} of 2 histories on {backend} are not linearizable"
        )))
    }
}
