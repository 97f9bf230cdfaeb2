//! State shared by the manager, the monitor and the workers.
//!
//! Counts per queue, all atomics:
//! * `target`: what the monitor's last plan wants;
//! * `alive`: workers not committed to leaving (a worker leaves by decrementing it, with a
//!   compare-and-swap against `target` when retiring, so two workers never both retire for one
//!   excess slot);
//! * `live`: worker threads not yet finished, retiring ones included. Caps are enforced on
//!   `live` so that a browser still closing counts against the memory it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use parking_lot::{Condvar, Mutex};

use crate::builder::{Config, QueueConfig};
use crate::error::RunningJob;
use crate::event::EventHandler;
use crate::stats::{Accumulator, Counters, QueueStats};

pub(crate) struct QueueState {
    pub(crate) config: QueueConfig,
    pub(crate) target: AtomicUsize,
    pub(crate) alive: AtomicUsize,
    pub(crate) live: AtomicUsize,
    pub(crate) backlog: AtomicUsize,
    pub(crate) spawned: AtomicU64,
    pub(crate) retired: AtomicU64,
    pub(crate) init_failures: AtomicU64,
    pub(crate) source_errors: AtomicU64,
    pub(crate) next_index: AtomicU64,
    /// One token asks one idle worker to look at `alive > target` again.
    pub(crate) wake_tx: Sender<()>,
    pub(crate) wake_rx: Receiver<()>,
    /// Counters of running workers, and the folded totals of exited ones.
    workers: Mutex<Vec<(Arc<str>, Arc<Counters>)>>,
    exited: Counters,
}

impl QueueState {
    fn new(config: QueueConfig) -> Self {
        let (wake_tx, wake_rx) = unbounded();
        QueueState {
            config,
            target: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            backlog: AtomicUsize::new(0),
            spawned: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            init_failures: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            next_index: AtomicU64::new(0),
            wake_tx,
            wake_rx,
            workers: Mutex::new(Vec::new()),
            exited: Counters::default(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// Commits the calling worker to retiring if the queue has more workers than its target.
    #[inline]
    pub(crate) fn try_retire(&self) -> bool {
        let mut alive = self.alive.load(Ordering::Acquire);
        loop {
            if alive <= self.target.load(Ordering::Acquire) {
                return false;
            }
            match self.alive.compare_exchange_weak(
                alive,
                alive - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => alive = now,
            }
        }
    }

    pub(crate) fn register(&self, name: Arc<str>, counters: Arc<Counters>) {
        self.workers.lock().push((name, counters));
    }

    pub(crate) fn unregister(&self, counters: &Arc<Counters>) {
        let mut workers = self.workers.lock();
        workers.retain(|(_, c)| !Arc::ptr_eq(c, counters));
        self.exited.absorb(counters);
    }

    /// Gives running jobs that were not timed (see `JobTimer`) a start time: now, so their
    /// elapsed time is known to within one monitor tick.
    pub(crate) fn stamp_untimed(&self, now_ns: u64) {
        for (_, c) in self.workers.lock().iter() {
            if c.busy.load(Ordering::Acquire) {
                let _ = c.busy_since_ns.compare_exchange(
                    0,
                    now_ns.max(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
        }
    }

    pub(crate) fn running_jobs(&self, pool: &PoolShared, out: &mut Vec<RunningJob>) {
        let now = pool.now_ns();
        for (name, c) in self.workers.lock().iter() {
            if c.busy.load(Ordering::Acquire) {
                // 0: an untimed job not stamped yet, so it started within the last tick.
                let since = c.busy_since_ns.load(Ordering::Acquire);
                let elapsed = if since == 0 {
                    0
                } else {
                    now.saturating_sub(since)
                };
                out.push(RunningJob {
                    queue: self.name().to_owned(),
                    worker: name.to_string(),
                    elapsed: std::time::Duration::from_nanos(elapsed),
                });
            }
        }
    }

    pub(crate) fn snapshot(&self) -> (QueueStats, Accumulator) {
        let mut acc = Accumulator::default();
        let mut busy = 0;
        {
            let workers = self.workers.lock();
            self.exited.add_to(&mut acc);
            for (_, c) in workers.iter() {
                c.add_to(&mut acc);
                busy += usize::from(c.busy.load(Ordering::Relaxed));
            }
        }
        let stats = QueueStats {
            name: self.name().to_owned(),
            workers: self.alive.load(Ordering::Relaxed),
            busy,
            backlog: self.backlog.load(Ordering::Relaxed),
            target: self.target.load(Ordering::Relaxed),
            jobs_ok: acc.ok,
            jobs_failed: acc.failed,
            jobs_panicked: acc.panicked,
            spawned: self.spawned.load(Ordering::Relaxed),
            retired: self.retired.load(Ordering::Relaxed),
            init_failures: self.init_failures.load(Ordering::Relaxed),
            source_errors: self.source_errors.load(Ordering::Relaxed),
            mean_job_time: acc.mean(),
            p99_job_time: acc.quantile(0.99),
        };
        (stats, acc)
    }
}

pub(crate) struct PoolShared {
    pub(crate) id: usize,
    pub(crate) config: Config,
    pub(crate) queues: Vec<QueueState>,
    pub(crate) events: Arc<dyn EventHandler>,
    epoch: Instant,
    pub(crate) stopping: AtomicBool,
    /// Disconnected (its sender dropped) when the pool stops: wakes every select at once.
    pub(crate) stop_rx: Receiver<()>,
    stop_tx: Mutex<Option<Sender<()>>>,
    /// Asks the monitor for an early tick (a worker exited).
    pub(crate) nudge_tx: Sender<()>,
    pub(crate) nudge_rx: Receiver<()>,
    pub(crate) total_live: AtomicUsize,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl PoolShared {
    pub(crate) fn new(
        id: usize,
        config: Config,
        queues: Vec<QueueConfig>,
        events: Arc<dyn EventHandler>,
    ) -> Self {
        let (stop_tx, stop_rx) = bounded(0);
        let (nudge_tx, nudge_rx) = bounded(1);
        PoolShared {
            id,
            config,
            queues: queues.into_iter().map(QueueState::new).collect(),
            events,
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
            stop_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            nudge_tx,
            nudge_rx,
            total_live: AtomicUsize::new(0),
            done: Mutex::new(false),
            done_cv: Condvar::new(),
        }
    }

    pub(crate) fn now_ns(&self) -> u64 {
        self.ns_since_epoch(Instant::now())
    }

    #[inline]
    pub(crate) fn ns_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    #[inline]
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Sets the stop flag and wakes every waiting thread. Returns false if already stopping.
    pub(crate) fn stop(&self) -> bool {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.stop_tx.lock().take();
        true
    }

    pub(crate) fn nudge(&self) {
        let _ = self.nudge_tx.try_send(());
    }

    pub(crate) fn mark_done(&self) {
        *self.done.lock() = true;
        self.done_cv.notify_all();
    }

    pub(crate) fn is_done(&self) -> bool {
        *self.done.lock()
    }

    /// Waits until the monitor has joined every worker, or `deadline`. Returns whether done.
    pub(crate) fn wait_done(&self, deadline: Option<Instant>) -> bool {
        let mut done = self.done.lock();
        while !*done {
            match deadline {
                Some(d) => {
                    if self.done_cv.wait_until(&mut done, d).timed_out() {
                        return *done;
                    }
                }
                None => self.done_cv.wait(&mut done),
            }
        }
        true
    }
}
