//! What a simulated run reports: per-queue and overall figures, and the sampled series.

use std::time::Duration;

/// The figures of one queue (or of all queues) over a run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Summary {
    /// The queue's name, or `"all"`.
    pub queue: String,
    /// Jobs run.
    pub jobs: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Median wait (arrival to start), nearest rank.
    pub p50_wait: Duration,
    /// 95th percentile of the wait, nearest rank.
    pub p95_wait: Duration,
    /// Longest wait.
    pub max_wait: Duration,
    /// Worker-seconds: the time workers were alive (starting, idle or busy): the cost.
    pub worker_seconds: f64,
    /// Seconds workers spent running jobs.
    pub busy_seconds: f64,
    /// The lower bound of worker-seconds: the sum of job durations plus one start (`init`)
    /// per queue that has jobs, the starts no policy can avoid.
    pub lower_bound_seconds: f64,
    /// Most workers alive at once.
    pub peak_workers: usize,
    /// Workers started (logins).
    pub worker_starts: u64,
    /// Times the worker count went up within 2 minutes of going down (per queue; summed in
    /// `"all"`).
    pub flaps: u64,
    /// The most flaps of one queue within any clock hour of the run (`[k h, (k+1) h)`).
    pub max_flaps_per_hour: u64,
}

/// One sample of a queue's series.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Sample {
    /// Virtual time since the start.
    pub at: Duration,
    /// Index of the queue in the profile.
    pub queue: usize,
    /// Jobs waiting.
    pub backlog: usize,
    /// Workers alive.
    pub workers: usize,
    /// How long the oldest waiting job has waited (0 when none waits).
    pub wait: Duration,
}

/// One policy's run of a profile.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Run {
    /// The policy's name ([`Policy::name`](super::Policy::name)).
    pub policy: &'static str,
    /// One summary per queue, in profile order, then `"all"`.
    pub summaries: Vec<Summary>,
    /// Samples every `profile.sample`, every queue at each instant.
    pub series: Vec<Sample>,
    /// Virtual time at which the last job finished (at least the horizon).
    pub end: Duration,
}

impl Run {
    /// The summary over all queues.
    pub fn all(&self) -> &Summary {
        self.summaries.last().expect("a run has a summary")
    }
}

/// Nearest-rank quantile of sorted values.
pub(crate) fn quantile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_nanos(sorted[rank - 1])
}
