//! Fault tests: a write load that keeps going while the database server is killed and restarted,
//! then an account of every acknowledged write ([`assert_writes_survive_a_server_kill`]); and a
//! client process killed in the middle of a burst of transitions, then a fresh process that finds
//! every message consistent ([`a_killed_client_leaves_every_message_consistent`]).
//!
//! Writers behave like phones on a flaky network: each sends a message and then recalls it, and
//! retries the *same* request (same msg_id, same request id) after every error until it is
//! acknowledged or the deadline passes. A retry of an acknowledged write must be answered as one
//! (`AlreadyExists`, `replayed`), so "exactly once" is checked for real. After the load, with the
//! same store handle (the store must recover without a new client), every acknowledged insert must
//! read back with its content, every acknowledged recall must be in force, and the feed must hold
//! exactly one event per version of every message.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use imstore_core::{
    Action, Authority, ConversationId, ErrorKind, FeedCursor, InsertOutcome, MessageStore,
    MessageStoreExt, MsgId, MsgIdGenerator, NewMessage, RequestId, Status, TransitionRequest,
};

use crate::fixtures::user;

mod client_kill;

use crate::harness::{Harness, Setup, StoreFactory};
pub use client_kill::{
    Burst, CHILD_CLOCK_ENV, CHILD_NAMESPACE_ENV, ClientCrashReport, Found,
    a_killed_client_leaves_every_message_consistent,
};

/// The shape of the load.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Load {
    /// Concurrent writers (the issue asks for 16).
    pub writers: usize,
    /// Messages each writer sends (and then recalls).
    pub messages_per_writer: usize,
    /// How long one request is retried before the writer gives up on it.
    pub retry_for: Duration,
    /// The pause between two tries of one request.
    pub retry_pause: Duration,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            writers: 16,
            messages_per_writer: 30,
            retry_for: Duration::from_secs(240),
            retry_pause: Duration::from_millis(100),
        }
    }
}

/// What the load saw and what survived.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Inserts acknowledged (`Inserted` or `AlreadyExists` on a retry).
    pub acked_inserts: usize,
    /// Recalls acknowledged.
    pub acked_transitions: usize,
    /// Requests given up on after `retry_for` (indeterminate: they may or may not have applied).
    pub abandoned: usize,
    /// Error kinds the callers saw, with how often.
    pub errors: BTreeMap<&'static str, usize>,
    /// Acknowledged inserts or recalls missing afterwards, in words.
    pub lost: Vec<String>,
    /// Changes recorded more than once (two events for one version, a second `Inserted`), in words.
    pub duplicated: Vec<String>,
    /// Other inconsistencies (a feed that does not match the message), in words.
    pub inconsistent: Vec<String>,
}

impl FaultReport {
    /// True when nothing acknowledged was lost or duplicated and every message is consistent.
    pub fn clean(&self) -> bool {
        self.lost.is_empty() && self.duplicated.is_empty() && self.inconsistent.is_empty()
    }
}

struct Acked {
    message: NewMessage,
    recalled: Option<u32>,
}

/// Runs `load` against the harness's store and runs `crash` (kill the server, bring it back)
/// once the load is under way; then accounts for every acknowledged write.
pub async fn writes_survive_a_crash<F, C>(h: &Harness<'_, F>, load: Load, crash: C) -> FaultReport
where
    F: StoreFactory,
    C: Future<Output = ()>,
{
    let conv = ConversationId::new("crash-group").expect("valid id");
    let clock = h.settings.clock.clone();
    let started = std::sync::atomic::AtomicUsize::new(0);
    let total = load.writers * load.messages_per_writer;
    let store = &h.store;
    let writer = |w: usize| {
        let conv = conv.clone();
        let clock = clock.clone();
        let load = load.clone();
        let started = &started;
        async move {
            let ids = MsgIdGenerator::new(100 + w as u16, clock.clone()).expect("node id");
            let sender = user(&format!("writer-{w}"));
            let mut acked = Vec::new();
            let mut report = FaultReport::default();
            for i in 0..load.messages_per_writer {
                started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let message = NewMessage::text(
                    ids.next_id().expect("the clock is within the msg_id range"),
                    conv.clone(),
                    sender.clone(),
                    format!("writer {w} message {i}"),
                );
                let got = retry(&load, &mut report, || store.insert(message.clone())).await;
                match got {
                    Some(InsertOutcome::Inserted | InsertOutcome::AlreadyExists) => {
                        report.acked_inserts += 1;
                    }
                    None => continue,
                }
                let request = TransitionRequest {
                    action: Action::Recall,
                    requester: sender.clone(),
                    authority: Authority::Member,
                    conversation_id: conv.clone(),
                    msg_id: message.msg_id,
                    client_ts: clock.now(),
                    request_id: RequestId::new(format!("crash-{w}-{i}")).expect("valid id"),
                };
                let recalled =
                    retry(&load, &mut report, || store.transition(request.clone())).await;
                if recalled.is_some() {
                    report.acked_transitions += 1;
                }
                acked.push(Acked {
                    message,
                    recalled: recalled.map(|o| o.version),
                });
            }
            (acked, report)
        }
    };
    let load_future = futures::future::join_all((0..load.writers).map(writer));
    let crash_future = async {
        // Crash once about a third of the messages are under way.
        while started.load(std::sync::atomic::Ordering::Relaxed) < total / 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        crash.await;
    };
    let (results, ()) = futures::join!(load_future, crash_future);

    let mut report = FaultReport::default();
    let mut acked = Vec::new();
    for (a, r) in results {
        acked.extend(a);
        report.acked_inserts += r.acked_inserts;
        report.acked_transitions += r.acked_transitions;
        report.abandoned += r.abandoned;
        for (k, n) in r.errors {
            *report.errors.entry(k).or_default() += n;
        }
    }
    account(store, &conv, &acked, &mut report).await;
    report
}

/// Retries `call` until it is answered or `load.retry_for` has passed, counting error kinds.
async fn retry<T, Fut>(
    load: &Load,
    report: &mut FaultReport,
    mut call: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: Future<Output = imstore_core::Result<T>>,
{
    let deadline = Instant::now() + load.retry_for;
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => {
                *report.errors.entry(e.kind().as_str()).or_default() += 1;
                let retryable = matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Backend);
                if !retryable || Instant::now() >= deadline {
                    report.abandoned += 1;
                    return None;
                }
                tokio::time::sleep(load.retry_pause).await;
            }
        }
    }
}

async fn account<S: MessageStore + ?Sized>(
    store: &S,
    conv: &ConversationId,
    acked: &[Acked],
    report: &mut FaultReport,
) {
    let mut events: BTreeMap<MsgId, Vec<u32>> = BTreeMap::new();
    let viewer = user("auditor");
    match store
        .drain_changes(conv, &viewer, FeedCursor::START, 500)
        .await
    {
        Ok(page) => {
            for e in page.events {
                events.entry(e.msg_id).or_default().push(e.version);
            }
        }
        Err(e) => report
            .inconsistent
            .push(format!("the feed cannot be read after the crash: {e}")),
    }
    for a in acked {
        let id = a.message.msg_id;
        let audit = match store.audit(conv, id).await {
            Ok(r) => r.message,
            Err(e) => {
                report
                    .lost
                    .push(format!("acknowledged message {id} reads as {}", e.kind()));
                continue;
            }
        };
        if audit.message.content != a.message.content {
            report.lost.push(format!("message {id} lost its content"));
        }
        let versions = events.get(&id).cloned().unwrap_or_default();
        let want: Vec<u32> = (2..=audit.lifecycle.version).collect();
        if versions.len() > want.len() {
            report.duplicated.push(format!(
                "message {id} has events for versions {versions:?} but is at version {}",
                audit.lifecycle.version
            ));
        } else if versions != want {
            report.inconsistent.push(format!(
                "message {id} is at version {} but its events are {versions:?}",
                audit.lifecycle.version
            ));
        }
        if let Some(v) = a.recalled
            && (audit.lifecycle.status != Status::Recalled || audit.lifecycle.version < v)
        {
            report.lost.push(format!(
                "acknowledged recall of {id} (version {v}) is not in force: {:?} v{}",
                audit.lifecycle.status, audit.lifecycle.version
            ));
        }
    }
}

/// Asserts what a crash run owes: nothing lost, duplicated or inconsistent, and every request
/// of the load acknowledged (its retries outlasted the fault), none abandoned.
pub fn assert_clean_and_all_acknowledged(report: &FaultReport, load: &Load) {
    assert!(report.clean(), "{report:#?}");
    let all = load.writers * load.messages_per_writer;
    assert_eq!(
        (
            report.acked_inserts,
            report.acked_transitions,
            report.abandoned
        ),
        (all, all, 0),
        "every request is acknowledged once the fault is over: {report:#?}"
    );
}

/// The server-kill test of a backend, whole: a fresh namespace from `factory`, `load` against it,
/// `server` killed with SIGKILL through [`kill_and_restart`] once a third of the load is under
/// way and started again after `down_for`; then it prints the figures (acknowledged inserts and
/// recalls, error kinds the callers saw, time) and asserts that nothing acknowledged was lost or
/// duplicated, that every request was acknowledged once the server was back (so `load.retry_for`
/// must cover the server's restart), that at least one caller saw an error (the crash really
/// happened), and that all of it went through the one store handle opened before the crash.
///
/// Run it from a test binary of its own (`tests/faults.rs`), so that no other test of the crate
/// runs while the server is down.
pub async fn assert_writes_survive_a_server_kill<F: StoreFactory>(
    factory: &F,
    repo_root: &Path,
    server: &str,
    load: Load,
    down_for: Duration,
) -> FaultReport {
    let h = Harness::start(factory, Setup::default()).await;
    let started = Instant::now();
    let outage = std::sync::Mutex::new(None);
    let crash = async {
        let o = kill_and_restart(repo_root, server, down_for).await;
        *outage.lock().unwrap_or_else(|p| p.into_inner()) = Some(o);
    };
    let report = writes_survive_a_crash(&h, load.clone(), crash).await;
    let outage = outage.into_inner().unwrap_or_else(|p| p.into_inner());
    eprintln!(
        "faults: {server}: {} writers x {} messages in {:?} ({} down {:?}): acknowledged inserts \
         {}, acknowledged recalls {}, abandoned {}, errors seen {:?}",
        load.writers,
        load.messages_per_writer,
        started.elapsed(),
        server,
        outage.map(|o| o.down),
        report.acked_inserts,
        report.acked_transitions,
        report.abandoned,
        report.errors
    );
    for line in report
        .lost
        .iter()
        .chain(&report.duplicated)
        .chain(&report.inconsistent)
    {
        eprintln!("faults: {line}");
    }
    assert_clean_and_all_acknowledged(&report, &load);
    assert!(
        !report.errors.is_empty(),
        "the crash was not seen by any writer: the test proved nothing"
    );
    h.finish().await;
    report
}

/// How long the two halves of [`kill_and_restart`] took.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    /// From the SIGKILL until the process was gone.
    pub kill: Duration,
    /// From `start` until the server accepted connections again.
    pub start: Duration,
    /// From the SIGKILL until the server accepted connections again.
    pub down: Duration,
}

/// Kills `server` (`postgres`, `cassandra` or `ferretdb`, or several of them separated by spaces,
/// killed together, as `"ferretdb postgres"` for FerretDB and the PostgreSQL it stores in) with
/// SIGKILL through the servers script, leaves it down for `down_for`, then starts it on its data
/// and waits until it answers.
///
/// The servers are shared with other work on the machine: if this future is dropped or a panic
/// unwinds through it between the kill and the restart, a guard starts the server anyway, so a
/// failing test never leaves a server down.
pub async fn kill_and_restart(repo_root: &Path, server: &str, down_for: Duration) -> Outage {
    let guard = RestartGuard {
        script: repo_root.join("scripts/servers.sh"),
        server: server.to_string(),
        armed: true,
    };
    let names: Vec<&str> = server.split_whitespace().collect();
    let t = Instant::now();
    servers_script(repo_root, &[&["kill"][..], &names].concat()).await;
    let kill = t.elapsed();
    eprintln!("faults: {server} killed with SIGKILL ({kill:?})");
    tokio::time::sleep(down_for).await;
    let s = Instant::now();
    servers_script(repo_root, &[&["start"][..], &names].concat()).await;
    let mut guard = guard;
    guard.armed = false;
    let outage = Outage {
        kill,
        start: s.elapsed(),
        down: t.elapsed(),
    };
    eprintln!(
        "faults: {server} accepts connections again ({:?} to start, {:?} down in all)",
        outage.start, outage.down
    );
    outage
}

/// Starts the server again when dropped armed (a cancelled or panicking crash future).
struct RestartGuard {
    script: std::path::PathBuf,
    server: String,
    armed: bool,
}

impl Drop for RestartGuard {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("faults: bringing {} back after a failure", self.server);
            // Blocking is acceptable here: the test is failing anyway, and the server must be up
            // before anything else runs against it.
            let _ = std::process::Command::new("bash")
                .arg(&self.script)
                .arg("start")
                .args(self.server.split_whitespace())
                .stdin(std::process::Stdio::null())
                .status();
        }
    }
}

/// Runs the repository's `scripts/servers.sh` with `args` (for instance `["kill", "postgres"]`),
/// panicking with its output when it fails: a fault test without its fault proves nothing.
pub async fn servers_script(repo_root: &Path, args: &[&str]) {
    let script = repo_root.join("scripts/servers.sh");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(&script)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    })
    .await
    .expect("the script runner panicked")
    .expect("bash runs");
    assert!(
        out.status.success(),
        "scripts/servers.sh failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
