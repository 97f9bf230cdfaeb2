//! The scaling policy, as pure functions: no threads, no clock, no I/O.
//!
//! The monitor feeds [`plan`] a snapshot of every queue and gets back the number of worker
//! threads each queue should have. The rule and the reasoning behind every default are written
//! up in `scaling.md` beside this file.

use crate::event::ScaleReason;

mod stabilizer;
mod wait;

pub(crate) use stabilizer::Stabilizer;
#[cfg(feature = "redis")]
pub(crate) use wait::{HALVINGS, window};
pub(crate) use wait::{WaitInput, decide, queue_demand, stabilizer};

/// The pool-wide limits the plan must respect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Target threads per queue = `ceil(backlog / jobs_per_thread)`. Never 0 (validated).
    pub(crate) jobs_per_thread: usize,
    /// No queue gets more threads than this.
    pub(crate) max_per_queue: usize,
    /// The sum over all queues never passes this.
    pub(crate) max_total: usize,
}

/// One queue's input to the plan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct QueueInput {
    /// Jobs waiting in the queue.
    pub(crate) backlog: usize,
    /// Threads the queue keeps even when idle (`min <= max_per_queue`, validated).
    pub(crate) min: usize,
    /// Relative share when the total cap binds (>= 1, validated).
    pub(crate) weight: u32,
    /// Threads recently planned for this queue that should be kept while room allows
    /// (the scale-down stabilisation; 0 when there is nothing to hold).
    pub(crate) hold: usize,
    /// Threads the queue has now (`alive`): a hold keeps threads, it never starts one.
    pub(crate) current: usize,
    /// The wait-target rule's inputs (`None`: the divisor rule, `jobs_per_thread`).
    pub(crate) wait: Option<WaitInput>,
}

/// Threads a queue would keep if the total cap did not bind: its demand, or its hold on the
/// threads it has, whichever is more.
pub(crate) fn uncapped(q: &QueueInput, limits: &Limits) -> usize {
    queue_demand(q, limits).max(keep(q, limits))
}

/// The threads a hold keeps: recent demand, but only threads the queue has now.
fn keep(q: &QueueInput, limits: &Limits) -> usize {
    q.hold.min(q.current).min(limits.max_per_queue)
}

/// Why a queue's target went from `from` to `to` (`from != to`).
pub(crate) fn reason(q: &QueueInput, limits: &Limits, from: usize, to: usize) -> ScaleReason {
    if to > from {
        ScaleReason::Up
    } else if to < uncapped(q, limits) {
        ScaleReason::Shared
    } else {
        ScaleReason::Down
    }
}

/// Threads a queue asks for on its own: `ceil(backlog / jobs_per_thread)` clamped to
/// `[min, max_per_queue]`.
pub(crate) fn demand(backlog: usize, min: usize, limits: &Limits) -> usize {
    backlog
        .div_ceil(limits.jobs_per_thread)
        .clamp(min, limits.max_per_queue.max(min))
}

/// Threads each queue should run, in input order.
///
/// 1. Each queue's demand is [`queue_demand`]: [`demand`] (the divisor) or the wait-target
///    rule (`scaling/wait.rs`).
/// 2. If the demands fit under `max_total`, every queue gets its demand.
/// 3. Otherwise the cap is shared by weighted water-filling: every queue starts at its `min`,
///    then threads are handed out one at a time to the queue with the lowest `threads / weight`
///    that still wants more (ties: heavier weight, then larger backlog, then input order). A
///    queue with work and no thread has ratio 0, so it is served before any queue gets a second
///    thread: no queue with work starves while the cap allows one thread per such queue.
/// 4. Capacity left over is used to keep `hold` threads (recent demands) so that a falling
///    backlog does not tear threads down at once. Holding never takes threads from a queue's
///    demand, and it only keeps threads a queue has (`current`): it never starts one. When the
///    room left does not cover every hold it is shared by the same weighted water-filling, so
///    no queue's hold is cut to let another queue keep more than its share.
///
/// Requires `sum(min) <= max_total`, which `Builder::build` validates.
pub(crate) fn plan(queues: &[QueueInput], limits: &Limits) -> Vec<usize> {
    let want: Vec<usize> = queues.iter().map(|q| queue_demand(q, limits)).collect();
    let mut alloc = if want.iter().sum::<usize>() <= limits.max_total {
        want
    } else {
        water_fill(queues, &want, limits.max_total)
    };
    let spare = limits.max_total.saturating_sub(alloc.iter().sum());
    if spare > 0 {
        let keep: Vec<usize> = queues
            .iter()
            .zip(&alloc)
            .map(|(q, &a)| keep(q, limits).max(a))
            .collect();
        let cap = alloc.iter().sum::<usize>() + spare;
        alloc = fill(queues, alloc, &keep, cap);
    }
    alloc
}

/// Weighted max-min fair split of `cap` threads, each queue between its `min` and its `want`.
fn water_fill(queues: &[QueueInput], want: &[usize], cap: usize) -> Vec<usize> {
    fill(queues, queues.iter().map(|q| q.min).collect(), want, cap)
}

/// Raises `alloc` towards `want`, one thread at a time to the queue with the lowest
/// `alloc / weight`, until the sum reaches `cap` or every want is met.
fn fill(queues: &[QueueInput], mut alloc: Vec<usize>, want: &[usize], cap: usize) -> Vec<usize> {
    let mut left = cap.saturating_sub(alloc.iter().sum());
    while left > 0 {
        let next = (0..queues.len())
            .filter(|&i| alloc[i] < want[i])
            .min_by(|&i, &j| {
                // alloc[i] / w[i] < alloc[j] / w[j], compared without division.
                let lhs = alloc[i] as u128 * u128::from(queues[j].weight);
                let rhs = alloc[j] as u128 * u128::from(queues[i].weight);
                lhs.cmp(&rhs)
                    .then(queues[j].weight.cmp(&queues[i].weight))
                    .then(queues[j].backlog.cmp(&queues[i].backlog))
                    .then(i.cmp(&j))
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    const HOST: Limits = Limits {
        jobs_per_thread: 50,
        max_per_queue: 10,
        max_total: 20,
    };

    fn q(backlog: usize) -> QueueInput {
        QueueInput {
            backlog,
            min: 0,
            weight: 1,
            hold: 0,
            current: 0,
            wait: None,
        }
    }

    #[test]
    fn host_examples() {
        for (backlog, threads) in [
            (0, 0),
            (1, 1),
            (50, 1),
            (51, 2),
            (100, 2),
            (101, 3),
            (150, 3),
            (322, 7),
            (5000, 10),
        ] {
            assert_eq!(
                plan(&[q(backlog)], &HOST),
                vec![threads],
                "backlog {backlog}"
            );
        }
    }

    #[test]
    fn forty_sixty_split() {
        let limits = Limits {
            jobs_per_thread: 1,
            max_per_queue: 100,
            max_total: 10,
        };
        let a = QueueInput {
            weight: 40,
            ..q(1000)
        };
        let b = QueueInput {
            weight: 60,
            ..q(1000)
        };
        assert_eq!(plan(&[a, b], &limits), vec![4, 6]);
    }

    #[test]
    fn hold_uses_spare_room_only() {
        let held = QueueInput {
            hold: 10,
            current: 10,
            ..q(0)
        };
        assert_eq!(plan(&[held, q(1000)], &HOST), vec![10, 10]);
        let limits = Limits {
            max_total: 12,
            ..HOST
        };
        assert_eq!(plan(&[held, q(1000)], &limits), vec![2, 10]);
    }

    #[test]
    fn a_hold_never_starts_a_thread() {
        // Issue 14's case: cap 12, "pdf" holds 10 browsers with 172 jobs waiting (demand 9 at
        // 20 jobs a thread), "conf" needs 2, held 3 but has 2 threads: conf must not start a
        // third browser by taking one of pdf's.
        let limits = Limits {
            jobs_per_thread: 20,
            max_per_queue: 10,
            max_total: 12,
        };
        let conf = QueueInput {
            hold: 3,
            current: 2,
            ..q(40)
        };
        let pdf = QueueInput {
            hold: 10,
            current: 10,
            ..q(172)
        };
        assert_eq!(plan(&[conf, pdf], &limits), vec![2, 10]);
    }

    #[test]
    fn scale_reasons() {
        let held = QueueInput {
            hold: 10,
            current: 10,
            ..q(0)
        };
        assert_eq!(reason(&held, &HOST, 10, 2), ScaleReason::Shared);
        assert_eq!(reason(&q(0), &HOST, 10, 0), ScaleReason::Down);
        assert_eq!(reason(&q(1000), &HOST, 10, 6), ScaleReason::Shared);
        assert_eq!(reason(&q(1000), &HOST, 0, 10), ScaleReason::Up);
    }

    #[test]
    fn stabilizer_holds_for_the_window() {
        let t0 = Instant::now();
        let mut s = Stabilizer::new(Duration::from_secs(30));
        s.record(t0, vec![7]);
        assert_eq!(s.holds(t0 + Duration::from_secs(29), 1), vec![7]);
        s.record(t0 + Duration::from_secs(29), vec![1]);
        assert_eq!(s.holds(t0 + Duration::from_secs(31), 1), vec![1]);
        let mut none = Stabilizer::new(Duration::ZERO);
        none.record(t0, vec![7]);
        assert_eq!(none.holds(t0, 1), vec![0]);
    }

    #[test]
    fn a_gradual_scale_down_halves_the_excess_and_holds_the_last_thread() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let window = Duration::from_secs(120);
        let mut st = Stabilizer::per_queue(
            vec![window, window],
            vec![Some(window / 4), Some(window / 4)],
        );
        // Queue 0 wanted 10 and now 0; queue 1 wanted 1 and now 0.
        st.record(t0, vec![10, 1]);
        st.record(s(1), vec![0, 0]);
        let holds: Vec<Vec<usize>> = [0, 31, 61, 91, 119, 121]
            .iter()
            .map(|&t| st.holds(s(t), 2))
            .collect();
        assert_eq!(
            holds,
            vec![
                vec![10, 1],
                vec![4, 1],
                vec![2, 1],
                vec![1, 1],
                vec![1, 1],
                vec![0, 0]
            ]
        );
        // Without a half-life the hold is the window's largest demand, as for the divisor.
        let mut whole = Stabilizer::per_queue(vec![window], vec![None]);
        whole.record(t0, vec![10]);
        whole.record(s(1), vec![0]);
        assert_eq!(whole.holds(s(119), 1), vec![10]);
    }

    mod invariants {
        use super::super::*;
        use proptest::prelude::*;
        use std::time::{Duration, Instant};

        fn limits() -> impl Strategy<Value = Limits> {
            (1usize..100, 1usize..16, 1usize..40).prop_map(|(j, per, total)| Limits {
                jobs_per_thread: j,
                max_per_queue: per,
                max_total: total,
            })
        }

        /// Queues whose minimums fit under the limits, as `build()` guarantees.
        fn case() -> impl Strategy<Value = (Limits, Vec<QueueInput>)> {
            limits().prop_flat_map(|l| {
                let queue = (0usize..2000, 0usize..3, 1u32..100, 0usize..20, 0usize..20).prop_map(
                    move |(backlog, min, weight, hold, current)| QueueInput {
                        backlog,
                        min: min.min(l.max_per_queue),
                        weight,
                        hold,
                        current,
                        wait: None,
                    },
                );
                (Just(l), prop::collection::vec(queue, 1..6))
                    .prop_filter("minimums fit under the cap", |(l, qs)| {
                        qs.iter().map(|q| q.min).sum::<usize>() <= l.max_total
                    })
            })
        }

        proptest! {
            #[test]
            fn total_never_passes_the_cap((l, qs) in case()) {
                prop_assert!(plan(&qs, &l).iter().sum::<usize>() <= l.max_total);
            }

            #[test]
            fn each_queue_within_its_bounds((l, qs) in case()) {
                for (q, t) in qs.iter().zip(plan(&qs, &l)) {
                    prop_assert!(t >= q.min && t <= l.max_per_queue, "{q:?} -> {t}");
                }
            }

            /// Work-conserving: when the queues want more than the cap, the cap is used.
            #[test]
            fn the_cap_is_used_when_demand_passes_it((l, qs) in case()) {
                let demands: usize = qs.iter().map(|q| demand(q.backlog, q.min, &l)).sum();
                let planned: usize = plan(&qs, &l).iter().sum();
                if demands >= l.max_total {
                    prop_assert_eq!(planned, l.max_total);
                }
            }

            /// No queue gets more than its demand by a thread it does not have yet.
            #[test]
            fn a_hold_only_keeps_threads_that_exist((l, qs) in case()) {
                for (q, t) in qs.iter().zip(plan(&qs, &l)) {
                    let d = demand(q.backlog, q.min, &l);
                    prop_assert!(t <= d.max(q.current.min(q.hold)), "{q:?} -> {t} (demand {d})");
                }
            }

            /// Issue 14 #6: a thread whose queue still demands it is never torn down to give
            /// another queue more than its demand. If a queue is planned fewer threads than it
            /// both has and demands, every other queue is planned at most its demand.
            #[test]
            fn a_demanded_thread_is_never_torn_down_for_another_queues_surplus((l, qs) in case()) {
                let planned = plan(&qs, &l);
                for (i, q) in qs.iter().enumerate() {
                    let di = demand(q.backlog, q.min, &l);
                    if planned[i] >= q.current.min(di) {
                        continue;
                    }
                    for (j, r) in qs.iter().enumerate() {
                        let dj = demand(r.backlog, r.min, &l);
                        prop_assert!(
                            j == i || planned[j] <= dj,
                            "{qs:?} -> {planned:?}: queue {i} loses a demanded thread while \
                             queue {j} gets {} over its demand {dj}",
                            planned[j]
                        );
                    }
                }
            }

            /// Weighted fairness of holds: if a queue keeps fewer held threads than it has and
            /// wants, no other queue keeps held threads past an equal weighted share.
            #[test]
            fn held_threads_are_shared_fairly((l, qs) in case()) {
                let planned = plan(&qs, &l);
                for (i, q) in qs.iter().enumerate() {
                    if planned[i] >= uncapped(q, &l) {
                        continue;
                    }
                    for (j, r) in qs.iter().enumerate() {
                        let dj = demand(r.backlog, r.min, &l);
                        if planned[j] > dj.max(r.min) {
                            // j keeps a held thread while i is cut: j's share, one thread
                            // less, must not pass i's.
                            let lhs = (planned[j] - 1) as u128 * u128::from(q.weight);
                            let rhs = planned[i] as u128 * u128::from(r.weight);
                            prop_assert!(lhs <= rhs, "{qs:?} -> {planned:?}: {j} over {i}");
                        }
                    }
                }
            }

            /// The reason given for a scale-down is `Shared` exactly when the queue gets
            /// fewer threads than it would keep on its own.
            #[test]
            fn reasons_match_the_plan((l, qs) in case(), from in 0usize..40) {
                for (q, to) in qs.iter().zip(plan(&qs, &l)) {
                    if to < from {
                        let r = reason(q, &l, from, to);
                        prop_assert_eq!(r == ScaleReason::Shared, to < uncapped(q, &l));
                    }
                }
            }

            /// The stabilizer against a brute-force model: the hold is the largest demand
            /// recorded within the window, whatever the sequence of records.
            #[test]
            fn stabilizer_matches_its_model(
                window_ms in 0u64..2000,
                steps in prop::collection::vec((0u64..700, 0usize..12, 0usize..12), 1..60),
            ) {
                let window = Duration::from_millis(window_ms);
                let t0 = Instant::now();
                let mut s = Stabilizer::new(window);
                let mut log: Vec<(Instant, Vec<usize>)> = Vec::new();
                let mut now = t0;
                for (dt, a, b) in steps {
                    now += Duration::from_millis(dt);
                    let want: Vec<usize> = (0..2)
                        .map(|k| {
                            log.iter()
                                .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
                                .map(|(_, d)| d[k])
                                .max()
                                .unwrap_or(0)
                        })
                        .collect();
                    let want = if window.is_zero() { vec![0, 0] } else { want };
                    prop_assert_eq!(s.holds(now, 2), want);
                    s.record(now, vec![a, b]);
                    log.push((now, vec![a, b]));
                }
                prop_assert!(s.history.len() <= log.len());
            }

            #[test]
            fn more_backlog_never_fewer_threads(
                (l, mut qs) in case(), pick in any::<prop::sample::Index>(), more in 1usize..500,
            ) {
                for q in &mut qs { q.hold = 0; }
                let i = pick.index(qs.len());
                let before = plan(&qs, &l)[i];
                qs[i].backlog += more;
                prop_assert!(plan(&qs, &l)[i] >= before);
            }

            #[test]
            fn no_queue_with_work_starves((l, qs) in case()) {
                let with_work = qs.iter().filter(|q| q.backlog > 0).count();
                let mins: usize = qs.iter().map(|q| q.min).sum();
                if with_work + mins <= l.max_total {
                    for (q, t) in qs.iter().zip(plan(&qs, &l)) {
                        prop_assert!(q.backlog == 0 || t >= 1, "{q:?} starved");
                    }
                }
            }

            #[test]
            fn demand_is_served_when_it_fits((l, qs) in case()) {
                let demands: Vec<usize> =
                    qs.iter().map(|q| demand(q.backlog, q.min, &l)).collect();
                let planned = plan(&qs, &l);
                if demands.iter().sum::<usize>() <= l.max_total {
                    for (d, t) in demands.iter().zip(&planned) {
                        prop_assert!(t >= d);
                    }
                }
            }

            #[test]
            fn holding_never_takes_from_demand((l, qs) in case()) {
                // With holds, every queue still gets at least what its demand alone gets.
                let bare: Vec<QueueInput> =
                    qs.iter().map(|q| QueueInput { hold: 0, ..*q }).collect();
                for (with, without) in plan(&qs, &l).iter().zip(plan(&bare, &l)) {
                    prop_assert!(*with >= without);
                }
            }
        }
    }
}
