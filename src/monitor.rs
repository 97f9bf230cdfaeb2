//! The monitor thread: every tick, read the backlogs, plan, and apply the plan by spawning
//! workers or asking idle ones to retire. On stop it joins every worker.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use crossbeam_channel::{select, tick};

use crate::event::{ErrorEvent, ErrorKind, ScaleEvent, ScaleReason};
use crate::scaling::{self, Limits, QueueInput, Stabilizer};
use crate::source::WorkerInfo;
use crate::state::PoolShared;
use crate::worker;

pub(crate) struct Monitor {
    pool: Arc<PoolShared>,
    stabilizer: Stabilizer,
    workers: Vec<JoinHandle<()>>,
    /// Last backlog logged per queue, to log "steady" at debug only when something moved.
    logged_backlog: Vec<Option<usize>>,
    /// Whether the last backlog read of each queue failed (log the first error of a streak).
    backlog_failing: Vec<bool>,
    name: String,
}

impl Monitor {
    pub(crate) fn new(pool: Arc<PoolShared>) -> Self {
        let n = pool.queues.len();
        Monitor {
            stabilizer: Stabilizer::new(pool.config.scale_down_delay),
            name: format!("{}-monitor", pool.config.thread_name_prefix),
            pool,
            workers: Vec::new(),
            logged_backlog: vec![None; n],
            backlog_failing: vec![false; n],
        }
    }

    pub(crate) fn thread_name(&self) -> &str {
        &self.name
    }

    /// The monitor thread's body.
    pub(crate) fn run(mut self) {
        worker::mark_pool_thread(self.pool.id);
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
        for q in &self.pool.queues {
            q.config.runner.close();
        }
        log::info!("shut down: every worker joined");
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
            match q.config.runner.backlog() {
                Ok(n) => {
                    q.backlog.store(n, Ordering::Relaxed);
                    self.backlog_failing[i] = false;
                }
                Err(e) => {
                    q.source_errors.fetch_add(1, Ordering::Relaxed);
                    if !self.backlog_failing[i] {
                        log::warn!(
                            "queue {}: cannot read the backlog ({e}); keeping the last count",
                            q.name()
                        );
                    }
                    self.backlog_failing[i] = true;
                    self.pool.events.on_error(&ErrorEvent {
                        kind: ErrorKind::Source,
                        queue: q.name().to_owned(),
                        worker: self.name.clone(),
                        message: e.to_string(),
                        retry_in: self.pool.config.rebalance_interval,
                    });
                }
            }
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
        let holds = self.stabilizer.holds(now, queues.len());
        let inputs: Vec<QueueInput> = queues
            .iter()
            .zip(holds)
            .map(|(q, hold)| QueueInput {
                backlog: q.backlog.load(Ordering::Relaxed),
                min: q.config.min_threads,
                weight: q.config.weight,
                hold,
            })
            .collect();
        let plan = scaling::plan(&inputs, &limits);
        self.stabilizer.record(
            now,
            inputs
                .iter()
                .map(|i| scaling::demand(i.backlog, i.min, &limits))
                .collect(),
        );
        for (i, (q, &to)) in queues.iter().zip(&plan).enumerate() {
            let from = q.target.swap(to, Ordering::AcqRel);
            let backlog = inputs[i].backlog;
            if from != to {
                let reason = if to > from {
                    ScaleReason::Up
                } else {
                    ScaleReason::Down
                };
                log::info!(
                    "queue {}: {backlog} jobs -> scaling {} {from} -> {to} threads",
                    q.name(),
                    if to > from { "up" } else { "down" },
                );
                self.pool.events.on_scale(&ScaleEvent {
                    queue: q.name().to_owned(),
                    backlog,
                    from,
                    to,
                    reason,
                });
                self.logged_backlog[i] = Some(backlog);
            } else if self.logged_backlog[i] != Some(backlog) {
                log::debug!(
                    "queue {}: {backlog} jobs, {to} threads, no change",
                    q.name()
                );
                self.logged_backlog[i] = Some(backlog);
            }
        }
        self.apply(&plan);
    }

    /// Spawns missing workers within the caps, and wakes idle ones where there are too many.
    fn apply(&mut self, plan: &[usize]) {
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
            let missing = target - alive;
            let room_queue = c
                .max_threads_per_type
                .saturating_sub(q.live.load(Ordering::Acquire));
            let room_total = c
                .max_total_threads
                .saturating_sub(pool.total_live.load(Ordering::Acquire));
            for _ in 0..missing.min(room_queue).min(room_total) {
                if let Err(e) = self.spawn(qi) {
                    log::error!(
                        "queue {}: cannot spawn a worker thread ({e}); retrying next tick",
                        q.name()
                    );
                    break;
                }
            }
        }
    }

    fn spawn(&mut self, qi: usize) -> io::Result<()> {
        let pool = &self.pool;
        let q = &pool.queues[qi];
        let index = q.next_index.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{}-{index}", pool.config.thread_name_prefix, q.name());
        let info = WorkerInfo::new(Arc::clone(&q.config.name), name.clone(), index);
        q.alive.fetch_add(1, Ordering::AcqRel);
        q.live.fetch_add(1, Ordering::AcqRel);
        pool.total_live.fetch_add(1, Ordering::AcqRel);
        let mut builder = thread::Builder::new().name(name);
        if let Some(size) = pool.config.stack_size {
            builder = builder.stack_size(size);
        }
        let shared = Arc::clone(pool);
        match builder.spawn(move || worker::main(shared, qi, info)) {
            Ok(handle) => {
                q.spawned.fetch_add(1, Ordering::Relaxed);
                self.workers.push(handle);
                Ok(())
            }
            Err(e) => {
                q.alive.fetch_sub(1, Ordering::AcqRel);
                q.live.fetch_sub(1, Ordering::AcqRel);
                pool.total_live.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }
}
