//! The history checker on hand-made histories (bad ones rejected, good ones accepted), on
//! recorded runs of MemoryStore (accepted), and on recorded runs of deliberately broken stores
//! wrapped around MemoryStore (rejected: the checker can fail).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use imstore_conformance::history::{
    self, Call, CheckOptions, Device, History, NEVER, Op, Pull, Ret, ViolationKind, Workload,
};
use imstore_conformance::memory::MemoryFactory;
use imstore_conformance::{DynFactory, Harness, Setup};
use imstore_core::*;

// ------------------------------------------------------------------ hand-made histories

const T0: i64 = 1_750_000_000_000;

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn conv() -> ConversationId {
    ConversationId::new("c").unwrap()
}

fn msg() -> NewMessage {
    NewMessage::text(
        MsgId::new(7).unwrap(),
        conv(),
        user("alice"),
        b"hi".to_vec(),
    )
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

fn req(action: Action, who: &str, rid: &str) -> TransitionRequest {
    TransitionRequest {
        action,
        requester: user(who),
        authority: if who == "mia" {
            Authority::Moderator
        } else {
            Authority::Member
        },
        conversation_id: conv(),
        msg_id: msg().msg_id,
        client_ts: at(0),
        request_id: RequestId::new(rid).unwrap(),
    }
}

fn out(status: Status, version: u32, changed: bool, replayed: bool) -> Ret {
    Ret::Transitioned(TransitionOutcome {
        msg_id: msg().msg_id,
        status,
        version,
        changed,
        replayed,
    })
}

fn get(viewer: &str) -> Call {
    Call::Get {
        conversation_id: conv(),
        msg_id: msg().msg_id,
        viewer: user(viewer),
    }
}

/// What `viewer` reads of `msg()` in lifecycle `life` (rendered by the core, as a store would).
fn view_of(viewer: &str, life: Lifecycle) -> Ret {
    Ret::Read(view::render(
        StoredMessage {
            message: msg(),
            lifecycle: life,
        },
        &user(viewer),
        &Policy::default(),
        at(0),
    ))
}

fn recalled_v2() -> Lifecycle {
    Lifecycle {
        status: Status::Recalled,
        version: 2,
        recalled_at: Some(at(0)),
        recalled_by: Some(user("alice")),
        ..Lifecycle::new(at(0))
    }
}

#[derive(Default)]
struct Build {
    history: History,
}

impl Build {
    fn op(&mut self, client: usize, start: u64, end: u64, call: Call, ret: Ret) -> usize {
        self.history.ops.push(Op {
            client,
            start,
            end,
            now: at(0),
            call,
            ret,
        });
        self.history.ops.len() - 1
    }

    fn inserted(&mut self, start: u64, end: u64) -> usize {
        self.op(
            0,
            start,
            end,
            Call::Insert(msg()),
            Ret::Inserted(InsertOutcome::Inserted),
        )
    }

    fn final_read(&mut self, start: u64, ret: Ret) {
        let i = self.op(9, start, start + 1, get("alice"), ret);
        self.history.final_reads.push(i);
    }

    fn device(&mut self, pulls: Vec<(u64, Vec<ChangeEvent>)>) {
        let mut cursor = FeedCursor::START;
        let pulls = pulls
            .into_iter()
            .map(|(start, events)| {
                let from = cursor;
                cursor = events
                    .last()
                    .map_or(cursor, |e| FeedCursor::at(&conv(), e.seq).unwrap());
                Pull {
                    start,
                    end: start + 1,
                    cursor: from,
                    limit: 10,
                    result: Ok(ChangePage {
                        events,
                        next: cursor,
                        resync: None,
                    }),
                }
            })
            .collect();
        self.history.devices.push(Device {
            viewer: UserId::new("bob").unwrap(),
            name: "phone".into(),
            conversation_id: conv(),
            pulls,
        });
    }

    fn check(&self) -> Result<history::Summary, Box<history::Violation>> {
        history::check(&self.history, &Policy::default())
    }
}

fn event(seq: u64, status: Status, version: u32, by: &str) -> ChangeEvent {
    ChangeEvent {
        seq,
        conversation_id: conv(),
        msg_id: msg().msg_id,
        status,
        version,
        at: at(0),
        by: user(by),
    }
}

/// insert; recall r1; restore r2; the captured recall r1 replayed after the restore.
fn recall_restore_replay(replay: Ret) -> Build {
    let mut b = Build::default();
    b.inserted(1, 2);
    b.op(
        1,
        3,
        4,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        out(Status::Recalled, 2, true, false),
    );
    b.op(
        1,
        5,
        6,
        Call::Transition(req(Action::Restore, "alice", "r2")),
        out(Status::Normal, 3, true, false),
    );
    b.op(
        2,
        7,
        8,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        replay,
    );
    b
}

#[test]
fn a_replay_after_restore_answered_with_its_first_outcome_is_accepted() {
    let mut b = recall_restore_replay(out(Status::Recalled, 2, true, true));
    b.op(3, 9, 10, get("bob"), {
        let mut life = recalled_v2();
        life.status = Status::Normal;
        life.version = 3;
        life.recalled_at = None;
        life.restored_at = Some(at(0));
        view_of("bob", life)
    });
    let summary = b.check().expect("a good history");
    assert_eq!(summary.ops, 5);
}

#[test]
fn a_replay_applied_is_rejected() {
    // The replayed recall recalls the restored message again: a second change from one id.
    let b = recall_restore_replay(out(Status::Recalled, 4, true, false));
    let v = b.check().unwrap_err();
    eprintln!("{v}");
    assert_eq!(v.kind, ViolationKind::NotLinearizable);
    assert!(v.ops.contains(&3), "{v}");
    assert!(v.text.contains("#3"), "{v}");
    assert!(v.text.contains("the contract answers"), "{v}");
}

#[test]
fn a_change_made_twice_is_rejected() {
    // Two copies of one request in flight together, both told they made the change.
    let mut b = Build::default();
    b.inserted(1, 2);
    let r = req(Action::Recall, "alice", "r1");
    b.op(
        1,
        3,
        6,
        Call::Transition(r.clone()),
        out(Status::Recalled, 2, true, false),
    );
    b.op(
        2,
        4,
        5,
        Call::Transition(r),
        out(Status::Recalled, 2, true, false),
    );
    let v = b.check().unwrap_err();
    eprintln!("{v}");
    assert_eq!(v.kind, ViolationKind::NotLinearizable);
    let mut answered = v.ops.clone();
    answered.sort();
    assert_eq!(answered, vec![1, 2], "{v}");
    assert_eq!(v.context, vec![0], "the insert's answer is not needed: {v}");
}

#[test]
fn concurrent_copies_of_one_request_one_applied_one_replayed_are_accepted() {
    let mut b = Build::default();
    b.inserted(1, 2);
    let r = req(Action::Recall, "alice", "r1");
    // The copy that returned first is the replay: it linearizes after the other.
    b.op(
        1,
        3,
        6,
        Call::Transition(r.clone()),
        out(Status::Recalled, 2, true, false),
    );
    b.op(
        2,
        4,
        5,
        Call::Transition(r),
        out(Status::Recalled, 2, true, true),
    );
    b.check().expect("a good history");
}

#[test]
fn a_stale_read_is_rejected() {
    let mut b = Build::default();
    b.inserted(1, 2);
    b.op(
        1,
        3,
        4,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        out(Status::Recalled, 2, true, false),
    );
    // Starts after the recall returned, yet reads the message as it was before it.
    b.op(2, 5, 6, get("bob"), view_of("bob", Lifecycle::new(at(0))));
    let v = b.check().unwrap_err();
    eprintln!("{v}");
    assert_eq!(v.kind, ViolationKind::NotLinearizable);
    assert!(v.ops.contains(&2), "{v}");
    assert!(v.text.contains("get of 7 as bob"), "{v}");
}

#[test]
fn a_read_concurrent_with_the_recall_may_see_either_state() {
    for before in [true, false] {
        let mut b = Build::default();
        b.inserted(1, 2);
        b.op(
            1,
            3,
            6,
            Call::Transition(req(Action::Recall, "alice", "r1")),
            out(Status::Recalled, 2, true, false),
        );
        let life = if before {
            Lifecycle::new(at(0))
        } else {
            recalled_v2()
        };
        b.op(2, 4, 5, get("bob"), view_of("bob", life));
        b.check().expect("a read overlapping the recall");
    }
}

#[test]
fn a_read_that_returned_before_a_recall_took_effect_is_ordered_first() {
    // The search first places the long recall, finds the first read cannot follow it, and
    // backtracks: read, then recall, then the second read.
    let mut b = Build::default();
    b.inserted(1, 2);
    b.op(
        1,
        3,
        20,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        out(Status::Recalled, 2, true, false),
    );
    b.op(2, 4, 5, get("bob"), view_of("bob", Lifecycle::new(at(0))));
    b.op(3, 6, 7, get("carol"), view_of("carol", recalled_v2()));
    b.check().expect("a good history");
    // A third read, after the second, going back to the old state, is not explained.
    b.op(4, 8, 9, get("bob"), view_of("bob", Lifecycle::new(at(0))));
    let v = b.check().unwrap_err();
    assert!(v.ops.contains(&4), "{v}");
}

#[test]
fn concurrent_calls_may_take_effect_in_the_reverse_of_their_start_order() {
    // Five overlapping transitions, started in one order, answered with versions that put them
    // in the reverse order; one order of the 120 explains it.
    let mut b = Build::default();
    b.inserted(1, 2);
    let steps = [
        (Action::Recall, Status::Recalled),
        (Action::Restore, Status::Normal),
        (Action::Recall, Status::Recalled),
        (Action::Restore, Status::Normal),
        (Action::Recall, Status::Recalled),
    ];
    for (k, (action, status)) in steps.iter().enumerate() {
        let start = 10 - k as u64;
        b.op(
            k,
            start,
            100 + k as u64,
            Call::Transition(req(*action, "alice", &format!("r{k}"))),
            out(*status, 2 + k as u32, true, false),
        );
    }
    b.check().expect("the versions say the order");
    // Two calls answering the same version cannot both have changed the message.
    b.history.ops[3].ret = out(Status::Normal, 3, true, false);
    assert_eq!(b.check().unwrap_err().kind, ViolationKind::NotLinearizable);
}

#[test]
fn an_unknown_outcome_may_have_taken_effect_or_not() {
    for took_effect in [true, false] {
        let mut b = Build::default();
        b.inserted(1, 2);
        b.op(
            1,
            3,
            NEVER,
            Call::Transition(req(Action::Recall, "alice", "r1")),
            Ret::Failed(ErrorKind::Unavailable),
        );
        let life = if took_effect {
            recalled_v2()
        } else {
            Lifecycle::new(at(0))
        };
        b.op(2, 10, 11, get("carol"), view_of("carol", life));
        b.check().expect("either is explained");
    }
    // But it cannot have taken effect before it started.
    let mut b = Build::default();
    b.inserted(1, 2);
    b.op(2, 3, 4, get("carol"), view_of("carol", recalled_v2()));
    b.op(
        1,
        5,
        6,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        Ret::Failed(ErrorKind::Backend),
    );
    assert_eq!(b.check().unwrap_err().kind, ViolationKind::NotLinearizable);
}

#[test]
fn a_refusal_is_the_answer_forever_and_a_reused_id_is_a_conflict() {
    let mut b = Build::default();
    b.inserted(1, 2);
    // A bystander's recall is refused, and stays refused when retried.
    b.op(
        1,
        3,
        4,
        Call::Transition(req(Action::Recall, "bob", "r1")),
        Ret::Failed(ErrorKind::Forbidden),
    );
    b.op(
        1,
        5,
        6,
        Call::Transition(req(Action::Recall, "bob", "r1")),
        Ret::Failed(ErrorKind::Forbidden),
    );
    // The same id for the sender's recall is another request: a conflict, nothing applied.
    b.op(
        2,
        7,
        8,
        Call::Transition(req(Action::Recall, "alice", "r1")),
        Ret::Failed(ErrorKind::Conflict),
    );
    b.op(2, 9, 10, get("bob"), view_of("bob", Lifecycle::new(at(0))));
    b.check().expect("a good history");
    // Applying the reused id instead is rejected.
    b.history.ops[3].ret = out(Status::Recalled, 2, true, false);
    b.history.ops[4].ret = view_of("bob", recalled_v2());
    assert_eq!(b.check().unwrap_err().kind, ViolationKind::NotLinearizable);
}

fn feed_history(events: Vec<(u64, Vec<ChangeEvent>)>) -> Build {
    let mut b = recall_restore_replay(out(Status::Recalled, 2, true, true));
    b.op(
        1,
        9,
        10,
        Call::Transition(req(Action::Recall, "alice", "r3")),
        out(Status::Recalled, 4, true, false),
    );
    let mut life = recalled_v2();
    life.version = 4;
    b.final_read(20, view_of("alice", life));
    b.device(events);
    b
}

#[test]
fn a_feed_with_every_change_once_in_order_is_accepted() {
    let b = feed_history(vec![
        (
            5,
            vec![
                event(1, Status::Recalled, 2, "alice"),
                event(2, Status::Normal, 3, "alice"),
            ],
        ),
        (11, vec![event(3, Status::Recalled, 4, "alice")]),
        (30, vec![]),
    ]);
    let summary = b.check().expect("a good feed");
    assert_eq!((summary.devices, summary.events), (1, 3));
}

#[test]
fn a_skipped_event_is_rejected() {
    let b = feed_history(vec![
        (5, vec![event(1, Status::Recalled, 2, "alice")]),
        // Seq 2 (the restore, version 3) never arrives.
        (11, vec![event(3, Status::Recalled, 4, "alice")]),
        (30, vec![]),
    ]);
    let v = b.check().unwrap_err();
    eprintln!("{v}");
    assert_eq!(v.kind, ViolationKind::Feed);
    assert!(v.text.contains("version 3"), "{v}");
    assert!(v.text.contains("never delivered"), "{v}");
}

#[test]
fn a_duplicated_or_reordered_event_is_rejected() {
    let twice = feed_history(vec![
        (
            5,
            vec![
                event(1, Status::Recalled, 2, "alice"),
                event(2, Status::Normal, 3, "alice"),
            ],
        ),
        (
            11,
            vec![
                event(3, Status::Normal, 3, "alice"),
                event(4, Status::Recalled, 4, "alice"),
            ],
        ),
        (30, vec![]),
    ]);
    let v = twice.check().unwrap_err();
    assert!(v.text.contains("delivered twice"), "{v}");
    let reordered = feed_history(vec![
        (
            5,
            vec![
                event(1, Status::Normal, 3, "alice"),
                event(2, Status::Recalled, 2, "alice"),
            ],
        ),
        (11, vec![event(3, Status::Recalled, 4, "alice")]),
        (30, vec![]),
    ]);
    let v = reordered.check().unwrap_err();
    assert!(v.text.contains("out of order"), "{v}");
}

#[test]
fn a_search_too_large_for_its_bound_says_so() {
    // Sixteen overlapping copies of one request, each with an unknown outcome: more than 10 states.
    let mut b = Build::default();
    b.inserted(1, 2);
    for i in 0..16 {
        b.op(
            i,
            3 + i as u64,
            100 + i as u64,
            Call::Transition(req(Action::Recall, "alice", "r1")),
            Ret::Failed(ErrorKind::Unavailable),
        );
    }
    let v = history::check_with(
        &b.history,
        &Policy::default(),
        &CheckOptions { max_states: 10 },
    )
    .unwrap_err();
    assert_eq!(v.kind, ViolationKind::TooManyStates);
    assert!(v.text.contains("max_states"), "{v}");
}

// ------------------------------------------------------------------ recorded runs

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_histories_are_linearizable() {
    let t = Instant::now();
    history::linearizable_under_concurrency(&MemoryFactory::default()).await;
    eprintln!("two recorded histories checked in {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_histories_are_linearizable_through_arc_dyn() {
    history::linearizable_under_concurrency(&DynFactory(MemoryFactory::default())).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_single_threaded_runtime_interleaves_the_clients() {
    let f = MemoryFactory::default();
    let h = Harness::start(&f, Setup::default()).await;
    let w = Workload {
        ops: 600,
        seed: 3,
        ..Workload::default()
    };
    let history = history::record(&h.store, &h.clock, &w).await;
    let summary = history::check(&history, &Policy::default()).unwrap_or_else(|v| panic!("{v}"));
    eprintln!("{summary}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recorded_run_has_the_mix_it_was_asked_for() {
    let f = MemoryFactory::default();
    let h = Harness::start(&f, Setup::default()).await;
    let w = Workload {
        seed: 5,
        ..Workload::default()
    };
    let history = history::record(&h.store, &h.clock, &w).await;
    let count = |p: &dyn Fn(&Op) -> bool| history.ops.iter().filter(|o| p(o)).count();
    let transition = |o: &Op, f: &dyn Fn(&TransitionOutcome) -> bool| matches!(&o.ret, Ret::Transitioned(t) if f(t));
    let applied = count(&|o| transition(o, &|t| t.changed && !t.replayed));
    let replayed = count(&|o| transition(o, &|t| t.replayed));
    let kinds: HashMap<ErrorKind, usize> = history.ops.iter().fold(HashMap::new(), |mut m, o| {
        if let Ret::Failed(k) = o.ret {
            *m.entry(k).or_default() += 1;
        }
        m
    });
    eprintln!(
        "{} ops, {applied} applied, {replayed} replayed, refusals {kinds:?}, {} final reads",
        history.ops.len(),
        history.final_reads.len()
    );
    assert!(history.ops.len() >= w.ops);
    assert!(applied > 100 && replayed > 50, "{applied} {replayed}");
    for k in [
        ErrorKind::Forbidden,
        ErrorKind::WindowExpired,
        ErrorKind::InvalidState,
        ErrorKind::StaleRequest,
        ErrorKind::InvalidInput,
        ErrorKind::Conflict,
    ] {
        assert!(
            kinds.get(&k).copied().unwrap_or(0) > 0,
            "no {k} in {kinds:?}"
        );
    }
    let overlapping = history
        .ops
        .windows(2)
        .filter(|w| w[1].start < w[0].end && w[0].start < w[1].end)
        .count();
    assert!(overlapping > 0, "the clients never overlapped");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_run_with_more_clients_is_checked_in_bounded_time() {
    let f = MemoryFactory::default();
    let h = Harness::start(&f, Setup::default()).await;
    let w = Workload {
        ops: 12_000,
        clients: 16,
        conversations: 6,
        seed: 99,
        ..Workload::default()
    };
    let t = Instant::now();
    let history = history::record(&h.store, &h.clock, &w).await;
    let recorded = t.elapsed();
    let summary = history::check(&history, &Policy::default()).unwrap_or_else(|v| panic!("{v}"));
    eprintln!(
        "{summary}; recorded in {recorded:?}, checked in {:?}",
        t.elapsed() - recorded
    );
    h.finish().await;
}

// ------------------------------------------------------------------ broken stores

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forgets request records: every call gets a fresh request id, so replays apply again.
    ForgetsRequests,
    /// Answers some reads from a cache filled by earlier reads.
    StaleReads,
    /// Drops an event now and then from a feed page while still moving the cursor past it.
    SkipsEvents,
}

#[derive(Debug)]
struct Broken<S> {
    inner: S,
    fault: Fault,
    calls: AtomicU64,
    cache: Mutex<HashMap<(MsgId, UserId), MessageView>>,
}

#[async_trait]
impl<S: MessageStore> MessageStore for Broken<S> {
    fn backend(&self) -> &'static str {
        "broken-memory"
    }
    async fn insert(&self, message: NewMessage) -> Result<InsertOutcome> {
        self.inner.insert(message).await
    }
    async fn insert_batch(&self, messages: Vec<NewMessage>) -> Result<BatchOutcome> {
        self.inner.insert_batch(messages).await
    }
    async fn get(&self, c: &ConversationId, id: MsgId, viewer: &UserId) -> Result<MessageView> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fault == Fault::StaleReads {
            let key = (id, viewer.clone());
            if n.is_multiple_of(3)
                && let Some(v) = self.cache.lock().unwrap().get(&key)
            {
                return Ok(v.clone());
            }
            let v = self.inner.get(c, id, viewer).await?;
            self.cache.lock().unwrap().insert(key, v.clone());
            return Ok(v);
        }
        self.inner.get(c, id, viewer).await
    }
    async fn list(&self, c: &ConversationId, viewer: &UserId, o: ListOptions) -> Result<Page> {
        self.inner.list(c, viewer, o).await
    }
    async fn transition(&self, mut request: TransitionRequest) -> Result<TransitionOutcome> {
        if self.fault == Fault::ForgetsRequests {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            request.request_id = RequestId::new(format!("forgot-{n}")).unwrap();
        }
        self.inner.transition(request).await
    }
    async fn audit(&self, c: &ConversationId, id: MsgId) -> Result<AuditRecord> {
        self.inner.audit(c, id).await
    }
    async fn attachment_access(
        &self,
        c: &ConversationId,
        id: MsgId,
        viewer: &UserId,
    ) -> Result<AttachmentAccess> {
        self.inner.attachment_access(c, id, viewer).await
    }
    async fn changes_since(
        &self,
        c: &ConversationId,
        viewer: &UserId,
        cursor: FeedCursor,
        limit: u32,
    ) -> Result<ChangePage> {
        let mut page = self.inner.changes_since(c, viewer, cursor, limit).await?;
        if self.fault == Fault::SkipsEvents && page.events.len() > 1 {
            let n = self.calls.fetch_add(1, Ordering::Relaxed);
            if n.is_multiple_of(5) {
                page.events.remove(0);
            }
        }
        Ok(page)
    }
    async fn changed_conversations(
        &self,
        cursors: &[SyncCursor],
    ) -> Result<Vec<ConversationChange>> {
        self.inner.changed_conversations(cursors).await
    }
    async fn purge(&self, options: PurgeOptions) -> Result<PurgeReport> {
        self.inner.purge(options).await
    }
    async fn set_legal_hold(&self, c: &ConversationId, held: bool) -> Result<()> {
        self.inner.set_legal_hold(c, held).await
    }
    async fn rekey(&self, options: RekeyOptions) -> Result<RekeyReport> {
        self.inner.rekey(options).await
    }
    async fn key_usage(&self) -> Result<KeyUsage> {
        self.inner.key_usage().await
    }
}

async fn rejects(fault: Fault, seed: u64) -> Box<history::Violation> {
    let f = MemoryFactory::default();
    let h = Harness::start(&f, Setup::default()).await;
    let store = Broken {
        inner: h.store.clone(),
        fault,
        calls: AtomicU64::new(0),
        cache: Mutex::new(HashMap::new()),
    };
    let w = Workload {
        seed,
        ..Workload::default()
    };
    let t = Instant::now();
    let history = history::record(&store, &h.clock, &w).await;
    let v =
        history::check(&history, &Policy::default()).expect_err("a broken store must be rejected");
    eprintln!("{fault:?} rejected in {:?}:\n{v}", t.elapsed());
    h.finish().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_that_forgets_request_ids_is_rejected() {
    for seed in [21, 22, 23] {
        let v = rejects(Fault::ForgetsRequests, seed).await;
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
        // Calls linked through a reused request id may stay as context; the answers are few.
        assert!(v.ops.len() <= 3, "the witness is small: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_with_stale_cached_reads_is_rejected() {
    for seed in [21, 22, 23, 24, 25] {
        let v = rejects(Fault::StaleReads, seed).await;
        assert_eq!(v.kind, ViolationKind::NotLinearizable);
        // Calls linked through a reused request id may stay as context; the answers are few.
        assert!(v.ops.len() <= 3, "the witness is small: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_whose_feed_skips_events_is_rejected() {
    for seed in [21, 22] {
        assert_eq!(
            rejects(Fault::SkipsEvents, seed).await.kind,
            ViolationKind::Feed
        );
    }
}
