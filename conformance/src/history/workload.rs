//! What the recorder does: how many conversations, clients and calls, which calls, which phases.

use std::time::Duration;

use imstore_core::Policy;

/// The shape of a recorded run: its size, its mix of calls, its phases and its seed.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Conversations the clients work in.
    pub conversations: usize,
    /// How many of a conversation's latest messages the clients act on; new messages keep
    /// arriving (see [`Mix::insert`]), so old ones leave this window and every message sees a
    /// bounded stretch of the run.
    pub messages_per_conversation: usize,
    /// Clients calling the store at the same time.
    pub clients: usize,
    /// Calls in all (inserts, transitions, reads), split over the phases; device pulls and the
    /// final reads come on top.
    pub ops: usize,
    /// Devices following each conversation's change feed; the first pulls from the start, the
    /// others stay offline through the first phase and then catch up from their cursor.
    pub devices_per_conversation: usize,
    /// In this many conversations (the first ones), reused request ids also cross messages; such
    /// a conversation is checked as one part, the others message by message.
    pub crossing_conversations: usize,
    /// How often each kind of call is made.
    pub mix: Mix,
    /// The phases, in order: the store's clock moves only between them.
    pub phases: Vec<Phase>,
    /// How far a stale request's client timestamp is from the store's clock.
    pub stale_by: Duration,
    /// The seed of every random choice (which call, on what, by whom); which requests are in
    /// flight when a client picks one to retry still depends on timing.
    pub seed: u64,
}

/// Relative weights of the kinds of call a client makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    /// A new message (mostly), the same message again (a retry), or the same id with other content.
    pub insert: u32,
    /// A recall with a fresh request id, by the sender, a bystander or a moderator.
    pub recall: u32,
    /// A restore with a fresh request id, mostly by the sender.
    pub restore: u32,
    /// A delete with a fresh request id, by the sender, a bystander or a moderator.
    pub delete: u32,
    /// A `get` as the sender, a bystander or a moderator.
    pub get: u32,
    /// A request another client has in flight, sent again unchanged.
    pub retry_in_flight: u32,
    /// A request made earlier in the run, sent again unchanged (a retry, or a captured replay).
    pub retry_past: u32,
    /// An earlier request id for another request (another action, requester or message).
    pub reuse: u32,
    /// A fresh request whose client timestamp is too far from the store's clock.
    pub stale: u32,
    /// A fresh request with a malformed (over-long) request id.
    pub malformed: u32,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            insert: 4,
            recall: 20,
            restore: 16,
            delete: 3,
            get: 25,
            retry_in_flight: 10,
            retry_past: 10,
            reuse: 5,
            stale: 3,
            malformed: 1,
        }
    }
}

/// One phase of a run: the clock moves by `advance`, then the phase's share of the calls runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    /// How far the store's clock moves before the phase starts (no call is in flight then).
    pub advance: Duration,
    /// The phase's share of [`Workload::ops`], relative to the other phases'.
    pub share: u32,
}

impl Workload {
    /// The default run for a store with `policy`: three phases, the second just past the sender's
    /// recall window, the third a restore window later, so that recalls and restores made in the
    /// first phase are past their windows, and those of the second exactly at the restore
    /// window's inclusive end.
    pub fn for_policy(policy: &Policy) -> Self {
        Workload {
            conversations: 3,
            messages_per_conversation: 4,
            clients: 8,
            ops: 1_500,
            devices_per_conversation: 2,
            crossing_conversations: 1,
            mix: Mix::default(),
            phases: vec![
                Phase {
                    advance: Duration::ZERO,
                    share: 6,
                },
                Phase {
                    advance: policy.recall_window() + Duration::from_secs(1),
                    share: 3,
                },
                Phase {
                    advance: policy.restore_window(),
                    share: 2,
                },
            ],
            stale_by: policy.max_clock_skew() + Duration::from_secs(60),
            seed: 0,
        }
    }

    /// How many calls phase `i` makes (the shares rounded so that they add up to `ops`).
    pub(crate) fn phase_ops(&self, i: usize) -> usize {
        let total: u64 = self.phases.iter().map(|p| u64::from(p.share)).sum();
        if total == 0 {
            return 0;
        }
        let upto = |k: usize| -> usize {
            let s: u64 = self.phases[..k].iter().map(|p| u64::from(p.share)).sum();
            (self.ops as u64 * s / total) as usize
        };
        upto(i + 1) - upto(i)
    }
}

impl Default for Workload {
    /// [`Workload::for_policy`] of the default policy.
    fn default() -> Self {
        Workload::for_policy(&Policy::default())
    }
}

/// A small deterministic generator (SplitMix64): a run's choices follow from its seed alone.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next();
        r
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub(crate) fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next() % den < num
    }

    /// One of `choices`, each as likely as its weight (`None` when every weight is zero).
    pub(crate) fn weighted<T: Copy>(&mut self, choices: &[(u32, T)]) -> Option<T> {
        let total: u64 = choices.iter().map(|(w, _)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut x = self.next() % total;
        for (w, t) in choices {
            if x < u64::from(*w) {
                return Some(*t);
            }
            x -= u64::from(*w);
        }
        None
    }
}
