//! A recorder of concurrent histories and a linearizability checker against the contract's
//! sequential state machine.
//!
//! Example-based cases see the interleavings they were written for. Here [`record`] drives a
//! store with many concurrent clients (recalls, restores and deletes by senders, bystanders and
//! moderators; fresh, retried-in-flight, replayed, reused, stale and malformed request ids; reads
//! as several viewers; devices pulling the change feed) and writes down every call with its
//! start, end, inputs and outcome. [`check`] then decides whether some order of those calls,
//! each placed between its start and its end, is a run of the contract's sequential state machine
//! (the core's own rules: `lifecycle::plan`, the order of `transition.rs`, `view::render`), and
//! whether every device's feed held each committed change exactly once, in version order, ending
//! at the final state.
//!
//! The search is Wing and Gong's, with Lowe's memoization of (linearized set, state) as in
//! Porcupine, on each independent part of the history: ops touch a message and, for transitions,
//! a request id of its conversation; ops that share neither are checked apart (P-compositionality).
//! A call that failed with `Unavailable` or `Backend` may or may not have taken effect: it may
//! be placed anywhere after its start, or never (at the end). A history that is not linearizable
//! is shrunk, by moves that keep it failing and keep it a witness (dropping reads and calls no
//! other call can observe, forgetting an outcome), and reported in words. A search over more
//! states than [`CheckOptions::max_states`] stops with [`ViolationKind::TooManyStates`] instead of
//! running on.
//!
//! A backend runs it with one line in its tests (the crate needs tokio's `macros` and
//! `rt-multi-thread`):
//!
//! ```text
//! imstore_conformance::history_tests!(my_backend_factory().await);
//! ```

mod check;
mod feed;
mod model;
mod record;
mod search;
mod words;
mod workload;

use imstore_core::{
    ChangePage, ConversationId, ErrorKind, FeedCursor, InsertOutcome, MessageView, MsgId,
    NewMessage, Policy, RestoreVisibility, Timestamp, TransitionOutcome, TransitionRequest, UserId,
};

pub use check::{CheckOptions, Summary, Violation, ViolationKind, check, check_with};
pub use record::record;
pub use workload::{Mix, Phase, Workload};

use crate::harness::{Harness, Setup, StoreFactory};

/// The tick of an op that never returned: it may take effect at any point after its start, or never.
pub const NEVER: u64 = u64::MAX;

/// Everything a run did: every call with its interval and outcome, and every device's feed pulls.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The store's backend name, for the report.
    pub backend: String,
    /// Every call, in the order they were recorded (not necessarily start order).
    pub ops: Vec<Op>,
    /// Every device that pulled a conversation's change feed.
    pub devices: Vec<Device>,
    /// Indices into `ops` of the reads made after every writer had finished, one per message,
    /// as its sender: the final state the feeds must end at.
    pub final_reads: Vec<usize>,
}

/// One call: who made it, when it started and ended on the recorder's logical clock, the store's
/// time while it ran, what was asked and what came back.
#[derive(Clone, Debug)]
pub struct Op {
    /// The client that made the call (the final reads use the client after the last).
    pub client: usize,
    /// The tick just before the call was made.
    pub start: u64,
    /// The tick just after it returned; [`NEVER`] when it did not.
    pub end: u64,
    /// What the store's clock read for the whole call (it moves only between phases).
    pub now: Timestamp,
    /// What was asked.
    pub call: Call,
    /// What came back.
    pub ret: Ret,
}

/// A call a client made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `insert` of this message.
    Insert(NewMessage),
    /// `transition` with this request.
    Transition(TransitionRequest),
    /// `get` of one message as one viewer.
    Get {
        /// The conversation.
        conversation_id: ConversationId,
        /// The message.
        msg_id: MsgId,
        /// Who reads it.
        viewer: UserId,
    },
}

/// What a call returned: its success value or the kind of its error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ret {
    /// `insert` succeeded.
    Inserted(InsertOutcome),
    /// `transition` succeeded.
    Transitioned(TransitionOutcome),
    /// `get` succeeded.
    Read(MessageView),
    /// The call failed with this kind; `Unavailable` and `Backend` leave its effect unknown.
    Failed(ErrorKind),
}

impl Ret {
    /// True when the call's effect is unknown: it may or may not have taken effect.
    pub fn is_indeterminate(&self) -> bool {
        matches!(
            self,
            Ret::Failed(ErrorKind::Unavailable) | Ret::Failed(ErrorKind::Backend)
        )
    }
}

impl Call {
    /// The conversation the call is about.
    pub fn conversation_id(&self) -> &ConversationId {
        match self {
            Call::Insert(m) => &m.conversation_id,
            Call::Transition(r) => &r.conversation_id,
            Call::Get {
                conversation_id, ..
            } => conversation_id,
        }
    }

    /// The message the call is about.
    pub fn msg_id(&self) -> MsgId {
        match self {
            Call::Insert(m) => m.msg_id,
            Call::Transition(r) => r.msg_id,
            Call::Get { msg_id, .. } => *msg_id,
        }
    }
}

/// One device following one conversation's change feed from its cursor.
#[derive(Clone, Debug)]
pub struct Device {
    /// A name for the report.
    pub name: String,
    /// The conversation it follows.
    pub conversation_id: ConversationId,
    /// Whose device it is: the feed is rendered for this viewer, as `get` shows them.
    pub viewer: imstore_core::UserId,
    /// Its pulls, in the order it made them.
    pub pulls: Vec<Pull>,
}

/// One `changes_since` call of a device.
#[derive(Clone, Debug)]
pub struct Pull {
    /// The tick just before the call.
    pub start: u64,
    /// The tick just after it returned.
    pub end: u64,
    /// The cursor it pulled from.
    pub cursor: FeedCursor,
    /// The page size it asked for.
    pub limit: u32,
    /// The page, or the kind of the error.
    pub result: Result<ChangePage, ErrorKind>,
}

/// Thousands of concurrent recalls, restores, deletes, retries, replays, reused ids, reads and feed
/// pulls make a history the contract's sequential state machine explains, and every device's
/// feed holds each committed change exactly once, in version order, ending at the final state.
///
/// Two histories (restores visible to everyone, then only to the sender), 1,500 operations each
/// by default; `IMSTORE_HISTORY_OPS` and `IMSTORE_HISTORY_SEED` override the size and the seed,
/// so a team can run it longer against its own cluster. Needs a multi-threaded tokio runtime for
/// clients that really run in parallel (a current-thread runtime interleaves them on one thread).
pub async fn linearizable_under_concurrency<F: StoreFactory>(f: &F) {
    let ops = env_number("IMSTORE_HISTORY_OPS").unwrap_or(1_500) as usize;
    let seed = env_number("IMSTORE_HISTORY_SEED").unwrap_or(14);
    for (i, visibility) in [RestoreVisibility::Everyone, RestoreVisibility::SenderOnly]
        .into_iter()
        .enumerate()
    {
        let policy = Policy::builder()
            .restore_visibility(visibility)
            .build()
            .expect("a valid policy");
        let h = Harness::start(
            f,
            Setup {
                policy: policy.clone(),
                ..Setup::default()
            },
        )
        .await;
        let workload = Workload {
            ops,
            seed: seed.wrapping_add(i as u64),
            ..Workload::for_policy(&policy)
        };
        let history = record(&h.store, &h.clock, &workload).await;
        match check(&history, &policy) {
            Ok(summary) => eprintln!("history (seed {}): {summary}", workload.seed),
            Err(v) => panic!("history (seed {}, {visibility:?}): {v}", workload.seed),
        }
        h.finish().await;
    }
}

fn env_number(var: &str) -> Option<u64> {
    let v = std::env::var(var).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{var} must be a number, not {v:?}")),
    )
}

/// Expands to one `#[tokio::test]` running [`linearizable_under_concurrency`] on the store built
/// from `$factory` (an expression, which may end in `.await`).
#[macro_export]
macro_rules! history_tests {
    ($factory:expr) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn linearizable_under_concurrency() {
            let factory = $factory;
            $crate::history::linearizable_under_concurrency(&factory).await;
        }
    };
}
