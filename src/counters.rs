//! The job counters a worker keeps, its run-time histogram, and which jobs it times.
//!
//! Each worker owns its counters and is their only writer, so the hot path does plain loads and
//! stores (no locked read-modify-write, no shared cache line between workers). A snapshot
//! (`stats.rs`) sums the live workers and the totals folded in from workers that have exited.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Linear buckets below 2^SUB_BITS ns, then 2^SUB_BITS buckets per power of two: the bucket
/// holding a value is at most 1/16 (6%) wider than the value.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
/// Values from 2^MAX_EXP ns (~73 minutes) up share the top bucket.
const MAX_EXP: u32 = 42;
pub(crate) const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS + 1) as usize * SUB;

pub(crate) fn bucket_of(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let exp = (63 - ns.leading_zeros()).min(MAX_EXP);
    let sub = if exp == MAX_EXP && ns >= 1 << (MAX_EXP + 1) {
        SUB - 1
    } else {
        ((ns >> (exp - SUB_BITS)) as usize) & (SUB - 1)
    };
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// The middle of a bucket, in nanoseconds.
pub(crate) fn bucket_mid(index: usize) -> u64 {
    if index < SUB {
        return index as u64;
    }
    let exp = (index - SUB) / SUB + SUB_BITS as usize;
    let sub = ((index - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS as usize);
    (1u64 << exp) + sub * width + width / 2
}

/// Adds to a counter that only the calling thread writes.
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// Job counters of one worker (single writer) or the folded totals of exited workers.
///
/// Aligned to 128 bytes (two cache lines, as crossbeam's `CachePadded` does for adjacent-line
/// prefetch) so that two workers' counters, allocated side by side, never share a line.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) busy: AtomicBool,
    pub(crate) busy_since_ns: AtomicU64,
    time_sum_ns: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            busy_since_ns: AtomicU64::new(0),
            time_sum_ns: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// How one job ended, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Ok,
    Failed,
    Panicked,
}

impl Counters {
    /// Counts a finished job. Only the owning worker calls this.
    #[inline]
    pub(crate) fn record(&self, ended: Ended) {
        let counter = match ended {
            Ended::Ok => &self.ok,
            Ended::Failed => &self.failed,
            Ended::Panicked => &self.panicked,
        };
        bump(counter, 1);
    }

    /// Records the run time of a timed job (see [`JobTimer`]). Only the owning worker calls it.
    #[inline]
    pub(crate) fn record_time(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        bump(&self.time_sum_ns, ns);
        bump(&self.buckets[bucket_of(ns)], 1);
    }

    /// Adds `other` into `self` (for folding an exited worker into the queue totals; called
    /// under the queue's lock, so there is one writer).
    pub(crate) fn absorb(&self, other: &Counters) {
        bump(&self.ok, other.ok.load(Relaxed));
        bump(&self.failed, other.failed.load(Relaxed));
        bump(&self.panicked, other.panicked.load(Relaxed));
        bump(&self.time_sum_ns, other.time_sum_ns.load(Relaxed));
        for (mine, theirs) in self.buckets.iter().zip(other.buckets.iter()) {
            let n = theirs.load(Relaxed);
            if n != 0 {
                bump(mine, n);
            }
        }
    }

    pub(crate) fn add_to(&self, acc: &mut Accumulator) {
        acc.ok += self.ok.load(Relaxed);
        acc.failed += self.failed.load(Relaxed);
        acc.panicked += self.panicked.load(Relaxed);
        acc.time_sum_ns = acc
            .time_sum_ns
            .saturating_add(self.time_sum_ns.load(Relaxed));
        if acc.buckets.is_empty() {
            acc.buckets = vec![0; BUCKETS];
        }
        for (a, b) in acc.buckets.iter_mut().zip(self.buckets.iter()) {
            *a += b.load(Relaxed);
        }
    }
}

/// Plain sums used while building a snapshot.
#[derive(Debug, Default, Clone)]
pub(crate) struct Accumulator {
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) panicked: u64,
    time_sum_ns: u64,
    buckets: Vec<u64>,
}

impl Accumulator {
    pub(crate) fn merge(&mut self, other: &Accumulator) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.panicked += other.panicked;
        self.time_sum_ns = self.time_sum_ns.saturating_add(other.time_sum_ns);
        if self.buckets.is_empty() {
            self.buckets = vec![0; BUCKETS];
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// Timed jobs per duration bucket (empty before any counters were added), for the
    /// duration estimate of `estimate.rs`.
    pub(crate) fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// The timed jobs as a Prometheus histogram over `bounds` (ascending, in seconds): a job
    /// counts under a bound when the middle of its fine bucket is at most the bound, so a job
    /// within 6% of a bound may count on either side of it.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn cumulative(&self, bounds: &[f64]) -> crate::histogram::Cumulative {
        let mut out = Vec::with_capacity(bounds.len());
        let mut seen = 0u64;
        let mut i = 0;
        for &bound in bounds {
            let limit = bound * 1e9;
            while i < self.buckets.len() && bucket_mid(i) as f64 <= limit {
                seen += self.buckets[i];
                i += 1;
            }
            out.push((bound, seen));
        }
        crate::histogram::Cumulative {
            buckets: out,
            sum_seconds: self.time_sum_ns as f64 / 1e9,
            count: self.buckets.iter().sum(),
        }
    }

    /// Mean over the timed jobs.
    pub(crate) fn mean(&self) -> Option<Duration> {
        let n: u64 = self.buckets.iter().sum();
        (n > 0).then(|| Duration::from_nanos(self.time_sum_ns / n))
    }

    /// The `q` quantile (0.0..=1.0) of job durations, within the 6% bucket precision.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        let n: u64 = self.buckets.iter().sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_nanos(bucket_mid(i)));
            }
        }
        None
    }
}

/// Decides which jobs a worker times. Reading the clock costs ~25 ns a read; a no-op job
/// costs less than that to dispatch. So a worker times every job while its jobs last
/// [`TIME_ALL_ABOVE`] or more (the clock is then under 0.1% of the job), and one job in
/// [`SAMPLE_EVERY`] while they are shorter: counts stay exact, the mean and p99 of short jobs
/// become sampled estimates, and dispatch stays within a few nanoseconds of a bare channel.
#[derive(Debug)]
pub(crate) struct JobTimer {
    time_all: bool,
    untimed: u32,
}

pub(crate) const TIME_ALL_ABOVE: Duration = Duration::from_micros(50);
pub(crate) const SAMPLE_EVERY: u32 = 64;

impl JobTimer {
    pub(crate) fn new() -> Self {
        // Start by timing: the first job tells whether jobs are long.
        JobTimer {
            time_all: true,
            untimed: 0,
        }
    }

    /// Whether to time the next job.
    #[inline]
    pub(crate) fn next(&mut self) -> bool {
        if self.time_all {
            return true;
        }
        self.untimed += 1;
        if self.untimed >= SAMPLE_EVERY {
            self.untimed = 0;
            return true;
        }
        false
    }

    /// Learns from a timed job.
    #[inline]
    pub(crate) fn saw(&mut self, took: Duration) {
        self.time_all = took >= TIME_ALL_ABOVE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for ns in (0..5_000u64).chain((13..64).map(|e| 1u64 << e)) {
            let b = bucket_of(ns);
            assert!(b >= last && b < BUCKETS, "{ns} -> {b}");
            last = b;
            if ns < 1 << MAX_EXP {
                let mid = bucket_mid(b) as f64;
                assert!(
                    (mid - ns as f64).abs() <= ns as f64 / 16.0 + 1.0,
                    "{ns} vs {mid}"
                );
            }
        }
    }

    #[test]
    fn quantiles() {
        let c = Counters::default();
        for ms in 1..=100 {
            c.record(Ended::Ok);
            c.record_time(Duration::from_millis(ms));
        }
        let mut acc = Accumulator::default();
        c.add_to(&mut acc);
        let p99 = acc.quantile(0.99).unwrap().as_secs_f64() * 1000.0;
        assert!((p99 - 99.0).abs() < 99.0 / 16.0, "{p99}");
        let mean = acc.mean().unwrap().as_secs_f64() * 1000.0;
        assert!((mean - 50.5).abs() < 0.01, "{mean}");
    }

    #[test]
    fn prometheus_buckets_count_each_job_once_under_its_bound() {
        let c = Counters::default();
        for ms in [50, 400, 3_000, 90_000] {
            c.record_time(Duration::from_millis(ms));
        }
        let mut acc = Accumulator::default();
        c.add_to(&mut acc);
        let h = acc.cumulative(&[0.1, 0.5, 1.0, 60.0, 120.0]);
        let counts: Vec<u64> = h.buckets.iter().map(|b| b.1).collect();
        assert_eq!(counts, [1, 2, 2, 3, 4]);
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 93.45).abs() < 1e-6, "{}", h.sum_seconds);
    }

    #[test]
    fn long_jobs_are_all_timed_short_ones_sampled() {
        let mut t = JobTimer::new();
        assert!(t.next(), "the first job is timed");
        t.saw(Duration::from_millis(3));
        assert!((0..100).all(|_| t.next()), "jobs of 3 ms: every one timed");
        t.saw(Duration::from_micros(2));
        let timed = (0..SAMPLE_EVERY * 10).filter(|_| t.next()).count();
        assert_eq!(timed, 10, "jobs of 2 us: one in {SAMPLE_EVERY}");
        t.saw(Duration::from_millis(1));
        assert!(t.next(), "a long job switches back to timing all");
    }
}
