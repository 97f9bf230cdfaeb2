//! The jobs of a profile: drawn from its arrivals, durations and seed, the same every time.

use std::time::Duration;

use super::profile::{Arrival, Profile};

pub(super) fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A job: arrival time, base duration (before slowdowns), whether it fails.
#[derive(Clone, Copy, Debug)]
pub(super) struct Job {
    pub(super) arrived: u64,
    pub(super) base_ns: u64,
    pub(super) fails: bool,
}

/// One job of a workload: when it arrives, how long it runs (before slowdowns), whether it
/// fails.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobSpec {
    /// Arrival, from the start of the run.
    pub arrival: Duration,
    /// Run time (the executor's; `init` is the queue's).
    pub duration: Duration,
    /// Whether the job fails (it still takes its time).
    pub fails: bool,
}

impl Profile {
    /// The jobs of queue `queue` (index in [`Profile::queues`]) as the simulator draws them
    /// from the profile's arrivals, durations and seed: the same every time. Empty for an
    /// index out of range.
    pub fn jobs(&self, queue: usize) -> Vec<JobSpec> {
        if queue >= self.queues.len() {
            return Vec::new();
        }
        jobs_of(self, queue)
            .into_iter()
            .map(|j| JobSpec {
                arrival: Duration::from_nanos(j.arrived),
                duration: Duration::from_nanos(j.base_ns),
                fails: j.fails,
            })
            .collect()
    }
}

/// splitmix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

pub(super) fn jobs_of(profile: &Profile, qi: usize) -> Vec<Job> {
    let q = &profile.queues[qi];
    let mut rng = Rng(profile.seed ^ (qi as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut times: Vec<u64> = Vec::new();
    for a in &q.arrivals {
        match *a {
            Arrival::Burst { at, jobs } => {
                times.extend(std::iter::repeat_n(ns(at), jobs as usize));
            }
            Arrival::Rate { from, to, per_hour } => {
                if per_hour <= 0.0 {
                    continue;
                }
                let mean_gap = 3600e9 / per_hour;
                let (mut t, end) = (ns(from) as f64, ns(to) as f64);
                loop {
                    t += -rng.unit().ln() * mean_gap;
                    if t >= end {
                        break;
                    }
                    times.push(t as u64);
                }
            }
        }
    }
    times.sort_unstable();
    let median = ns(q.median) as f64;
    times
        .into_iter()
        .filter(|&t| t < ns(profile.horizon))
        .map(|arrived| Job {
            arrived,
            base_ns: (median * (q.sigma * rng.normal()).exp()).max(1.0) as u64,
            fails: rng.unit() <= q.failure,
        })
        .collect()
}
