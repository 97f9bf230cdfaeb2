//! Events the pool reports to an optional [`EventHandler`].
//!
//! Every method has a no-op default, so a handler implements only what it watches. Handlers run
//! on the pool's own threads (the monitor or a worker) and should return quickly: hand the
//! event to a channel or a metrics registry, do not block.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why the target of a queue changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScaleReason {
    /// More threads: the backlog grew (applied at once).
    Up,
    /// Fewer threads, for the queue's own reasons: its demand is lower and either stayed
    /// lower for the stabilisation window
    /// ([`scale_down_delay`](crate::Builder::scale_down_delay)), or the queue now has fewer
    /// threads than the window would hold (a hold keeps only threads that exist, so after a
    /// worker exits, retired or dead, the target falls to what is left or to the demand).
    Down,
    /// Fewer threads although this queue would keep more on its own: the total cap
    /// ([`max_total_threads`](crate::Builder::max_total_threads)) binds and another queue's
    /// demand takes threads this queue was holding, or its fair share shrank.
    Shared,
}

impl ScaleReason {
    /// Words for the log line.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            ScaleReason::Up => "backlog grew",
            ScaleReason::Down => {
                "demand stayed lower for the stabilisation window, or held threads are gone"
            }
            ScaleReason::Shared => "total cap reached: threads go to another queue",
        }
    }
}

/// A scaling decision of the monitor for one queue.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScaleEvent {
    /// The queue's name.
    pub queue: String,
    /// Jobs waiting when the decision was taken.
    pub backlog: usize,
    /// Target before the decision.
    pub from: usize,
    /// Target after the decision.
    pub to: usize,
    /// Why it changed.
    pub reason: ScaleReason,
}

/// Why a worker thread exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// The queue was scaled down; the worker was between jobs.
    Retired,
    /// The pool is shutting down.
    Shutdown,
}

/// A worker thread started or exited.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerEvent {
    /// The queue the worker serves.
    pub queue: String,
    /// The worker's name, `{prefix}-{queue}-{n}` (its OS thread shows it shortened to 15
    /// bytes; see [`Builder::thread_name_prefix`](crate::Builder::thread_name_prefix)).
    pub worker: String,
    /// Set on exit only.
    pub exit: Option<ExitReason>,
}

/// What failed, in an [`ErrorEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The queue's `init` closure failed (returned an error or panicked); retried with back-off.
    Init,
    /// The job source failed or one of its methods panicked (fetch, acknowledgement,
    /// suspend, consumer, or backlog); retried with back-off.
    Source,
    /// An executor panicked; the job was reported failed and the worker's state rebuilt.
    JobPanic,
    /// The operating system refused to start a worker thread (see
    /// [`Builder::stack_size`](crate::Builder::stack_size)); retried with back-off.
    Spawn,
    /// A worker's state failed its [`health_check`](crate::Queue::health_check) (returned an
    /// error or panicked); the state was dropped and is rebuilt before the next job (at once,
    /// or after `retry_in` when it failed again before running a job).
    HealthCheck,
}

/// Something went wrong and the pool is handling it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorEvent {
    /// What failed.
    pub kind: ErrorKind,
    /// The queue concerned.
    pub queue: String,
    /// The thread it happened on (the monitor's name for backlog errors).
    pub worker: String,
    /// The error message. For [`ErrorKind::JobPanic`] it is the panic message exactly as the
    /// executor wrote it, which may quote the job: treat it like a payload (the pool logs it
    /// only at `trace`). Other kinds carry the message of the error the pool met, which the
    /// pool itself never fills with a payload.
    pub message: String,
    /// How long the pool waits before trying again (zero for a panic: the job is reported
    /// failed at once and the worker's state rebuilt).
    pub retry_in: Duration,
}

/// Receives the pool's events. All methods default to doing nothing.
///
/// A handler that panics does not hurt the pool: the panic is caught, logged at `error` and
/// counted in [`PoolStats::handler_panics`](crate::PoolStats::handler_panics), and the pool
/// goes on (the event is lost for that handler).
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use threadtide::{EventHandler, ScaleEvent};
///
/// #[derive(Default)]
/// struct CountScaling(AtomicUsize);
///
/// impl EventHandler for CountScaling {
///     fn on_scale(&self, _event: &ScaleEvent) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
pub trait EventHandler: Send + Sync + 'static {
    /// The monitor changed a queue's target.
    fn on_scale(&self, event: &ScaleEvent) {
        let _ = event;
    }

    /// A worker thread started (before its `init` runs).
    fn on_worker_start(&self, event: &WorkerEvent) {
        let _ = event;
    }

    /// A worker thread is exiting; its state has been dropped.
    fn on_worker_exit(&self, event: &WorkerEvent) {
        let _ = event;
    }

    /// An init failure, a source error or a job panic.
    fn on_error(&self, event: &ErrorEvent) {
        let _ = event;
    }
}

/// The handler used when none is set.
#[derive(Debug, Default)]
pub(crate) struct NoEvents;

impl EventHandler for NoEvents {}

/// The host's handler behind a guard: a panic in it is caught, logged and counted, so that no
/// callback can end the monitor or a worker outside a job. Every event of the pool, and of a
/// source's own threads (through [`PoolInfo`](crate::PoolInfo)), goes through it.
pub(crate) struct Guarded {
    inner: Box<dyn EventHandler>,
    panics: AtomicU64,
}

impl Guarded {
    pub(crate) fn new(inner: Box<dyn EventHandler>) -> Self {
        Guarded {
            inner,
            panics: AtomicU64::new(0),
        }
    }

    /// How many calls of the handler panicked.
    pub(crate) fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    fn call(&self, method: &str, f: impl FnOnce(&dyn EventHandler)) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(&*self.inner))) {
            self.panics.fetch_add(1, Ordering::Relaxed);
            log::error!("the event handler panicked in {method}; the pool goes on");
            crate::threads::drop_payload(payload);
        }
    }
}

impl EventHandler for Guarded {
    fn on_scale(&self, event: &ScaleEvent) {
        self.call("on_scale", |h| h.on_scale(event));
    }
    fn on_worker_start(&self, event: &WorkerEvent) {
        self.call("on_worker_start", |h| h.on_worker_start(event));
    }
    fn on_worker_exit(&self, event: &WorkerEvent) {
        self.call("on_worker_exit", |h| h.on_worker_exit(event));
    }
    fn on_error(&self, event: &ErrorEvent) {
        self.call("on_error", |h| h.on_error(event));
    }
}
