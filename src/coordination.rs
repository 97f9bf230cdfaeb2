//! How a source takes part in scaling across processes (the fleet), seen from the pool.
//!
//! Every rebalance the monitor hands each source a [`QueueView`] (what this process runs for
//! the queue and why) through [`JobSource::coordinate`](crate::JobSource::coordinate), and a
//! coordinating source answers with this process's [`FleetShare`]: the part of the fleet's
//! demand (and of the fleet's stabilised target) this process should run. The monitor then
//! plans with the share as the queue's demand, so local caps and weights apply as they do for
//! one process alone. The pure parts (the split over processes, the reason for a size) live
//! here, with their property tests; the Redis side is in `src/source/redis/fleet.rs` and
//! `docs/FLEET.md`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::event::ScaleEvent;
use crate::reason::SizeReason;
use crate::scaling::{self, Limits, QueueInput};
use crate::state::{PoolShared, QueueState};
use crate::threads::{drop_payload, panic_message};
use crate::worker::Runner;

/// What this process runs for one queue, given to
/// [`JobSource::coordinate`](crate::JobSource::coordinate) on every rebalance (the state after
/// the previous one).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueView {
    /// The queue's name as given to the builder.
    pub queue: String,
    /// Workers alive (idle or busy).
    pub alive: usize,
    /// Workers running a job.
    pub busy: usize,
    /// The target the last plan set.
    pub target: usize,
    /// The queue's `min_threads`.
    pub min_threads: usize,
    /// The queue's `weight`.
    pub weight: u32,
    /// This process's `max_threads_per_type` (per process).
    pub max_threads: usize,
    /// This process's `max_total_threads` (per process, over its queues).
    pub max_total_threads: usize,
    /// The pool's `jobs_per_thread` (the default when the fleet's settings have none).
    pub jobs_per_thread: usize,
    /// The pool's `scale_down_delay` in milliseconds (the fleet's stabilisation window).
    pub scale_down_delay_ms: u64,
    /// Jobs completed successfully by this process.
    pub jobs_ok: u64,
    /// Jobs whose executor returned an error.
    pub jobs_failed: u64,
    /// Jobs whose executor panicked.
    pub jobs_panicked: u64,
    /// Why the queue has its current size.
    pub reason: SizeReason,
    /// The scaling decision the last rebalance took for this queue, if it changed the target.
    pub scaled: Option<ScaleEvent>,
    /// The queue's [`Queue::target_wait`](crate::Queue::target_wait) (`None`: it scales by
    /// `jobs_per_thread`). A coordinating source sizes the fleet by it when set.
    pub target_wait: Option<std::time::Duration>,
    /// Jobs this process has taken from the queue so far (finished and running), at the
    /// previous rebalance: the fleet adds them up to infer its arrival rate.
    pub jobs_started: u64,
    /// Executor times of the jobs timed so far: jobs per log bucket of the stats histogram
    /// (cumulative, at the previous rebalance). Crate-private: its layout is not an API.
    pub(crate) durations: Vec<u64>,
}

/// This process's part of a queue's fleet-wide demand, returned by a coordinating source.
///
/// # Examples
///
/// ```
/// use threadtide::{FleetShare, SizeReason};
///
/// let share = FleetShare::new(3, 4).with_reason(Some(SizeReason::FleetCap));
/// assert_eq!((share.demand, share.hold), (3, 4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FleetShare {
    /// Threads this process should run for the queue's demand (its share of the fleet's
    /// `ceil(backlog / jobs_per_thread)`, after the fleet caps).
    pub demand: usize,
    /// Threads this process may keep (its share of the fleet's stabilised target; at least
    /// `demand`): kept only if it has them and local room allows, never started for.
    pub hold: usize,
    /// Set when the fleet, not this process, decided the size (`FleetCap`, `FleetTotalCap`,
    /// `Paused`).
    pub reason: Option<SizeReason>,
    /// Whether this process's own stabilisation may keep more threads than `hold` (as it
    /// would for its own demand): `false` while it holds more of the fleet's room than its
    /// share, so that the room goes where the fleet's rule puts it. Defaults to `true`.
    pub local_hold: bool,
    /// The fleet's measurements of a queue with a wait target (duration, wait, learned
    /// divisor), shown in `stats()` instead of this process's own. Set by the Redis source.
    pub(crate) figures: Option<Figures>,
}

/// The fleet's measurements of a queue, carried by a [`FleetShare`] to the monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures(pub(crate) crate::estimate::View);

// The figures are for display; shares compare equal when their numbers are bit for bit equal
// (so `FleetShare` stays `Eq`).
impl Eq for Figures {}

impl FleetShare {
    /// A share of `demand` threads, keeping up to `hold` (raised to `demand` if lower).
    pub fn new(demand: usize, hold: usize) -> FleetShare {
        FleetShare {
            demand,
            hold: hold.max(demand),
            reason: None,
            local_hold: true,
            figures: None,
        }
    }

    /// The same share, saying whether the local stabilisation may keep more than `hold`.
    pub fn with_local_hold(mut self, allowed: bool) -> FleetShare {
        self.local_hold = allowed;
        self
    }

    /// The same share, with the fleet's measurements (Redis source).
    #[cfg(feature = "redis")]
    pub(crate) fn with_figures(mut self, figures: Option<crate::estimate::View>) -> FleetShare {
        self.figures = figures.map(Figures);
        self
    }

    /// The same share, with the fleet's reason for it.
    pub fn with_reason(mut self, reason: Option<SizeReason>) -> FleetShare {
        self.reason = reason;
        self
    }
}

// Used by the Redis source's fleet (and the tests).
#[cfg(any(feature = "redis", test))]
/// One process's entry in a split: how much it may run (`room`: its local caps) and what it
/// keeps anyway (`min`: its `min_threads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) room: usize,
    pub(crate) min: usize,
}

// Used by the Redis source's fleet (and the tests).
#[cfg(any(feature = "redis", test))]
/// Splits `total` threads over processes already ordered by id: each starts at its `min`
/// (within its room), then one thread at a time goes to the process with the fewest that still
/// has room (ties: the earlier one). So while `total` is below the sum of rooms no process
/// holds two more than another with room; the sum is `min(total, sum of rooms)` (or the sum of
/// the minimums when that is more); every process that computes it from the same inputs gets
/// the same answer.
pub(crate) fn split(total: usize, members: &[Member]) -> Vec<usize> {
    let mut alloc: Vec<usize> = members.iter().map(|m| m.min.min(m.room)).collect();
    let room: usize = members.iter().map(|m| m.room).sum();
    let mut left = total.min(room).saturating_sub(alloc.iter().sum());
    while left > 0 {
        let next = (0..members.len())
            .filter(|&i| alloc[i] < members[i].room)
            .min_by_key(|&i| (alloc[i], i));
        match next {
            Some(i) => {
                alloc[i] += 1;
                left -= 1;
            }
            None => break,
        }
    }
    alloc
}

// Used by the Redis source's fleet (and the tests).
#[cfg(any(feature = "redis", test))]
/// One queue of the fleet, as the fleet total cap shares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FleetQueue {
    /// Fleet demand (after the queue's fleet cap).
    pub(crate) demand: usize,
    /// The fleet's stabilised hold (recent demand).
    pub(crate) hold: usize,
    /// Slots held now.
    pub(crate) slots: usize,
    pub(crate) weight: u32,
}

// Used by the Redis source's fleet (and the tests).
#[cfg(any(feature = "redis", test))]
/// The fleet total cap shared over the fleet's queues by the pool's own rule
/// ([`scaling::plan`]: weighted water-filling of demands first, holds with the room left).
/// Returns (demand, target) per queue.
pub(crate) fn share_total(queues: &[FleetQueue], cap: usize) -> Vec<(usize, usize)> {
    let big = queues
        .iter()
        .map(|q| q.demand.max(q.hold))
        .sum::<usize>()
        .max(1);
    let limits = Limits {
        jobs_per_thread: 1,
        max_per_queue: big,
        max_total: cap,
    };
    let input = |q: &FleetQueue, hold: usize| QueueInput {
        backlog: q.demand,
        min: 0,
        weight: q.weight.max(1),
        hold,
        current: q.slots,
        wait: None,
    };
    let demands = scaling::plan(
        &queues.iter().map(|q| input(q, 0)).collect::<Vec<_>>(),
        &limits,
    );
    let targets = scaling::plan(
        &queues.iter().map(|q| input(q, q.hold)).collect::<Vec<_>>(),
        &limits,
    );
    demands.into_iter().zip(targets).collect()
}

/// Why a queue has the size the plan gave it (see [`SizeReason`] for the precedence).
pub(crate) fn size_reason(
    input: &QueueInput,
    limits: &Limits,
    target: usize,
    share: Option<&FleetShare>,
    unreachable: bool,
) -> SizeReason {
    if share.and_then(|s| s.reason) == Some(SizeReason::Paused) {
        return SizeReason::Paused;
    }
    if unreachable {
        return SizeReason::SourceUnreachable;
    }
    let uncapped = input
        .backlog
        .div_ceil(limits.jobs_per_thread)
        .max(input.min);
    let want = scaling::demand(input.backlog, input.min, limits);
    if target < uncapped.min(want) || (target < uncapped && target < limits.max_per_queue) {
        return SizeReason::TotalCap;
    }
    if target < uncapped {
        return SizeReason::QueueCap;
    }
    if target > want {
        return SizeReason::Stabilising;
    }
    if let Some(r) = share.and_then(|s| s.reason) {
        return r;
    }
    if input.backlog == 0 {
        SizeReason::NoBacklog
    } else {
        SizeReason::AtDemand
    }
}

/// The monitor's side of coordination: asks each source for its share every rebalance and
/// remembers what to tell it next time.
pub(crate) struct Coordinator {
    scaled: Vec<Option<ScaleEvent>>,
}

impl Coordinator {
    pub(crate) fn new(queues: usize) -> Self {
        Coordinator {
            scaled: vec![None; queues],
        }
    }

    /// Notes a scaling decision, handed to the source with the next view.
    pub(crate) fn scaled(&mut self, queue: usize, event: &ScaleEvent) {
        self.scaled[queue] = Some(event.clone());
    }

    /// Each source's share (`None`: not coordinated), from a view of the pool as it is.
    pub(crate) fn shares(
        &mut self,
        pool: &PoolShared,
        runners: &[Arc<dyn Runner>],
        meters: &[crate::estimate::Meter],
    ) -> Vec<Option<FleetShare>> {
        let stats = crate::stats::collect(pool);
        let c = &pool.config;
        pool.queues
            .iter()
            .zip(runners)
            .zip(stats.queues)
            .zip(meters)
            .enumerate()
            .map(|(i, (((q, runner), st), meter))| {
                let view = QueueView {
                    queue: st.name,
                    alive: st.workers,
                    busy: st.busy,
                    target: st.target,
                    min_threads: q.config.min_threads,
                    weight: q.config.weight,
                    max_threads: c.max_threads_per_type,
                    max_total_threads: c.max_total_threads,
                    jobs_per_thread: c.jobs_per_thread,
                    scale_down_delay_ms: u64::try_from(c.scale_down_delay.as_millis())
                        .unwrap_or(u64::MAX),
                    jobs_ok: st.jobs_ok,
                    jobs_failed: st.jobs_failed,
                    jobs_panicked: st.jobs_panicked,
                    reason: st.size_reason,
                    scaled: self.scaled[i].take(),
                    target_wait: q.config.target_wait,
                    jobs_started: meter.started(),
                    durations: meter.seen().to_vec(),
                };
                match catch_unwind(AssertUnwindSafe(|| runner.coordinate(&view))) {
                    Ok(share) => share,
                    Err(p) => {
                        q.source_errors.fetch_add(1, Ordering::Relaxed);
                        log::error!(
                            "queue {}: the source's coordinate panicked: {}",
                            q.name(),
                            panic_message(&*p)
                        );
                        drop_payload(p);
                        None
                    }
                }
            })
            .collect()
    }
}

/// Stores a queue's reason where `stats()` reads it.
pub(crate) fn store_reason(q: &QueueState, reason: SizeReason) {
    let index = SizeReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0);
    q.size_reason
        .store(u8::try_from(index).unwrap_or(0), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(room: usize) -> Member {
        Member { room, min: 0 }
    }

    #[test]
    fn the_host_queue_over_three_processes() {
        assert_eq!(split(7, &[m(10), m(10), m(10)]), vec![3, 2, 2]);
        assert_eq!(split(1, &[m(10), m(10), m(10)]), vec![1, 0, 0]);
        assert_eq!(split(30, &[m(10), m(4), m(10)]), vec![10, 4, 10]);
        assert_eq!(split(5, &[Member { room: 10, min: 2 }, m(10)]), vec![3, 2]);
    }

    #[test]
    fn the_total_cap_shares_by_weight_and_holds_only_spare_room() {
        let q = |demand, hold, slots, weight| FleetQueue {
            demand,
            hold,
            slots,
            weight,
        };
        assert_eq!(
            share_total(&[q(100, 0, 0, 40), q(100, 0, 0, 60)], 10),
            vec![(4, 4), (6, 6)]
        );
        // A hold never takes room another queue's demand needs.
        assert_eq!(
            share_total(&[q(0, 6, 6, 1), q(4, 4, 4, 1)], 6),
            vec![(0, 2), (4, 4)]
        );
    }

    #[test]
    fn reasons() {
        let limits = Limits {
            jobs_per_thread: 50,
            max_per_queue: 10,
            max_total: 20,
        };
        let q = |backlog| QueueInput {
            backlog,
            min: 0,
            weight: 1,
            hold: 0,
            current: 0,
            wait: None,
        };
        assert_eq!(
            size_reason(&q(0), &limits, 0, None, false),
            SizeReason::NoBacklog
        );
        assert_eq!(
            size_reason(&q(322), &limits, 7, None, false),
            SizeReason::AtDemand
        );
        assert_eq!(
            size_reason(&q(5000), &limits, 10, None, false),
            SizeReason::QueueCap
        );
        assert_eq!(
            size_reason(&q(5000), &limits, 6, None, false),
            SizeReason::TotalCap
        );
        assert_eq!(
            size_reason(&q(0), &limits, 3, None, false),
            SizeReason::Stabilising
        );
        let fleet = FleetShare::new(2, 2).with_reason(Some(SizeReason::FleetCap));
        assert_eq!(
            size_reason(&q(100), &limits, 2, Some(&fleet), false),
            SizeReason::FleetCap
        );
        let paused = FleetShare::new(0, 0).with_reason(Some(SizeReason::Paused));
        assert_eq!(
            size_reason(&q(0), &limits, 0, Some(&paused), true),
            SizeReason::Paused
        );
        assert_eq!(
            size_reason(&q(9), &limits, 1, None, true),
            SizeReason::SourceUnreachable
        );
    }

    fn members() -> impl Strategy<Value = Vec<Member>> {
        prop::collection::vec(
            (0usize..12, 0usize..3).prop_map(|(room, min)| Member { room, min }),
            1..8,
        )
    }

    proptest! {
        /// Sum of shares = min(target, sum of room), or the minimums when they are more.
        #[test]
        fn the_shares_add_up(total in 0usize..80, ms in members()) {
            let s = split(total, &ms);
            let room: usize = ms.iter().map(|m| m.room).sum();
            let mins: usize = ms.iter().map(|m| m.min.min(m.room)).sum();
            prop_assert_eq!(s.iter().sum::<usize>(), total.min(room).max(mins));
            for (a, m) in s.iter().zip(&ms) {
                prop_assert!(*a <= m.room && *a >= m.min.min(m.room));
            }
        }

        /// Spread: no process holds two more than another that still has room (above its
        /// minimum).
        #[test]
        fn the_shares_spread_within_one(total in 0usize..80, ms in members()) {
            let s = split(total, &ms);
            for i in 0..ms.len() {
                for j in 0..ms.len() {
                    if s[j] < ms[j].room && s[i] > ms[i].min.min(ms[i].room) {
                        prop_assert!(s[i] <= s[j] + 1, "{:?} -> {:?}", ms, s);
                    }
                }
            }
        }

        /// Churn: when one process joins (at any place in the id order), the others together
        /// give up no more than the newcomer takes, plus one per process for the remainders
        /// that move; leaving is the same change backwards.
        #[test]
        fn a_join_moves_only_what_it_must(
            total in 0usize..80, ms in members(), at in 0usize..8, new_room in 0usize..12,
        ) {
            let before = split(total, &ms);
            let at = at.min(ms.len());
            let mut joined = ms.clone();
            joined.insert(at, Member { room: new_room, min: 0 });
            let mut after = split(total, &joined);
            let newcomer = after.remove(at);
            let moved: usize = before.iter().zip(&after).map(|(a, b)| a.abs_diff(*b)).sum();
            prop_assert!(moved <= newcomer + ms.len(), "{:?} {:?} -> {:?}", ms, before, after);
            // Without room limits, nobody else gains: every move is one the newcomer takes.
            if ms.iter().all(|m| m.room >= total && m.min == 0) {
                prop_assert_eq!(moved, newcomer);
            }
        }
    }
}
