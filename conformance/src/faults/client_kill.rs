//! The client-kill test: a client process killed with SIGKILL in the middle of a burst of
//! concurrent transitions, then a fresh process that must find every message consistent.
//!
//! One test function plays both parts. Run normally, it is the *parent*: it makes a namespace and
//! re-executes the current test binary (`std::env::current_exe()`, `--exact <test> --nocapture`)
//! with [`CHILD_NAMESPACE_ENV`] naming the namespace. The *child* sees the variable and runs the
//! burst: several writers sending messages and racing recalls, restores and deletes (as senders
//! and as a moderator) on the newest ones, printing a line before every request and one after
//! every answer. The parent reads those lines, and once enough transitions are answered sends
//! SIGKILL (`Child::kill`): no destructor, no connection shutdown, requests in flight. Then, in
//! its own process with a store it opens only now, it checks every message the child ever sent
//! (what its lines say was answered must be there, once), runs the backend's own repair, retries
//! what the child left unanswered, and finally lets the retention pass and purges, which must
//! remove exactly the recalled and deleted messages.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imstore_core::{
    Action, Authority, Clock, ConversationId, ErrorKind, FeedCursor, InsertOutcome, ManualClock,
    MessageStore, MessageStoreExt, MsgId, MsgIdGenerator, NewMessage, RequestId, Status,
    StoreSettings, Timestamp, TransitionOutcome, TransitionRequest, UserId,
};

use crate::fixtures::user;
use crate::harness::{Setup, StoreFactory};

mod check;

use check::{check, purge_and_check, retry_everything};

/// Set in the child's environment to the namespace it runs the burst on; its presence is what
/// makes [`a_killed_client_leaves_every_message_consistent`] play the child.
pub const CHILD_NAMESPACE_ENV: &str = "IMSTORE_FAULTS_CHILD_NAMESPACE";

/// Set in the child's environment to the store clock's time (ms since the epoch): child and
/// parent run on the same frozen clock, so the parent's retries are never stale.
pub const CHILD_CLOCK_ENV: &str = "IMSTORE_FAULTS_CHILD_CLOCK_MS";

/// What starts every line the child reports on (the rest of its output is the test harness's).
const LINE: &str = "imstore-faults-child ";

/// The one conversation of the burst: every writer contends for its feed.
const CONVERSATION: &str = "burst-group";

/// The shape of the burst and of the kill.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Burst {
    /// Concurrent writers in the child.
    pub writers: usize,
    /// Transitions the child must have seen answered before the parent kills it.
    pub kill_after: usize,
    /// Transitions pick among this many of the newest messages, so writers race on each.
    pub hot_messages: usize,
    /// How long the parent waits after the kill before it reads: a request the dead client had
    /// already sent may still be finishing on the server (the server, not the client, completes
    /// it), and a check must not race it.
    pub settle: Duration,
    /// The longest the child may take to reach `kill_after`, and the longest it lives at all.
    pub child_timeout: Duration,
}

impl Default for Burst {
    fn default() -> Self {
        Burst {
            writers: 8,
            kill_after: 150,
            hot_messages: 6,
            settle: Duration::from_secs(3),
            child_timeout: Duration::from_secs(600),
        }
    }
}

/// What the child did before it died, and what the fresh process found.
#[derive(Clone, Debug, Default)]
pub struct ClientCrashReport {
    /// Inserts the child saw answered.
    pub inserts_answered: usize,
    /// Transitions the child saw answered with an outcome.
    pub transitions_answered: usize,
    /// Transitions the child saw refused (a recorded refusal: forbidden, invalid state, ...).
    pub refusals_answered: usize,
    /// Requests sent and never answered (in flight at the kill, or failed as unavailable).
    pub in_flight: usize,
    /// Of those, the ones the fresh process's retry found already done (an insert answered
    /// `AlreadyExists`, a transition answered as a replay): the dead client's write had landed.
    pub in_flight_had_landed: usize,
    /// Messages found after the retries.
    pub messages: usize,
    /// Events in the feed after the retries.
    pub events: usize,
    /// Recalled or deleted messages after the retries, all of which the purge must remove.
    pub retired: usize,
    /// Messages the purge removed.
    pub purged: u64,
    /// Everything found wrong, each in words, prefixed by the phase it was found in.
    pub problems: Vec<String>,
}

/// The messages found consistent in a phase: status and version by msg_id.
pub type Found = BTreeMap<MsgId, (Status, u32)>;

/// A client killed with SIGKILL in the middle of a burst of concurrent transitions leaves every
/// message consistent for a fresh process: status and version agree with the message's events
/// (one per version 2..=v, in order), the feed's seqs are contiguous, content reads back, every
/// answer the dead client got is in force and is answered again the same way; after the
/// backend's repair (`repair`, given the store, the namespace and the messages found: it runs
/// whatever completes a dead writer's work in the backend's design and checks the backend's own
/// state, returning what it found wrong) and after retrying every unanswered request, the same
/// holds; and a purge after the retention removes exactly the recalled and deleted messages.
///
/// `test_name` is the name of the calling test as `--exact` matches it (the path inside the test
/// binary, e.g. `a_killed_client_leaves_every_message_consistent`): the function re-executes the
/// binary with it, and in that child runs the burst and never returns. Prints the figures and
/// panics if anything is wrong.
///
/// Only for stores whose data outlives the process: the in-memory store dies with its client,
/// so it is not run there. Unix only (SIGKILL).
pub async fn a_killed_client_leaves_every_message_consistent<F, R>(
    factory: &F,
    test_name: &str,
    burst: Burst,
    repair: R,
) -> ClientCrashReport
where
    F: StoreFactory,
    R: AsyncFnOnce(&F::Store, &str, &Found) -> Vec<String>,
{
    if let Ok(namespace) = std::env::var(CHILD_NAMESPACE_ENV) {
        child(factory, &namespace, &burst).await;
        // The burst only ends by timeout or orphaning: the parent sees a clean exit as a failure.
        std::process::exit(0);
    }
    let started = Instant::now();
    let namespace = factory.create_namespace().await;
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis() as i64;
    let log = run_and_kill(test_name, &namespace, at, &burst).await;
    tokio::time::sleep(burst.settle).await;

    let clock = ManualClock::new(Timestamp::from_millis(at));
    let setup = Setup::default();
    let retention = setup.policy.retention();
    let settings = StoreSettings {
        policy: setup.policy,
        codec: setup.codec,
        clock: Arc::new(clock.clone()),
    };
    // The fresh process's first store over the namespace.
    let store = factory.open(&namespace, settings).await;
    let conv = ConversationId::new(CONVERSATION).expect("valid id");
    let mut report = ClientCrashReport {
        inserts_answered: log.inserted.len(),
        transitions_answered: log.answers.len(),
        refusals_answered: log.refusals.len(),
        in_flight: log.unanswered_inserts().len() + log.unanswered_requests().len(),
        ..ClientCrashReport::default()
    };
    let mut log = log;

    let found = check(&store, &conv, &log, "as found", &mut report.problems).await;
    for p in repair(&store, &namespace, &found).await {
        report.problems.push(format!("repair: {p}"));
    }
    check(
        &store,
        &conv,
        &log,
        "after the repair",
        &mut report.problems,
    )
    .await;
    retry_everything(&store, &mut log, &mut report).await;
    let found = check(
        &store,
        &conv,
        &log,
        "after the retries",
        &mut report.problems,
    )
    .await;
    report.messages = found.len();
    report.events = store
        .drain_changes(&conv, &user("auditor"), FeedCursor::START, 200)
        .await
        .map_or(0, |p| p.events.len());
    report.retired = found.values().filter(|(s, _)| *s != Status::Normal).count();

    if report.problems.is_empty() {
        clock.advance(retention + Duration::from_secs(24 * 3600));
        purge_and_check(&store, &conv, &log, &found, &mut report).await;
    } else {
        // The purge would remove the records and rows that show what went wrong: keep them.
        report
            .problems
            .push("purge: not run, so that the namespace shows the problems above".to_string());
    }

    eprintln!(
        "faults: client killed after {:?}: {} writers, {} inserts, {} transitions and {} refusals \
         answered, {} requests in flight ({} of them had landed); the fresh process found {} \
         messages, {} events, {} recalled or deleted, purged {}",
        started.elapsed(),
        burst.writers,
        report.inserts_answered,
        report.transitions_answered,
        report.refusals_answered,
        report.in_flight,
        report.in_flight_had_landed,
        report.messages,
        report.events,
        report.retired,
        report.purged
    );
    for p in &report.problems {
        eprintln!("faults: {p}");
    }
    if !report.problems.is_empty() {
        // What the child said, in order, for whoever investigates.
        let path = std::env::temp_dir().join(format!("imstore-faults-{namespace}.log"));
        if std::fs::write(&path, log.lines.join("\n")).is_ok() {
            eprintln!("faults: the child's report lines are in {}", path.display());
        }
    }
    assert!(
        report.problems.is_empty(),
        "a killed client left inconsistent messages (namespace {namespace} kept): {:#?}",
        report.problems
    );
    assert!(
        report.in_flight > 0,
        "nothing was in flight when the child died: the kill proved nothing"
    );
    factory.drop_namespace(&namespace).await;
    report
}

/// Kills the child when dropped (a failing parent never leaves a burst running).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the child, reads its lines, kills it once `burst.kill_after` transitions are answered,
/// and returns everything it reported before it died.
async fn run_and_kill(test_name: &str, namespace: &str, at: i64, burst: &Burst) -> ChildLog {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args(["--exact", test_name, "--nocapture", "--test-threads", "1"])
            .env(CHILD_NAMESPACE_ENV, namespace)
            .env(CHILD_CLOCK_ENV, at.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the test binary runs again as the child"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A thread, not a task: the pipe is read with blocking reads until the child is gone.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = ChildLog::default();
    let deadline = Instant::now() + burst.child_timeout;
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(line)) => {
                // The harness prints "test <name> ... " without a newline before the test's
                // own output, so the first report line may follow it on the same line.
                if let Some(at) = line.find(LINE) {
                    log.read(&line[at + LINE.len()..]);
                }
                if !killed && log.answers.len() + log.refusals.len() >= burst.kill_after {
                    // SIGKILL: the child gets no chance to finish anything it has in flight.
                    child.0.kill().expect("SIGKILL the child");
                    killed = true;
                }
            }
            // The pipe closed: the child is gone (killed, or it ended by itself).
            Ok(None) => break,
            Err(_) => panic!(
                "the child answered {} of {} transitions within {:?}",
                log.answers.len() + log.refusals.len(),
                burst.kill_after,
                burst.child_timeout
            ),
        }
    }
    let status = child.0.wait().expect("wait for the child");
    assert!(
        killed && status.signal() == Some(9),
        "the child ended by itself ({status}) before the kill: its output above says why"
    );
    log
}

/// One transition the child sent.
#[derive(Clone, Debug)]
struct Sent {
    request: TransitionRequest,
}

/// What the child reported, by request.
#[derive(Default)]
struct ChildLog {
    /// Every message the child tried to insert, with its content, in order.
    messages: BTreeMap<MsgId, NewMessage>,
    /// Inserts answered (`Inserted` or `AlreadyExists`).
    inserted: BTreeSet<MsgId>,
    /// Every transition the child sent, by request id.
    requests: BTreeMap<String, Sent>,
    /// Transitions answered with an outcome.
    answers: BTreeMap<String, TransitionOutcome>,
    /// Transitions answered with a recorded refusal (its kind).
    refusals: BTreeMap<String, &'static str>,
    /// Lines the parent could not make sense of (always a problem).
    garbled: Vec<String>,
    /// Every report line, in the order the child printed them (kept for a failure's record).
    lines: Vec<String>,
}

impl ChildLog {
    fn read(&mut self, line: &str) {
        self.lines.push(line.to_string());
        if self.try_read(line).is_none() {
            self.garbled.push(line.to_string());
        }
    }

    fn try_read(&mut self, line: &str) -> Option<()> {
        let conv = ConversationId::new(CONVERSATION).ok()?;
        let w: Vec<&str> = line.split(' ').collect();
        match w.as_slice() {
            ["insert", id, sender, content] => {
                let id = MsgId::from_i64(id.parse().ok()?).ok()?;
                let sender = UserId::new(*sender).ok()?;
                let m = NewMessage::text(id, conv, sender, content.to_string());
                self.messages.insert(id, m);
            }
            ["inserted", id] => {
                self.inserted
                    .insert(MsgId::from_i64(id.parse().ok()?).ok()?);
            }
            ["insert-failed", _, _] => {}
            ["request", rid, action, requester, authority, id, ts] => {
                let request = TransitionRequest {
                    action: parse_action(action)?,
                    requester: UserId::new(*requester).ok()?,
                    authority: parse_authority(authority)?,
                    conversation_id: conv,
                    msg_id: MsgId::from_i64(id.parse().ok()?).ok()?,
                    client_ts: Timestamp::from_millis(ts.parse().ok()?),
                    request_id: RequestId::new(*rid).ok()?,
                };
                self.requests.insert(rid.to_string(), Sent { request });
            }
            ["answer", rid, status, version, changed, replayed] => {
                let msg_id = self.requests.get(*rid)?.request.msg_id;
                let o = TransitionOutcome {
                    msg_id,
                    status: Status::from_code(status.parse().ok()?).ok()?,
                    version: version.parse().ok()?,
                    changed: changed.parse().ok()?,
                    replayed: replayed.parse().ok()?,
                };
                self.answers.insert(rid.to_string(), o);
            }
            ["refused", rid, kind] => {
                self.requests.get(*rid)?;
                self.refusals.insert(rid.to_string(), parse_kind(kind)?);
            }
            ["failed", rid, _] => {
                self.requests.get(*rid)?;
            }
            _ => return None,
        }
        Some(())
    }

    fn unanswered_inserts(&self) -> Vec<MsgId> {
        self.messages
            .keys()
            .filter(|id| !self.inserted.contains(id))
            .copied()
            .collect()
    }

    fn unanswered_requests(&self) -> Vec<String> {
        self.requests
            .keys()
            .filter(|rid| !self.answers.contains_key(*rid) && !self.refusals.contains_key(*rid))
            .cloned()
            .collect()
    }
}

fn parse_action(s: &str) -> Option<Action> {
    [Action::Recall, Action::Restore, Action::Delete]
        .into_iter()
        .find(|a| a.as_str() == s)
}

fn authority_str(a: Authority) -> &'static str {
    match a {
        Authority::Member => "member",
        Authority::Moderator => "moderator",
    }
}

fn parse_authority(s: &str) -> Option<Authority> {
    [Authority::Member, Authority::Moderator]
        .into_iter()
        .find(|a| authority_str(*a) == s)
}

fn parse_kind(s: &str) -> Option<&'static str> {
    ErrorKind::ALL.iter().map(|k| k.as_str()).find(|k| *k == s)
}

/// The refusals the contract records under the request id (steps 3 to 5 of the request order):
/// a retry of the same request must be refused the same way.
fn is_recorded_refusal(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::NotFound
            | ErrorKind::Forbidden
            | ErrorKind::WindowExpired
            | ErrorKind::InvalidState
            | ErrorKind::StaleRequest
    )
}

/// Prints one report line and flushes it before the request it announces is sent: a line the
/// parent has not read describes nothing the child did.
fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{LINE}{line}");
    let _ = out.flush();
}

/// A small deterministic generator (xorshift64*): the burst needs variety, not quality.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// The child's part: writers racing on the newest messages until the parent kills the process
/// (or the parent is gone, or the timeout passes).
async fn child<F: StoreFactory>(factory: &F, namespace: &str, burst: &Burst) {
    let at: i64 = std::env::var(CHILD_CLOCK_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("the parent sets the child's clock");
    let clock = ManualClock::new(Timestamp::from_millis(at));
    let setup = Setup::default();
    let settings = StoreSettings {
        policy: setup.policy,
        codec: setup.codec,
        clock: Arc::new(clock.clone()),
    };
    let store = factory.open(namespace, settings).await;
    let conv = ConversationId::new(CONVERSATION).expect("valid id");
    let parent = std::os::unix::process::parent_id();
    let deadline = Instant::now() + burst.child_timeout;
    let pool: Mutex<Vec<(MsgId, UserId)>> = Mutex::new(Vec::new());
    let moderator = user("moderator");
    let writer = |w: usize| {
        let (store, conv, clock, pool, moderator) = (&store, &conv, &clock, &pool, &moderator);
        async move {
            let ids = MsgIdGenerator::new(300 + w as u16, Arc::new(clock.clone()))
                .expect("a valid node id");
            let sender = user(&format!("writer-{w}"));
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((w as u64 + 1) << 32) ^ u64::from(parent));
            let mut i = 0u64;
            // An orphaned child (the parent died) stops instead of writing on forever.
            while Instant::now() < deadline && std::os::unix::process::parent_id() == parent {
                i += 1;
                let hot: Vec<(MsgId, UserId)> = {
                    let p = pool.lock().unwrap_or_else(|p| p.into_inner());
                    p[p.len().saturating_sub(burst.hot_messages)..].to_vec()
                };
                if hot.is_empty() || rng.below(4) == 0 {
                    let id = ids.next_id().expect("the clock is within the msg_id range");
                    let content = format!("burst-{w}-{i}");
                    emit(format_args!("insert {id} {sender} {content}"));
                    let m = NewMessage::text(id, conv.clone(), sender.clone(), content);
                    match store.insert(m).await {
                        Ok(InsertOutcome::Inserted | InsertOutcome::AlreadyExists) => {
                            emit(format_args!("inserted {id}"));
                            pool.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((id, sender.clone()));
                        }
                        Err(e) => emit(format_args!("insert-failed {id} {}", e.kind().as_str())),
                    }
                    continue;
                }
                let (msg_id, owner) = hot[rng.below(hot.len())].clone();
                let (action, requester, authority) = match rng.below(20) {
                    0..=6 => (Action::Recall, owner, Authority::Member),
                    7..=13 => (Action::Restore, owner, Authority::Member),
                    14..=15 => (Action::Delete, owner, Authority::Member),
                    16..=17 => (Action::Recall, moderator.clone(), Authority::Moderator),
                    _ => (Action::Delete, moderator.clone(), Authority::Moderator),
                };
                let rid = format!("w{w}-{i}");
                let request = TransitionRequest {
                    action,
                    requester,
                    authority,
                    conversation_id: conv.clone(),
                    msg_id,
                    client_ts: clock.now(),
                    request_id: RequestId::new(rid.clone()).expect("valid id"),
                };
                emit(format_args!(
                    "request {rid} {} {} {} {msg_id} {}",
                    action.as_str(),
                    request.requester,
                    authority_str(authority),
                    request.client_ts.as_millis()
                ));
                match store.transition(request).await {
                    Ok(o) => emit(format_args!(
                        "answer {rid} {} {} {} {}",
                        o.status.code(),
                        o.version,
                        o.changed,
                        o.replayed
                    )),
                    Err(e) if is_recorded_refusal(e.kind()) => {
                        emit(format_args!("refused {rid} {}", e.kind().as_str()))
                    }
                    Err(e) => emit(format_args!("failed {rid} {}", e.kind().as_str())),
                }
            }
        }
    };
    futures::future::join_all((0..burst.writers).map(writer)).await;
}
