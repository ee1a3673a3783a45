//! The rules of the message lifecycle, decided once for every backend.
//!
//! A backend reads the stored [`Lifecycle`], asks [`plan`] what the request does to it, and writes
//! the result with a compare-and-set on the version it read. Nothing here touches storage.

use crate::error::{Error, ErrorKind, Result};
use crate::ids::{ConversationId, MsgId, RequestId, UserId};
use crate::policy::Policy;
use crate::types::{
    Action, Authority, Lifecycle, NewMessage, Status, Timestamp, TransitionOutcome,
    TransitionRequest,
};

/// What a request does to a message.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Plan {
    /// Write this new lifecycle (version already bumped) and append one change event.
    Apply(Lifecycle),
    /// The message is already where the request wants it: succeed, write nothing, no event.
    Unchanged,
}

/// Checks every field of a message against the policy before anything is written.
pub fn validate_message(msg: &NewMessage, policy: &Policy) -> Result<()> {
    check_id_len("conversation_id", msg.conversation_id.as_str(), policy)?;
    check_id_len("sender_id", msg.sender_id.as_str(), policy)?;
    if msg.content.len() > policy.max_content_bytes() {
        return Err(Error::invalid_input(
            "content",
            format!(
                "is {} bytes, more than the limit of {}",
                msg.content.len(),
                policy.max_content_bytes()
            ),
        ));
    }
    if let Some(att) = &msg.attachment {
        if att.key.is_empty() || att.key.len() > 1024 || att.key.chars().any(char::is_control) {
            return Err(Error::invalid_input(
                "attachment.key",
                "must be 1..=1024 bytes without control characters",
            ));
        }
        if att.mime.len() > 255 || att.mime.chars().any(char::is_control) {
            return Err(Error::invalid_input(
                "attachment.mime",
                "must be at most 255 bytes without control characters",
            ));
        }
        if att.size > i64::MAX as u64 {
            return Err(Error::invalid_input(
                "attachment.size",
                "must fit in 63 bits",
            ));
        }
    }
    Ok(())
}

/// Checks that a message's msg_id was minted within the store's reach of now: not more than
/// `max_clock_skew` ahead of the store's clock, and not before the purge horizon.
///
/// The horizon is `min(retention, history_limit) - max_clock_skew` before now: a message whose id
/// is older may already have been purged, and a late retry of its insert must not bring it back
/// (purged at P means its `deleted_at` or `recalled_at`, and so its `created_at`, is at or before
/// P - retention, and its id was minted at most the skew after `created_at`). The arithmetic is
/// checked: no msg_id or clock value overflows it.
pub fn check_insert_window(msg: &NewMessage, policy: &Policy, now: Timestamp) -> Result<()> {
    let minted = i128::from(msg.msg_id.timestamp().as_millis());
    let now = i128::from(now.as_millis());
    let skew = policy.max_clock_skew().as_millis() as i128;
    let reach = policy
        .history_limit()
        .map_or(policy.retention(), |h| h.min(policy.retention()))
        .as_millis() as i128;
    if minted > now + skew {
        return Err(Error::new(
            ErrorKind::StaleRequest,
            format!(
                "msg_id {} was minted {} ms ahead of the store's clock, more than the allowed skew",
                msg.msg_id,
                minted - now
            ),
        )
        .with_field("msg_id"));
    }
    if minted + reach - skew < now {
        return Err(Error::new(
            ErrorKind::StaleRequest,
            format!(
                "msg_id {} was minted before the purge horizon: a message that old may already \
                 have been purged, and a late insert must not bring it back",
                msg.msg_id
            ),
        )
        .with_field("msg_id"));
    }
    Ok(())
}

/// Checks a batch: its size, each message, and that no msg_id appears twice with other fields.
pub fn validate_batch(msgs: &[NewMessage], policy: &Policy) -> Result<()> {
    if msgs.len() > policy.max_batch_size() {
        return Err(Error::invalid_input(
            "batch",
            format!(
                "has {} messages, more than {}",
                msgs.len(),
                policy.max_batch_size()
            ),
        ));
    }
    for m in msgs {
        validate_message(m, policy)?;
    }
    // Repeats found by sorting positions by key, not by hashing: no hash per id string, no
    // allocation per message, and a batch in id order (the usual one) sorts in one pass.
    // Copies of one key end up adjacent, so comparing neighbours finds any differing pair.
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&msgs[a], &msgs[b]);
        (a.conversation_id.as_str(), a.msg_id).cmp(&(b.conversation_id.as_str(), b.msg_id))
    });
    for pair in order.windows(2) {
        let (first, m) = (&msgs[pair[0]], &msgs[pair[1]]);
        if first.conversation_id == m.conversation_id && first.msg_id == m.msg_id && first != m {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "msg_id {} appears twice in the batch with different fields",
                    m.msg_id
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a transition request's ids (the caller's fault when wrong; nothing is recorded).
pub fn validate_request(req: &TransitionRequest, policy: &Policy) -> Result<()> {
    check_id_len("conversation_id", req.conversation_id.as_str(), policy)?;
    check_id_len("requester", req.requester.as_str(), policy)?;
    check_id_len("request_id", req.request_id.as_str(), policy)
}

/// Checks that a request's client timestamp is within the allowed skew of the store's clock.
///
/// Runs after the replay lookup (a retry of a recorded request is answered whatever its age);
/// the arithmetic is checked, so no client timestamp can overflow it.
pub fn check_skew(req: &TransitionRequest, policy: &Policy, now: Timestamp) -> Result<()> {
    let skew = i128::from(req.client_ts.as_millis()) - i128::from(now.as_millis());
    if skew.unsigned_abs() > policy.max_clock_skew().as_millis() {
        return Err(Error::new(
            ErrorKind::StaleRequest,
            format!("client timestamp is {skew} ms from the store's clock"),
        ));
    }
    Ok(())
}

/// Checks a user id given to a read (the viewer).
pub fn validate_viewer(viewer: &UserId, policy: &Policy) -> Result<()> {
    check_id_len("viewer", viewer.as_str(), policy)
}

/// Checks a conversation id given to a read.
pub fn validate_conversation(conversation: &ConversationId, policy: &Policy) -> Result<()> {
    check_id_len("conversation_id", conversation.as_str(), policy)
}

/// Checks a page size: 1..=the policy's maximum, never silently clamped.
pub fn validate_page_size(limit: u32, policy: &Policy) -> Result<()> {
    if limit == 0 || limit > policy.max_page_size() {
        return Err(Error::invalid_input(
            "limit",
            format!("must be between 1 and {}", policy.max_page_size()),
        ));
    }
    Ok(())
}

/// Checks purge options: a batch of 1..=[`PurgeOptions::MAX_BATCH`](crate::PurgeOptions::MAX_BATCH) messages.
pub fn validate_purge(options: &crate::types::PurgeOptions) -> Result<()> {
    if options.batch_size == 0 || options.batch_size > crate::types::PurgeOptions::MAX_BATCH {
        return Err(Error::invalid_input(
            "batch_size",
            format!(
                "must be between 1 and {}",
                crate::types::PurgeOptions::MAX_BATCH
            ),
        ));
    }
    Ok(())
}

fn check_id_len(field: &'static str, value: &str, policy: &Policy) -> Result<()> {
    if value.len() > policy.max_id_bytes() {
        return Err(Error::invalid_input(
            field,
            format!(
                "is {} bytes, more than {}",
                value.len(),
                policy.max_id_bytes()
            ),
        ));
    }
    Ok(())
}

fn elapsed_within(from: Timestamp, now: Timestamp, window: std::time::Duration) -> bool {
    now <= from.saturating_add(window)
}

/// True when the sender may still restore this message (and so still sees its content).
pub fn restorable(sender: &UserId, state: &Lifecycle, policy: &Policy, now: Timestamp) -> bool {
    state.status == Status::Recalled
        && state.recalled_by.as_ref() == Some(sender)
        && state
            .recalled_at
            .is_some_and(|at| elapsed_within(at, now, policy.restore_window()))
}

/// What `req` does to the message sent by `sender` in state `state`, at `now`.
///
/// Recall: sender within the recall window, or a moderator within theirs. Restore: only the sender,
/// only of their own recall, within the restore window. Delete: sender or moderator, any time.
/// A request that finds the message already in its target state is [`Plan::Unchanged`].
pub fn plan(
    req: &TransitionRequest,
    sender: &UserId,
    state: &Lifecycle,
    policy: &Policy,
    now: Timestamp,
) -> Result<Plan> {
    let is_sender = &req.requester == sender;
    let is_moderator = req.authority == Authority::Moderator;
    let mut next = state.clone();
    next.version = state
        .version
        .checked_add(1)
        .ok_or_else(|| Error::new(ErrorKind::InvalidState, "version counter exhausted"))?;
    match req.action {
        Action::Recall => {
            if !is_sender && !is_moderator {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "only the sender or a moderator may recall",
                ));
            }
            match state.status {
                Status::Deleted => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        "a deleted message cannot be recalled",
                    ));
                }
                // A moderator's recall stands over the sender's own: it takes the recall over
                // (recorded, with its event), so the sender can no longer restore it.
                Status::Recalled
                    if is_moderator && !is_sender && state.recalled_by.as_ref() == Some(sender) =>
                {
                    next.recalled_at = Some(now);
                    next.recalled_by = Some(req.requester.clone());
                    return Ok(Plan::Apply(next));
                }
                Status::Recalled => return Ok(Plan::Unchanged),
                Status::Normal => {}
            }
            let sender_may =
                is_sender && elapsed_within(state.created_at, now, policy.recall_window());
            let moderator_may = is_moderator
                && policy
                    .moderator_recall_window()
                    .is_none_or(|w| elapsed_within(state.created_at, now, w));
            if !sender_may && !moderator_may {
                return Err(Error::new(
                    ErrorKind::WindowExpired,
                    "the recall window has closed",
                ));
            }
            next.status = Status::Recalled;
            next.recalled_at = Some(now);
            next.recalled_by = Some(req.requester.clone());
            next.restored_at = None;
        }
        Action::Restore => {
            if !is_sender {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "only the sender may restore",
                ));
            }
            match state.status {
                Status::Deleted => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        "a deleted message cannot be restored",
                    ));
                }
                Status::Normal if state.restored_at.is_some() => return Ok(Plan::Unchanged),
                Status::Normal => {
                    return Err(Error::new(
                        ErrorKind::InvalidState,
                        "the message is not recalled",
                    ));
                }
                Status::Recalled => {}
            }
            if state.recalled_by.as_ref() != Some(sender) {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "a moderator's recall cannot be restored by the sender",
                ));
            }
            let recalled_at = state.recalled_at.unwrap_or(state.created_at);
            if !elapsed_within(recalled_at, now, policy.restore_window()) {
                return Err(Error::new(
                    ErrorKind::WindowExpired,
                    "the restore window has closed",
                ));
            }
            next.status = Status::Normal;
            next.recalled_at = None;
            next.restored_at = Some(now);
        }
        Action::Delete => {
            if !is_sender && !is_moderator {
                return Err(Error::new(
                    ErrorKind::Forbidden,
                    "only the sender or a moderator may delete",
                ));
            }
            if state.status == Status::Deleted {
                return Ok(Plan::Unchanged);
            }
            next.status = Status::Deleted;
            next.deleted_at = Some(now);
            next.deleted_by = Some(req.requester.clone());
        }
    }
    Ok(Plan::Apply(next))
}

/// The outcome stored under a request id, so a repeat is answered with it and never applied again.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RequestRecord {
    /// The conversation the request id is scoped to.
    pub conversation_id: ConversationId,
    /// The request id.
    pub request_id: RequestId,
    /// What was asked.
    pub action: Action,
    /// Of which message.
    pub msg_id: MsgId,
    /// By whom.
    pub requester: UserId,
    /// The first outcome.
    pub status: Status,
    /// The version after the first outcome.
    pub version: u32,
    /// Whether the first outcome changed the message.
    pub changed: bool,
    /// When the first outcome was committed (for purging old records).
    pub at: Timestamp,
    /// When the first outcome was a refusal, its kind; `status` and `version` are then the state
    /// the request was judged against (`Normal`, 0 when the message did not exist).
    pub refusal: Option<ErrorKind>,
}

impl RequestRecord {
    /// The record of `req`'s first outcome.
    pub fn new(req: &TransitionRequest, outcome: &TransitionOutcome, at: Timestamp) -> Self {
        RequestRecord {
            conversation_id: req.conversation_id.clone(),
            request_id: req.request_id.clone(),
            action: req.action,
            msg_id: req.msg_id,
            requester: req.requester.clone(),
            status: outcome.status,
            version: outcome.version,
            changed: outcome.changed,
            at,
            refusal: None,
        }
    }

    /// The record of `req`'s first outcome when it was refused with `kind`, judged against a
    /// message at `status`/`version` (0 when it did not exist).
    pub fn refused(
        req: &TransitionRequest,
        kind: ErrorKind,
        status: Status,
        version: u32,
        at: Timestamp,
    ) -> Self {
        RequestRecord {
            conversation_id: req.conversation_id.clone(),
            request_id: req.request_id.clone(),
            action: req.action,
            msg_id: req.msg_id,
            requester: req.requester.clone(),
            status,
            version,
            changed: false,
            at,
            refusal: Some(kind),
        }
    }

    /// The answer this record stands for, as first given (a refusal is the same error kind).
    pub fn answer(&self) -> Result<TransitionOutcome> {
        if let Some(kind) = self.refusal {
            return Err(Error::new(
                kind,
                format!("request {} was refused with {kind}", self.request_id),
            ));
        }
        Ok(TransitionOutcome {
            msg_id: self.msg_id,
            status: self.status,
            version: self.version,
            changed: self.changed,
            replayed: false,
        })
    }

    /// The answer to a repeat of this request; a request id reused for another request is a conflict.
    pub fn replay(&self, req: &TransitionRequest) -> Result<TransitionOutcome> {
        if self.action != req.action || self.msg_id != req.msg_id || self.requester != req.requester
        {
            return Err(Error::new(
                ErrorKind::Conflict,
                "request id was already used for a different request",
            )
            .with_field("request_id"));
        }
        self.answer().map(|o| TransitionOutcome {
            replayed: true,
            ..o
        })
    }
}

/// The outcome of applying `plan` to a message whose current state is `state`.
pub fn outcome(msg_id: MsgId, state: &Lifecycle, plan: &Plan) -> TransitionOutcome {
    match plan {
        Plan::Apply(next) => TransitionOutcome {
            msg_id,
            status: next.status,
            version: next.version,
            changed: true,
            replayed: false,
        },
        Plan::Unchanged => TransitionOutcome {
            msg_id,
            status: state.status,
            version: state.version,
            changed: false,
            replayed: false,
        },
    }
}

/// The times before which messages are purged: `(retention_cutoff, history_cutoff)`.
///
/// Recalled messages whose `recalled_at`, and deleted messages whose `deleted_at`, is at or before
/// `retention_cutoff` are purged; with a history limit, so is every message created at or before
/// `history_cutoff`. Request records older than `retention_cutoff` go too.
pub fn purge_cutoffs(policy: &Policy, now: Timestamp) -> (Timestamp, Option<Timestamp>) {
    (
        now.saturating_sub(policy.retention()),
        policy.history_limit().map(|h| now.saturating_sub(h)),
    )
}

/// True when the purge at `now` removes a message in state `state`.
pub fn purgeable(state: &Lifecycle, policy: &Policy, now: Timestamp) -> bool {
    let (retention_cutoff, history_cutoff) = purge_cutoffs(policy, now);
    let expired = match state.status {
        Status::Recalled => state.recalled_at.is_some_and(|t| t <= retention_cutoff),
        Status::Deleted => state.deleted_at.is_some_and(|t| t <= retention_cutoff),
        Status::Normal => false,
    };
    expired || history_cutoff.is_some_and(|h| state.created_at <= h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn user(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn req(action: Action, who: &str, authority: Authority) -> TransitionRequest {
        TransitionRequest {
            action,
            requester: user(who),
            authority,
            conversation_id: ConversationId::new("c").unwrap(),
            msg_id: MsgId::new(1).unwrap(),
            client_ts: Timestamp::from_millis(0),
            request_id: RequestId::new("r").unwrap(),
        }
    }

    #[test]
    fn sender_recall_window_is_inclusive_and_moderator_unlimited() {
        let p = Policy::default();
        let state = Lifecycle::new(Timestamp::from_millis(0));
        let at = |ms| Timestamp::from_millis(ms);
        let r = req(Action::Recall, "alice", Authority::Member);
        assert!(matches!(
            plan(&r, &user("alice"), &state, &p, at(120_000)),
            Ok(Plan::Apply(_))
        ));
        assert_eq!(
            plan(&r, &user("alice"), &state, &p, at(120_001))
                .unwrap_err()
                .kind(),
            ErrorKind::WindowExpired
        );
        let m = req(Action::Recall, "mod", Authority::Moderator);
        assert!(matches!(
            plan(&m, &user("alice"), &state, &p, at(10_000_000_000)),
            Ok(Plan::Apply(_))
        ));
        let limited = Policy::builder()
            .moderator_recall_window(Some(Duration::from_secs(60)))
            .build()
            .unwrap();
        assert_eq!(
            plan(&m, &user("alice"), &state, &limited, at(61_000))
                .unwrap_err()
                .kind(),
            ErrorKind::WindowExpired
        );
    }

    #[test]
    fn skew_is_checked_both_ways() {
        let p = Policy::default();
        let mut r = req(Action::Recall, "a", Authority::Member);
        r.client_ts = Timestamp::from_millis(1_000_000);
        assert!(check_skew(&r, &p, Timestamp::from_millis(1_000_000 + 300_000)).is_ok());
        assert_eq!(
            check_skew(&r, &p, Timestamp::from_millis(1_000_000 + 300_001))
                .unwrap_err()
                .kind(),
            ErrorKind::StaleRequest
        );
        assert_eq!(
            check_skew(&r, &p, Timestamp::from_millis(1_000_000 - 300_001))
                .unwrap_err()
                .kind(),
            ErrorKind::StaleRequest
        );
    }

    #[test]
    fn extreme_client_timestamps_do_not_overflow() {
        let p = Policy::default();
        for ts in [i64::MIN, i64::MAX] {
            let mut r = req(Action::Recall, "a", Authority::Member);
            r.client_ts = Timestamp::from_millis(ts);
            for now in [i64::MIN, 0, i64::MAX] {
                let got = check_skew(&r, &p, Timestamp::from_millis(now));
                assert!(got.is_ok() == (ts == now), "{ts} at {now}");
            }
        }
    }

    #[test]
    fn a_moderator_takes_over_the_senders_recall() {
        let p = Policy::default();
        let mut state = Lifecycle::new(Timestamp::from_millis(0));
        state.status = Status::Recalled;
        state.version = 2;
        state.recalled_by = Some(user("alice"));
        state.recalled_at = Some(Timestamp::from_millis(10));
        let m = req(Action::Recall, "mod", Authority::Moderator);
        let Ok(Plan::Apply(next)) =
            plan(&m, &user("alice"), &state, &p, Timestamp::from_millis(20))
        else {
            panic!("a moderator's recall must stand");
        };
        assert_eq!(next.recalled_by, Some(user("mod")));
        assert_eq!(next.version, 3);
        // A second moderator finds it already recalled by a moderator.
        let again = req(Action::Recall, "mod2", Authority::Moderator);
        assert!(matches!(
            plan(
                &again,
                &user("alice"),
                &next,
                &p,
                Timestamp::from_millis(30)
            ),
            Ok(Plan::Unchanged)
        ));
        let restore = req(Action::Restore, "alice", Authority::Member);
        assert_eq!(
            plan(
                &restore,
                &user("alice"),
                &next,
                &p,
                Timestamp::from_millis(40)
            )
            .unwrap_err()
            .kind(),
            ErrorKind::Forbidden
        );
    }
}
