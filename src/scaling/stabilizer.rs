//! The scale-down stabiliser: the holds that keep threads through a dip of demand, for a
//! window, whole or shed gradually (the wait-target rule's queues).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Remembers recent demands so that scale-down waits for a stabilisation window.
///
/// The hold for a queue is the largest [`demand`](super::demand) seen for it within the window (the rule the
/// Kubernetes horizontal autoscaler uses for scale-down). Scale-up never waits. Demands, not
/// applied plans, are recorded: a plan that includes a hold would otherwise renew it forever.
/// A queue given a half-life (the wait-target rule's, `scaling/wait.rs`) scales down
/// gradually instead: each recorded demand holds its excess over the latest demand halved
/// every half-life, and at least one thread for the whole window (see [`decayed`]).
#[derive(Debug)]
pub(crate) struct Stabilizer {
    window: Duration,
    /// Per-queue windows, each at most `window` (empty: every queue uses `window`).
    windows: Vec<Duration>,
    /// Per queue, how long the hold's excess over the latest demand takes to halve (`None`
    /// or missing: the hold is the window's largest demand until it leaves the window).
    halvings: Vec<Option<Duration>>,
    pub(super) history: VecDeque<(Instant, Vec<usize>)>,
}

impl Stabilizer {
    pub(crate) fn new(window: Duration) -> Self {
        Stabilizer {
            window,
            windows: Vec::new(),
            halvings: Vec::new(),
            history: VecDeque::new(),
        }
    }

    /// A stabiliser with a window per queue (the wait-target rule's queues hold longer), and
    /// per queue an optional half-life of the hold's excess (a gradual scale-down).
    pub(crate) fn per_queue(windows: Vec<Duration>, halvings: Vec<Option<Duration>>) -> Self {
        Stabilizer {
            window: windows.iter().copied().max().unwrap_or(Duration::ZERO),
            windows,
            halvings,
            history: VecDeque::new(),
        }
    }

    /// The largest demand of each queue among those recorded within the window before `now`.
    pub(crate) fn holds(&mut self, now: Instant, queues: usize) -> Vec<usize> {
        while let Some((at, _)) = self.history.front() {
            if now.saturating_duration_since(*at) > self.window {
                self.history.pop_front();
            } else {
                break;
            }
        }
        let latest = self.history.back().map(|(_, d)| d.clone());
        let mut holds = vec![0; queues];
        for (at, plan) in &self.history {
            let age = now.saturating_duration_since(*at);
            for (i, (h, p)) in holds.iter_mut().zip(plan).enumerate() {
                if self.windows.get(i).is_some_and(|w| age > *w) {
                    continue;
                }
                let held = match (self.halvings.get(i).copied().flatten(), &latest) {
                    (Some(half), Some(latest)) => decayed(*p, latest[i], age, half),
                    _ => *p,
                };
                *h = (*h).max(held);
            }
        }
        holds
    }

    /// Records the demands seen at `now`. Consecutive equal demands keep only the newest entry,
    /// so a steady pool's history stays one entry long however often the monitor ticks.
    pub(crate) fn record(&mut self, now: Instant, demands: Vec<usize>) {
        if self.window.is_zero() {
            return;
        }
        if let Some((at, last)) = self.history.back_mut()
            && *last == demands
        {
            *at = now;
            return;
        }
        self.history.push_back((now, demands));
    }
}

/// A demand `d` recorded `age` ago, held over the `latest` demand with its excess halving
/// every `half`, rounded down: an excess of 10 holds 5 after one half-life, 2 after two, 1
/// after three, none after four; but a demand of at least one thread holds one for the
/// whole window.
fn decayed(d: usize, latest: usize, age: Duration, half: Duration) -> usize {
    let excess = d.saturating_sub(latest);
    if excess == 0 || half.is_zero() {
        return d.min(latest);
    }
    let halvings = age.as_secs_f64() / half.as_secs_f64();
    let held = latest + (excess as f64 * 0.5f64.powf(halvings)).floor() as usize;
    // The last thread is held for the whole window: a queue at 0 threads pays a login for its
    // next job, and a job within the window would make it a down-then-up.
    held.max(d.min(1))
}
