//! The worker thread, top-down: [`main`] sets it up, [`run`] builds its consumer and state and
//! retries them with back-off, [`serve`] is the hot loop (fetch, run under `catch_unwind`,
//! acknowledge), and a worker retires only between jobs.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::counters::{Counters, Ended, JobTimer};
use crate::error::{JobError, SourceError};
use crate::event::{ErrorEvent, ErrorKind, EventHandler, ExitReason, WorkerEvent};
use crate::lifecycle::{self, FailedChecks, Life};
use crate::outage::{Line, Outage};
use crate::queue::Handlers;
pub(crate) use crate::runner::{Runner, close_source};
use crate::source::{Consumer, FetchContext, JobSource, Unacked, WorkerInfo};
use crate::state::{PoolShared, QueueState};
use crate::threads::{self, drop_payload, panic_message};

/// What a worker thread knows about itself and its pool.
pub(crate) struct Worker<'a> {
    pub(crate) pool: &'a PoolShared,
    pub(crate) queue: &'a QueueState,
    pub(crate) info: WorkerInfo,
    pub(crate) counters: Arc<Counters>,
    /// Set when this worker took itself out of `alive` ([`try_retire`](Self::try_retire)).
    retired: Cell<bool>,
    /// Set while this worker counts in its queue's `starting` (from the spawn, which counted
    /// it, to the end of its first `init`; then during each rebuild).
    starting: Cell<bool>,
}

/// The body of a worker thread. The monitor has already counted it (`QueueState::enlist`).
pub(crate) fn main(
    pool: Arc<PoolShared>,
    runner: Arc<dyn Runner>,
    queue_index: usize,
    info: WorkerInfo,
    counters: Arc<Counters>,
) {
    threads::mark_pool_thread(pool.id);
    threads::mark_worker_thread(&counters);
    let queue = &pool.queues[queue_index];
    let worker = Worker {
        pool: &pool,
        queue,
        info,
        counters,
        retired: Cell::new(false),
        starting: Cell::new(true),
    };
    // Whatever happens below, even a panic outside the guarded calls, the counts are put right.
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
    guard.reason = Some(runner.run(&worker));
}

/// Builds the worker's consumer and state, retrying each with back-off, and serves jobs until
/// the worker must leave.
pub(crate) fn run<H: Handlers>(h: &H, w: &Worker<'_>) -> ExitReason {
    let backoff = w.pool.config.backoff;
    let mut consumer: Option<<H::Source as JobSource>::Consumer> = None;
    let mut state: Option<H::State> = None;
    let mut init_failures = 0u32;
    let mut outage = Outage::default();
    let mut loop_state = Counts {
        timer: JobTimer::new(),
        since_init: 0,
    };
    // The current state's info (its generation) and limits.
    let mut info = w.info.clone();
    let mut life = Life::default();
    let mut built = 0u64;
    let mut failed_checks = FailedChecks::default();
    let exit = loop {
        if let Some(reason) = w.should_exit() {
            break reason;
        }
        let Some(c) = consumer.as_mut() else {
            let message = match catch_unwind(AssertUnwindSafe(|| h.source().consumer(&w.info))) {
                Ok(Ok(c)) => {
                    consumer = Some(c);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(p) => panicked_source(w, p, "consumer"),
            };
            let delay = backoff.delay(outage.errors().saturating_add(1));
            w.source_failed(&mut outage, message, delay);
            if let Some(reason) = w.pause(delay) {
                break reason;
            }
            continue;
        };
        let Some(st) = state.as_mut() else {
            // The start ramp and the memory gate: wait for a turn, holding no job.
            let turn = match lifecycle::init_turn(w, built == 0) {
                Ok(turn) => turn,
                Err(reason) => break reason,
            };
            info.set_generation(built);
            let init_started = std::time::Instant::now();
            let result = catch_unwind(AssertUnwindSafe(|| h.init(&info)));
            drop(turn);
            w.started();
            let message = match result {
                Ok(Ok(s)) => {
                    w.queue.init_times.record(init_started.elapsed());
                    let now = Instant::now();
                    life = Life::new(
                        &w.queue.config,
                        h.hooks().health.is_some(),
                        info.index(),
                        built,
                        now,
                    );
                    state = Some(s);
                    built += 1;
                    loop_state.since_init = 0;
                    init_failures = 0;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(p) => {
                    let m = panic_message(&*p);
                    drop_payload(p);
                    m
                }
            };
            init_failures = init_failures.saturating_add(1);
            let delay = backoff.delay(init_failures);
            w.suspend(c, &mut outage);
            w.report(ErrorKind::Init, message, delay);
            if let Some(reason) = w.pause(delay) {
                break reason;
            }
            continue;
        };
        // A panic of the source's `fetch` or `complete` unwinds out of `serve` (a job's panic
        // is caught inside): the consumer may be broken, so it is dropped and rebuilt.
        let served = catch_unwind(AssertUnwindSafe(|| {
            serve(h, w, c, st, &info, &mut life, &mut loop_state, &mut outage)
        }));
        match served {
            Ok(Served::Exit(reason)) => break reason,
            Ok(Served::StateSpent) => {
                // No job may wait hidden in the consumer while `init` runs again.
                w.suspend(c, &mut outage);
                drop_state(&mut state, w);
                failed_checks.reset();
            }
            Ok(Served::Recycle) => {
                w.suspend(c, &mut outage);
                failed_checks.reset();
                w.queue.recycles.fetch_add(1, Ordering::Relaxed);
                lifecycle::carry_or_drop(h, w, &mut state, &info);
            }
            Ok(Served::Unhealthy { message, panicked }) => {
                w.suspend(c, &mut outage);
                let delay = failed_checks.fail(loop_state.since_init, backoff);
                w.queue
                    .health_check_failures
                    .fetch_add(1, Ordering::Relaxed);
                w.report(ErrorKind::HealthCheck, message, delay);
                // A check that panicked may have left the state half-changed: not carried,
                // as after a job's panic.
                if panicked {
                    drop_state(&mut state, w);
                } else {
                    lifecycle::carry_or_drop(h, w, &mut state, &info);
                }
                if let Some(reason) = w.pause(delay) {
                    break reason;
                }
            }
            Ok(Served::SourceFailed(e)) => {
                let delay = backoff.delay(outage.errors().saturating_add(1));
                w.source_failed(&mut outage, e.to_string(), delay);
                w.suspend(c, &mut outage);
                if let Some(reason) = w.pause(delay) {
                    break reason;
                }
            }
            Err(p) => {
                w.counters.busy.store(false, Ordering::Release);
                let message = panicked_source(w, p, "fetch or complete");
                drop_guarded(consumer.take(), w);
                let delay = backoff.delay(outage.errors().saturating_add(1));
                w.source_failed(&mut outage, message, delay);
                if let Some(reason) = w.pause(delay) {
                    break reason;
                }
            }
        }
    };
    if let Some(c) = consumer.as_mut() {
        w.suspend(c, &mut outage);
    }
    lifecycle::carry_or_drop(h, w, &mut state, &info);
    drop_guarded(consumer, w);
    exit
}

/// What the job loop keeps across its runs: a source error leaves `serve` but keeps these.
struct Counts {
    timer: JobTimer,
    /// Jobs run on the current state, for `recycle_after`.
    since_init: u64,
}

/// Why a worker left its job loop.
pub(crate) enum Served {
    /// The pool is stopping or the queue has a worker too many.
    Exit(ExitReason),
    /// A job panicked: the state is dropped (not carried over) and rebuilt.
    StateSpent,
    /// The state reached its job or age limit: carried over and rebuilt.
    Recycle,
    /// The state failed its health check (the message says why): carried over and rebuilt,
    /// or only dropped and rebuilt if the check panicked (the state may be half-changed).
    Unhealthy { message: String, panicked: bool },
    /// The source failed to fetch.
    SourceFailed(SourceError),
}

/// The hot loop: with a consumer and a state in hand, fetch, run and acknowledge jobs until the
/// worker must leave or its state must be rebuilt. Everything set up once per worker stays out
/// of it, so a no-op job costs little more than the channel hand-off; the lifecycle costs one
/// branch (`life.watch`) when no age limit and no health check are set.
#[allow(clippy::too_many_arguments)]
fn serve<H: Handlers>(
    h: &H,
    w: &Worker<'_>,
    consumer: &mut <H::Source as JobSource>::Consumer,
    st: &mut H::State,
    info: &WorkerInfo,
    life: &mut Life,
    counts: &mut Counts,
    outage: &mut Outage,
) -> Served {
    let job_limit = life.jobs;
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
        // Before the fetch, so that no job is held while the state is rebuilt.
        if life.watch
            && let Some(rebuild) = lifecycle::between_jobs(h, w, st, info, life)
        {
            return rebuild;
        }
        cx.rearm();
        let job = match consumer.fetch(&cx) {
            Ok(Some(job)) => job,
            Ok(None) => {
                if outage.is_down() {
                    w.source_back(outage);
                }
                continue;
            }
            Err(e) => return Served::SourceFailed(e),
        };
        if outage.is_down() {
            w.source_back(outage);
        }

        // An untimed job's start is stamped by the monitor within one tick (0 = unknown).
        let started = counts.timer.next().then(Instant::now);
        let since = started.map_or(0, |s| w.pool.ns_since_epoch(s).max(1));
        w.counters.busy_since_ns.store(since, Ordering::Relaxed);
        w.counters.busy.store(true, Ordering::Release);
        let result = catch_unwind(AssertUnwindSafe(|| h.exec(st, &job)));
        w.counters.busy.store(false, Ordering::Release);
        if let Some(started) = started {
            let took = started.elapsed();
            w.counters.record_time(took);
            counts.timer.saw(took);
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
            Err(p) => (Err(job_panicked(w, p)), true),
        };
        counts.since_init += 1;
        acknowledge(consumer, job, outcome, w, outage);
        // The state may be half-way through something after a panic: rebuild it.
        if spent || counts.since_init >= job_limit {
            return if spent {
                Served::StateSpent
            } else {
                Served::Recycle
            };
        }
    }
}

/// Hands the outcome to the source. The common case is one call that succeeds; retrying is
/// kept out of line so the hot path does not carry it.
#[inline]
fn acknowledge<C: Consumer>(
    consumer: &mut C,
    job: C::Job,
    outcome: Result<C::Output, JobError>,
    w: &Worker<'_>,
    outage: &mut Outage,
) {
    if let Err(unacked) = consumer.complete(job, outcome) {
        acknowledge_with_retries(consumer, unacked, w, outage);
    }
}

/// Retries a completion with back-off while the source fails; the pause wakes at once on stop.
/// While the pool is stopping it gives up after a few tries: the source keeps the job
/// recoverable (the Redis source leaves it in the worker's processing list for the reaper).
#[cold]
#[inline(never)]
fn acknowledge_with_retries<C: Consumer>(
    consumer: &mut C,
    mut unacked: Unacked<C::Job, C::Output>,
    w: &Worker<'_>,
    outage: &mut Outage,
) {
    const TRIES_WHILE_STOPPING: u32 = 3;
    let backoff = w.pool.config.backoff;
    let mut failures = 0;
    loop {
        failures += 1;
        if w.pool.is_stopping() && failures >= TRIES_WHILE_STOPPING {
            log::error!(
                "{}: giving up acknowledging a job while stopping: {}",
                w.info.name(),
                unacked.error
            );
            return;
        }
        let delay = if w.pool.is_stopping() {
            Duration::ZERO
        } else {
            backoff.delay(failures)
        };
        w.source_failed(outage, unacked.error.to_string(), delay);
        w.pool.sleep_unless_stopped(delay);
        match consumer.complete(unacked.job, unacked.outcome) {
            Ok(()) => {
                w.source_back(outage);
                return;
            }
            Err(again) => unacked = again,
        }
    }
}

/// Counts and reports a job's panic; the job is reported failed to its source.
#[cold]
#[inline(never)]
fn job_panicked(w: &Worker<'_>, payload: Box<dyn std::any::Any + Send>) -> JobError {
    w.counters.record(Ended::Panicked);
    let message = panic_message(&*payload);
    drop_payload(payload);
    w.report(ErrorKind::JobPanic, message.clone(), Duration::ZERO);
    JobError::panicked(message)
}

/// The message for a panic of a source's method: it says what panicked; the panic's own text,
/// which may quote the job (a `complete` panic often does), is logged at trace only, as a
/// job's panic message is.
#[cold]
fn panicked_source(w: &Worker<'_>, payload: Box<dyn std::any::Any + Send>, method: &str) -> String {
    log::trace!(
        "{}: the source's {method} panic message: {}",
        w.info.name(),
        panic_message(&*payload)
    );
    drop_payload(payload);
    format!("the source's {method} panicked (the panic message is logged at trace)")
}

impl Worker<'_> {
    /// Commits this worker to retiring if its queue has a worker too many, and remembers it,
    /// so that its exit does not take it out of `alive` a second time.
    #[inline(always)]
    pub(crate) fn try_retire(&self) -> bool {
        let retired = self.queue.try_retire();
        if retired {
            self.retired.set(true);
        }
        retired
    }

    /// Counts this worker in its queue's `starting` (for a rebuild: its spawn counted it for
    /// the first `init`).
    pub(crate) fn starting(&self) {
        if !self.starting.replace(true) {
            self.queue.starting.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Takes this worker out of `starting`: its `init` returned, or it leaves.
    pub(crate) fn started(&self) {
        if self.starting.replace(false) {
            self.queue.starting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Leaves the loop if the pool is stopping or the queue has a worker too many.
    #[inline(always)]
    pub(crate) fn should_exit(&self) -> Option<ExitReason> {
        if self.pool.is_stopping() {
            Some(ExitReason::Shutdown)
        } else if self.try_retire() {
            Some(ExitReason::Retired)
        } else {
            None
        }
    }

    /// Waits out a back-off of `delay`. Only a stop or this worker's own retirement cuts it
    /// short, and then it says why the worker must leave; a wake-up for a retirement that
    /// another worker already took is ignored.
    pub(crate) fn pause(&self, delay: Duration) -> Option<ExitReason> {
        let deadline = Instant::now().checked_add(delay);
        loop {
            let left = deadline.map_or(delay, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return None;
            }
            select! {
                recv(self.pool.stop_rx) -> _ => return Some(ExitReason::Shutdown),
                recv(self.queue.wake_rx) -> _ => {
                    if self.try_retire() {
                        return Some(ExitReason::Retired);
                    }
                }
                default(left) => return None,
            }
        }
    }

    /// Tells the consumer the worker will not fetch for a while (back-off, rebuild, exit).
    /// A failure is a source error of the current outage (logged as [`Outage`] allows).
    fn suspend<C: Consumer>(&self, consumer: &mut C, outage: &mut Outage) {
        let message = match catch_unwind(AssertUnwindSafe(|| consumer.suspend())) {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(p) => panicked_source(self, p, "suspend"),
        };
        self.source_failed(outage, message, Duration::ZERO);
    }

    /// A source error: counted, an event every time, a log line as [`Outage`] allows.
    fn source_failed(&self, outage: &mut Outage, message: String, retry_in: Duration) {
        self.queue.source_errors.fetch_add(1, Ordering::Relaxed);
        let name = self.info.name();
        match outage.failed(Instant::now()) {
            Line::Lost => log::warn!(
                "{name}: lost its job source ({message}); retrying in {retry_in:?}, \
                 then with back-off"
            ),
            Line::Still { down_for, errors } => log::warn!(
                "{name}: job source still failing after {down_for:?} ({errors} errors, \
                 last: {message}); retrying in {retry_in:?}"
            ),
            Line::Quiet => {}
        }
        self.emit(ErrorKind::Source, message, retry_in);
    }

    #[cold]
    #[inline(never)]
    fn source_back(&self, outage: &mut Outage) {
        if let Some((down_for, errors)) = outage.recovered(Instant::now()) {
            log::info!(
                "{}: job source is back after {down_for:?} ({errors} errors)",
                self.info.name()
            );
        }
    }

    /// Reports an init failure, a failed health check or a job panic: logged, and an event
    /// (an init failure also counted here). (Source errors
    /// go through [`source_failed`](Self::source_failed).)
    pub(crate) fn report(&self, kind: ErrorKind, message: String, retry_in: Duration) {
        let name = self.info.name();
        match kind {
            ErrorKind::Init => {
                self.queue.init_failures.fetch_add(1, Ordering::Relaxed);
                log::warn!("{name}: worker init failed ({message}); retrying in {retry_in:?}");
            }
            ErrorKind::HealthCheck => {
                log::warn!(
                    "{name}: worker state failed its health check ({message}); rebuilding it \
                     in {retry_in:?}"
                );
            }
            _ => {
                // The message may quote the job: only at trace, as payloads are.
                log::warn!(
                    "{name}: job panicked; reported failed to its source, state rebuilt \
                     (the panic message is logged at trace)"
                );
                log::trace!("{name}: job panic message: {message}");
            }
        }
        self.emit(kind, message, retry_in);
    }

    fn emit(&self, kind: ErrorKind, message: String, retry_in: Duration) {
        self.pool.events.on_error(&ErrorEvent {
            kind,
            queue: self.queue.name().to_owned(),
            worker: self.info.name().to_owned(),
            message,
            retry_in,
        });
    }
}

/// Drops a worker's state, surviving a `Drop` that panics (a browser that fails to close).
pub(crate) fn drop_state<St>(state: &mut Option<St>, w: &Worker<'_>) {
    drop_guarded(state.take(), w);
}

/// Drops a value (a state, a consumer), surviving a `Drop` that panics.
pub(crate) fn drop_guarded<T>(value: Option<T>, w: &Worker<'_>) {
    if let Some(v) = value
        && let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(v)))
    {
        // The panic's text may quote a job: at trace only.
        log::error!(
            "{}: a drop panicked (a worker's state or consumer; the panic message is logged \
             at trace)",
            w.info.name()
        );
        log::trace!(
            "{}: drop panic message: {}",
            w.info.name(),
            panic_message(&*p)
        );
        drop_payload(p);
    }
}

struct ExitGuard<'a, 'b> {
    worker: &'a Worker<'b>,
    reason: Option<ExitReason>,
}

impl Drop for ExitGuard<'_, '_> {
    fn drop(&mut self) {
        let w = self.worker;
        let reason = self.reason.unwrap_or(ExitReason::Shutdown);
        if self.reason.is_none() {
            log::error!("{}: worker thread panicked outside a job", w.info.name());
        }
        w.started();
        // A retiring worker already took itself out of `alive` in `try_retire`: the flag, not
        // the exit reason, says so, since a panic may come after the retirement was taken.
        w.queue.leave(w.pool, &w.counters, w.retired.get());
        log::debug!("{}: exited ({reason:?})", w.info.name());
        w.pool.events.on_worker_exit(&WorkerEvent {
            queue: w.queue.name().to_owned(),
            worker: w.info.name().to_owned(),
            exit: Some(reason),
        });
        w.pool.nudge();
    }
}
