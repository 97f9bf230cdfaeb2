//! The worker thread: build state, fetch, run under `catch_unwind`, acknowledge, and retire
//! only between jobs.

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::error::{JobError, SourceError};
use crate::event::{ErrorEvent, ErrorKind, ExitReason, WorkerEvent};
use crate::source::{Consumer, FetchContext, JobSource, PoolInfo, Unacked, WorkerInfo};
use crate::state::{PoolShared, QueueState};
use crate::stats::{Counters, Ended, JobTimer};

thread_local! {
    /// The id of the pool whose worker or monitor runs on this thread (0: none).
    static POOL_OF_THREAD: Cell<usize> = const { Cell::new(0) };
}

/// Whether the calling thread belongs to the pool `id`.
pub(crate) fn on_pool_thread(id: usize) -> bool {
    POOL_OF_THREAD.with(Cell::get) == id
}

pub(crate) fn mark_pool_thread(id: usize) {
    POOL_OF_THREAD.with(|c| c.set(id));
}

/// A queue's job loop with its types erased, so the pool holds queues of different types.
pub(crate) trait Runner: Send + Sync {
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError>;
    fn backlog(&self) -> Result<usize, SourceError>;
    fn close(&self);
    fn requeue_running(&self) -> Result<usize, SourceError>;
    fn run(&self, worker: &Worker<'_>) -> ExitReason;
}

pub(crate) struct QueueDef<S, St, I, X> {
    source: S,
    init: I,
    exec: X,
    recycle_after: Option<u64>,
    _state: PhantomData<fn() -> St>,
}

impl<S, St, I, X> QueueDef<S, St, I, X> {
    pub(crate) fn new(source: S, init: I, exec: X, recycle_after: Option<u64>) -> Self {
        QueueDef {
            source,
            init,
            exec,
            recycle_after,
            _state: PhantomData,
        }
    }
}

/// What a worker thread knows about itself and its pool.
pub(crate) struct Worker<'a> {
    pub(crate) pool: &'a PoolShared,
    pub(crate) queue: &'a QueueState,
    pub(crate) info: WorkerInfo,
    pub(crate) counters: Arc<Counters>,
}

impl Worker<'_> {
    /// Leaves the loop if the pool is stopping or the queue has a worker too many.
    #[inline(always)]
    fn should_exit(&self) -> Option<ExitReason> {
        if self.pool.is_stopping() {
            Some(ExitReason::Shutdown)
        } else if self.queue.try_retire() {
            Some(ExitReason::Retired)
        } else {
            None
        }
    }

    /// Sleeps for `delay`, or less if the pool stops or the monitor asks workers to look again.
    fn pause(&self, delay: Duration) {
        select! {
            recv(self.pool.stop_rx) -> _ => {}
            recv(self.queue.wake_rx) -> _ => {}
            default(delay) => {}
        }
    }

    fn report(&self, kind: ErrorKind, message: String, retry_in: Duration) {
        let counter = match kind {
            ErrorKind::Init => Some(&self.queue.init_failures),
            ErrorKind::Source => Some(&self.queue.source_errors),
            _ => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let name = self.info.name();
        match kind {
            ErrorKind::Init => {
                log::warn!("{name}: worker init failed ({message}); retrying in {retry_in:?}")
            }
            ErrorKind::Source => {
                log::warn!("{name}: job source error ({message}); retrying in {retry_in:?}")
            }
            _ => log::warn!(
                "{name}: job panicked ({message}); reported failed to its source, state rebuilt"
            ),
        }
        self.pool.events.on_error(&ErrorEvent {
            kind,
            queue: self.queue.name().to_owned(),
            worker: self.info.name().to_owned(),
            message,
            retry_in,
        });
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Drops a worker's state, surviving a `Drop` that panics (a browser that fails to close).
fn drop_state<St>(state: &mut Option<St>, worker: &Worker<'_>) {
    if let Some(s) = state.take()
        && let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(s)))
    {
        log::error!(
            "{}: dropping the worker state panicked: {}",
            worker.info.name(),
            panic_message(&*p)
        );
    }
}

impl<S, St, E, I, X> Runner for QueueDef<S, St, I, X>
where
    S: JobSource,
    St: 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    I: Fn(&WorkerInfo) -> Result<St, E> + Send + Sync + 'static,
    X: Fn(&mut St, &S::Job) -> Result<S::Output, JobError> + Send + Sync + 'static,
{
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError> {
        self.source.open(pool)
    }

    fn backlog(&self) -> Result<usize, SourceError> {
        self.source.backlog()
    }

    fn close(&self) {
        self.source.close();
    }

    fn requeue_running(&self) -> Result<usize, SourceError> {
        self.source.requeue_running()
    }

    fn run(&self, w: &Worker<'_>) -> ExitReason {
        let backoff = w.pool.config.backoff;
        let mut consumer: Option<S::Consumer> = None;
        let mut state: Option<St> = None;
        let mut init_failures = 0u32;
        let mut source_failures = 0u32;
        // Jobs run on the current state, for `recycle_after`.
        let mut since_init = 0u64;
        let mut timer = JobTimer::new();
        let exit = loop {
            if let Some(reason) = w.should_exit() {
                break reason;
            }
            let Some(consumer) = consumer.as_mut() else {
                match self.source.consumer(&w.info) {
                    Ok(c) => consumer = Some(c),
                    Err(e) => {
                        source_failures += 1;
                        let delay = backoff.delay(source_failures);
                        w.report(ErrorKind::Source, e.to_string(), delay);
                        w.pause(delay);
                    }
                }
                continue;
            };
            let Some(st) = state.as_mut() else {
                match catch_unwind(AssertUnwindSafe(|| (self.init)(&w.info))) {
                    Ok(Ok(s)) => {
                        state = Some(s);
                        since_init = 0;
                        init_failures = 0;
                    }
                    Ok(Err(e)) => {
                        init_failures += 1;
                        let delay = backoff.delay(init_failures);
                        w.report(ErrorKind::Init, e.into().to_string(), delay);
                        w.pause(delay);
                    }
                    Err(p) => {
                        init_failures += 1;
                        let delay = backoff.delay(init_failures);
                        w.report(ErrorKind::Init, panic_message(&*p), delay);
                        w.pause(delay);
                    }
                }
                continue;
            };
            let counts = Counts {
                timer: &mut timer,
                since_init: &mut since_init,
                source_failures: &mut source_failures,
            };
            match self.serve(w, consumer, st, counts) {
                Served::Exit(reason) => break reason,
                Served::StateSpent => {
                    // No job may wait hidden in the consumer while `init` runs again.
                    if let Err(e) = consumer.suspend() {
                        w.report(ErrorKind::Source, e.to_string(), Duration::ZERO);
                    }
                    drop_state(&mut state, w);
                }
                Served::SourceFailed(e) => {
                    source_failures += 1;
                    let delay = backoff.delay(source_failures);
                    w.report(ErrorKind::Source, e.to_string(), delay);
                    w.pause(delay);
                }
            }
        };
        drop_state(&mut state, w);
        drop(consumer);
        exit
    }
}

/// What the job loop keeps across its runs: a source error leaves `serve` but keeps the state.
struct Counts<'a> {
    timer: &'a mut JobTimer,
    since_init: &'a mut u64,
    source_failures: &'a mut u32,
}

/// Why a worker left its job loop.
enum Served {
    /// The pool is stopping or the queue has a worker too many.
    Exit(ExitReason),
    /// The state must be rebuilt: a job panicked, or `recycle_after` jobs ran on it.
    StateSpent,
    /// The source failed to fetch.
    SourceFailed(SourceError),
}

impl<S, St, E, I, X> QueueDef<S, St, I, X>
where
    S: JobSource,
    St: 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    I: Fn(&WorkerInfo) -> Result<St, E> + Send + Sync + 'static,
    X: Fn(&mut St, &S::Job) -> Result<S::Output, JobError> + Send + Sync + 'static,
{
    /// The hot loop: with a consumer and a state in hand, fetch, run and acknowledge jobs until
    /// the worker must leave or its state must be rebuilt. Everything set up once per worker
    /// stays out of it, so a no-op job costs little more than the channel hand-off.
    fn serve(
        &self,
        w: &Worker<'_>,
        consumer: &mut S::Consumer,
        st: &mut St,
        counts: Counts<'_>,
    ) -> Served {
        let Counts {
            timer,
            since_init,
            source_failures,
        } = counts;
        let cx = FetchContext::new(
            w.pool.config.fetch_timeout,
            &w.queue.wake_rx,
            &w.pool.stop_rx,
            &w.pool.stopping,
        );
        loop {
            if let Some(reason) = w.should_exit() {
                return Served::Exit(reason);
            }
            cx.rearm();
            let job = match consumer.fetch(&cx) {
                Ok(Some(job)) => job,
                Ok(None) => continue,
                Err(e) => return Served::SourceFailed(e),
            };
            *source_failures = 0;

            // An untimed job's start is stamped by the monitor within one tick (0 = unknown).
            let started = timer.next().then(Instant::now);
            let since = started.map_or(0, |s| w.pool.ns_since_epoch(s).max(1));
            w.counters.busy_since_ns.store(since, Ordering::Relaxed);
            w.counters.busy.store(true, Ordering::Release);
            let result = catch_unwind(AssertUnwindSafe(|| (self.exec)(st, &job)));
            w.counters.busy.store(false, Ordering::Release);
            if let Some(started) = started {
                let took = started.elapsed();
                w.counters.record_time(took);
                timer.saw(took);
            }
            let (outcome, spent) = match result {
                Ok(Ok(output)) => {
                    w.counters.record(Ended::Ok);
                    (Ok(output), false)
                }
                Ok(Err(e)) => {
                    w.counters.record(Ended::Failed);
                    (Err(e), false)
                }
                Err(p) => (Err(panicked(w, &*p)), true),
            };
            *since_init += 1;
            acknowledge(consumer, job, outcome, w);
            // The state may be half-way through something after a panic: rebuild it.
            if spent || self.recycle_after.is_some_and(|n| *since_init >= n) {
                return Served::StateSpent;
            }
        }
    }
}

/// Counts and reports a job's panic; the job is reported failed to its source.
#[cold]
#[inline(never)]
fn panicked(w: &Worker<'_>, payload: &(dyn Any + Send)) -> JobError {
    w.counters.record(Ended::Panicked);
    let message = panic_message(payload);
    w.report(ErrorKind::JobPanic, message.clone(), Duration::ZERO);
    JobError::panicked(message)
}

/// Hands the outcome to the source. The common case is one call that succeeds; retrying is
/// kept out of line so the hot path does not carry it.
#[inline]
fn acknowledge<C: Consumer>(
    consumer: &mut C,
    job: C::Job,
    outcome: Result<C::Output, JobError>,
    w: &Worker<'_>,
) {
    if let Err(unacked) = consumer.complete(job, outcome) {
        acknowledge_with_retries(consumer, unacked, w);
    }
}

/// Retries a completion with back-off while the source fails. While the pool is stopping it
/// gives up after a few tries: the source keeps the job recoverable (the Redis source leaves it
/// in the worker's processing list for the reaper).
#[cold]
#[inline(never)]
fn acknowledge_with_retries<C: Consumer>(
    consumer: &mut C,
    mut unacked: Unacked<C::Job, C::Output>,
    w: &Worker<'_>,
) {
    const TRIES_WHILE_STOPPING: u32 = 3;
    let backoff = w.pool.config.backoff;
    let mut failures = 0;
    loop {
        failures += 1;
        let delay = backoff.delay(failures);
        if w.pool.is_stopping() && failures >= TRIES_WHILE_STOPPING {
            log::error!(
                "{}: giving up acknowledging a job while stopping: {}",
                w.info.name(),
                unacked.error
            );
            return;
        }
        w.report(ErrorKind::Source, unacked.error.to_string(), delay);
        std::thread::sleep(delay);
        match consumer.complete(unacked.job, unacked.outcome) {
            Ok(()) => return,
            Err(again) => unacked = again,
        }
    }
}

/// The body of a worker thread. The monitor has already counted it in `alive` and `live`.
pub(crate) fn main(pool: Arc<PoolShared>, queue_index: usize, info: WorkerInfo) {
    mark_pool_thread(pool.id);
    let queue = &pool.queues[queue_index];
    let counters = Arc::new(Counters::default());
    queue.register(Arc::from(info.name()), Arc::clone(&counters));
    let worker = Worker {
        pool: &pool,
        queue,
        info,
        counters,
    };
    // Whatever happens below, even a panic of a source, the counts are put right.
    let mut guard = ExitGuard {
        worker: &worker,
        reason: None,
    };
    log::debug!("{}: started", worker.info.name());
    pool.events.on_worker_start(&WorkerEvent {
        queue: queue.name().to_owned(),
        worker: worker.info.name().to_owned(),
        exit: None,
    });
    let runner = Arc::clone(&queue.config.runner);
    guard.reason = Some(runner.run(&worker));
}

struct ExitGuard<'a, 'b> {
    worker: &'a Worker<'b>,
    reason: Option<ExitReason>,
}

impl Drop for ExitGuard<'_, '_> {
    fn drop(&mut self) {
        let w = self.worker;
        // A retiring worker already took itself out of `alive` in `try_retire`.
        if self.reason != Some(ExitReason::Retired) {
            w.queue.alive.fetch_sub(1, Ordering::AcqRel);
        }
        let reason = self.reason.unwrap_or(ExitReason::Shutdown);
        if self.reason.is_none() {
            log::error!("{}: worker thread panicked outside a job", w.info.name());
        }
        w.queue.unregister(&w.counters);
        w.queue.retired.fetch_add(1, Ordering::Relaxed);
        w.queue.live.fetch_sub(1, Ordering::AcqRel);
        w.pool.total_live.fetch_sub(1, Ordering::AcqRel);
        log::debug!("{}: exited ({reason:?})", w.info.name());
        w.pool.events.on_worker_exit(&WorkerEvent {
            queue: w.queue.name().to_owned(),
            worker: w.info.name().to_owned(),
            exit: Some(reason),
        });
        w.pool.nudge();
    }
}
