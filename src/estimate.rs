//! What the wait-target policy measures per queue: a job-duration estimate robust to outliers,
//! and smoothed arrival and completion rates. Pure: the monitor feeds it each tick from the
//! queue's counters, the simulator feeds it in virtual time; no clock, no threads, no I/O.
//!
//! # The duration estimate: an EWMA of windowed medians
//!
//! Finished jobs' executor times (never `init`: the worker times `exec` only) are collected in
//! a window, as counts in the same log buckets the stats histogram uses (within 6%). A window
//! closes after [`WINDOW_JOBS`] jobs, or when it is older than a quarter of the horizon and
//! holds at least one job; its median then moves the estimate by [`SMOOTHING`] of the gap.
//!
//! Why this and not a mean, an EWMA of single jobs, or a P² median:
//! * a median ignores the odd job that hangs for minutes (a browser timeout): one outlier in a
//!   window of 16 does not move it, where it would drag a mean or a per-job EWMA;
//! * the EWMA over windows follows a lasting change (the slow-site profile: durations double)
//!   within a few windows, which an all-time median never does;
//! * the state is plain counts and sums ([`Estimator::window`] buckets, the estimate, the
//!   rates), so it can be merged across processes (add the buckets, weight the estimates by
//!   jobs) and persisted as numbers: the fleet part needs nothing more. A P² sketch holds
//!   five markers that cannot be merged.

use std::collections::VecDeque;
use std::time::Duration;

use crate::counters::{Accumulator, BUCKETS, bucket_mid, bucket_of};
use crate::state::QueueState;

/// Jobs per duration window.
pub(crate) const WINDOW_JOBS: u64 = 16;
/// Weight of a new window's median in the duration estimate.
pub(crate) const SMOOTHING: f64 = 0.3;

/// One queue's measurements.
#[derive(Debug, Clone)]
pub(crate) struct Estimator {
    /// Time constant of the rates, and four times the longest a duration window stays open.
    horizon: Duration,
    window: Vec<u64>,
    window_jobs: u64,
    window_opened: Option<Duration>,
    duration_s: Option<f64>,
    arrival: WindowedRate,
    ages: Ages,
    completion: Option<f64>,
    /// The previous observation: time, backlog, jobs started (finished + running).
    last: Option<(Duration, usize, u64)>,
    /// Jobs finished at the previous observation.
    last_done: u64,
}

/// What an [`Estimator`] knows now, as published to `stats()`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct View {
    pub(crate) duration: Option<Duration>,
    pub(crate) arrival_per_s: Option<f64>,
    pub(crate) completion_per_s: Option<f64>,
    pub(crate) estimated_wait: Option<Duration>,
    pub(crate) learned_jobs_per_thread: Option<f64>,
}

impl Estimator {
    /// An estimator whose rates are smoothed over `horizon` (the queue's wait target, or a
    /// minute for a queue on the divisor rule). A zero horizon is taken as 1 ms.
    pub(crate) fn new(horizon: Duration) -> Self {
        Estimator {
            horizon: horizon.max(Duration::from_millis(1)),
            window: vec![0; BUCKETS],
            window_jobs: 0,
            window_opened: None,
            duration_s: None,
            arrival: WindowedRate::new(horizon.max(Duration::from_millis(1)) / 4),
            ages: Ages::default(),
            completion: None,
            last: None,
            last_done: 0,
        }
    }

    /// Adds `count` finished jobs that lasted about `ns` nanoseconds each, at `now` (the
    /// simulator's side; the monitor adds histogram deltas).
    #[cfg_attr(not(any(test, feature = "simulate")), allow(dead_code))]
    pub(crate) fn add_duration(&mut self, now: Duration, ns: u64, count: u64) {
        if count == 0 {
            return;
        }
        self.window[bucket_of(ns)] += count;
        self.window_jobs += count;
        self.window_opened.get_or_insert(now);
        self.maybe_close(now);
    }

    /// Adds the jobs of a histogram delta (bucket index -> count), at `now`.
    pub(crate) fn add_buckets(&mut self, now: Duration, delta: impl Iterator<Item = (usize, u64)>) {
        for (i, n) in delta {
            if n > 0 && i < BUCKETS {
                self.window[i] += n;
                self.window_jobs += n;
            }
        }
        if self.window_jobs > 0 {
            self.window_opened.get_or_insert(now);
        }
        self.maybe_close(now);
    }

    fn maybe_close(&mut self, now: Duration) {
        let Some(opened) = self.window_opened else {
            return;
        };
        let old = now.saturating_sub(opened) >= self.horizon / 4;
        // The first window closes at the first job: until then the policy has no estimate
        // and falls back to the divisor.
        let first = self.duration_s.is_none();
        if self.window_jobs == 0 || !(self.window_jobs >= WINDOW_JOBS || old || first) {
            return;
        }
        let rank = self.window_jobs.div_ceil(2);
        let mut seen = 0;
        let mut median = 0.0;
        for (i, &n) in self.window.iter().enumerate() {
            seen += n;
            if seen >= rank {
                median = bucket_mid(i) as f64 / 1e9;
                break;
            }
        }
        self.duration_s = Some(match self.duration_s {
            None => median,
            Some(d) => d + SMOOTHING * (median - d),
        });
        self.window.iter_mut().for_each(|n| *n = 0);
        self.window_jobs = 0;
        self.window_opened = None;
    }

    /// One observation at `now`: the backlog, jobs finished so far, and jobs running now.
    /// Arrivals since the last observation are inferred as the backlog's change plus the jobs
    /// started meanwhile (a job leaves the backlog when a worker takes it).
    pub(crate) fn observe(&mut self, now: Duration, backlog: usize, done: u64, running: usize) {
        let started = done + running as u64;
        if let Some((t, b, s)) = self.last {
            let dt = now.saturating_sub(t).as_secs_f64();
            if dt > 0.0 {
                let took = started.saturating_sub(s) as f64;
                let arrived = (backlog as f64 - b as f64 + took).max(0.0);
                let finished = done.saturating_sub(self.last_done) as f64;
                let alpha = 1.0 - (-dt / self.horizon.as_secs_f64()).exp();
                let old = self.completion.unwrap_or(finished / dt);
                self.completion = Some(old + alpha * (finished / dt - old));
                self.arrival.add(t, now, arrived);
                self.ages.taken(took as u64);
            } else {
                return;
            }
        }
        self.ages.sync(now, backlog);
        self.last = Some((now, backlog, started));
        self.last_done = done;
    }

    /// The job-duration estimate, in seconds.
    pub(crate) fn duration_s(&self) -> Option<f64> {
        self.duration_s
    }

    /// How long the oldest job of the backlog has waited, in seconds (0 when none waits).
    pub(crate) fn oldest_age_s(&self, now: Duration) -> f64 {
        self.ages.oldest(now).as_secs_f64()
    }

    /// How long the newest job of the backlog has waited, in seconds (0 when none waits).
    pub(crate) fn newest_age_s(&self, now: Duration) -> f64 {
        self.ages.newest(now).as_secs_f64()
    }

    /// Arrivals per second: the robust mean over the last windows ([`WindowedRate::rate`];
    /// 0 before the first closes).
    pub(crate) fn arrival_per_s(&self) -> f64 {
        self.arrival.rate().unwrap_or(0.0)
    }

    /// What the estimator knows, with the wait estimated for `backlog` jobs on `threads`
    /// workers, and the divisor learned for a wait `target`.
    pub(crate) fn view(
        &self,
        now: Duration,
        backlog: usize,
        threads: usize,
        target: Option<Duration>,
    ) -> View {
        let (head, back) = (self.oldest_age_s(now), self.newest_age_s(now));
        let d = self.duration_s;
        View {
            duration: d.map(Duration::from_secs_f64),
            arrival_per_s: self.arrival.rate(),
            completion_per_s: self.completion,
            estimated_wait: d.map(|d| {
                Duration::from_secs_f64(
                    estimated_wait_s(backlog, threads.max(1), d, head, back).min(1e9),
                )
            }),
            learned_jobs_per_thread: d
                .zip(target)
                .filter(|(d, _)| *d > 0.0)
                .map(|(d, t)| t.as_secs_f64() / d),
        }
    }
}

/// Windows of the arrival rate (a quarter of the horizon each: four horizons in all) whose
/// middle half gives the rate the policy uses.
pub(crate) const RATE_WINDOWS: usize = 16;
/// The latest windows (one horizon) whose arrivals can show that the rate dropped.
const RECENT_WINDOWS: usize = 4;
/// How unlikely the latest windows' arrivals must be, at the rate of the middle windows,
/// before the rate is taken as having dropped to theirs: one chance in a thousand, so that
/// a lull of a steady load is not mistaken for the end of a burst (100 expected, 5 seen: a
/// chance of 1e-36). At 200 jobs an hour, 17 expected in 5 minutes, 6 (1 in 400) is a
/// lull, 5 (1 in 1200) a drop.
const DROP_P: f64 = 1e-3;

/// `P(X <= k)` for a Poisson count `X` of mean `mean` (1 when `k >= mean`: only drops are
/// tested).
fn poisson_at_most(k: f64, mean: f64) -> f64 {
    if k >= mean || mean <= 0.0 {
        return 1.0;
    }
    // Terms e^-mean mean^i / i!, summed from i = 0, in logs so that a mean of thousands
    // does not underflow the first term to 0 before the sum grows.
    let mut log_term = -mean;
    let mut sum = log_term.exp();
    let mut i = 1.0;
    while i <= k {
        log_term += mean.ln() - f64::ln(i);
        sum += log_term.exp();
        i += 1.0;
    }
    sum.min(1.0)
}

/// An arrival rate robust to bursts and to lulls: arrivals are counted in windows of a
/// quarter of the horizon, and the rate is the mean of the middle half of the last
/// [`RATE_WINDOWS`] windows' rates (the interquartile mean). A burst that lands in up to four
/// windows (one horizon) is left out with the highest quarter (the backlog term of the rule
/// already asks for the threads that drain a burst: counting it again as a rate would pay
/// twice); a lull of as long is left out with the lowest. A rise that lasts more than a
/// horizon moves the rate gradually, all of it after three. A drop is followed after one
/// horizon when the latest four windows' arrivals are too few to be a lull (see
/// [`DROP_P`]): the end of a burst, or the lunch break. Sixteen windows rather than eight:
/// the median of eight short windows read a steady 200 jobs an hour as 100 to 290 (windows
/// of 4 jobs), and each low reading shed a thread that the next minutes asked back (a flap).
/// Mergeable: counts per window.
#[derive(Debug, Clone)]
struct WindowedRate {
    length: Duration,
    opened: Option<Duration>,
    count: f64,
    closed: VecDeque<f64>,
}

impl WindowedRate {
    fn new(length: Duration) -> Self {
        WindowedRate {
            length,
            opened: None,
            count: 0.0,
            closed: VecDeque::with_capacity(RATE_WINDOWS + 1),
        }
    }

    /// Counts `n` arrivals that came between `from` and `now`, spread evenly over that
    /// interval (so a window holds its share whatever the tick).
    fn add(&mut self, from: Duration, now: Duration, n: f64) {
        let mut start = *self.opened.get_or_insert(from);
        let span = now.saturating_sub(from).as_secs_f64();
        let per_s = if span > 0.0 { n / span } else { 0.0 };
        let mut at = from.max(start);
        // Close every window that ended by `now`.
        while now >= start + self.length {
            let end = start + self.length;
            self.count += per_s * end.saturating_sub(at).as_secs_f64();
            self.closed
                .push_back(self.count / self.length.as_secs_f64());
            if self.closed.len() > RATE_WINDOWS {
                self.closed.pop_front();
            }
            self.count = 0.0;
            start = end;
            at = end;
            let behind = now.saturating_sub(start).as_nanos() / self.length.as_nanos();
            if behind > 2 * RATE_WINDOWS as u128 {
                // A long gap between two readings: skip the windows that would all be
                // overwritten, keeping the last ones' (even) rate.
                let skip = behind - RATE_WINDOWS as u128;
                start += self.length * u32::try_from(skip).unwrap_or(u32::MAX);
                at = start;
            }
        }
        self.count += per_s * now.saturating_sub(at).as_secs_f64();
        self.opened = Some(start);
    }

    /// The rate: the mean of the middle windows (the highest quarter, rounded up, and the
    /// lowest quarter, rounded down, left out; the lower median while fewer than two
    /// remain), unless the last [`RECENT_WINDOWS`] brought so few arrivals that a Poisson
    /// count of that mean would bring as few with a probability under [`DROP_P`]: then the
    /// rate has dropped, and it is theirs.
    fn rate(&self) -> Option<f64> {
        if self.closed.is_empty() {
            return None;
        }
        let mut v: Vec<f64> = self.closed.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let (lo, hi) = (n / 4, n - n.div_ceil(4));
        let middle = if hi <= lo {
            v[(n - 1) / 2]
        } else {
            v[lo..hi].iter().sum::<f64>() / (hi - lo) as f64
        };
        if n < 2 * RECENT_WINDOWS {
            return Some(middle);
        }
        let span = self.length.as_secs_f64() * RECENT_WINDOWS as f64;
        let seen =
            self.closed.iter().rev().take(RECENT_WINDOWS).sum::<f64>() * self.length.as_secs_f64();
        Some(if poisson_at_most(seen.floor(), middle * span) < DROP_P {
            seen / span
        } else {
            middle
        })
    }
}

/// Feeds an [`Estimator`] from a running queue's counters (the monitor's side).
#[derive(Debug)]
pub(crate) struct Meter {
    pub(crate) estimator: Estimator,
    /// The queue's duration histogram at the previous reading.
    seen: Vec<u64>,
    seen_jobs: u64,
    /// Jobs taken at the previous reading (finished and running).
    started: u64,
}

impl Meter {
    pub(crate) fn new(horizon: Duration) -> Self {
        Meter {
            estimator: Estimator::new(horizon),
            seen: vec![0; BUCKETS],
            seen_jobs: 0,
            started: 0,
        }
    }

    /// Reads the queue's finished jobs, their durations and its running jobs at `now`
    /// (one roster lock), and feeds the estimator with the jobs timed since the last reading.
    pub(crate) fn read(&mut self, q: &QueueState, now: Duration, backlog: usize) {
        let mut acc = Accumulator::default();
        let mut running = 0;
        {
            let roster = q.roster();
            roster.exited.add_to(&mut acc);
            for (_, c) in &roster.workers {
                c.add_to(&mut acc);
                running += usize::from(c.busy.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
        let done = acc.ok + acc.failed + acc.panicked;
        let buckets = acc.buckets();
        let timed: u64 = buckets.iter().sum();
        if timed != self.seen_jobs && buckets.len() == BUCKETS {
            let delta = buckets
                .iter()
                .zip(&self.seen)
                .enumerate()
                .map(|(i, (now, was))| (i, now.saturating_sub(*was)));
            self.estimator.add_buckets(now, delta);
            self.seen.copy_from_slice(buckets);
            self.seen_jobs = timed;
        }
        self.started = done + running as u64;
        self.estimator.observe(now, backlog, done, running);
    }

    /// The queue's duration histogram at the previous reading (jobs per bucket, cumulative).
    pub(crate) fn seen(&self) -> &[u64] {
        &self.seen
    }

    /// Jobs taken (finished and running) at the previous reading.
    pub(crate) fn started(&self) -> u64 {
        self.started
    }
}

/// The longest wait among `backlog` jobs on `threads` workers when jobs last `d` seconds,
/// the first in line has waited `head` seconds and the last `back`: the first starts within
/// `d / threads`, the last after the `backlog * d / threads` ahead of it, and with ages
/// between taken as linear the longest is at one end:
/// `max(head + d / threads, back + backlog * d / threads)`. Infinite when jobs wait and no
/// worker runs; 0 without a backlog.
pub(crate) fn estimated_wait_s(
    backlog: usize,
    threads: usize,
    d: f64,
    head: f64,
    back: f64,
) -> f64 {
    if backlog == 0 {
        0.0
    } else if threads == 0 {
        f64::INFINITY
    } else {
        let c = threads as f64;
        (head + d / c).max(back + backlog as f64 * d / c)
    }
}

/// Batches of waiting jobs with the time they were first seen, oldest first, kept equal to
/// the backlog: sources are FIFO, so jobs taken leave the front and new ones join the back.
/// Gives the age of the oldest waiting job, which a backlog count alone does not tell.
#[derive(Debug, Clone, Default)]
struct Ages {
    batches: VecDeque<(Duration, u64)>,
    total: u64,
}

/// More batches than this are merged (the two oldest, keeping the older time).
const MAX_BATCHES: usize = 4096;

impl Ages {
    /// `n` jobs left the front.
    fn taken(&mut self, mut n: u64) {
        while n > 0 {
            let Some(front) = self.batches.front_mut() else {
                break;
            };
            let k = front.1.min(n);
            front.1 -= k;
            self.total -= k;
            n -= k;
            if front.1 == 0 {
                self.batches.pop_front();
            }
        }
    }

    /// Makes the batches add up to `backlog`: new jobs join at `now`, or the oldest leave.
    fn sync(&mut self, now: Duration, backlog: usize) {
        let backlog = backlog as u64;
        if backlog > self.total {
            self.batches.push_back((now, backlog - self.total));
            self.total = backlog;
            if self.batches.len() > MAX_BATCHES
                && let Some((_, n)) = self.batches.remove(1)
            {
                self.batches[0].1 += n;
            }
        } else {
            self.taken(self.total - backlog);
        }
    }

    fn oldest(&self, now: Duration) -> Duration {
        self.batches
            .front()
            .map_or(Duration::ZERO, |(t, _)| now.saturating_sub(*t))
    }

    fn newest(&self, now: Duration) -> Duration {
        self.batches
            .back()
            .map_or(Duration::ZERO, |(t, _)| now.saturating_sub(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_median_ignores_an_outlier_and_follows_a_lasting_change() {
        let mut e = Estimator::new(Duration::from_secs(600));
        let mut now = Duration::ZERO;
        e.add_duration(now, 2_000_000_000, 1);
        for i in 0..WINDOW_JOBS * 4 {
            now += S;
            // one job in 16 hangs for 5 minutes
            let ns = if i % 16 == 3 {
                300_000_000_000
            } else {
                2_000_000_000
            };
            e.add_duration(now, ns, 1);
        }
        let d = e.duration_s().unwrap();
        assert!((d - 2.0).abs() < 0.15, "{d}");
        for _ in 0..WINDOW_JOBS * 12 {
            now += S;
            e.add_duration(now, 4_000_000_000, 1);
        }
        let d = e.duration_s().unwrap();
        assert!((d - 4.0).abs() < 0.3, "{d}");
    }

    #[test]
    fn rates_from_backlog_and_completions() {
        let mut e = Estimator::new(Duration::from_secs(10));
        // 2 jobs/s arrive, 1 worker finishes 1 job/s: the backlog grows by 1 a second.
        for t in 0..200u64 {
            e.observe(Duration::from_secs(t), t as usize, t, 1);
        }
        assert!(
            (e.arrival_per_s() - 2.0).abs() < 0.01,
            "{}",
            e.arrival_per_s()
        );
        // A burst of 500 in one window does not move the median rate.
        e.observe(Duration::from_secs(200), 700, 200, 1);
        for t in 201..204u64 {
            e.observe(Duration::from_secs(t), 700 + (t - 200) as usize, t, 1);
        }
        assert!(
            (e.arrival_per_s() - 2.0).abs() < 0.01,
            "{}",
            e.arrival_per_s()
        );
        let v = e.view(
            Duration::from_secs(200),
            10,
            2,
            Some(Duration::from_secs(20)),
        );
        assert!((v.completion_per_s.unwrap() - 1.0).abs() < 0.01);
        assert_eq!(v.duration, None, "no job timed yet");
        assert_eq!(v.learned_jobs_per_thread, None);
    }

    /// Feeds `e` one tick a second from `from` for `secs` seconds, with `per_s(t)` arrivals
    /// in second `t` and every job taken at once (the backlog stays 0).
    fn feed(e: &mut Estimator, from: u64, secs: u64, per_s: impl Fn(u64) -> u64, taken: &mut u64) {
        for t in from..from + secs {
            *taken += per_s(t);
            e.observe(Duration::from_secs(t + 1), 0, *taken, 0);
        }
    }

    #[test]
    fn the_rate_follows_a_drop_after_one_horizon_but_not_a_lull() {
        // Horizon 100 s: windows of 25 s.
        let mut e = Estimator::new(Duration::from_secs(100));
        let mut taken = 0;
        e.observe(Duration::ZERO, 0, 0, 0);
        // 2 jobs a second for 16 windows.
        feed(&mut e, 0, 400, |_| 2, &mut taken);
        assert!(
            (e.arrival_per_s() - 2.0).abs() < 1e-9,
            "{}",
            e.arrival_per_s()
        );
        // 180 jobs in a horizon where 200 were expected (1.8 a second; 8% likely under
        // Poisson) is a lull: the rate stays (the median of 8 windows read 1.8).
        feed(
            &mut e,
            400,
            100,
            |t| if t % 5 == 0 { 1 } else { 2 },
            &mut taken,
        );
        let lull = e.arrival_per_s();
        assert!(lull > 1.9, "a lull moved the rate to {lull}");
        // The end of a burst: 20 jobs in a horizon where 190 were expected is a drop, and
        // the rate follows it after one horizon (the middle windows alone would still say 1.9).
        feed(&mut e, 500, 100, |t| u64::from(t % 5 == 0), &mut taken);
        let after = e.arrival_per_s();
        assert!(
            (after - 0.2).abs() < 0.05,
            "the rate did not follow the drop: {after}"
        );
    }
}
