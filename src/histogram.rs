//! A fixed-bucket histogram of durations, for worker start-up (`init`) times: few samples
//! (one per worker start), any thread may record, and a snapshot reads it without a lock.
//!
//! The job-duration histogram does not use this: each worker already keeps a fine log-bucket
//! histogram of its own jobs (`counters.rs`), which the metrics read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds, in seconds, of the worker start-up histogram: a thread with a cheap state
/// starts in microseconds, a browser in one to several seconds, a slow PDF engine in tens.
pub(crate) const INIT_BOUNDS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Counts of durations at most each of [`INIT_BOUNDS`] (not cumulative: one count per bucket,
/// plus one past the last bound), their sum and number.
#[derive(Debug)]
pub(crate) struct Timings {
    buckets: [AtomicU64; INIT_BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// A histogram as Prometheus exposes it: cumulative counts per upper bound, the sum, the count.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Cumulative {
    /// `(upper bound in seconds, observations at most that)`, ascending.
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) sum_seconds: f64,
    pub(crate) count: u64,
}

impl Timings {
    /// Records one duration.
    pub(crate) fn record(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = INIT_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(INIT_BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The cumulative view. Counts are read one by one without a lock, so a record racing
    /// the read may show in a later bucket only; every count is still monotonic.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn cumulative(&self) -> Cumulative {
        let mut seen = 0;
        let mut buckets = Vec::with_capacity(INIT_BOUNDS.len());
        for (i, &bound) in INIT_BOUNDS.iter().enumerate() {
            seen += self.buckets[i].load(Relaxed);
            buckets.push((bound, seen));
        }
        seen += self.buckets[INIT_BOUNDS.len()].load(Relaxed);
        Cumulative {
            buckets,
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
            count: seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_bounds_inclusive() {
        let t = Timings::default();
        t.record(Duration::from_millis(10)); // exactly the first bound
        t.record(Duration::from_millis(700));
        t.record(Duration::from_secs(600)); // past the last bound: only in the count
        let c = t.cumulative();
        assert_eq!(c.buckets[0], (0.01, 1));
        assert_eq!(c.buckets[5], (1.0, 2));
        assert_eq!(c.buckets.last(), Some(&(120.0, 2)));
        assert_eq!(c.count, 3);
        assert!((c.sum_seconds - 600.71).abs() < 1e-6, "{}", c.sum_seconds);
    }
}
