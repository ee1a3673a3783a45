//! One retry policy for every backend: how often a store re-runs an attempt that lost a race.
//!
//! A backend's attempt returns `Ok(None)` when it lost a race it can simply run again (a failed
//! compare-and-set, a serialization failure, a duplicate that vanished). [`Retry::run`] re-runs it
//! with a short, capped, jittered pause; when the attempts are spent the error is `Unavailable`
//! and [`persistent`](crate::Error::persistent): the store already retried, so the caller should
//! not hammer it again at once.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How many times, and how patiently, a store re-runs an attempt that lost a race.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retry {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The pause after the first lost attempt; it doubles up to `max_delay`.
    pub base_delay: Duration,
    /// The longest pause between two attempts.
    pub max_delay: Duration,
}

impl Default for Retry {
    /// 200 attempts, 1 ms doubling to 50 ms: a lost race means another writer made progress, so
    /// giving up early would fail calls that a moment's patience completes.
    fn default() -> Self {
        Retry {
            max_attempts: 200,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

impl Retry {
    /// A policy with `max_attempts` attempts (at least one) and the default pauses.
    pub fn attempts(max_attempts: u32) -> Self {
        Retry {
            max_attempts: max_attempts.max(1),
            ..Retry::default()
        }
    }

    /// The pause before attempt `attempt + 1` (attempts count from 1): exponential, capped, with
    /// up to half of it random so that racing writers do not retry in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max_delay);
        let jitter = capped.mul_f64(rand::random::<f64>() * 0.5);
        capped.saturating_sub(jitter)
    }

    /// Runs `attempt` until it returns `Ok(Some(_))` or an error, re-running it after `Ok(None)`.
    ///
    /// The closure receives the attempt number (from 1). Spent attempts are a persistent
    /// `Unavailable`.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let max = self.max_attempts.max(1);
        for n in 1..=max {
            if let Some(done) = attempt(n).await? {
                return Ok(done);
            }
            if n < max {
                tokio::time::sleep(self.delay(n)).await;
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!("gave up after {max} attempts lost to concurrent writers"),
        )
        .persistent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reruns_lost_attempts_then_gives_up_persistently() {
        let r = Retry {
            max_attempts: 3,
            base_delay: Duration::from_micros(10),
            max_delay: Duration::from_micros(10),
        };
        let mut seen = 0;
        let got = r
            .run(|n| {
                seen = n;
                async move { Ok((n == 2).then_some(n)) }
            })
            .await
            .unwrap();
        assert_eq!((got, seen), (2, 2));
        let err = r.run(|_| async { Ok(None::<()>) }).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(!err.is_temporary());
    }

    #[test]
    fn delay_is_capped() {
        let r = Retry::default();
        assert!(r.delay(1) <= Duration::from_millis(1));
        assert!(r.delay(40) <= Duration::from_millis(50));
    }
}
