//! Wing and Gong's linearizability search with Lowe's memoization, as Porcupine runs it.
//!
//! The calls and returns of a part, in tick order, form a doubly-linked list. The search walks it
//! from the front: a call whose answer the model gives in the current state is linearized (taken
//! out of the list with its return, the state moved on) unless that (set of linearized ops,
//! state) pair was already explored; a return reached means the op it belongs to can no longer
//! be placed, so the last choice is undone. The list running empty is a linearization; the
//! undo stack running empty is a proof that there is none.

use std::collections::HashSet;

use super::model::{Model, State, Write};
use super::{NEVER, Op, Ret};

/// One op of a part as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item<'h> {
    pub op: &'h Op,
    /// Its answer is disregarded (it took effect as the model says, whatever it answered).
    pub relaxed: bool,
    /// It had not returned by the cut: it takes effect after its start with its answer, or not
    /// yet (placed after every bounded op, where its answer no longer matters).
    pub unbounded: bool,
}

impl Item<'_> {
    /// True when the answer may be anything (relaxed, or an error that leaves the effect unknown).
    pub fn open(&self) -> bool {
        self.relaxed || self.op.ret.is_indeterminate()
    }

    fn end(&self) -> u64 {
        if self.unbounded || self.op.ret.is_indeterminate() {
            NEVER
        } else {
            self.op.end
        }
    }

    /// Whether the answer fits; `bounded_left` is how many bounded ops are not yet placed.
    fn fits(&self, expected: &Ret, bounded_left: usize) -> bool {
        self.open() || &self.op.ret == expected || (self.unbounded && bounded_left == 0)
    }
}

/// Where the deepest failed attempt stopped, for the report (its order filled in by the caller).
#[derive(Debug)]
pub(crate) struct Stuck {
    /// The longest order explained, as item indices.
    pub order: Vec<usize>,
    /// The item whose return stopped it: it had to come next.
    pub blocked: usize,
    /// Every item that could have come next, with the contract's answer and whether it fit.
    pub candidates: Vec<(usize, Ret, bool)>,
    /// The model's state after `order`.
    pub state: State,
}

/// The search's verdict.
#[derive(Debug)]
pub(crate) enum Outcome {
    Linearizable { states: usize },
    Fails(Option<Box<Stuck>>),
    TooManyStates { states: usize },
}

const NIL: usize = usize::MAX;

struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    fn lift(&mut self, i: usize) {
        for node in [2 * i, 2 * i + 1] {
            let (p, n) = (self.prev[node], self.next[node]);
            self.next[p] = n;
            if n != NIL {
                self.prev[n] = p;
            }
        }
    }

    fn unlift(&mut self, i: usize) {
        for node in [2 * i + 1, 2 * i] {
            let (p, n) = (self.prev[node], self.next[node]);
            self.next[p] = node;
            if n != NIL {
                self.prev[n] = node;
            }
        }
    }
}

/// Searches for an order of `items` that `model` explains, exploring at most `max_states`
/// distinct (linearized set, state) pairs; with `explain`, a failure says where it got stuck.
pub(crate) fn search(model: &Model, items: &[Item], max_states: usize, explain: bool) -> Outcome {
    let n = items.len();
    let head = 2 * n;
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(2 * n);
    for (i, it) in items.iter().enumerate() {
        // At equal ticks calls sort first: ops that touch are taken as concurrent.
        events.push((it.op.start, 0, 2 * i));
        events.push((it.end(), 1, 2 * i + 1));
    }
    events.sort_unstable();
    let mut list = List {
        next: vec![NIL; 2 * n + 1],
        prev: vec![NIL; 2 * n + 1],
    };
    let mut last = head;
    for &(_, _, node) in &events {
        list.next[last] = node;
        list.prev[node] = last;
        last = node;
    }

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, u128)> = HashSet::new();
    let mut calls: Vec<(usize, Vec<Write>, u128)> = Vec::new();
    let mut state = model.initial();
    let mut bounded_left = items.iter().filter(|it| it.end() != NEVER).count();
    let mut stuck: Option<Box<Stuck>> = None;
    let mut entry = list.next[head];
    while list.next[head] != NIL {
        if cache.len() > max_states {
            return Outcome::TooManyStates {
                states: cache.len(),
            };
        }
        if entry.is_multiple_of(2) {
            let i = entry / 2;
            let (expected, writes) = model.step(&state, items[i].op);
            if items[i].fits(&expected, bounded_left) {
                linearized[i / 64] |= 1 << (i % 64);
                let fp = model.fingerprint_after(&state, &writes);
                if cache.insert((linearized.clone(), fp)) {
                    let before = state.fp;
                    let undo = model.apply(&mut state, writes);
                    calls.push((i, undo, before));
                    list.lift(i);
                    if items[i].end() != NEVER {
                        bounded_left -= 1;
                    }
                    entry = list.next[head];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = list.next[entry];
        } else {
            if explain && stuck.as_ref().is_none_or(|s| calls.len() > s.order.len()) {
                let mut s = where_stuck(model, items, &list, head, entry, &state, bounded_left);
                s.order = calls.iter().map(|(i, _, _)| *i).collect();
                stuck = Some(Box::new(s));
            }
            let Some((i, undo, fp)) = calls.pop() else {
                return Outcome::Fails(stuck);
            };
            model.undo(&mut state, undo, fp);
            if items[i].end() != NEVER {
                bounded_left += 1;
            }
            linearized[i / 64] &= !(1 << (i % 64));
            list.unlift(i);
            entry = list.next[2 * i];
        }
    }
    Outcome::Linearizable {
        states: cache.len(),
    }
}

fn where_stuck(
    model: &Model,
    items: &[Item],
    list: &List,
    head: usize,
    ret: usize,
    state: &State,
    bounded_left: usize,
) -> Stuck {
    let mut candidates = Vec::new();
    let mut node = list.next[head];
    while node != ret && node != NIL {
        if node.is_multiple_of(2) {
            let i = node / 2;
            let (expected, _) = model.step(state, items[i].op);
            let fits = items[i].fits(&expected, bounded_left);
            candidates.push((i, expected, fits));
        }
        node = list.next[node];
    }
    Stuck {
        order: Vec::new(),
        blocked: ret / 2,
        candidates,
        state: state.clone(),
    }
}
