//! The recorder: many clients and devices on one store, every call written down with its interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use imstore_core::{
    Action, Authority, Clock, ConversationId, FeedCursor, ManualClock, MessageStore,
    MsgIdGenerator, NewMessage, RequestId, Timestamp, TransitionRequest, UserId,
};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::workload::{Rng, Workload};
use super::{Call, Device, History, Op, Pull, Ret};

/// Drives `store` with `workload` and returns everything it did; `clock` must be the store's
/// clock, and only the recorder moves it (between phases, when no call is in flight).
///
/// On a multi-threaded tokio runtime every client and device runs on its own thread, so calls
/// really overlap even on an in-memory store; elsewhere they interleave on the caller's task.
/// After the last phase every device drains its feed, and every message is read once as its
/// sender ([`History::final_reads`]).
pub async fn record<S: MessageStore + ?Sized>(
    store: &S,
    clock: &ManualClock,
    workload: &Workload,
) -> History {
    let run = Run::new(store, clock, workload);
    let threads = matches!(
        Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(RuntimeFlavor::MultiThread)
    );
    if threads {
        let handle = Handle::current();
        // The calling thread only waits for the client threads; block_in_place lets the
        // runtime move its other work (a driver's connection tasks) elsewhere meanwhile.
        tokio::task::block_in_place(|| run.on_threads(&handle));
    } else {
        run.interleaved().await;
    }
    run.final_reads().await;
    run.into_history()
}

struct Conv {
    id: ConversationId,
    /// Every message planned so far, in order; the last `messages_per_conversation` are acted on.
    messages: Vec<NewMessage>,
    /// Every well-formed request sent so far, for retries, replays and reuse.
    requests: Vec<TransitionRequest>,
    /// Requests sent and not yet answered, by token.
    in_flight: Vec<(u64, TransitionRequest)>,
}

struct Run<'a, S: ?Sized> {
    store: &'a S,
    clock: &'a ManualClock,
    w: &'a Workload,
    tag: String,
    threads: AtomicBool,
    ticks: AtomicU64,
    next: AtomicU64,
    ops: Mutex<Vec<Op>>,
    finals: Mutex<Vec<usize>>,
    convs: Vec<Mutex<Conv>>,
    devices: Mutex<Vec<Device>>,
    ids: MsgIdGenerator,
    writers_done: AtomicBool,
    /// The phase the clients are in (devices other than the first of a conversation stay
    /// offline through phase 0, then catch up from their cursor).
    phase: std::sync::atomic::AtomicUsize,
    users: Users,
}

struct Users {
    alice: UserId,
    bob: UserId,
    carol: UserId,
    mia: UserId,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Insert,
    Fresh(Action),
    Get,
    RetryInFlight,
    RetryPast,
    Reuse,
    Stale,
    Malformed,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A client that panicked already fails the run; the data it left is still a valid record.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

impl<'a, S: MessageStore + ?Sized> Run<'a, S> {
    fn new(store: &'a S, clock: &'a ManualClock, w: &'a Workload) -> Self {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        // Unique per process and seed, so two runs on one store never share a conversation.
        let tag = format!("h{}n{}", w.seed, RUNS.fetch_add(1, Ordering::Relaxed));
        let convs = (0..w.conversations.max(1))
            .map(|i| {
                Mutex::new(Conv {
                    id: ConversationId::new(format!("{tag}-c{i}")).expect("valid conversation id"),
                    messages: Vec::new(),
                    requests: Vec::new(),
                    in_flight: Vec::new(),
                })
            })
            .collect();
        Run {
            store,
            clock,
            w,
            threads: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            next: AtomicU64::new(0),
            ops: Mutex::new(Vec::new()),
            finals: Mutex::new(Vec::new()),
            convs,
            devices: Mutex::new(Vec::new()),
            ids: MsgIdGenerator::new((w.seed % 1024) as u16, Arc::new(clock.clone()))
                .expect("node below 1024"),
            writers_done: AtomicBool::new(false),
            phase: std::sync::atomic::AtomicUsize::new(0),
            users: Users {
                alice: user("alice"),
                bob: user("bob"),
                carol: user("carol"),
                mia: user("mia"),
            },
            tag,
        }
    }

    fn tick(&self) -> u64 {
        self.ticks.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn device_count(&self) -> usize {
        self.convs.len() * self.w.devices_per_conversation
    }

    fn on_threads(&self, handle: &Handle) {
        self.threads.store(true, Ordering::Relaxed);
        std::thread::scope(|s| {
            let devices: Vec<_> = (0..self.device_count())
                .map(|d| s.spawn(move || handle.block_on(self.device(d))))
                .collect();
            for (p, phase) in self.w.phases.iter().enumerate() {
                self.clock.advance(phase.advance);
                self.phase.store(p, Ordering::SeqCst);
                let n = self.w.phase_ops(p);
                std::thread::scope(|s| {
                    for c in 0..self.w.clients.max(1) {
                        let k = share(n, self.w.clients.max(1), c);
                        s.spawn(move || handle.block_on(self.client(c, k, p)));
                    }
                });
            }
            self.writers_done.store(true, Ordering::SeqCst);
            for d in devices {
                let device = d.join().expect("device thread");
                lock(&self.devices).push(device);
            }
        });
    }

    async fn interleaved(&self) {
        let writers = async {
            for (p, phase) in self.w.phases.iter().enumerate() {
                self.clock.advance(phase.advance);
                self.phase.store(p, Ordering::SeqCst);
                let n = self.w.phase_ops(p);
                let clients = self.w.clients.max(1);
                futures::future::join_all(
                    (0..clients).map(|c| self.client(c, share(n, clients, c), p)),
                )
                .await;
            }
            self.writers_done.store(true, Ordering::SeqCst);
        };
        let devices = futures::future::join_all((0..self.device_count()).map(|d| self.device(d)));
        let ((), devices) = futures::join!(writers, devices);
        lock(&self.devices).extend(devices);
    }

    async fn pause(&self, between_pulls: bool) {
        if self.threads.load(Ordering::Relaxed) {
            if between_pulls {
                // Our own thread: sleeping it keeps a device from flooding the history.
                std::thread::sleep(Duration::from_millis(1));
            }
        } else {
            // On one task an in-memory call never yields; this is where others get their turn.
            tokio::task::yield_now().await;
        }
    }

    async fn client(&self, client: usize, calls: usize, phase: usize) {
        let mut rng = Rng::new(self.w.seed, 1 + (phase as u64) * 10_000 + client as u64);
        for _ in 0..calls {
            let ci = rng.below(self.convs.len());
            let now = self.clock.now();
            let (call, token) = self.plan(ci, &mut rng, now);
            let jitter = rng.below(8);
            let op = self.call(client, call, now, jitter).await;
            if let Some(t) = token {
                lock(&self.convs[ci]).in_flight.retain(|(k, _)| *k != t);
            }
            lock(&self.ops).push(op);
            self.pause(false).await;
        }
    }

    /// On client threads, widens some calls' intervals a little on either side: an in-memory
    /// store answers in microseconds, and without this its history would be almost sequential,
    /// leaving the search's handling of overlapping calls untried.
    fn jitter(&self, roll: usize) {
        if !self.threads.load(Ordering::Relaxed) {
            return;
        }
        match roll {
            0 => std::thread::sleep(Duration::from_micros(200)),
            1 | 2 => std::thread::yield_now(),
            _ => {}
        }
    }

    async fn call(&self, client: usize, call: Call, now: Timestamp, jitter: usize) -> Op {
        let start = self.tick();
        self.jitter(jitter);
        let ret = match &call {
            Call::Insert(m) => self
                .store
                .insert(m.clone())
                .await
                .map_or_else(|e| Ret::Failed(e.kind()), Ret::Inserted),
            Call::Transition(r) => self
                .store
                .transition(r.clone())
                .await
                .map_or_else(|e| Ret::Failed(e.kind()), Ret::Transitioned),
            Call::Get {
                conversation_id,
                msg_id,
                viewer,
            } => self
                .store
                .get(conversation_id, *msg_id, viewer)
                .await
                .map_or_else(|e| Ret::Failed(e.kind()), Ret::Read),
        };
        self.jitter(jitter / 2);
        let end = self.tick();
        Op {
            client,
            start,
            end,
            now,
            call,
            ret,
        }
    }

    async fn device(&self, d: usize) -> Device {
        let ci = d % self.convs.len();
        let conversation_id = lock(&self.convs[ci]).id.clone();
        let mut rng = Rng::new(self.w.seed, 1_000_000 + d as u64);
        // Devices belong to members in turn, senders and recipients alike: under sender-only
        // restore visibility their feeds differ, and each must agree with what `get` shows them.
        let viewer = [&self.users.alice, &self.users.bob, &self.users.carol][d % 3].clone();
        let mut cursor = FeedCursor::START;
        let mut pulls = Vec::new();
        let mut failures = 0;
        let offline_at_first = d >= self.convs.len();
        loop {
            if offline_at_first
                && self.phase.load(Ordering::SeqCst) == 0
                && !self.writers_done.load(Ordering::SeqCst)
            {
                self.pause(true).await;
                continue;
            }
            // Read before the pull starts: an empty page after this saw every writer's change.
            let finished = self.writers_done.load(Ordering::SeqCst);
            let limit = 1 + rng.below(8) as u32;
            let from = cursor;
            let start = self.tick();
            let result = self
                .store
                .changes_since(&conversation_id, &viewer, cursor, limit)
                .await
                .map_err(|e| e.kind());
            let end = self.tick();
            let drained = match &result {
                Ok(page) => {
                    cursor = page.next;
                    page.events.is_empty()
                }
                Err(_) => {
                    failures += 1;
                    false
                }
            };
            pulls.push(Pull {
                start,
                end,
                cursor: from,
                limit,
                result,
            });
            if (finished && drained) || failures > 100 {
                break;
            }
            if !finished {
                self.pause(true).await;
            }
        }
        Device {
            viewer,
            name: format!("device {} of {}", d / self.convs.len(), conversation_id),
            conversation_id,
            pulls,
        }
    }

    async fn final_reads(&self) {
        let now = self.clock.now();
        let client = self.w.clients.max(1);
        for conv in &self.convs {
            let (id, mut messages) = {
                let c = lock(conv);
                (c.id.clone(), c.messages.clone())
            };
            messages.dedup_by_key(|m| m.msg_id);
            for m in messages {
                let call = Call::Get {
                    conversation_id: id.clone(),
                    msg_id: m.msg_id,
                    viewer: m.sender_id.clone(),
                };
                let op = self.call(client, call, now, usize::MAX).await;
                let mut ops = lock(&self.ops);
                lock(&self.finals).push(ops.len());
                ops.push(op);
            }
        }
    }

    fn into_history(self) -> History {
        History {
            backend: self.store.backend().to_string(),
            ops: self.ops.into_inner().unwrap_or_else(|p| p.into_inner()),
            devices: self.devices.into_inner().unwrap_or_else(|p| p.into_inner()),
            final_reads: self.finals.into_inner().unwrap_or_else(|p| p.into_inner()),
        }
    }

    fn request_id(&self, ci: usize) -> RequestId {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        RequestId::new(format!("{}-c{ci}-r{n}", self.tag)).expect("valid request id")
    }

    fn kind(&self, rng: &mut Rng) -> Kind {
        let m = &self.w.mix;
        rng.weighted(&[
            (m.insert, Kind::Insert),
            (m.recall, Kind::Fresh(Action::Recall)),
            (m.restore, Kind::Fresh(Action::Restore)),
            (m.delete, Kind::Fresh(Action::Delete)),
            (m.get, Kind::Get),
            (m.retry_in_flight, Kind::RetryInFlight),
            (m.retry_past, Kind::RetryPast),
            (m.reuse, Kind::Reuse),
            (m.stale, Kind::Stale),
            (m.malformed, Kind::Malformed),
        ])
        .unwrap_or(Kind::Get)
    }

    /// The next call of a client in conversation `ci`, and its in-flight token for transitions.
    fn plan(&self, ci: usize, rng: &mut Rng, now: Timestamp) -> (Call, Option<u64>) {
        let mut conv = lock(&self.convs[ci]);
        let window = self.w.messages_per_conversation.max(1);
        let mut kind = if conv.messages.len() < window {
            Kind::Insert
        } else {
            self.kind(rng)
        };
        if matches!(kind, Kind::RetryInFlight) && conv.in_flight.is_empty() {
            kind = Kind::RetryPast;
        }
        if matches!(kind, Kind::RetryPast | Kind::Reuse) && conv.requests.is_empty() {
            kind = Kind::Fresh(Action::Recall);
        }
        let request = match kind {
            Kind::Insert => return (Call::Insert(self.message(&mut conv, ci, rng)), None),
            Kind::Get => {
                let m = pick(&conv.messages, window, rng).clone();
                let viewer = match rng.below(3) {
                    0 => m.sender_id.clone(),
                    1 => self.bystander(&m.sender_id, rng),
                    _ => self.users.mia.clone(),
                };
                return (
                    Call::Get {
                        conversation_id: conv.id.clone(),
                        msg_id: m.msg_id,
                        viewer,
                    },
                    None,
                );
            }
            Kind::Fresh(action) => self.fresh(&conv, ci, action, rng, now),
            Kind::RetryInFlight => conv.in_flight[rng.below(conv.in_flight.len())].1.clone(),
            Kind::RetryPast => conv.requests[rng.below(conv.requests.len())].clone(),
            Kind::Reuse => {
                let old = conv.requests[rng.below(conv.requests.len())].clone();
                let crossing = ci < self.w.crossing_conversations;
                let mut new = old.clone();
                new.client_ts = now;
                match rng.below(if crossing { 3 } else { 2 }) {
                    0 => {
                        new.action = match old.action {
                            Action::Recall => Action::Restore,
                            Action::Restore => Action::Delete,
                            Action::Delete => Action::Recall,
                        }
                    }
                    1 => {
                        let (who, authority) = if old.requester == self.users.mia {
                            (self.users.carol.clone(), Authority::Member)
                        } else {
                            (self.users.mia.clone(), Authority::Moderator)
                        };
                        new.requester = who;
                        new.authority = authority;
                    }
                    _ => {
                        let other = pick(&conv.messages, window, rng);
                        new.msg_id = other.msg_id;
                        if new.msg_id == old.msg_id {
                            new.action = Action::Delete;
                        }
                    }
                }
                new
            }
            Kind::Stale => {
                let action = [Action::Recall, Action::Restore, Action::Delete][rng.below(3)];
                let mut r = self.fresh(&conv, ci, action, rng, now);
                r.client_ts = if rng.chance(1, 2) {
                    now.saturating_sub(self.w.stale_by)
                } else {
                    now.saturating_add(self.w.stale_by)
                };
                r
            }
            Kind::Malformed => {
                let mut r = self.fresh(&conv, ci, Action::Recall, rng, now);
                // Longer than the default policy's 128 bytes, within the id type's 256.
                let id = format!("{}-", r.request_id);
                let pad = 256usize.saturating_sub(id.len());
                r.request_id =
                    RequestId::new(format!("{id}{}", "x".repeat(pad))).expect("at most 256 bytes");
                return (Call::Transition(r), None);
            }
        };
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        conv.requests.push(request.clone());
        conv.in_flight.push((token, request.clone()));
        (Call::Transition(request), Some(token))
    }

    fn message(&self, conv: &mut Conv, ci: usize, rng: &mut Rng) -> NewMessage {
        let window = self.w.messages_per_conversation.max(1);
        let roll = rng.below(20);
        if conv.messages.len() >= window && roll < 3 {
            // The same message again: a sender retrying its send.
            return pick(&conv.messages, window, rng).clone();
        }
        if conv.messages.len() >= window && roll < 4 {
            // The same id with other content: a conflict, whichever lands first.
            let mut m = pick(&conv.messages, window, rng).clone();
            m.content = format!("{}-c{ci}-conflict", self.tag).into_bytes();
            return m;
        }
        let k = conv.messages.len();
        let sender = if k.is_multiple_of(2) {
            &self.users.alice
        } else {
            &self.users.bob
        };
        let m = NewMessage::text(
            self.ids
                .next_id()
                .expect("the clock is within the msg_id range"),
            conv.id.clone(),
            sender.clone(),
            format!("{}-c{ci}-m{k}", self.tag).into_bytes(),
        );
        // Planned before it is sent: other clients may act on it while its insert is in flight.
        conv.messages.push(m.clone());
        m
    }

    fn fresh(
        &self,
        conv: &Conv,
        ci: usize,
        action: Action,
        rng: &mut Rng,
        now: Timestamp,
    ) -> TransitionRequest {
        let window = self.w.messages_per_conversation.max(1);
        let m = pick(&conv.messages, window, rng);
        // (sender, bystander, moderator) weights per action.
        let (s, b, md) = match action {
            Action::Recall => (75, 15, 10),
            Action::Restore => (85, 10, 5),
            Action::Delete => (40, 30, 30),
        };
        let (requester, authority) = match rng.weighted(&[(s, 0), (b, 1), (md, 2)]) {
            Some(0) => (m.sender_id.clone(), Authority::Member),
            Some(1) => (self.bystander(&m.sender_id, rng), Authority::Member),
            _ => (self.users.mia.clone(), Authority::Moderator),
        };
        TransitionRequest {
            action,
            requester,
            authority,
            conversation_id: conv.id.clone(),
            msg_id: m.msg_id,
            client_ts: now,
            request_id: self.request_id(ci),
        }
    }

    fn bystander(&self, sender: &UserId, rng: &mut Rng) -> UserId {
        let others: Vec<&UserId> = [&self.users.alice, &self.users.bob, &self.users.carol]
            .into_iter()
            .filter(|u| *u != sender)
            .collect();
        others[rng.below(others.len())].clone()
    }
}

fn pick<'m>(messages: &'m [NewMessage], window: usize, rng: &mut Rng) -> &'m NewMessage {
    let lo = messages.len().saturating_sub(window);
    &messages[lo + rng.below(messages.len() - lo)]
}

fn share(n: usize, parts: usize, i: usize) -> usize {
    n * (i + 1) / parts - n * i / parts
}
