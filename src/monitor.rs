//! The monitor thread: every tick, read the backlogs, plan, and apply the plan by spawning
//! workers or asking idle ones to retire. On stop it joins every worker.
//!
//! Nothing a host or a source supplies can end it: event handlers are guarded
//! ([`Guarded`](crate::event::Guarded)), `backlog` and `close` run under `catch_unwind`, and if
//! the thread dies anyway its `Drop` stops the pool, joins the workers and marks the pool
//! done, so that `wait()` returns (with an error) instead of hanging.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{select, tick};

use crate::coordination::{self, Coordinator};
use crate::counters::Counters;
use crate::estimate::Meter;
use crate::event::{ErrorEvent, ErrorKind, EventHandler, ScaleEvent};
use crate::outage::{Line, Outage};
use crate::scaling::{self, Limits, QueueInput, Stabilizer, WaitInput};
use crate::source::WorkerInfo;
use crate::state::PoolShared;
use crate::threads::{self, drop_payload, panic_message};
use crate::worker::{self, Runner, close_source};

/// Smoothing horizon of the measurements of a queue on the divisor rule (stats only).
const DIVISOR_HORIZON: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) struct Monitor {
    pool: Arc<PoolShared>,
    runners: Vec<Arc<dyn Runner>>,
    stabilizer: Stabilizer,
    coordinator: Coordinator,
    /// Each queue's measurements (duration, rates) for the wait-target rule and the stats.
    meters: Vec<Meter>,
    started: Instant,
    workers: Vec<JoinHandle<()>>,
    /// Last backlog logged per queue, to log "steady" at debug only when something moved.
    logged_backlog: Vec<Option<usize>>,
    /// Backlog read failures per queue, for one log line per outage.
    backlog_outage: Vec<Outage>,
    /// Spawn failures per queue, and when spawning may be tried again.
    spawn_outage: Vec<(Outage, Option<Instant>)>,
    name: String,
    drained: bool,
}

impl Monitor {
    pub(crate) fn new(pool: Arc<PoolShared>, runners: Vec<Arc<dyn Runner>>) -> Self {
        let n = pool.queues.len();
        Monitor {
            stabilizer: scaling::stabilizer(
                pool.config.scale_down_delay,
                &pool
                    .queues
                    .iter()
                    .map(|q| q.config.target_wait)
                    .collect::<Vec<_>>(),
            ),
            coordinator: Coordinator::new(n),
            meters: pool
                .queues
                .iter()
                .map(|q| Meter::new(q.config.target_wait.unwrap_or(DIVISOR_HORIZON)))
                .collect(),
            started: Instant::now(),
            name: threads::thread_name(&pool.config.thread_name_prefix, None, "monitor"),
            pool,
            runners,
            workers: Vec::new(),
            logged_backlog: vec![None; n],
            backlog_outage: (0..n).map(|_| Outage::default()).collect(),
            spawn_outage: (0..n).map(|_| (Outage::default(), None)).collect(),
            drained: false,
        }
    }

    pub(crate) fn thread_name(&self) -> &str {
        &self.name
    }

    /// The monitor thread's body.
    pub(crate) fn run(mut self) {
        threads::mark_pool_thread(self.pool.id);
        let ticker = tick(self.pool.config.rebalance_interval);
        loop {
            self.reap();
            if self.pool.is_stopping() {
                break;
            }
            self.rebalance(Instant::now());
            select! {
                recv(ticker) -> _ => {}
                recv(self.pool.nudge_rx) -> _ => {}
                recv(self.pool.stop_rx) -> _ => {}
            }
        }
        self.drain();
    }

    /// Joins every worker; they exit after their current job once `stopping` is set.
    fn drain(&mut self) {
        for q in &self.pool.queues {
            q.target.store(0, Ordering::Release);
        }
        log::info!(
            "shutting down: waiting for {} worker(s)",
            self.workers.len()
        );
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                log::error!("a worker thread panicked outside a job");
            }
        }
        for (q, runner) in self.pool.queues.iter().zip(&self.runners) {
            close_source(q, &**runner);
        }
        log::info!("shut down: every worker joined");
        self.drained = true;
        self.pool.mark_done();
    }

    /// Joins the workers that have exited.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.workers.len() {
            if self.workers[i].is_finished() {
                let handle = self.workers.swap_remove(i);
                if handle.join().is_err() {
                    log::error!("a worker thread panicked outside a job");
                }
            } else {
                i += 1;
            }
        }
    }

    fn read_backlogs(&mut self) {
        for (i, q) in self.pool.queues.iter().enumerate() {
            let runner = &self.runners[i];
            let message = match catch_unwind(AssertUnwindSafe(|| runner.backlog())) {
                Ok(Ok(n)) => {
                    q.backlog.store(n, Ordering::Relaxed);
                    if let Some((down_for, errors)) =
                        self.backlog_outage[i].recovered(Instant::now())
                    {
                        log::info!(
                            "queue {}: backlog readable again after {down_for:?} \
                             ({errors} errors)",
                            q.name()
                        );
                    }
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(p) => {
                    let m = format!("the source's backlog panicked: {}", panic_message(&*p));
                    drop_payload(p);
                    m
                }
            };
            q.source_errors.fetch_add(1, Ordering::Relaxed);
            match self.backlog_outage[i].failed(Instant::now()) {
                Line::Lost => log::warn!(
                    "queue {}: cannot read the backlog ({message}); keeping the last count",
                    q.name()
                ),
                Line::Still { down_for, errors } => log::warn!(
                    "queue {}: backlog still unreadable after {down_for:?} ({errors} errors, \
                     last: {message})",
                    q.name()
                ),
                Line::Quiet => {}
            }
            self.pool.events.on_error(&ErrorEvent {
                kind: ErrorKind::Source,
                queue: q.name().to_owned(),
                worker: self.name.clone(),
                message,
                retry_in: self.pool.config.rebalance_interval,
            });
        }
    }

    fn rebalance(&mut self, now: Instant) {
        let now_ns = self.pool.ns_since_epoch(now);
        for q in &self.pool.queues {
            q.stamp_untimed(now_ns);
        }
        self.read_backlogs();
        let c = &self.pool.config;
        let limits = Limits {
            jobs_per_thread: c.jobs_per_thread,
            max_per_queue: c.max_threads_per_type,
            max_total: c.max_total_threads,
        };
        let queues = &self.pool.queues;
        let elapsed = now.saturating_duration_since(self.started);
        let holds = self.stabilizer.holds(now, queues.len());
        // A coordinated queue plans with this process's share of the fleet's demand, and
        // holds its share of the fleet's stabilised target (the fleet's window, in Redis).
        let shares = self
            .coordinator
            .shares(&self.pool, &self.runners, &self.meters);
        let inputs: Vec<QueueInput> = queues
            .iter()
            .zip(holds)
            .zip(&shares)
            .zip(&mut self.meters)
            .map(|(((q, hold), share), meter)| {
                let backlog = q.backlog.load(Ordering::Relaxed);
                meter.read(q, elapsed, backlog);
                match share {
                    // A coordinated queue follows the fleet's share: the fleet's demand by the
                    // queue's own rule (the divisor, or the wait target on the fleet's
                    // measurements: docs/FLEET.md), split over the processes.
                    Some(s) => QueueInput {
                        backlog: s.demand.saturating_mul(c.jobs_per_thread),
                        min: q.config.min_threads,
                        weight: q.config.weight,
                        // The local hold too: a process rides out a dip of its own share as it
                        // would of its own demand (docs/FLEET.md, "Holds").
                        hold: if s.local_hold {
                            s.hold.max(hold)
                        } else {
                            s.hold
                        },
                        current: q.alive.load(Ordering::Acquire),
                        wait: None,
                    },
                    None => QueueInput {
                        backlog,
                        min: q.config.min_threads,
                        weight: q.config.weight,
                        hold,
                        current: q.alive.load(Ordering::Acquire),
                        wait: q.config.target_wait.map(|t| WaitInput {
                            target_s: t.as_secs_f64(),
                            duration_s: meter.estimator.duration_s(),
                            arrival_per_s: meter.estimator.arrival_per_s(),
                            oldest_age_s: meter.estimator.oldest_age_s(elapsed),
                            newest_age_s: meter.estimator.newest_age_s(elapsed),
                        }),
                    },
                }
            })
            .collect();
        let plan = scaling::decide(&mut self.stabilizer, now, &inputs, &limits).plan;
        // The memory gate (`min_free_memory`): read once per tick, before any spawn.
        let gate_holds = self.pool.memory.check();
        for (((q, meter), input), share) in
            queues.iter().zip(&self.meters).zip(&inputs).zip(&shares)
        {
            let own =
                meter
                    .estimator
                    .view(elapsed, input.backlog, input.current, q.config.target_wait);
            // A coordinated queue with a wait target shows the fleet's figures (its own
            // completion rate kept): what the fleet's size was decided on.
            *q.estimate.lock() = match share.and_then(|s| s.figures) {
                Some(f) => crate::estimate::View {
                    completion_per_s: own.completion_per_s,
                    ..f.0
                },
                None => own,
            };
        }
        for (i, (q, &to)) in queues.iter().zip(&plan).enumerate() {
            let from = q.target.swap(to, Ordering::AcqRel);
            let unreachable = self.backlog_outage[i].is_down()
                || shares[i].and_then(|s| s.reason) == Some(crate::SizeReason::SourceUnreachable);
            let mut size =
                coordination::size_reason(&inputs[i], &limits, to, shares[i].as_ref(), unreachable);
            // Workers whose `init` has not returned (most of them waiting for the gate) do
            // not count as there: a queue whose missing workers wait for memory says so.
            let ready = q
                .alive
                .load(Ordering::Acquire)
                .saturating_sub(q.starting.load(Ordering::Acquire));
            if gate_holds
                && ready < to
                && !matches!(
                    size,
                    crate::SizeReason::Paused | crate::SizeReason::SourceUnreachable
                )
            {
                size = crate::SizeReason::Memory;
            }
            coordination::store_reason(q, size);
            let backlog = q.backlog.load(Ordering::Relaxed);
            if from != to {
                let reason = scaling::reason(&inputs[i], &limits, from, to);
                log::info!(
                    "queue {}: {backlog} jobs -> scaling {} {from} -> {to} threads ({}{})",
                    q.name(),
                    if to > from { "up" } else { "down" },
                    reason.describe(),
                    wait_note(&q.estimate.lock(), q.config.target_wait),
                );
                let event = ScaleEvent {
                    queue: q.name().to_owned(),
                    backlog,
                    from,
                    to,
                    reason,
                };
                self.pool.events.on_scale(&event);
                self.coordinator.scaled(i, &event);
                self.logged_backlog[i] = Some(backlog);
            } else if self.logged_backlog[i] != Some(backlog) {
                log::debug!(
                    "queue {}: {backlog} jobs, {to} threads, no change",
                    q.name()
                );
                self.logged_backlog[i] = Some(backlog);
            }
        }
        self.apply(&plan, now, gate_holds);
    }

    /// Spawns missing workers within the caps (none while the memory gate holds), and wakes
    /// idle ones where there are too many.
    fn apply(&mut self, plan: &[usize], now: Instant, gate_holds: bool) {
        let pool = Arc::clone(&self.pool);
        let c = &pool.config;
        for (qi, &target) in plan.iter().enumerate() {
            let q = &pool.queues[qi];
            let alive = q.alive.load(Ordering::Acquire);
            if alive > target {
                // Replace stale tokens by one per excess worker; busy workers check between jobs.
                while q.wake_rx.try_recv().is_ok() {}
                for _ in target..alive {
                    let _ = q.wake_tx.send(());
                }
                continue;
            }
            if self.spawn_outage[qi].1.is_some_and(|at| now < at) {
                continue; // backing off after a refused spawn
            }
            if gate_holds {
                continue;
            }
            // With the gate on, at most `init_concurrency` workers whose `init` has not
            // returned: the next reading sees the memory of the ones started before it.
            let ramp = if pool.memory.min().is_some() {
                q.turns
                    .limit
                    .saturating_sub(q.starting.load(Ordering::Acquire))
            } else {
                usize::MAX
            };
            let missing = (target - alive).min(ramp);
            let room_queue = c.max_threads_per_type.saturating_sub(q.live());
            let room_total = c
                .max_total_threads
                .saturating_sub(pool.total_live.load(Ordering::Acquire));
            for _ in 0..missing.min(room_queue).min(room_total) {
                match self.spawn(qi) {
                    Ok(()) => self.spawned(qi),
                    Err(e) => {
                        self.spawn_failed(qi, &e);
                        break;
                    }
                }
            }
        }
    }

    fn spawn(&mut self, qi: usize) -> io::Result<()> {
        let pool = &self.pool;
        let q = &pool.queues[qi];
        let index = q.next_index.fetch_add(1, Ordering::Relaxed);
        let prefix = &pool.config.thread_name_prefix;
        // The full name (unique in the pool) for logs, events and stats; the OS thread gets
        // it shortened to the 15 bytes Linux keeps, number included.
        let name = format!("{prefix}-{}-{index}", q.name());
        let os_name = threads::thread_name(prefix, Some(q.name()), &index.to_string());
        let info = WorkerInfo::new(Arc::clone(&q.config.name), name.clone(), index)
            .with_stash(Arc::clone(&q.stash));
        let counters = Arc::new(Counters::default());
        let mut builder = thread::Builder::new().name(os_name);
        if let Some(size) = pool.config.stack_size {
            builder = builder.stack_size(size);
        }
        let shared = Arc::clone(pool);
        let runner = Arc::clone(&self.runners[qi]);
        let theirs = Arc::clone(&counters);
        // Counted as the thread starts, under the roster's lock, so no snapshot sees its jobs
        // before its spawn, nor a refused spawn as started.
        let handle = q.spawn_counted(pool, Arc::from(name.as_str()), counters, move || {
            builder.spawn(move || worker::main(shared, runner, qi, info, theirs))
        })?;
        self.workers.push(handle);
        Ok(())
    }

    fn spawned(&mut self, qi: usize) {
        let (outage, retry_at) = &mut self.spawn_outage[qi];
        *retry_at = None;
        if let Some((down_for, errors)) = outage.recovered(Instant::now()) {
            log::info!(
                "queue {}: worker threads start again after {down_for:?} ({errors} refusals)",
                self.pool.queues[qi].name()
            );
        }
    }

    /// A refused spawn: counted, an event, a log line per outage, and a back-off before the
    /// next try for this queue.
    fn spawn_failed(&mut self, qi: usize, error: &io::Error) {
        let q = &self.pool.queues[qi];
        let (outage, retry_at) = &mut self.spawn_outage[qi];
        let now = Instant::now();
        let line = outage.failed(now);
        let delay = self.pool.config.backoff.delay(outage.errors());
        *retry_at = now.checked_add(delay);
        let message = format!("cannot start a worker thread: {error}");
        match line {
            Line::Lost | Line::Still { .. } => log::error!(
                "queue {}: {message}; retrying in {delay:?}, then with back-off",
                q.name()
            ),
            Line::Quiet => {}
        }
        self.pool.events.on_error(&ErrorEvent {
            kind: ErrorKind::Spawn,
            queue: q.name().to_owned(),
            worker: self.name.clone(),
            message,
            retry_in: delay,
        });
    }
}

/// The wait-target part of a decision's log line: estimated wait, target, learned divisor.
fn wait_note(view: &crate::estimate::View, target: Option<std::time::Duration>) -> String {
    let Some(target) = target else {
        return String::new();
    };
    match (
        view.estimated_wait,
        view.learned_jobs_per_thread,
        view.duration,
    ) {
        (Some(wait), Some(div), Some(d)) => format!(
            "; estimated wait {:.1}s for a {:.1}s target, jobs of {:.2}s, \
             learned {div:.1} jobs per thread",
            wait.as_secs_f64(),
            target.as_secs_f64(),
            d.as_secs_f64(),
        ),
        _ => format!(
            "; {:.1}s wait target, no job timed yet: jobs_per_thread decides",
            target.as_secs_f64()
        ),
    }
}

impl Drop for Monitor {
    /// Runs only when the monitor thread unwinds (a normal exit drained already): stop the
    /// pool, join the workers, and mark the pool done so that `wait()` cannot hang.
    fn drop(&mut self) {
        if self.drained {
            return;
        }
        log::error!("the monitor thread panicked: stopping the pool");
        self.pool.monitor_died.store(true, Ordering::Release);
        self.pool.stop();
        self.drain();
    }
}
