//! State shared by the manager, the monitor and the workers.
//!
//! Per queue:
//! * `target`: what the monitor's last plan wants;
//! * `alive`: workers not committed to leaving (a worker leaves by decrementing it, with a
//!   compare-and-swap against `target` when retiring, so two workers never both retire for one
//!   excess slot). It is the one count the hot path reads, so it stays an atomic;
//! * the [`Roster`]: threads not yet finished (`live`, retiring ones included), started and
//!   exited over the pool's life, and each running worker's counters. Every count that
//!   describes one worker changes with the others, under the roster's lock, in
//!   [`QueueState::enlist`] and [`QueueState::leave`]: a snapshot never shows half of a spawn
//!   or an exit (tokio's `SpawnerMetrics` pattern). Caps are enforced on `live`, so a browser
//!   still closing counts against the memory it holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::config::{Config, QueueConfig};
use crate::counters::Counters;
use crate::error::RunningJob;
use crate::event::Guarded;

/// The threads of one queue and their counts, changed together under one lock.
#[derive(Default)]
pub(crate) struct Roster {
    /// Counters of running workers, by thread name.
    pub(crate) workers: Vec<(Arc<str>, Arc<Counters>)>,
    /// Folded totals of exited workers.
    pub(crate) exited: Counters,
    /// Worker threads not yet finished (retiring ones included).
    pub(crate) live: usize,
    /// Worker threads started; never decremented.
    pub(crate) spawned: u64,
    pub(crate) retired: u64,
    /// Spawns the operating system refused (no thread ran; not in `spawned`).
    pub(crate) refused: u64,
}

pub(crate) struct QueueState {
    pub(crate) config: QueueConfig,
    pub(crate) target: AtomicUsize,
    pub(crate) alive: AtomicUsize,
    pub(crate) backlog: AtomicUsize,
    pub(crate) init_failures: AtomicU64,
    pub(crate) source_errors: AtomicU64,
    /// How long each successful `init` took (the worker start-up histogram of the metrics).
    pub(crate) init_times: crate::histogram::Timings,
    pub(crate) next_index: AtomicU64,
    /// Why the queue has its size: an index into `SizeReason::ALL`, set by the monitor.
    pub(crate) size_reason: std::sync::atomic::AtomicU8,
    /// One token asks one idle worker to look at `alive > target` again.
    pub(crate) wake_tx: Sender<()>,
    pub(crate) wake_rx: Receiver<()>,
    /// The monitor's measurements of this queue (duration, rates, estimated wait), for stats.
    pub(crate) estimate: Mutex<crate::estimate::View>,
    /// States rebuilt by `recycle_after` or `recycle_after_age`.
    pub(crate) recycles: AtomicU64,
    pub(crate) health_check_failures: AtomicU64,
    /// Workers waiting for an init turn or in `init`: counted from the spawn to the end of
    /// the first `init`, then for each rebuild.
    pub(crate) starting: AtomicUsize,
    /// What dropped states carried over, for the next `init`s.
    pub(crate) stash: Arc<crate::lifecycle::Stash>,
    /// The start ramp's turns (`init_concurrency`).
    pub(crate) turns: crate::lifecycle::InitTurns,
    roster: Mutex<Roster>,
}

impl QueueState {
    fn new(config: QueueConfig, max_threads: usize) -> Self {
        let (wake_tx, wake_rx) = unbounded();
        QueueState {
            recycles: AtomicU64::new(0),
            health_check_failures: AtomicU64::new(0),
            starting: AtomicUsize::new(0),
            stash: Arc::new(crate::lifecycle::Stash::new(max_threads)),
            // More turns than threads would never be used.
            turns: crate::lifecycle::InitTurns::new(config.init_concurrency.min(max_threads)),
            config,
            target: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            backlog: AtomicUsize::new(0),
            init_failures: AtomicU64::new(0),
            source_errors: AtomicU64::new(0),
            init_times: Default::default(),
            next_index: AtomicU64::new(0),
            size_reason: std::sync::atomic::AtomicU8::new(0),
            wake_tx,
            wake_rx,
            estimate: Mutex::new(crate::estimate::View::default()),
            roster: Mutex::new(Roster::default()),
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

    /// Worker threads not yet finished, retiring ones included.
    pub(crate) fn live(&self) -> usize {
        self.roster.lock().live
    }

    /// Spawns a worker with `spawn` and counts it, in one step under the roster's lock: on
    /// success alive, live, spawned and its counters listed; on a refusal only `refused`. A
    /// snapshot (which takes the same lock) sees either outcome whole, so `spawned` never goes
    /// down between two snapshots. `alive` is raised before the thread exists (its first
    /// `try_retire` reads it), and put back if the spawn is refused; so is `starting`. Holding the lock across
    /// the spawn costs the other holders (snapshots, exiting workers) one `clone(2)`; the
    /// thread started does not need the lock until it exits.
    pub(crate) fn spawn_counted<T>(
        &self,
        pool: &PoolShared,
        name: Arc<str>,
        counters: Arc<Counters>,
        spawn: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let mut r = self.roster.lock();
        self.alive.fetch_add(1, Ordering::AcqRel);
        pool.total_live.fetch_add(1, Ordering::AcqRel);
        // Starting until its first `init` returns (the worker takes itself out). Raised before
        // the thread exists: it may run `init` and lower it before `spawn` returns here.
        self.starting.fetch_add(1, Ordering::AcqRel);
        match spawn() {
            Ok(handle) => {
                r.live += 1;
                r.spawned += 1;
                r.workers.push((name, counters));
                Ok(handle)
            }
            Err(e) => {
                self.alive.fetch_sub(1, Ordering::AcqRel);
                self.starting.fetch_sub(1, Ordering::AcqRel);
                pool.total_live.fetch_sub(1, Ordering::AcqRel);
                r.refused += 1;
                Err(e)
            }
        }
    }

    /// Takes a worker out, in one step: its counters folded into the queue's totals, out of
    /// live (and of alive unless it retired, which took itself out of alive already).
    pub(crate) fn leave(&self, pool: &PoolShared, counters: &Arc<Counters>, retired: bool) {
        let mut r = self.roster.lock();
        r.workers.retain(|(_, c)| !Arc::ptr_eq(c, counters));
        r.exited.absorb(counters);
        if !retired {
            self.alive.fetch_sub(1, Ordering::AcqRel);
        }
        pool.total_live.fetch_sub(1, Ordering::AcqRel);
        r.live -= 1;
        r.retired += 1;
    }

    /// The roster, locked, for a snapshot.
    pub(crate) fn roster(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock()
    }

    /// Gives running jobs that were not timed (see `JobTimer`) a start time: now, so their
    /// elapsed time is known to within one monitor tick.
    pub(crate) fn stamp_untimed(&self, now_ns: u64) {
        for (_, c) in self.roster.lock().workers.iter() {
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
        for (name, c) in self.roster.lock().workers.iter() {
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
                    elapsed: Duration::from_nanos(elapsed),
                });
            }
        }
    }
}

pub(crate) struct PoolShared {
    pub(crate) id: usize,
    pub(crate) config: Config,
    pub(crate) queues: Vec<QueueState>,
    pub(crate) events: Arc<Guarded>,
    epoch: Instant,
    pub(crate) stopping: AtomicBool,
    /// Disconnected (its sender dropped) when the pool stops: wakes every select at once.
    pub(crate) stop_rx: Receiver<()>,
    stop_tx: Mutex<Option<Sender<()>>>,
    /// Asks the monitor for an early tick (a worker exited).
    pub(crate) nudge_tx: Sender<()>,
    pub(crate) nudge_rx: Receiver<()>,
    pub(crate) total_live: AtomicUsize,
    /// Set if the monitor thread died of a panic (the pool stopped and joined its workers).
    pub(crate) monitor_died: AtomicBool,
    /// The memory gate (`min_free_memory`).
    pub(crate) memory: crate::gate::MemoryGate,
    done: Mutex<bool>,
    done_cv: Condvar,
}

impl PoolShared {
    pub(crate) fn new(
        id: usize,
        config: Config,
        queues: Vec<QueueConfig>,
        events: Arc<Guarded>,
    ) -> Self {
        let (stop_tx, stop_rx) = bounded(0);
        let (nudge_tx, nudge_rx) = bounded(1);
        let queues = queues
            .into_iter()
            .map(|q| QueueState::new(q, config.max_threads_per_type))
            .collect();
        PoolShared {
            memory: crate::gate::MemoryGate::new(config.min_free_memory),
            id,
            config,
            queues,
            events,
            epoch: Instant::now(),
            stopping: AtomicBool::new(false),
            stop_rx,
            stop_tx: Mutex::new(Some(stop_tx)),
            nudge_tx,
            nudge_rx,
            total_live: AtomicUsize::new(0),
            monitor_died: AtomicBool::new(false),
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

    /// Waits up to `delay`, returning early (true) only if the pool stops.
    pub(crate) fn sleep_unless_stopped(&self, delay: Duration) -> bool {
        match Instant::now().checked_add(delay) {
            Some(deadline) => matches!(
                self.stop_rx.recv_deadline(deadline),
                Err(RecvTimeoutError::Disconnected)
            ),
            None => {
                let _ = self.stop_rx.recv();
                true
            }
        }
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
