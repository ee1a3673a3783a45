//! The contract's sequential state machine over one part of a history, built from the core's own
//! rules so that the checker and every backend answer to the same specification.
//!
//! The state is one slot per message (absent until inserted, then its lifecycle) and one slot per
//! request id that more than one call of the part uses (its first outcome, refusals included). A
//! request id used once needs no slot: nothing else can observe its record.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use imstore_core::lifecycle::{self, Plan, RequestRecord};
use imstore_core::{
    ErrorKind, InsertOutcome, Lifecycle, MsgId, NewMessage, Policy, RequestId, Status,
    StoredMessage, TransitionRequest, view,
};

use super::{Call, Op, Ret};

/// A stored message in the model: which of the part's inserted variants won, and its lifecycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Msg {
    pub variant: usize,
    pub life: Lifecycle,
}

/// The model's state, with a fingerprint kept up to date on every write (for memoization).
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub msgs: Vec<Option<Msg>>,
    pub recs: Vec<Option<RequestRecord>>,
    pub fp: u128,
}

/// One slot's new value.
#[derive(Clone, Debug)]
pub(crate) enum Write {
    Msg(usize, Option<Msg>),
    Rec(usize, Option<RequestRecord>),
}

/// The sequential specification for the ops of one part.
pub(crate) struct Model<'a> {
    policy: &'a Policy,
    pub msg_ids: Vec<MsgId>,
    variants: Vec<Vec<NewMessage>>,
    msg_slot: HashMap<MsgId, usize>,
    rec_slot: HashMap<RequestId, usize>,
}

/// True when the request passes the checks made before anything is read (never recorded).
pub(crate) fn well_formed(req: &TransitionRequest, policy: &Policy) -> bool {
    lifecycle::validate_request(req, policy).is_ok()
}

impl<'a> Model<'a> {
    /// The model for `ops`, all of one conversation.
    pub fn new<'o>(policy: &'a Policy, ops: impl IntoIterator<Item = &'o Op>) -> Self {
        let mut m = Model {
            policy,
            msg_ids: Vec::new(),
            variants: Vec::new(),
            msg_slot: HashMap::new(),
            rec_slot: HashMap::new(),
        };
        let mut uses: HashMap<&RequestId, usize> = HashMap::new();
        let mut order: Vec<&RequestId> = Vec::new();
        for op in ops {
            let id = op.call.msg_id();
            let slot = *m.msg_slot.entry(id).or_insert_with(|| {
                m.msg_ids.push(id);
                m.variants.push(Vec::new());
                m.msg_ids.len() - 1
            });
            match &op.call {
                Call::Insert(new) if !m.variants[slot].contains(new) => {
                    m.variants[slot].push(new.clone())
                }
                Call::Transition(r) if well_formed(r, policy) => {
                    let n = uses.entry(&r.request_id).or_insert(0);
                    if *n == 0 {
                        order.push(&r.request_id);
                    }
                    *n += 1;
                }
                _ => {}
            }
        }
        for id in order {
            if uses[id] > 1 {
                let n = m.rec_slot.len();
                m.rec_slot.insert(id.clone(), n);
            }
        }
        m
    }

    /// Nothing inserted, nothing recorded.
    pub fn initial(&self) -> State {
        State {
            msgs: vec![None; self.msg_ids.len()],
            recs: vec![None; self.rec_slot.len()],
            fp: 0,
        }
    }

    /// What the contract answers to `op`'s call in `state`, and what it writes.
    pub fn step(&self, state: &State, op: &Op) -> (Ret, Vec<Write>) {
        let now = op.now;
        let slot = self.msg_slot[&op.call.msg_id()];
        let msg = &state.msgs[slot];
        match &op.call {
            Call::Insert(new) => {
                if lifecycle::validate_message(new, self.policy).is_err() {
                    return (Ret::Failed(ErrorKind::InvalidInput), Vec::new());
                }
                let variant = self.variants[slot]
                    .iter()
                    .position(|v| v == new)
                    .expect("every inserted variant has an index");
                match msg {
                    None => (
                        Ret::Inserted(InsertOutcome::Inserted),
                        vec![Write::Msg(
                            slot,
                            Some(Msg {
                                variant,
                                life: Lifecycle::new(now),
                            }),
                        )],
                    ),
                    Some(m) if m.variant == variant => {
                        (Ret::Inserted(InsertOutcome::AlreadyExists), Vec::new())
                    }
                    Some(_) => (Ret::Failed(ErrorKind::Conflict), Vec::new()),
                }
            }
            Call::Get { viewer, .. } => {
                if lifecycle::validate_viewer(viewer, self.policy).is_err() {
                    return (Ret::Failed(ErrorKind::InvalidInput), Vec::new());
                }
                match msg {
                    None => (Ret::Failed(ErrorKind::NotFound), Vec::new()),
                    Some(m) => {
                        let stored = StoredMessage {
                            message: self.variants[slot][m.variant].clone(),
                            lifecycle: m.life.clone(),
                        };
                        (
                            Ret::Read(view::render(stored, viewer, self.policy, now)),
                            Vec::new(),
                        )
                    }
                }
            }
            Call::Transition(req) => self.transition(state, slot, req, now),
        }
    }

    /// The order of `transition.rs`: malformed input (never recorded), the request record, the
    /// client timestamp, the message's existence, the lifecycle rules; every outcome from the
    /// timestamp check on is recorded.
    fn transition(
        &self,
        state: &State,
        slot: usize,
        req: &TransitionRequest,
        now: imstore_core::Timestamp,
    ) -> (Ret, Vec<Write>) {
        let answer = |r: imstore_core::Result<imstore_core::TransitionOutcome>| match r {
            Ok(o) => Ret::Transitioned(o),
            Err(e) => Ret::Failed(e.kind()),
        };
        if !well_formed(req, self.policy) {
            return (Ret::Failed(ErrorKind::InvalidInput), Vec::new());
        }
        let rec = self.rec_slot.get(&req.request_id).copied();
        if let Some(r) = rec.and_then(|r| state.recs[r].as_ref()) {
            return (answer(r.replay(req)), Vec::new());
        }
        let msg = &state.msgs[slot];
        let (status, version) = msg
            .as_ref()
            .map_or((Status::Normal, 0), |m| (m.life.status, m.life.version));
        let mut writes = Vec::new();
        let mut record = |r: RequestRecord| {
            if let Some(s) = rec {
                writes.push(Write::Rec(s, Some(r)));
            }
        };
        let refuse = |kind: ErrorKind| RequestRecord::refused(req, kind, status, version, now);
        if let Err(e) = lifecycle::check_skew(req, self.policy, now) {
            record(refuse(e.kind()));
            return (Ret::Failed(e.kind()), writes);
        }
        let Some(m) = msg else {
            record(refuse(ErrorKind::NotFound));
            return (Ret::Failed(ErrorKind::NotFound), writes);
        };
        let sender = &self.variants[slot][m.variant].sender_id;
        match lifecycle::plan(req, sender, &m.life, self.policy, now) {
            Err(e) => {
                record(refuse(e.kind()));
                (Ret::Failed(e.kind()), writes)
            }
            Ok(plan) => {
                let outcome = lifecycle::outcome(req.msg_id, &m.life, &plan);
                record(RequestRecord::new(req, &outcome, now));
                if let Plan::Apply(next) = plan {
                    writes.push(Write::Msg(
                        slot,
                        Some(Msg {
                            variant: m.variant,
                            life: next,
                        }),
                    ));
                }
                (Ret::Transitioned(outcome), writes)
            }
        }
    }

    /// The fingerprint `state` would have after `writes`.
    pub fn fingerprint_after(&self, state: &State, writes: &[Write]) -> u128 {
        let mut fp = state.fp;
        for w in writes {
            let (old, new) = match w {
                Write::Msg(s, v) => (msg_hash(*s, &state.msgs[*s]), msg_hash(*s, v)),
                Write::Rec(s, v) => (rec_hash(*s, &state.recs[*s]), rec_hash(*s, v)),
            };
            fp = fp.wrapping_sub(old).wrapping_add(new);
        }
        fp
    }

    /// Applies `writes` and returns the writes that undo them.
    pub fn apply(&self, state: &mut State, writes: Vec<Write>) -> Vec<Write> {
        state.fp = self.fingerprint_after(state, &writes);
        writes
            .into_iter()
            .map(|w| match w {
                Write::Msg(s, v) => Write::Msg(s, std::mem::replace(&mut state.msgs[s], v)),
                Write::Rec(s, v) => Write::Rec(s, std::mem::replace(&mut state.recs[s], v)),
            })
            .collect()
    }

    /// Restores what `apply` returned, and the fingerprint from before.
    pub fn undo(&self, state: &mut State, undo: Vec<Write>, fp: u128) {
        for w in undo.into_iter().rev() {
            match w {
                Write::Msg(s, v) => state.msgs[s] = v,
                Write::Rec(s, v) => state.recs[s] = v,
            }
        }
        state.fp = fp;
    }

    /// The message slot of `id`, if the part has it.
    pub fn slot_of(&self, id: MsgId) -> Option<usize> {
        self.msg_slot.get(&id).copied()
    }
}

/// 128 bits from two SipHash runs with different prefixes; an empty slot hashes to 0, so the
/// fingerprint of a state is the wrapping sum over its filled slots and updates in O(1).
fn h128(tag: u8, slot: usize, f: impl Fn(&mut DefaultHasher)) -> u128 {
    let run = |salt: u8| {
        let mut h = DefaultHasher::new();
        (tag, slot, salt).hash(&mut h);
        f(&mut h);
        h.finish()
    };
    (u128::from(run(0)) << 64) | u128::from(run(1))
}

fn msg_hash(slot: usize, m: &Option<Msg>) -> u128 {
    let Some(m) = m else { return 0 };
    h128(0, slot, |h| {
        let l = &m.life;
        m.variant.hash(h);
        l.status.hash(h);
        l.version.hash(h);
        l.created_at.hash(h);
        l.recalled_at.hash(h);
        l.recalled_by.hash(h);
        l.restored_at.hash(h);
        l.deleted_at.hash(h);
        l.deleted_by.hash(h);
    })
}

fn rec_hash(slot: usize, r: &Option<RequestRecord>) -> u128 {
    let Some(r) = r else { return 0 };
    // `at` is left out: it only dates the record for the purge, never changes an answer.
    h128(1, slot, |h| {
        r.action.hash(h);
        r.msg_id.hash(h);
        r.requester.hash(h);
        r.status.hash(h);
        r.version.hash(h);
        r.changed.hash(h);
        r.refusal.hash(h);
    })
}
