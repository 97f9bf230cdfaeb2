//! Events the pool reports to an optional [`EventHandler`].
//!
//! Every method has a no-op default, so a handler implements only what it watches. Handlers run
//! on the pool's own threads (the monitor or a worker) and should return quickly: hand the
//! event to a channel or a metrics registry, do not block.

use std::time::Duration;

/// Why the target of a queue changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScaleReason {
    /// More threads: the backlog grew (applied at once).
    Up,
    /// Fewer threads: the backlog stayed low for the stabilisation window.
    Down,
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
    /// The thread's name, `{prefix}-{queue}-{n}`.
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
    /// The job source failed (fetch, acknowledgement, or backlog); retried with back-off.
    Source,
    /// An executor panicked; the job was reported failed and the worker's state rebuilt.
    JobPanic,
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
    /// The error or panic message. Never contains a job payload.
    pub message: String,
    /// How long the pool waits before trying again (zero for a panic: the job is reported
    /// failed at once and the worker's state rebuilt).
    pub retry_in: Duration,
}

/// Receives the pool's events. All methods default to doing nothing.
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
