//! The fleet's job-duration measurements: a histogram of executor times that several
//! processes fill together and that lives in Redis. Pure: counts in, a median out.
//!
//! # Why a histogram of counts
//!
//! Each process times its own jobs (in the log buckets of the stats histogram, within 6%) and
//! sends the counts it added since its last heartbeat; Redis adds them up. Counts merge
//! exactly: the histogram of two processes' jobs added together is the histogram one process
//! would have seen running both streams, so the fleet's median is the median of every job the
//! fleet timed, within one bucket (the documented tolerance: 1/16 of the duration). A process's
//! own estimate (an EWMA of window medians, `estimate.rs`) does not merge that way, which is why
//! the fleet keeps counts and not estimates.
//!
//! # Ageing: two windows of [`FLEET_WINDOW_JOBS`] jobs
//!
//! Redis keeps a current and a previous histogram (`Q:fleet:durations` and
//! `Q:fleet:durations:prev`). When the current one holds [`FLEET_WINDOW_JOBS`] jobs the
//! publish script renames it over the previous one, so the median is over the last 64 to 128
//! jobs: a site that got twice as fast is learned within about 64 to 96 jobs, and an outlier
//! or two never moves it. The windows count jobs, not time: a fleet stopped over a weekend
//! keeps what it learned, and a process started on Monday sizes by it from its first tick.

use std::time::Duration;

#[cfg(test)]
use crate::counters::bucket_of;
use crate::counters::{BUCKETS, bucket_mid};
use crate::estimate::{View, estimated_wait_s};
use crate::scaling::{Limits, QueueInput, WaitInput, queue_demand};

/// Jobs in the fleet's current duration window before it becomes the previous one.
pub(crate) const FLEET_WINDOW_JOBS: u64 = 64;

/// A histogram of job durations: jobs per log bucket (the buckets of `counters.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Durations {
    counts: Vec<u64>,
}

impl Default for Durations {
    fn default() -> Self {
        Durations {
            counts: vec![0; BUCKETS],
        }
    }
}

impl Durations {
    /// Counts one job of `ns` nanoseconds.
    #[cfg(test)]
    pub(crate) fn add_ns(&mut self, ns: u64) {
        self.counts[bucket_of(ns)] += 1;
    }

    /// Adds `n` jobs in bucket `index` (ignored when out of range).
    pub(crate) fn add_bucket(&mut self, index: usize, n: u64) {
        if let Some(c) = self.counts.get_mut(index) {
            *c = c.saturating_add(n);
        }
    }

    /// Adds every job of `other`.
    pub(crate) fn merge(&mut self, other: &Durations) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    /// Jobs counted.
    pub(crate) fn jobs(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The median duration in seconds (the middle of its bucket), `None` when empty.
    pub(crate) fn median_s(&self) -> Option<f64> {
        let jobs = self.jobs();
        if jobs == 0 {
            return None;
        }
        let rank = jobs.div_ceil(2);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_mid(i) as f64 / 1e9);
            }
        }
        None
    }

    /// Reads `index count` pairs as Redis returns a hash (`HGETALL`): fields that are not a
    /// bucket index (`jobs`) are skipped.
    pub(crate) fn from_pairs(flat: &[String]) -> Durations {
        let mut d = Durations::default();
        for pair in flat.chunks(2) {
            if let [k, v] = pair
                && let (Ok(i), Ok(n)) = (k.parse::<usize>(), v.parse::<u64>())
            {
                d.add_bucket(i, n);
            }
        }
        d
    }

    /// The counts added since `seen` (a cumulative histogram read earlier), as
    /// `(bucket, jobs)` for the buckets that grew; `seen` becomes `now`.
    pub(crate) fn delta(seen: &mut [u64], now: &[u64]) -> Vec<(usize, u64)> {
        let mut out = Vec::new();
        for (i, (was, is)) in seen.iter_mut().zip(now).enumerate() {
            if *is > *was {
                out.push((i, *is - *was));
            }
            *was = *is;
        }
        out
    }
}

/// The fleet-wide numbers of one queue with a wait target, as a process knows them after its
/// last grant and heartbeat.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct FleetNumbers {
    /// The wait target.
    pub(crate) target: Duration,
    /// `LLEN` of the queue.
    pub(crate) backlog: usize,
    /// Slots held over the fleet: the threads running for the queue.
    pub(crate) slots: usize,
    /// The live members' `min_threads`, added up.
    pub(crate) mins: usize,
    /// The most the fleet may run: `fleet_max_threads`, else the members' rooms added up.
    pub(crate) cap: usize,
    /// The fleet's median job duration (the stored histogram), seconds.
    pub(crate) duration_s: Option<f64>,
    /// Fleet arrivals per second.
    pub(crate) arrival_per_s: f64,
    /// Age of the oldest and of the newest waiting job, seconds.
    pub(crate) oldest_age_s: f64,
    pub(crate) newest_age_s: f64,
}

impl FleetNumbers {
    fn input(&self) -> QueueInput {
        QueueInput {
            backlog: self.backlog,
            min: self.mins.min(self.cap),
            weight: 1,
            hold: 0,
            current: self.slots,
            wait: Some(WaitInput {
                target_s: self.target.as_secs_f64(),
                duration_s: self.duration_s,
                arrival_per_s: self.arrival_per_s,
                oldest_age_s: self.oldest_age_s,
                newest_age_s: self.newest_age_s,
            }),
        }
    }

    /// The fleet's demand by the wait rule: the same pure function a single process uses
    /// ([`queue_demand`]), with the fleet's backlog, slots and measurements, bounded by the
    /// fleet's cap. `None` before the fleet has timed a job (the grant then applies the
    /// divisor rule, as a single process does).
    pub(crate) fn demand(&self) -> Option<usize> {
        self.duration_s.filter(|d| *d > 0.0 && d.is_finite())?;
        let limits = Limits {
            // Unused while there is a duration (the divisor is the fallback only).
            jobs_per_thread: 1,
            max_per_queue: self.cap,
            max_total: usize::MAX,
        };
        Some(queue_demand(&self.input(), &limits))
    }

    /// What the fleet's numbers say, for `stats()`, the record and the log: the duration,
    /// the arrival rate, the estimated wait on the fleet's threads, the learned divisor.
    pub(crate) fn view(&self) -> View {
        let d = self.duration_s.filter(|d| *d > 0.0 && d.is_finite());
        let (head, back) = (self.oldest_age_s, self.newest_age_s.min(self.oldest_age_s));
        View {
            duration: d.map(Duration::from_secs_f64),
            arrival_per_s: Some(self.arrival_per_s),
            completion_per_s: None,
            estimated_wait: d.map(|d| {
                Duration::from_secs_f64(
                    estimated_wait_s(self.backlog, self.slots.max(1), d, head, back).min(1e9),
                )
            }),
            learned_jobs_per_thread: d.map(|d| self.target.as_secs_f64() / d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hist(ns: &[u64]) -> Durations {
        let mut d = Durations::default();
        for &x in ns {
            d.add_ns(x);
        }
        d
    }

    /// The exact median of the samples (the lower middle, as the histogram's rank).
    fn exact(ns: &[u64]) -> f64 {
        let mut v = ns.to_vec();
        v.sort_unstable();
        v[(v.len() - 1) / 2] as f64 / 1e9
    }

    #[test]
    fn the_median_of_a_few_jobs() {
        let d = hist(&[100_000_000, 100_000_000, 5_000_000_000]);
        let m = d.median_s().unwrap();
        assert!((m - 0.1).abs() < 0.1 / 16.0, "{m}");
        assert_eq!(Durations::default().median_s(), None);
    }

    #[test]
    fn deltas_and_pairs() {
        let mut seen = vec![0; BUCKETS];
        let mut now = vec![0; BUCKETS];
        now[3] = 2;
        now[40] = 5;
        assert_eq!(Durations::delta(&mut seen, &now), vec![(3, 2), (40, 5)]);
        assert_eq!(Durations::delta(&mut seen, &now), vec![]);
        let flat: Vec<String> = ["3", "2", "jobs", "7", "40", "5"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let d = Durations::from_pairs(&flat);
        assert_eq!(d.jobs(), 7);
    }

    fn numbers(backlog: usize, slots: usize, d: Option<f64>) -> FleetNumbers {
        FleetNumbers {
            target: Duration::from_secs(4),
            backlog,
            slots,
            mins: 0,
            cap: 36,
            duration_s: d,
            arrival_per_s: 0.0,
            oldest_age_s: 0.0,
            newest_age_s: 0.0,
        }
    }

    #[test]
    fn the_fleet_demand_is_the_single_process_rule_on_fleet_numbers() {
        // 600 jobs of 0.1 s, 4 s target: 600 * 0.1 / 4 = 15 threads for the whole fleet.
        assert_eq!(numbers(600, 1, Some(0.1)).demand(), Some(15));
        // The fleet's cap bounds it; no duration yet: the divisor rule (in the grant) decides.
        assert_eq!(numbers(6000, 1, Some(0.1)).demand(), Some(36));
        assert_eq!(numbers(600, 1, None).demand(), None);
        let v = numbers(600, 15, Some(0.1)).view();
        assert_eq!(v.learned_jobs_per_thread, Some(40.0));
        assert_eq!(v.estimated_wait, Some(Duration::from_secs(4)));
    }

    proptest! {
        /// Two processes' histograms merged are exactly the histogram of one process that saw
        /// both streams, and its median is the streams' median within one bucket (1/16).
        #[test]
        fn merging_is_seeing_both_streams(
            a in prop::collection::vec(1_000u64..600_000_000_000, 0..200),
            b in prop::collection::vec(1_000u64..600_000_000_000, 0..200),
        ) {
            let mut merged = hist(&a);
            merged.merge(&hist(&b));
            let both: Vec<u64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(&merged, &hist(&both));
            prop_assert_eq!(merged.jobs(), both.len() as u64);
            if !both.is_empty() {
                let (m, e) = (merged.median_s().unwrap(), exact(&both));
                prop_assert!((m - e).abs() <= e / 16.0 + 1e-9, "{} vs {}", m, e);
            }
        }

        /// A histogram sent as deltas over several heartbeats adds up to the whole.
        #[test]
        fn deltas_add_up(ns in prop::collection::vec(1_000u64..60_000_000_000, 1..100), cut in 0usize..100) {
            let cut = cut.min(ns.len());
            let mut seen = vec![0; BUCKETS];
            let first = hist(&ns[..cut]);
            let all = hist(&ns);
            let mut stored = Durations::default();
            for (i, n) in Durations::delta(&mut seen, &first.counts) {
                stored.add_bucket(i, n);
            }
            for (i, n) in Durations::delta(&mut seen, &all.counts) {
                stored.add_bucket(i, n);
            }
            prop_assert_eq!(stored, all);
        }
    }
}
