//! Timing: runs an operation from N concurrent workers for a while, and pairs imstore with its
//! baseline in alternating rounds so that a noisy machine slows both sides alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use hdrhistogram::Histogram;

/// Errors of the bench itself: anything printable is enough, the run stops on the first one.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The bench's result type.
pub type R<T> = std::result::Result<T, BoxError>;

/// One operation; the argument is a counter unique to the side, for ids and picking.
pub type OpFn = Arc<dyn Fn(u64) -> BoxFuture<'static, R<()>> + Send + Sync>;

/// Builds an [`OpFn`] from an async closure.
pub fn op<F, Fut>(f: F) -> OpFn
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R<()>> + Send + 'static,
{
    Arc::new(move |i| Box::pin(f(i)))
}

/// How long and how often each side of a pair runs.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Rounds per pair; sides alternate which goes first.
    pub rounds: u32,
    /// Time per side per round.
    pub per_round: Duration,
    /// Untimed operations per side before the first round.
    pub warmup_ops: u64,
}

/// One side's measurements, summed over its rounds.
pub struct Side {
    /// Operations completed.
    pub ops: u64,
    /// Time spent running them (sum over rounds).
    pub elapsed: Duration,
    /// Latency per operation, in microseconds.
    pub hist: Histogram<u64>,
}

impl Side {
    fn new() -> Self {
        Side {
            ops: 0,
            elapsed: Duration::ZERO,
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
        }
    }

    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.ops as f64 / s } else { 0.0 }
    }

    /// A latency quantile in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }
}

/// A side of a pair: its operation, its counter and an optional cap of operations per round.
#[derive(Clone)]
pub struct Runner {
    /// The operation.
    pub op: OpFn,
    /// The side's op counter, shared by all its workers and rounds.
    pub counter: Arc<AtomicU64>,
    /// At most this many operations per round (e.g. a pool of messages to recall).
    pub cap_per_round: Option<u64>,
}

impl Runner {
    /// A runner with no cap.
    pub fn new(op: OpFn) -> Self {
        Runner {
            op,
            counter: Arc::new(AtomicU64::new(0)),
            cap_per_round: None,
        }
    }

    /// A runner that stops a round after `cap` operations.
    pub fn capped(op: OpFn, cap: u64) -> Self {
        Runner {
            cap_per_round: Some(cap.max(1)),
            ..Runner::new(op)
        }
    }
}

/// Runs `runner` from `concurrency` workers for `dur` (or until its cap), recording into `side`.
async fn run_round(runner: &Runner, concurrency: usize, dur: Duration, side: &mut Side) -> R<()> {
    let start = Instant::now();
    let deadline = start + dur;
    let done_in_round = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let runner = runner.clone();
        let done_in_round = done_in_round.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid bounds");
            let mut ops = 0u64;
            // At least one operation per worker, so that slow paths still get a sample.
            loop {
                if let Some(cap) = runner.cap_per_round
                    && done_in_round.fetch_add(1, Ordering::Relaxed) >= cap
                {
                    break;
                }
                let i = runner.counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                (runner.op)(i).await?;
                hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
                ops += 1;
                if Instant::now() >= deadline {
                    break;
                }
            }
            R::Ok((ops, hist))
        }));
    }
    for t in tasks {
        let (ops, hist) = t.await.map_err(|e| format!("worker panicked: {e}"))??;
        side.ops += ops;
        side.hist
            .add(hist)
            .map_err(|e| format!("histogram: {e:?}"))?;
    }
    side.elapsed += start.elapsed();
    Ok(())
}

/// Warms both sides up, then runs them in alternating rounds; returns (imstore, baseline).
pub async fn measure_pair(
    imstore: &Runner,
    baseline: &Runner,
    concurrency: usize,
    timing: Timing,
) -> R<(Side, Side)> {
    let mut sides = measure_sides(&[imstore, baseline], concurrency, timing).await?;
    let b = sides.pop().ok_or("no baseline side")?;
    let a = sides.pop().ok_or("no imstore side")?;
    Ok((a, b))
}

/// Warms every side up, then runs them in rounds, each round starting with the next side in
/// turn (so that none is always first after a slow one); returns the sides in the given order.
pub async fn measure_sides(
    runners: &[&Runner],
    concurrency: usize,
    timing: Timing,
) -> R<Vec<Side>> {
    for r in runners {
        for _ in 0..timing.warmup_ops {
            let i = r.counter.fetch_add(1, Ordering::Relaxed);
            (r.op)(i).await?;
        }
    }
    let n = runners.len();
    let mut sides: Vec<Side> = (0..n).map(|_| Side::new()).collect();
    for round in 0..timing.rounds as usize {
        for k in 0..n {
            // Two sides: imstore first in even rounds, the baseline first in odd ones.
            let s = (round + k) % n;
            run_round(runners[s], concurrency, timing.per_round, &mut sides[s]).await?;
        }
    }
    Ok(sides)
}

/// A cheap, well-mixed hash of a counter (splitmix64), for picking keys without a shared RNG.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
