//! The wait-target rule (a queue built with `Queue::target_wait`), and the decision step the
//! monitor and the simulator share: holds from the stabiliser, the plan, the demands recorded.
//!
//! Little's law: a queue whose jobs arrive at `λ` a second and last `D` seconds keeps `λ D`
//! workers busy on average: `ceil(λ D)` whole threads. A backlog of `B` jobs drains within
//! the target `T` with `B D / T` more, on top. So the demand is `ceil(ceil(λ D) + B D / T)`,
//! clamped to `[min, max_per_queue]`. `T / D` is the divisor the rule learns: the jobs one
//! thread clears within the target.
//!
//! It scales up at once only when the estimated wait `B D / threads` passes `T / 2`: below
//! that the queue keeps what it has (a browser started for a wait nobody feels is cost and a
//! login for nothing). Scale-down is the stabiliser's, gradual for these queues: the threads
//! no longer demanded are shed by halves over the window, the last one held for all of it.
//! Until the first job has been timed there is no `D`, and the divisor rule decides.

use std::time::{Duration, Instant};

use super::{Limits, QueueInput, Stabilizer, demand, plan};
use crate::estimate::estimated_wait_s;

/// The wait-target rule's inputs for one queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WaitInput {
    /// The wait target `T`, in seconds (> 0, validated).
    pub(crate) target_s: f64,
    /// The job-duration estimate `D`, in seconds (`None` before the first timed job).
    pub(crate) duration_s: Option<f64>,
    /// The arrival rate `λ`, jobs per second.
    pub(crate) arrival_per_s: f64,
    /// How long the oldest waiting job (first in line) has waited, in seconds.
    pub(crate) oldest_age_s: f64,
    /// How long the newest waiting job (last in line) has waited, in seconds (at most
    /// `oldest_age_s`; a larger value is taken as `oldest_age_s`).
    pub(crate) newest_age_s: f64,
}

/// Threads a queue asks for on its own, by its rule.
pub(crate) fn queue_demand(q: &QueueInput, limits: &Limits) -> usize {
    let Some(w) = q.wait else {
        return demand(q.backlog, q.min, limits);
    };
    let Some(d) = w.duration_s.filter(|d| *d > 0.0 && d.is_finite()) else {
        return demand(q.backlog, q.min, limits);
    };
    let hi = limits.max_per_queue.max(q.min);
    let finite = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
    let (lambda, t) = (finite(w.arrival_per_s), w.target_s);
    let head = finite(w.oldest_age_s);
    let back = finite(w.newest_age_s).min(head);
    let backlog = q.backlog as f64;
    // Every waiting job must start within what is left of the target for it: the oldest
    // (first in line) and the newest (last in line, behind `backlog` jobs), the ages between
    // taken as linear, so these two ends bound the rest. At least an eighth of the target is
    // left to each: a job already late asks for threads, not for the cap.
    let left = |age: f64| (t - age).max(t / 8.0);
    let drain = if q.backlog == 0 {
        0.0
    } else {
        (d / left(head)).max(backlog * d / left(back))
    };
    // Whole threads for the arrivals (`λ D` busy on average), and the drain on top: the
    // slack of the rounding is not capacity a backlog can count on.
    let steady = (lambda * d).ceil();
    // `as` saturates: an absurd estimate becomes the cap, never a wrap.
    let raw = ((steady + drain).ceil() as usize).clamp(q.min, hi);
    // Threads that keep the estimated wait under a quarter of the target: a scale-down never
    // goes below them, so shrinking cannot push the wait back past the half that scales up.
    let quarter = |age: f64| t / 4.0 - age;
    let keep = if q.backlog == 0 {
        0
    } else if quarter(head) > 0.0 && quarter(back) > 0.0 {
        let c = (d / quarter(head)).max(backlog * d / quarter(back));
        (c.ceil() as usize).min(hi)
    } else {
        q.current
    };
    let base = raw.max(keep.min(q.current)).clamp(q.min, hi);
    if estimated_wait_s(q.backlog, q.current, d, head, back) > t / 2.0 {
        base
    } else {
        base.min(q.current.max(q.min))
    }
}

/// A wait-target queue's hold on threads it no longer demands halves its excess this many
/// times over its scale-down window (a gradual scale-down).
pub(crate) const HALVINGS: u32 = 4;

/// A worker count that rises within this long after it fell is a flap (the goal: at
/// most one an hour per queue).
pub(crate) const FLAP_WINDOW: Duration = Duration::from_secs(120);

/// The scale-down window of each queue: `scale_down_delay`, and for a queue on the wait rule
/// at least half its target, so that a scale-down follows a lower demand that lasted longer
/// than the wait it could cause (fewer down-then-up flaps; see `docs/SCALING.md`).
pub(crate) fn stabilizer(scale_down_delay: Duration, targets: &[Option<Duration>]) -> Stabilizer {
    if scale_down_delay.is_zero() {
        return Stabilizer::new(Duration::ZERO);
    }
    Stabilizer::per_queue(
        targets
            .iter()
            .map(|t| window(scale_down_delay, *t))
            .collect(),
        targets
            .iter()
            .map(|t| t.map(|t| window(scale_down_delay, Some(t)) / HALVINGS))
            .collect(),
    )
}

/// One queue's scale-down window: `scale_down_delay`, or for a queue with a wait target at
/// least half the target (at most [`FLAP_WINDOW`]). The fleet applies the same window to its
/// history in Redis.
pub(crate) fn window(scale_down_delay: Duration, target: Option<Duration>) -> Duration {
    if scale_down_delay.is_zero() {
        return Duration::ZERO;
    }
    target.map_or(scale_down_delay, |t| {
        scale_down_delay.max((t / 2).min(FLAP_WINDOW))
    })
}

/// One decision: the plan, and each queue's own demand (for the log and the stabiliser).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decision {
    pub(crate) plan: Vec<usize>,
    pub(crate) demands: Vec<usize>,
}

/// The monitor's decision step at `now`, after the caller has set each input's `hold` (from
/// [`Stabilizer::holds`], or from elsewhere, such as a fleet's window): plans, and records
/// each queue's own demand in the stabiliser.
pub(crate) fn decide(
    stabilizer: &mut Stabilizer,
    now: Instant,
    inputs: &[QueueInput],
    limits: &Limits,
) -> Decision {
    let plan = plan(inputs, limits);
    let demands: Vec<usize> = inputs.iter().map(|q| queue_demand(q, limits)).collect();
    stabilizer.record(now, demands.clone());
    Decision { plan, demands }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOST: Limits = Limits {
        jobs_per_thread: 50,
        max_per_queue: 10,
        max_total: 20,
    };

    fn wq(backlog: usize, current: usize, d: f64, lambda: f64, t: f64) -> QueueInput {
        QueueInput {
            backlog,
            min: 0,
            weight: 1,
            hold: 0,
            current,
            wait: Some(WaitInput {
                target_s: t,
                duration_s: Some(d),
                arrival_per_s: lambda,
                oldest_age_s: 0.0,
                newest_age_s: 0.0,
            }),
        }
    }

    #[test]
    fn littles_law() {
        // 322 jobs of 30 s, 10-minute target, nothing arriving: 322 * 30 / 600 = 16.1 -> cap 10.
        assert_eq!(queue_demand(&wq(322, 0, 30.0, 0.0, 600.0), &HOST), 10);
        // 100 jobs of 30 s, 10-minute target: 5 threads.
        assert_eq!(queue_demand(&wq(100, 0, 30.0, 0.0, 600.0), &HOST), 5);
        // Steady 0.1 jobs/s of 30 s: 3 busy on average, so 3 threads, and one more for the
        // job waiting (1 * 30 / 600 = 0.05 on top of 3 whole threads).
        assert_eq!(queue_demand(&wq(1, 4, 30.0, 0.1, 600.0), &HOST), 4);
    }

    #[test]
    fn scales_up_only_past_half_the_target() {
        // 40 jobs of 30 s on 1 thread: wait 1200 s > 300 s -> up to ceil(40 * 30 / 600) = 2.
        assert_eq!(queue_demand(&wq(40, 1, 30.0, 0.0, 600.0), &HOST), 2);
        // 9 jobs on 1 thread: wait 270 s < 300 s, so it stays at 1 although the arrival rate
        // asks for 3 (2.4 busy) + 1 (the drain); at 11 jobs (330 s) it goes to the 4 the rule
        // asks.
        assert_eq!(queue_demand(&wq(9, 1, 30.0, 0.08, 600.0), &HOST), 1);
        assert_eq!(queue_demand(&wq(11, 1, 30.0, 0.08, 600.0), &HOST), 4);
    }

    #[test]
    fn without_a_duration_the_divisor_decides() {
        let mut q = wq(322, 0, 1.0, 0.0, 60.0);
        q.wait = Some(WaitInput {
            duration_s: None,
            ..q.wait.unwrap()
        });
        assert_eq!(queue_demand(&q, &HOST), 7);
    }

    fn limits() -> impl Strategy<Value = Limits> {
        (1usize..100, 1usize..16, 1usize..40).prop_map(|(j, per, total)| Limits {
            jobs_per_thread: j,
            max_per_queue: per,
            max_total: total,
        })
    }

    fn wait_input() -> impl Strategy<Value = Option<WaitInput>> {
        prop::option::weighted(
            0.8,
            // Durations from a thousandth of the target to the target itself, so that the
            // estimated wait falls on both sides of `target / 2` for the backlogs drawn.
            (
                0.01f64..600.0,
                prop::option::weighted(0.9, 0.0f64..3.0),
                0.0f64..5.0,
                0.0f64..1.5,
                0.0f64..=1.0,
            )
                .prop_map(|(t, d, l, a, b)| WaitInput {
                    target_s: t,
                    duration_s: d.map(|x| t * 10f64.powf(-x)),
                    arrival_per_s: l,
                    oldest_age_s: a * t,
                    newest_age_s: a * t * b,
                }),
        )
    }

    fn case() -> impl Strategy<Value = (Limits, Vec<QueueInput>)> {
        limits().prop_flat_map(|l| {
            let queue = (0usize..300, 0usize..3, 1u32..100, 0usize..20, wait_input()).prop_map(
                move |(backlog, min, weight, current, wait)| QueueInput {
                    backlog,
                    min: min.min(l.max_per_queue),
                    weight,
                    hold: 0,
                    current,
                    wait,
                },
            );
            (Just(l), prop::collection::vec(queue, 1..5)).prop_filter("minimums fit", |(l, qs)| {
                qs.iter().map(|q| q.min).sum::<usize>() <= l.max_total
            })
        })
    }

    /// Changes queue `i` by `f` and checks that neither its demand nor its planned threads fall.
    fn never_fewer(
        l: &Limits,
        mut qs: Vec<QueueInput>,
        i: usize,
        f: impl Fn(&mut QueueInput),
    ) -> Result<(), TestCaseError> {
        let before = (queue_demand(&qs[i], l), plan(&qs, l)[i]);
        f(&mut qs[i]);
        let after = (queue_demand(&qs[i], l), plan(&qs, l)[i]);
        prop_assert!(
            after.0 >= before.0,
            "{:?}: demand {before:?} -> {after:?}",
            qs[i]
        );
        prop_assert!(
            after.1 >= before.1,
            "{:?}: plan {before:?} -> {after:?}",
            qs[i]
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn more_backlog_never_fewer((l, qs) in case(), pick: prop::sample::Index, more in 1usize..500) {
            let i = pick.index(qs.len());
            never_fewer(&l, qs, i, |q| q.backlog += more)?;
        }

        #[test]
        fn longer_jobs_never_fewer((l, qs) in case(), pick: prop::sample::Index, k in 1.0f64..10.0) {
            let i = pick.index(qs.len());
            never_fewer(&l, qs, i, |q| {
                if let Some(w) = &mut q.wait {
                    w.duration_s = w.duration_s.map(|d| d * k);
                }
            })?;
        }

        #[test]
        fn older_jobs_never_fewer((l, qs) in case(), pick: prop::sample::Index, more in 0.0f64..1000.0) {
            let i = pick.index(qs.len());
            never_fewer(&l, qs, i, |q| {
                if let Some(w) = &mut q.wait {
                    w.oldest_age_s += more;
                }
            })?;
        }

        #[test]
        fn a_newer_last_job_never_fewer((l, qs) in case(), pick: prop::sample::Index, k in 0.0f64..=1.0) {
            // The same oldest job, the newest one older (up to as old as the oldest).
            let i = pick.index(qs.len());
            let mut younger = qs.clone();
            if let Some(w) = &mut younger[i].wait {
                w.newest_age_s *= k;
            }
            never_fewer(&l, younger, i, |q| {
                if let Some(w) = &mut q.wait {
                    w.newest_age_s /= k.max(1e-9);
                    w.newest_age_s = w.newest_age_s.min(w.oldest_age_s);
                }
            })?;
        }

        #[test]
        fn more_arrivals_never_fewer((l, qs) in case(), pick: prop::sample::Index, more in 0.0f64..10.0) {
            let i = pick.index(qs.len());
            never_fewer(&l, qs, i, |q| {
                if let Some(w) = &mut q.wait {
                    w.arrival_per_s += more;
                }
            })?;
        }

        /// Caps and weights hold with wait-target queues as with divisor ones: the total, the
        /// per-queue bounds, the cap used when demand passes it, demand served when it fits.
        #[test]
        fn caps_hold((l, qs) in case()) {
            let planned = plan(&qs, &l);
            let demands: Vec<usize> = qs.iter().map(|q| queue_demand(q, &l)).collect();
            prop_assert!(planned.iter().sum::<usize>() <= l.max_total);
            for (q, t) in qs.iter().zip(&planned) {
                prop_assert!(*t >= q.min && *t <= l.max_per_queue);
            }
            if demands.iter().sum::<usize>() >= l.max_total {
                prop_assert_eq!(planned.iter().sum::<usize>(), l.max_total);
            } else {
                for (d, t) in demands.iter().zip(&planned) {
                    prop_assert!(t >= d);
                }
            }
        }

        /// Weights: two saturated wait-target queues split the cap in proportion, within one
        /// thread.
        #[test]
        fn weights_hold(wa in 1u32..100, wb in 1u32..100, total in 2usize..40) {
            let l = Limits { jobs_per_thread: 50, max_per_queue: 1000, max_total: total };
            let mut a = wq(100_000, 0, 10.0, 1.0, 1.0);
            let mut b = a;
            a.weight = wa;
            b.weight = wb;
            let p = plan(&[a, b], &l);
            let share = total as f64 * f64::from(wa) / f64::from(wa + wb);
            prop_assert!((p[0] as f64 - share).abs() <= 1.0, "{p:?} for {wa}/{wb}");
        }

        /// No flapping on a steady load: with constant backlog, duration and arrival rate, the
        /// threads (fed back as `current`) never go down and then up again.
        #[test]
        fn no_flapping_on_a_steady_load((l, qs) in case(), window_ms in 0u64..500) {
            steady(Stabilizer::new(Duration::from_millis(window_ms)), &l, &qs)?;
        }

        /// The same with the wait rule's gradual scale-down: the excess halving every quarter
        /// of the window, the last thread held for all of it.
        #[test]
        fn no_flapping_on_a_steady_load_when_scaling_down_gradually(
            (l, qs) in case(), window_ms in 1u64..2000,
        ) {
            let w = Duration::from_millis(window_ms);
            let s = Stabilizer::per_queue(vec![w; qs.len()], vec![Some(w / HALVINGS); qs.len()]);
            steady(s, &l, &qs)?;
        }
    }

    /// Runs 120 decisions (50 ms apart) of the constant load `qs` through `s`, the plan fed
    /// back as `current`, and checks that no queue goes down and then up again.
    fn steady(mut s: Stabilizer, l: &Limits, qs: &[QueueInput]) -> Result<(), TestCaseError> {
        let t0 = Instant::now();
        let mut inputs = qs.to_vec();
        let mut history: Vec<Vec<usize>> = Vec::new();
        for step in 0..120u64 {
            let now = t0 + Duration::from_millis(step * 50);
            for (q, h) in inputs.iter_mut().zip(s.holds(now, qs.len())) {
                q.hold = h;
            }
            let d = decide(&mut s, now, &inputs, l);
            for (q, &p) in inputs.iter_mut().zip(&d.plan) {
                q.current = p;
            }
            history.push(d.plan);
        }
        for i in 0..qs.len() {
            let mut went_down = false;
            for w in history.windows(2) {
                if w[1][i] < w[0][i] {
                    went_down = true;
                }
                prop_assert!(!(went_down && w[1][i] > w[0][i]), "queue {i}: {history:?}");
            }
        }
        Ok(())
    }
}
