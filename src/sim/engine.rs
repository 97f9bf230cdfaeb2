//! The discrete-event engine: arrivals, workers and the monitor in virtual time.
//!
//! The threadtide policies run the pool's own code: the measurements of `estimate.rs`, the
//! stabiliser's holds and the decision step [`scaling::decide`] (plan, record), and the
//! monitor's way of applying a plan (spawn within the per-queue and total room, retire idle
//! workers at once and busy ones after their job, rebalance again when a worker exits). What is modelled rather than run: a
//! worker's `init` and a job take their drawn time; a retiring worker's browser closes
//! instantly; an idle worker takes an arriving job at once (the memory source wakes it).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use super::jobs::{Job, JobSpec, ns};
use super::profile::Profile;
use super::report::{Run, Sample, Summary, quantile};
use crate::estimate::Estimator;
use crate::scaling::{self, Limits, QueueInput, Stabilizer, WaitInput};

/// A scaling policy to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// The host's original manager: every `host_check` (60 s) it starts
    /// `ceil(backlog / 50) - threads` threads (at most 10 a queue, 20 in all, queues in order);
    /// it never stops one: a thread ends when its blocking pop times out (`host_pop_timeout`).
    Host,
    /// threadtide with the divisor rule (`jobs_per_thread`) and its defaults.
    Divisor,
    /// threadtide with each queue's `target_wait` (queues without one use the divisor).
    WaitTarget,
}

impl Policy {
    /// The three policies, in report order.
    pub const ALL: [Policy; 3] = [Policy::Host, Policy::Divisor, Policy::WaitTarget];

    /// `host`, `divisor` or `wait_target`.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Host => "host",
            Policy::Divisor => "divisor",
            Policy::WaitTarget => "wait_target",
        }
    }
}

/// A worker count that goes up within this long after it went down is a flap.
const FLAP_WINDOW: u64 = 120_000_000_000;
const HOUR: u64 = 3_600_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Ready(usize),
    Done(usize),
    PopTimeout(usize, u64),
    Tick,
    Nudge,
    Sample,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Init,
    Idle,
    Busy,
    Gone,
}

#[derive(Debug)]
struct Worker {
    queue: usize,
    started: u64,
    state: State,
    /// Bumped when the worker takes a job: a pop timeout of an older idle spell is stale.
    spell: u64,
    job_ns: u64,
}

#[derive(Debug)]
struct QueueSim {
    arrivals: Vec<Job>,
    next: usize,
    waiting: VecDeque<Job>,
    idle: Vec<usize>,
    alive: usize,
    target: usize,
    running: usize,
    done: u64,
    failed: u64,
    waits: Vec<u64>,
    busy_ns: u64,
    worker_ns: u64,
    starts: u64,
    peak: usize,
    last_down: Option<u64>,
    flaps: Vec<u64>,
    estimator: Estimator,
}

/// Runs `profile` under `policy`. Deterministic: the same profile and seed give the same run,
/// and every policy sees the same jobs (those of [`Profile::jobs`]).
pub fn simulate(profile: &Profile, policy: Policy) -> Run {
    let jobs: Vec<Vec<JobSpec>> = (0..profile.queues.len()).map(|q| profile.jobs(q)).collect();
    simulate_jobs(profile, policy, &jobs)
}

/// Runs `profile`'s settings under `policy` with the given jobs instead of drawn ones (one list
/// per queue, in profile order; sorted by arrival here): to replay a recorded workload, or to
/// compare with a real pool that ran those jobs. A queue without a list gets no jobs.
/// Slowdowns of the profile still apply to the durations given.
pub fn simulate_jobs(profile: &Profile, policy: Policy, jobs: &[Vec<JobSpec>]) -> Run {
    let mut sim = Sim::new(profile, policy, jobs);
    sim.run();
    sim.report()
}

struct Sim<'a> {
    p: &'a Profile,
    policy: Policy,
    now: u64,
    seq: u64,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    workers: Vec<Worker>,
    qs: Vec<QueueSim>,
    stabilizer: Stabilizer,
    t0: Instant,
    total_alive: usize,
    peak_total: usize,
    nudged: bool,
    series: Vec<Sample>,
}

impl<'a> Sim<'a> {
    fn new(p: &'a Profile, policy: Policy, jobs: &[Vec<JobSpec>]) -> Self {
        let qs = (0..p.queues.len())
            .map(|i| QueueSim {
                arrivals: {
                    let mut v: Vec<Job> = jobs
                        .get(i)
                        .map(|js| {
                            js.iter()
                                .map(|j| Job {
                                    arrived: ns(j.arrival),
                                    base_ns: ns(j.duration).max(1),
                                    fails: j.fails,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    v.sort_by_key(|j| j.arrived);
                    v
                },
                next: 0,
                waiting: VecDeque::new(),
                idle: Vec::new(),
                alive: 0,
                target: 0,
                running: 0,
                done: 0,
                failed: 0,
                waits: Vec::new(),
                busy_ns: 0,
                worker_ns: 0,
                starts: 0,
                peak: 0,
                last_down: None,
                flaps: Vec::new(),
                estimator: Estimator::new(
                    p.queues[i].target_wait.unwrap_or(Duration::from_secs(60)),
                ),
            })
            .collect();
        let mut sim = Sim {
            p,
            policy,
            now: 0,
            seq: 0,
            heap: BinaryHeap::new(),
            workers: Vec::new(),
            qs,
            stabilizer: if policy == Policy::WaitTarget {
                scaling::stabilizer(
                    p.scale_down_delay,
                    &p.queues.iter().map(|q| q.target_wait).collect::<Vec<_>>(),
                )
            } else {
                Stabilizer::new(p.scale_down_delay)
            },
            t0: Instant::now(),
            total_alive: 0,
            peak_total: 0,
            nudged: false,
            series: Vec::new(),
        };
        sim.at(0, Ev::Tick);
        sim.at(0, Ev::Sample);
        sim
    }

    fn at(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, ev)));
    }

    fn finished(&self) -> bool {
        self.now >= ns(self.p.horizon)
            && self
                .qs
                .iter()
                .all(|q| q.next == q.arrivals.len() && q.waiting.is_empty() && q.running == 0)
    }

    fn run(&mut self) {
        // A policy that never serves a queue would run forever: stop at 10 horizons + a day.
        let limit = ns(self.p.horizon).saturating_mul(10) + 24 * HOUR;
        while !self.finished() && self.now <= limit {
            let arrival = (0..self.qs.len())
                .filter_map(|i| {
                    self.qs[i]
                        .arrivals
                        .get(self.qs[i].next)
                        .map(|j| (j.arrived, i))
                })
                .min();
            let Some(&Reverse((t, _, ev))) = self.heap.peek() else {
                break;
            };
            match arrival {
                Some((ta, qi)) if ta <= t => {
                    self.now = ta;
                    self.arrive(qi);
                }
                _ => {
                    self.heap.pop();
                    self.now = t;
                    self.handle(ev);
                }
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Ready(w) => self.next_job(w),
            Ev::Done(w) => self.job_done(w),
            Ev::PopTimeout(w, spell) => {
                let wk = &self.workers[w];
                if wk.state == State::Idle && wk.spell == spell {
                    self.retire(w);
                }
            }
            Ev::Tick => match self.policy {
                Policy::Host => {
                    self.host_check();
                    self.at(self.now + ns(self.p.host_check), Ev::Tick);
                }
                _ => {
                    self.rebalance();
                    self.at(self.now + ns(self.p.tick), Ev::Tick);
                }
            },
            Ev::Nudge => {
                self.nudged = false;
                self.rebalance();
            }
            Ev::Sample => {
                for (i, q) in self.qs.iter().enumerate() {
                    self.series.push(Sample {
                        at: Duration::from_nanos(self.now),
                        queue: i,
                        backlog: q.waiting.len(),
                        workers: q.alive,
                        wait: Duration::from_nanos(
                            q.waiting.front().map_or(0, |j| self.now - j.arrived),
                        ),
                    });
                }
                self.at(self.now + ns(self.p.sample), Ev::Sample);
            }
        }
    }

    fn arrive(&mut self, qi: usize) {
        let q = &mut self.qs[qi];
        let job = q.arrivals[q.next];
        q.next += 1;
        q.waiting.push_back(job);
        if let Some(w) = q.idle.pop() {
            self.start_job(w);
        }
    }

    fn start_job(&mut self, w: usize) {
        let qi = self.workers[w].queue;
        let Some(job) = self.qs[qi].waiting.pop_front() else {
            return;
        };
        let factor: f64 = self.p.queues[qi]
            .slow
            .iter()
            .filter(|s| (ns(s.from)..ns(s.to)).contains(&self.now))
            .map(|s| s.factor)
            .product();
        let len = ((job.base_ns as f64) * factor).max(1.0) as u64;
        let q = &mut self.qs[qi];
        q.waits.push(self.now - job.arrived);
        q.running += 1;
        q.busy_ns += len;
        if job.fails {
            q.failed += 1;
        }
        let wk = &mut self.workers[w];
        wk.state = State::Busy;
        wk.spell += 1;
        wk.job_ns = len;
        self.at(self.now + len, Ev::Done(w));
    }

    fn job_done(&mut self, w: usize) {
        let qi = self.workers[w].queue;
        let len = self.workers[w].job_ns;
        let now = Duration::from_nanos(self.now);
        let q = &mut self.qs[qi];
        q.running -= 1;
        q.done += 1;
        q.estimator.add_duration(now, len, 1);
        self.next_job(w);
    }

    /// Between jobs (and after `init`): a threadtide worker retires if its queue has too
    /// many; then it takes a job or waits for one.
    fn next_job(&mut self, w: usize) {
        let qi = self.workers[w].queue;
        if self.policy != Policy::Host && self.qs[qi].alive > self.qs[qi].target {
            self.retire(w);
            return;
        }
        if self.qs[qi].waiting.is_empty() {
            self.workers[w].state = State::Idle;
            self.qs[qi].idle.push(w);
            if self.policy == Policy::Host {
                let spell = self.workers[w].spell;
                self.at(
                    self.now + ns(self.p.host_pop_timeout),
                    Ev::PopTimeout(w, spell),
                );
            }
        } else {
            self.start_job(w);
        }
    }

    fn retire(&mut self, w: usize) {
        let qi = self.workers[w].queue;
        let started = self.workers[w].started;
        self.workers[w].state = State::Gone;
        let q = &mut self.qs[qi];
        q.idle.retain(|&i| i != w);
        q.alive -= 1;
        q.worker_ns += self.now - started;
        q.last_down = Some(self.now);
        self.total_alive -= 1;
        if self.policy != Policy::Host && !self.nudged {
            // A worker that exits nudges the monitor (room under the total cap).
            self.nudged = true;
            self.at(self.now, Ev::Nudge);
        }
    }

    fn spawn(&mut self, qi: usize) {
        let w = self.workers.len();
        self.workers.push(Worker {
            queue: qi,
            started: self.now,
            state: State::Init,
            spell: 0,
            job_ns: 0,
        });
        let q = &mut self.qs[qi];
        q.alive += 1;
        q.starts += 1;
        q.peak = q.peak.max(q.alive);
        if q.last_down.is_some_and(|t| self.now - t <= FLAP_WINDOW) {
            q.flaps.push(self.now);
            q.last_down = None;
        }
        self.total_alive += 1;
        self.peak_total = self.peak_total.max(self.total_alive);
        self.at(self.now + ns(self.p.queues[qi].init), Ev::Ready(w));
    }

    /// The host's manager: start what `ceil(backlog / 50)` says is missing; never stop.
    fn host_check(&mut self) {
        for qi in 0..self.qs.len() {
            let q = &self.qs[qi];
            let target = q
                .waiting
                .len()
                .div_ceil(self.p.jobs_per_thread)
                .min(self.p.max_threads_per_type);
            let missing = target.saturating_sub(q.alive);
            let room = self.p.max_total_threads.saturating_sub(self.total_alive);
            for _ in 0..missing.min(room) {
                self.spawn(qi);
            }
        }
    }

    /// The monitor's rebalance: measure, decide (the pool's own function), apply.
    fn rebalance(&mut self) {
        let now = Duration::from_nanos(self.now);
        let limits = Limits {
            jobs_per_thread: self.p.jobs_per_thread,
            max_per_queue: self.p.max_threads_per_type,
            max_total: self.p.max_total_threads,
        };
        let wait_rule = self.policy == Policy::WaitTarget;
        let holds = self.stabilizer.holds(self.t0 + now, self.qs.len());
        let inputs: Vec<QueueInput> = self
            .qs
            .iter_mut()
            .zip(&self.p.queues)
            .zip(holds)
            .map(|((q, qp), hold)| {
                q.estimator.observe(now, q.waiting.len(), q.done, q.running);
                QueueInput {
                    backlog: q.waiting.len(),
                    min: qp.min_threads,
                    weight: qp.weight,
                    hold,
                    current: q.alive,
                    wait: qp.target_wait.filter(|_| wait_rule).map(|t| WaitInput {
                        target_s: t.as_secs_f64(),
                        duration_s: q.estimator.duration_s(),
                        arrival_per_s: q.estimator.arrival_per_s(),
                        oldest_age_s: q.estimator.oldest_age_s(now),
                        newest_age_s: q.estimator.newest_age_s(now),
                    }),
                }
            })
            .collect();
        let plan = scaling::decide(&mut self.stabilizer, self.t0 + now, &inputs, &limits).plan;
        for (qi, &target) in plan.iter().enumerate() {
            self.qs[qi].target = target;
            let alive = self.qs[qi].alive;
            if alive > target {
                // Idle workers are woken and retire; busy ones retire after their job.
                for _ in target..alive {
                    match self.qs[qi].idle.last() {
                        Some(&w) => self.retire(w),
                        None => break,
                    }
                }
                continue;
            }
            let room_queue = self.p.max_threads_per_type.saturating_sub(alive);
            let room_total = self.p.max_total_threads.saturating_sub(self.total_alive);
            for _ in 0..(target - alive).min(room_queue).min(room_total) {
                self.spawn(qi);
            }
        }
    }

    fn report(mut self) -> Run {
        let end = self.now.max(ns(self.p.horizon));
        for w in &self.workers {
            if w.state != State::Gone {
                self.qs[w.queue].worker_ns += end - w.started;
            }
        }
        let mut summaries = Vec::new();
        let mut all_waits = Vec::new();
        let mut all = Summary {
            queue: "all".to_owned(),
            jobs: 0,
            failed: 0,
            p50_wait: Duration::ZERO,
            p95_wait: Duration::ZERO,
            max_wait: Duration::ZERO,
            worker_seconds: 0.0,
            busy_seconds: 0.0,
            lower_bound_seconds: 0.0,
            peak_workers: self.peak_total,
            worker_starts: 0,
            flaps: 0,
            max_flaps_per_hour: 0,
        };
        for (q, qp) in self.qs.iter_mut().zip(&self.p.queues) {
            q.waits.sort_unstable();
            let mut per_hour = std::collections::BTreeMap::<u64, u64>::new();
            for t in &q.flaps {
                *per_hour.entry(t / HOUR).or_default() += 1;
            }
            let init = if q.waits.is_empty() {
                0.0
            } else {
                qp.init.as_secs_f64()
            };
            let s = Summary {
                queue: qp.name.clone(),
                jobs: q.waits.len() as u64,
                failed: q.failed,
                p50_wait: quantile(&q.waits, 0.5),
                p95_wait: quantile(&q.waits, 0.95),
                max_wait: quantile(&q.waits, 1.0),
                worker_seconds: q.worker_ns as f64 / 1e9,
                busy_seconds: q.busy_ns as f64 / 1e9,
                lower_bound_seconds: q.busy_ns as f64 / 1e9 + init,
                peak_workers: q.peak,
                worker_starts: q.starts,
                flaps: q.flaps.len() as u64,
                max_flaps_per_hour: per_hour.values().copied().max().unwrap_or(0),
            };
            all.jobs += s.jobs;
            all.failed += s.failed;
            all.worker_seconds += s.worker_seconds;
            all.busy_seconds += s.busy_seconds;
            all.lower_bound_seconds += s.lower_bound_seconds;
            all.worker_starts += s.worker_starts;
            all.flaps += s.flaps;
            all.max_flaps_per_hour = all.max_flaps_per_hour.max(s.max_flaps_per_hour);
            all_waits.extend_from_slice(&q.waits);
            summaries.push(s);
        }
        all_waits.sort_unstable();
        all.p50_wait = quantile(&all_waits, 0.5);
        all.p95_wait = quantile(&all_waits, 0.95);
        all.max_wait = quantile(&all_waits, 1.0);
        summaries.push(all);
        Run {
            policy: self.policy.name(),
            summaries,
            series: self.series,
            end: Duration::from_nanos(end),
        }
    }
}
