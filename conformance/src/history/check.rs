//! The checker: the history cut into independent parts, each searched, a failing one shrunk to a
//! small witness and told in words; then every device's feed.

use std::collections::HashMap;
use std::fmt;

use imstore_core::{ConversationId, ErrorKind, InsertOutcome, MsgId, Policy, RequestId, Timestamp};

use super::model::{Model, well_formed};
use super::search::{Item, Outcome, search};
use super::{Call, History, Ret, feed, words};

/// How hard the checker may work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// The most (linearized set, state) pairs one part's search may explore before the check
    /// stops with [`ViolationKind::TooManyStates`]; each costs about a hundred bytes.
    pub max_states: usize,
}

impl Default for CheckOptions {
    /// One million states per part.
    fn default() -> Self {
        CheckOptions {
            max_states: 1_000_000,
        }
    }
}

/// What an accepted history held, for the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Calls checked for linearizability.
    pub ops: usize,
    /// Independent parts they fell into.
    pub parts: usize,
    /// Calls in the largest part.
    pub largest_part: usize,
    /// (linearized set, state) pairs the searches explored, over all parts.
    pub states: usize,
    /// Devices whose feeds were checked.
    pub devices: usize,
    /// Feed pulls checked.
    pub pulls: usize,
    /// Change events delivered to devices.
    pub events: usize,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} calls linearizable in {} parts (largest {}, {} states explored); {} devices, \
             {} pulls, {} events delivered exactly once",
            self.ops,
            self.parts,
            self.largest_part,
            self.states,
            self.devices,
            self.pulls,
            self.events
        )
    }
}

/// What kind of failure a [`Violation`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// No order of the calls, each within its interval, is a run of the contract's state machine.
    NotLinearizable,
    /// A device's feed missed, repeated, reordered or invented a change, or ended elsewhere
    /// than the final state.
    Feed,
    /// The search gave up at [`CheckOptions::max_states`]: undecided, not proven wrong.
    TooManyStates,
}

/// Why a history was rejected, with a small failing sub-history in words ([`fmt::Display`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// What kind of failure.
    pub kind: ViolationKind,
    /// The conversation it is in.
    pub conversation: Option<ConversationId>,
    /// The messages involved.
    pub messages: Vec<MsgId>,
    /// Indices into [`History::ops`] of the calls whose answers show it.
    pub ops: Vec<usize>,
    /// Indices of calls kept without their answers: they may have taken effect, or not, and the
    /// violation stands either way.
    pub context: Vec<usize>,
    /// The report in words.
    pub text: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Violation {}

/// Accepts `history` when it is linearizable against the contract under `policy` (the store's
/// policy) and every device's feed is exact; see [`check_with`].
pub fn check(history: &History, policy: &Policy) -> Result<Summary, Box<Violation>> {
    check_with(history, policy, &CheckOptions::default())
}

/// [`check`] with explicit limits: the first part that fails (or exhausts `options.max_states`)
/// is reported, else the feeds are checked.
pub fn check_with(
    history: &History,
    policy: &Policy,
    options: &CheckOptions,
) -> Result<Summary, Box<Violation>> {
    let mut summary = Summary::default();
    let base = history.ops.iter().map(|o| o.now).min().unwrap_or_default();
    let chosen: Vec<usize> = (0..history.ops.len()).collect();
    for part in parts(history, policy, &chosen) {
        let items: Vec<Item> = part
            .iter()
            .map(|&i| Item {
                op: &history.ops[i],
                relaxed: false,
                unbounded: false,
            })
            .collect();
        let model = Model::new(policy, items.iter().map(|i| i.op));
        match search(&model, &items, options.max_states, false) {
            Outcome::Linearizable { states } => {
                summary.ops += part.len();
                summary.parts += 1;
                summary.largest_part = summary.largest_part.max(part.len());
                summary.states += states;
            }
            Outcome::TooManyStates { states } => {
                let (conversation, messages) = about(history, &part);
                return Err(Box::new(Violation {
                    kind: ViolationKind::TooManyStates,
                    text: format!(
                        "{}: undecided: the part of conversation {conversation} with messages {} \
                         ({} calls) needed more than {states} states; raise \
                         CheckOptions::max_states or record fewer concurrent clients",
                        history.backend,
                        list(&messages),
                        part.len()
                    ),
                    conversation: Some(conversation),
                    messages,
                    ops: part,
                    context: Vec::new(),
                }));
            }
            Outcome::Fails(_) => {
                return Err(Box::new(explain(history, policy, options, &part, base)));
            }
        }
    }
    let feeds = feed::check(history, policy, base)?;
    summary.devices = history.devices.len();
    summary.pulls = feeds.0;
    summary.events = feeds.1;
    Ok(summary)
}

/// Splits the chosen ops into parts that share no message and no request id (per conversation);
/// a read that failed with an unknown outcome constrains nothing and is left out.
fn parts(history: &History, policy: &Policy, chosen: &[usize]) -> Vec<Vec<usize>> {
    let mut parent: Vec<usize> = Vec::new();
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut msgs: HashMap<(&ConversationId, MsgId), usize> = HashMap::new();
    let mut reqs: HashMap<(&ConversationId, &RequestId), usize> = HashMap::new();
    let mut key_of = Vec::new();
    for &i in chosen {
        let op = &history.ops[i];
        if matches!(op.call, Call::Get { .. }) && op.ret.is_indeterminate() {
            continue;
        }
        let conv = op.call.conversation_id();
        let m = *msgs.entry((conv, op.call.msg_id())).or_insert_with(|| {
            parent.push(parent.len());
            parent.len() - 1
        });
        if let Call::Transition(r) = &op.call
            && well_formed(r, policy)
        {
            let k = *reqs.entry((conv, &r.request_id)).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            });
            let (a, b) = (find(&mut parent, m), find(&mut parent, k));
            parent[a] = b;
        }
        key_of.push((i, m));
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for (i, m) in key_of {
        let root = find(&mut parent, m);
        groups.entry(root).or_default().push(i);
    }
    let mut out: Vec<Vec<usize>> = groups.into_values().collect();
    out.sort_by_key(|p| p[0]);
    out
}

fn about(history: &History, part: &[usize]) -> (ConversationId, Vec<MsgId>) {
    let conversation = history.ops[part[0]].call.conversation_id().clone();
    let mut messages: Vec<MsgId> = part.iter().map(|&i| history.ops[i].call.msg_id()).collect();
    messages.sort();
    messages.dedup();
    (conversation, messages)
}

fn list<T: fmt::Display>(xs: &[T]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An op of a witness: its index in the history, whether its answer is disregarded, and
/// whether it may also take effect after its end or never (it was still running at the cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cand {
    idx: usize,
    relaxed: bool,
    unbounded: bool,
}

impl Cand {
    fn kept(idx: usize) -> Self {
        Cand {
            idx,
            relaxed: false,
            unbounded: false,
        }
    }
}

/// States one trial search of the shrinker may explore: a trial that needs more is taken as
/// not failing, which only leaves the witness larger, never wrong.
const TRIAL_STATES: usize = 20_000;
/// Trial searches per shrink; past them the witness found so far is reported.
const TRIALS: usize = 3_000;

struct Shrinker<'h> {
    history: &'h History,
    policy: &'h Policy,
    max_states: usize,
    trials: std::cell::Cell<usize>,
}

impl Shrinker<'_> {
    fn items(&self, set: &[Cand]) -> Vec<Item<'_>> {
        set.iter()
            .map(|c| Item {
                op: &self.history.ops[c.idx],
                relaxed: c.relaxed,
                unbounded: c.unbounded,
            })
            .collect()
    }

    fn fails(&self, set: &[Cand]) -> bool {
        if self.trials.get() >= TRIALS {
            return false;
        }
        self.trials.set(self.trials.get() + 1);
        let items = self.items(set);
        let model = Model::new(self.policy, items.iter().map(|i| i.op));
        matches!(
            search(&model, &items, self.max_states.min(TRIAL_STATES), false),
            Outcome::Fails(_)
        )
    }

    /// The ops up to tick `t`: those done by then as they are, those still running unbounded
    /// (taken effect before `t` with their answer, or not yet), later ones dropped. Sound: the
    /// ops a linearization puts before `t` are exactly such a set, so if this fails, the whole
    /// history does.
    fn prefix(&self, part: &[usize], t: u64) -> Vec<Cand> {
        part.iter()
            .filter_map(|&idx| {
                let op = &self.history.ops[idx];
                if op.start > t {
                    None
                } else if op.end <= t && !op.ret.is_indeterminate() {
                    Some(Cand::kept(idx))
                } else if matches!(op.call, Call::Get { .. }) {
                    None
                } else {
                    Some(Cand {
                        idx,
                        relaxed: false,
                        unbounded: true,
                    })
                }
            })
            .collect()
    }

    /// True when dropping `c` keeps every linearization of the rest one of the whole: `c` is a
    /// read, or its answer shows it wrote nothing but a record that no other op can read.
    fn removable(&self, c: Cand, set: &[Cand]) -> bool {
        self.writes_at_most_its_record(c)
            && (self.writes_nothing(c)
                || !set
                    .iter()
                    .any(|o| o.idx != c.idx && self.same_request(o.idx, c.idx)))
    }

    fn writes_nothing(&self, c: Cand) -> bool {
        let op = &self.history.ops[c.idx];
        match (&op.call, &op.ret) {
            (Call::Get { .. }, _) => true,
            _ if c.relaxed || op.ret.is_indeterminate() => false,
            (Call::Insert(_), Ret::Inserted(InsertOutcome::Inserted)) => false,
            (Call::Insert(_), _) => true,
            (Call::Transition(_), Ret::Transitioned(o)) => o.replayed,
            (Call::Transition(_), Ret::Failed(ErrorKind::InvalidInput)) => true,
            (Call::Transition(_), _) => false,
        }
    }

    /// True when the answer shows the op changed no message (a refusal, an unchanged outcome,
    /// a replay, a read): all it can have written is its own request record.
    fn writes_at_most_its_record(&self, c: Cand) -> bool {
        let op = &self.history.ops[c.idx];
        match (&op.call, &op.ret) {
            (Call::Get { .. }, _) => true,
            _ if c.relaxed || op.ret.is_indeterminate() => false,
            (Call::Insert(_), ret) => !matches!(ret, Ret::Inserted(InsertOutcome::Inserted)),
            (Call::Transition(_), Ret::Transitioned(o)) => o.replayed || !o.changed,
            (Call::Transition(_), _) => true,
        }
    }

    fn same_request(&self, a: usize, b: usize) -> bool {
        match (&self.history.ops[a].call, &self.history.ops[b].call) {
            (Call::Transition(x), Call::Transition(y)) => x.request_id == y.request_id,
            _ => false,
        }
    }

    /// One pass of dropping; true when something was dropped.
    fn drop_pass(&self, set: &mut Vec<Cand>) -> bool {
        let mut progress = false;
        let mut i = set.len();
        while i > 0 {
            i -= 1;
            if i >= set.len() {
                continue;
            }
            let c = set[i];
            let trial: Vec<Cand> = if self.removable(c, set) {
                set.iter().copied().filter(|o| o.idx != c.idx).collect()
            } else if matches!(self.history.ops[c.idx].call, Call::Transition(_)) {
                // Every use of one request id, none of which changed a message: together they
                // wrote only that id's record, which nothing outside them reads.
                let group: Vec<Cand> = set
                    .iter()
                    .copied()
                    .filter(|o| self.same_request(o.idx, c.idx))
                    .collect();
                if group.len() < 2 || !group.iter().all(|g| self.writes_at_most_its_record(*g)) {
                    continue;
                }
                set.iter()
                    .copied()
                    .filter(|o| !self.same_request(o.idx, c.idx))
                    .collect()
            } else {
                continue;
            };
            if self.fails(&trial) {
                *set = trial;
                progress = true;
            }
        }
        progress
    }

    /// One pass of forgetting answers, latest first; true when one was forgotten. The call keeps
    /// its interval: it did return, so whatever it did, it did before its end.
    fn relax_pass(&self, set: &mut [Cand]) -> bool {
        for i in (0..set.len()).rev() {
            if set[i].relaxed || self.history.ops[set[i].idx].ret.is_indeterminate() {
                continue;
            }
            set[i].relaxed = true;
            if self.fails(set) {
                return true;
            }
            set[i].relaxed = false;
        }
        false
    }

    fn shrink(&self, part: &[usize]) -> Vec<Cand> {
        // The shortest failing prefix, by bisection over return ticks.
        let mut ends: Vec<u64> = part
            .iter()
            .map(|&i| &self.history.ops[i])
            .filter(|o| !o.ret.is_indeterminate())
            .map(|o| o.end)
            .collect();
        ends.sort_unstable();
        ends.dedup();
        let mut set: Vec<Cand> = part.iter().map(|&idx| Cand::kept(idx)).collect();
        if let Some(&last) = ends.last()
            && self.fails(&self.prefix(part, last))
        {
            // Invariant: the prefix to ends[hi] fails, the one to ends[lo] (none at -1) does not.
            let (mut lo, mut hi) = (-1isize, ends.len() as isize - 1);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if self.fails(&self.prefix(part, ends[mid as usize])) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            set = self.prefix(part, ends[hi as usize]);
        }
        // Then op by op, latest first: drop whatever can be dropped (alone, or with every other
        // use of its request id), and only when nothing more can, forget answers one at a time:
        // a forgotten answer blocks dropping, so dropping goes first.
        loop {
            if self.drop_pass(&mut set) {
                continue;
            }
            if !self.relax_pass(&mut set) {
                break;
            }
        }
        // Relaxed ops that start after every kept answer can only come after them all, where
        // no kept answer can see them; not so while a kept op is unbounded (it may come later).
        if !set.iter().any(|c| c.unbounded && !c.relaxed) {
            let last_end = set
                .iter()
                .filter(|c| !c.relaxed && !self.history.ops[c.idx].ret.is_indeterminate())
                .map(|c| self.history.ops[c.idx].end)
                .max()
                .unwrap_or(0);
            let trimmed: Vec<Cand> = set
                .iter()
                .copied()
                .filter(|c| !c.relaxed || self.history.ops[c.idx].start <= last_end)
                .collect();
            if trimmed.len() < set.len() && self.fails(&trimmed) {
                set = trimmed;
            }
        }
        // What shares no slot with the failing rest is independent of it.
        let idxs: Vec<usize> = set.iter().map(|c| c.idx).collect();
        for sub in parts(self.history, self.policy, &idxs) {
            let sub_set: Vec<Cand> = set
                .iter()
                .copied()
                .filter(|c| sub.contains(&c.idx))
                .collect();
            if self.fails(&sub_set) {
                return sub_set;
            }
        }
        set
    }
}

fn explain(
    history: &History,
    policy: &Policy,
    options: &CheckOptions,
    part: &[usize],
    base: Timestamp,
) -> Violation {
    let shrinker = Shrinker {
        history,
        policy,
        max_states: options.max_states,
        trials: std::cell::Cell::new(0),
    };
    let set = shrinker.shrink(part);
    let (conversation, _) = about(history, part);
    let idxs: Vec<usize> = set.iter().map(|c| c.idx).collect();
    let (_, messages) = about(history, &idxs);
    let (_, part_messages) = about(history, part);
    let kept: Vec<&Cand> = set.iter().filter(|c| !c.relaxed).collect();
    let relaxed: Vec<&Cand> = set.iter().filter(|c| c.relaxed).collect();
    let mut text = format!(
        "{}: not linearizable. In conversation {conversation}, message{} {} (a part of {} \
         calls on message{} {}), no order of the {} below, each placed between its start and \
         its end, is a run of the contract that gives {}:\n",
        history.backend,
        if messages.len() == 1 { "" } else { "s" },
        list(&messages),
        part.len(),
        if part_messages.len() == 1 { "" } else { "s" },
        list(&part_messages),
        if kept.len() == 1 {
            "call".to_string()
        } else {
            format!("{} calls", kept.len())
        },
        if kept.len() == 1 {
            "this answer"
        } else {
            "these answers"
        },
    );
    let mark = |c: &Cand| if c.unbounded { "*" } else { " " };
    for c in &kept {
        text.push_str(&format!(
            " {}{}\n",
            mark(c),
            words::op(c.idx, &history.ops[c.idx], base)
        ));
    }
    if !relaxed.is_empty() {
        let one = relaxed.len() == 1;
        text.push_str(&format!(
            "with {} more call{} kept without {}: the violation stands whatever {} answered \
             (each took effect between its start and its end as the contract says):\n",
            relaxed.len(),
            if one { "" } else { "s" },
            if one { "its answer" } else { "their answers" },
            if one { "it" } else { "they" },
        ));
        for c in &relaxed {
            text.push_str(&format!(
                " {}{}\n",
                mark(c),
                words::op(c.idx, &history.ops[c.idx], base)
            ));
        }
    }
    if set.iter().any(|c| c.unbounded) {
        text.push_str(
            "(* had not returned when the last answer above was given: it may not have taken \
             effect yet.)\n",
        );
    }
    let items = shrinker.items(&set);
    let model = Model::new(policy, items.iter().map(|i| i.op));
    if let Outcome::Fails(Some(stuck)) = search(&model, &items, options.max_states, true) {
        let order: Vec<String> = stuck
            .order
            .iter()
            .map(|&i| format!("#{}", set[i].idx))
            .collect();
        if order.is_empty() {
            text.push_str("No call can even come first.");
        } else {
            text.push_str(&format!(
                "The longest order the contract explains is {}",
                order.join(", ")
            ));
            let states: Vec<String> = messages
                .iter()
                .filter_map(|&m| {
                    let s = model.slot_of(m)?;
                    Some(format!(
                        "{m} is {}",
                        words::state(&stuck.state.msgs[s], base)
                    ))
                })
                .collect();
            text.push_str(&format!("; after it {}.", states.join(", ")));
        }
        text.push_str(&format!(
            " Next, #{} must take effect (it returned before any call not yet placed started), \
             and none of the calls that could come next fits:",
            set[stuck.blocked].idx
        ));
        for (i, expected, fits) in &stuck.candidates {
            let got = words::ret(&history.ops[set[*i].idx].ret, base);
            if *fits {
                text.push_str(&format!(
                    "\n  #{} fits (\"{got}\"), but no order goes on from there",
                    set[*i].idx
                ));
            } else {
                text.push_str(&format!(
                    "\n  #{} answered \"{got}\"; the contract answers \"{}\"",
                    set[*i].idx,
                    words::ret(expected, base)
                ));
            }
        }
    }
    Violation {
        kind: ViolationKind::NotLinearizable,
        conversation: Some(conversation),
        messages,
        ops: kept.iter().map(|c| c.idx).collect(),
        context: relaxed.iter().map(|c| c.idx).collect(),
        text,
    }
}
