//! Store-wide rules: windows, retention, visibility, skew and size limits. Built once, validated.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::ids::MAX_ID_BYTES;

/// The largest page size a policy may allow.
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// The largest insert batch a policy may allow.
pub const MAX_BATCH_SIZE: usize = 10_000;

/// Who sees a restored message again.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum RestoreVisibility {
    /// Everyone sees the restored message again.
    #[default]
    Everyone,
    /// Only the sender sees it again; everyone else keeps seeing the recall notice.
    SenderOnly,
}

/// The lifecycle rules of a store. Only a [`PolicyBuilder`] makes one, so every policy is consistent.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Policy {
    recall_window: Duration,
    moderator_recall_window: Option<Duration>,
    restore_window: Duration,
    retention: Duration,
    history_limit: Option<Duration>,
    restore_visibility: RestoreVisibility,
    max_clock_skew: Duration,
    max_content_bytes: usize,
    max_id_bytes: usize,
    max_page_size: u32,
    max_batch_size: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            recall_window: Duration::from_secs(2 * 60),
            moderator_recall_window: None,
            restore_window: Duration::from_secs(7 * 24 * 3600),
            retention: Duration::from_secs(30 * 24 * 3600),
            history_limit: None,
            restore_visibility: RestoreVisibility::Everyone,
            max_clock_skew: Duration::from_secs(5 * 60),
            max_content_bytes: 64 * 1024,
            max_id_bytes: 128,
            max_page_size: 500,
            max_batch_size: 1_000,
        }
    }
}

impl Policy {
    /// A builder starting from the defaults (2 min recall, unlimited moderator recall, 7 d restore,
    /// 30 d retention, no history limit, restore visible to everyone, 5 min skew).
    pub fn builder() -> PolicyBuilder {
        PolicyBuilder {
            policy: Policy::default(),
        }
    }

    /// How long after sending the sender may recall.
    pub fn recall_window(&self) -> Duration {
        self.recall_window
    }
    /// How long after sending a moderator may recall; `None` is unlimited.
    pub fn moderator_recall_window(&self) -> Option<Duration> {
        self.moderator_recall_window
    }
    /// How long after a recall the sender may restore.
    pub fn restore_window(&self) -> Duration {
        self.restore_window
    }
    /// How long recalled and deleted messages are kept before the purge removes them.
    pub fn retention(&self) -> Duration {
        self.retention
    }
    /// When set, the purge removes every message older than this, whatever its status.
    pub fn history_limit(&self) -> Option<Duration> {
        self.history_limit
    }
    /// The largest page size a policy may allow.
    pub const MAX_PAGE_SIZE: u32 = 10_000;
    /// The largest insert batch a policy may allow.
    pub const MAX_BATCH_SIZE: usize = 10_000;

    /// Who sees a restored message again.
    pub fn restore_visibility(&self) -> RestoreVisibility {
        self.restore_visibility
    }
    /// How far a request's client timestamp may be from the store's clock.
    pub fn max_clock_skew(&self) -> Duration {
        self.max_clock_skew
    }
    /// The largest content accepted, in bytes (before encoding).
    pub fn max_content_bytes(&self) -> usize {
        self.max_content_bytes
    }
    /// The longest string id accepted, in bytes.
    pub fn max_id_bytes(&self) -> usize {
        self.max_id_bytes
    }
    /// The largest page `list` and `changes_since` accept.
    pub fn max_page_size(&self) -> u32 {
        self.max_page_size
    }
    /// The largest batch `insert_batch` accepts.
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }
}

/// Builds a [`Policy`]; `build` refuses inconsistent settings.
#[derive(Clone, Debug)]
pub struct PolicyBuilder {
    policy: Policy,
}

impl PolicyBuilder {
    /// Sets the sender's recall window (default 2 minutes).
    pub fn recall_window(mut self, d: Duration) -> Self {
        self.policy.recall_window = d;
        self
    }
    /// Sets the moderator's recall window; `None` (default) is unlimited.
    pub fn moderator_recall_window(mut self, d: Option<Duration>) -> Self {
        self.policy.moderator_recall_window = d;
        self
    }
    /// Sets the restore window, counted from the recall (default 7 days).
    pub fn restore_window(mut self, d: Duration) -> Self {
        self.policy.restore_window = d;
        self
    }
    /// Sets the retention grace period of recalled and deleted messages (default 30 days).
    pub fn retention(mut self, d: Duration) -> Self {
        self.policy.retention = d;
        self
    }
    /// Sets a history limit: messages older than this are purged whatever their status.
    pub fn history_limit(mut self, d: Option<Duration>) -> Self {
        self.policy.history_limit = d;
        self
    }
    /// Sets who sees a restored message again (default everyone).
    pub fn restore_visibility(mut self, v: RestoreVisibility) -> Self {
        self.policy.restore_visibility = v;
        self
    }
    /// Sets the largest accepted distance between a client's and the store's clocks (default 5 min).
    pub fn max_clock_skew(mut self, d: Duration) -> Self {
        self.policy.max_clock_skew = d;
        self
    }
    /// Sets the largest accepted content (default 64 KiB).
    pub fn max_content_bytes(mut self, n: usize) -> Self {
        self.policy.max_content_bytes = n;
        self
    }
    /// Sets the longest accepted string id (default 128 bytes, at most 256).
    pub fn max_id_bytes(mut self, n: usize) -> Self {
        self.policy.max_id_bytes = n;
        self
    }
    /// Sets the largest page (default 500).
    pub fn max_page_size(mut self, n: u32) -> Self {
        self.policy.max_page_size = n;
        self
    }
    /// Sets the largest insert batch (default 1,000).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.policy.max_batch_size = n;
        self
    }

    /// The policy, or invalid input naming the inconsistent setting.
    pub fn build(self) -> Result<Policy> {
        let p = self.policy;
        let zero = |field: &'static str| Error::invalid_input(field, "must be greater than zero");
        if p.recall_window.is_zero() {
            return Err(zero("recall_window"));
        }
        if p.moderator_recall_window.is_some_and(|d| d.is_zero()) {
            return Err(zero("moderator_recall_window"));
        }
        if p.restore_window.is_zero() {
            return Err(zero("restore_window"));
        }
        if p.retention.is_zero() {
            return Err(zero("retention"));
        }
        if p.max_clock_skew.is_zero() {
            return Err(zero("max_clock_skew"));
        }
        if p.max_content_bytes == 0 {
            return Err(zero("max_content_bytes"));
        }
        // Bounded so that a page or a batch is always a bounded amount of work and its
        // arithmetic (a page asks for limit + 1 rows) cannot overflow.
        if p.max_page_size == 0 || p.max_page_size > MAX_PAGE_SIZE {
            return Err(Error::invalid_input(
                "max_page_size",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
        if p.max_batch_size == 0 || p.max_batch_size > MAX_BATCH_SIZE {
            return Err(Error::invalid_input(
                "max_batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        if p.max_id_bytes == 0 || p.max_id_bytes > MAX_ID_BYTES {
            return Err(Error::invalid_input(
                "max_id_bytes",
                format!("must be between 1 and {MAX_ID_BYTES}"),
            ));
        }
        // The purge removes a recalled message `retention` after its recall, and its sender may
        // restore it until `restore_window` after: equal windows would let both happen at once.
        if p.restore_window >= p.retention {
            return Err(Error::invalid_input(
                "restore_window",
                "must be shorter than retention: a restorable message would be purged",
            ));
        }
        // Request records live for `retention`; a request is accepted up to `max_clock_skew` from
        // the store's clock. A skew as long as retention would accept a replay whose record is
        // already gone.
        if p.max_clock_skew >= p.retention {
            return Err(Error::invalid_input(
                "max_clock_skew",
                "must be shorter than retention: replays would outlive their request records",
            ));
        }
        if let Some(limit) = p.history_limit
            && limit < p.retention
        {
            return Err(Error::invalid_input(
                "history_limit",
                "must not be shorter than retention",
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts() {
        let p = Policy::builder().build().unwrap();
        assert_eq!(p.recall_window(), Duration::from_secs(120));
        assert_eq!(p.moderator_recall_window(), None);
        assert_eq!(p.restore_window(), Duration::from_secs(7 * 86_400));
        assert_eq!(p.retention(), Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn windows_that_the_purge_would_cut_short_are_refused() {
        let day = Duration::from_secs(86_400);
        let e = Policy::builder()
            .restore_window(30 * day)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some("restore_window"));
        let e = Policy::builder()
            .max_clock_skew(30 * day)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some("max_clock_skew"));
        assert!(
            Policy::builder()
                .restore_window(30 * day - Duration::from_millis(1))
                .build()
                .is_ok()
        );
    }

    #[test]
    fn inconsistent_policies_are_refused() {
        let e = Policy::builder()
            .restore_window(Duration::from_secs(10 * 86_400))
            .retention(Duration::from_secs(5 * 86_400))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), Some("restore_window"));
        assert_eq!(
            Policy::builder()
                .max_page_size(0)
                .build()
                .unwrap_err()
                .field(),
            Some("max_page_size")
        );
        assert_eq!(
            Policy::builder()
                .recall_window(Duration::ZERO)
                .build()
                .unwrap_err()
                .field(),
            Some("recall_window")
        );
    }
}
