//! What a transition request does, decided once for every backend: the replay lookup, the
//! staleness check, the rules, and the request record that makes the answer its first outcome.
//!
//! A backend reads, in one consistent read, the request record (if any) and the message's
//! sender and lifecycle, hands them to [`Decider::decide`], and persists the [`Decision`] it gets:
//!
//! * [`Decision::Answer`]: write nothing, return the answer (a replay, or a reused id).
//! * [`Decision::Record`]: no state change; insert the request record *if no record exists yet
//!   for that id* (and, where the backend can, only while the message is still at `expected`),
//!   then answer with the record. If another record won, answer with that one (a replay).
//! * [`Decision::Apply`]: compare-and-set the message from `expected` to `next`, append the event
//!   under the conversation's next feed seq, and insert the request record: all or nothing. If the
//!   compare-and-set or the record insert loses, write nothing and decide again from a new read.
//!
//! The order is fixed here and in `CONTRACT.md`: malformed input is refused before anything is
//! read (never recorded); a request id already recorded is answered with its first outcome,
//! whatever its age; then a stale client timestamp is refused; then a missing message; then the
//! lifecycle rules. Every outcome from the staleness check on, refusals included, is recorded, so
//! a captured request replayed later can never have a different effect.

use crate::error::{Error, Result};
use crate::ids::{MsgId, UserId};
use crate::lifecycle::{self, Plan, RequestRecord};
use crate::policy::Policy;
use crate::types::{
    ChangeEvent, Lifecycle, Status, Timestamp, TransitionOutcome, TransitionRequest,
};

/// Decides one transition request against what a backend read; built only by the pipeline, so a
/// backend's transition cannot run without the core's rules.
#[derive(Debug)]
pub struct Decider<'a> {
    request: &'a TransitionRequest,
    policy: &'a Policy,
    now: Timestamp,
}

/// What a backend must persist for one transition request (see the module docs).
#[derive(Debug)]
pub enum Decision {
    /// Write nothing and return this.
    Answer(Result<TransitionOutcome>),
    /// Insert this request record if its id has none yet, then answer with it.
    Record {
        /// The record to insert; [`RequestRecord::answer`] is the reply.
        record: RequestRecord,
        /// The message version the decision was made at (0: the message did not exist).
        expected: u32,
        /// For a refusal, the error as first decided (its message says why).
        refusal: Option<Error>,
    },
    /// Compare-and-set from `expected` to `next`, append the event, insert the record: atomically.
    Apply {
        /// The lifecycle to write (version already bumped).
        next: Lifecycle,
        /// The version the compare-and-set expects.
        expected: u32,
        /// The request record, committed with the change.
        record: RequestRecord,
    },
}

impl Decision {
    /// The reply to the caller once the decision has been persisted as it says.
    pub fn into_answer(self) -> Result<TransitionOutcome> {
        match self {
            Decision::Answer(a) => a,
            Decision::Record {
                refusal: Some(e), ..
            } => Err(e),
            Decision::Record { record, .. } | Decision::Apply { record, .. } => record.answer(),
        }
    }

    /// The request record this decision writes, if any.
    pub fn record(&self) -> Option<&RequestRecord> {
        match self {
            Decision::Answer(_) => None,
            Decision::Record { record, .. } | Decision::Apply { record, .. } => Some(record),
        }
    }
}

impl<'a> Decider<'a> {
    /// A decider for `request` at `now` under `policy` (the pipeline builds it).
    pub(crate) fn new(request: &'a TransitionRequest, policy: &'a Policy, now: Timestamp) -> Self {
        Decider {
            request,
            policy,
            now,
        }
    }

    /// The request being decided.
    pub fn request(&self) -> &TransitionRequest {
        self.request
    }

    /// The store's time for this request: stamps, windows and the record's `at` all use it.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// The store's policy.
    pub fn policy(&self) -> &Policy {
        self.policy
    }

    /// The decision for the request, given its stored record (if any) and the message's sender
    /// and lifecycle (`None`: no such message), both from one consistent read.
    pub fn decide(
        &self,
        record: Option<&RequestRecord>,
        message: Option<(&UserId, &Lifecycle)>,
    ) -> Decision {
        let req = self.request;
        if let Some(record) = record {
            return Decision::Answer(record.replay(req));
        }
        let (status, version) = message.map_or((Status::Normal, 0), |(_, l)| (l.status, l.version));
        let refuse = |e: Error| Decision::Record {
            record: RequestRecord::refused(req, e.kind(), status, version, self.now),
            expected: version,
            refusal: Some(e),
        };
        if let Err(e) = lifecycle::check_skew(req, self.policy, self.now) {
            return refuse(e);
        }
        let Some((sender, state)) = message else {
            return refuse(Error::not_found(req.msg_id));
        };
        match lifecycle::plan(req, sender, state, self.policy, self.now) {
            Err(e) => refuse(e),
            Ok(plan) => {
                let outcome = lifecycle::outcome(req.msg_id, state, &plan);
                let record = RequestRecord::new(req, &outcome, self.now);
                match plan {
                    Plan::Unchanged => Decision::Record {
                        record,
                        expected: state.version,
                        refusal: None,
                    },
                    Plan::Apply(next) => Decision::Apply {
                        next,
                        expected: state.version,
                        record,
                    },
                }
            }
        }
    }

    /// The change event of an applied decision under feed position `seq`.
    pub fn event(&self, seq: u64, next: &Lifecycle) -> ChangeEvent {
        ChangeEvent {
            seq,
            conversation_id: self.request.conversation_id.clone(),
            msg_id: self.request.msg_id,
            status: next.status,
            version: next.version,
            at: self.now,
            by: self.request.requester.clone(),
        }
    }

    /// The message this request is about.
    pub fn msg_id(&self) -> MsgId {
        self.request.msg_id
    }
}
