//! A queue with its types erased ([`Runner`]), so that the pool holds queues of different
//! types: the manager opens and closes its source, the monitor reads its backlog, a worker
//! runs its loop ([`crate::worker`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use crate::error::SourceError;
use crate::event::ExitReason;
use crate::queue::Handlers;
use crate::source::{JobSource, PoolInfo};
use crate::state::QueueState;
use crate::threads::{drop_payload, panic_message};
use crate::worker::{Worker, run};

/// A queue with its types erased, so that the pool holds queues of different types: the
/// manager opens and closes its source, the monitor reads its backlog, a worker runs its loop.
pub(crate) trait Runner: Send + Sync {
    /// Opens the source; a panic in it is caught and returned as an error.
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError>;
    fn backlog(&self) -> Result<usize, SourceError>;
    /// Closes the source; a panic in it is caught, and its message returned.
    fn close(&self) -> Result<(), String>;
    /// Puts running jobs back; a panic in it is caught and returned as an error.
    fn requeue_running(&self) -> Result<usize, SourceError>;
    /// The source's fleet share ([`JobSource::coordinate`]); not guarded (the monitor is).
    fn coordinate(&self, view: &crate::QueueView) -> Option<crate::FleetShare>;
    fn run(&self, worker: &Worker<'_>) -> ExitReason;
    /// Takes the queue's health check and carry-over (in `build()`), checking their state
    /// type against the queue's.
    fn install(
        &mut self,
        health: Option<crate::lifecycle::Erased>,
        carry: Option<crate::lifecycle::Erased>,
    ) -> Result<(), crate::lifecycle::WrongState>;
    /// The source's numbers for the metrics; a panic in it is caught (nothing filled in).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn metrics(&self, out: &mut crate::SourceMetrics) {
        let _ = out;
    }
}

impl<H: Handlers> Runner for H {
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError> {
        guard_source("open", || self.source().open(pool))
    }

    fn backlog(&self) -> Result<usize, SourceError> {
        self.source().backlog()
    }

    fn close(&self) -> Result<(), String> {
        catch_unwind(AssertUnwindSafe(|| self.source().close())).map_err(|p| {
            let m = panic_message(&*p);
            drop_payload(p);
            m
        })
    }

    fn requeue_running(&self) -> Result<usize, SourceError> {
        guard_source("requeue_running", || self.source().requeue_running())
    }

    fn coordinate(&self, view: &crate::QueueView) -> Option<crate::FleetShare> {
        self.source().coordinate(view)
    }

    fn run(&self, worker: &Worker<'_>) -> ExitReason {
        run(self, worker)
    }

    fn install(
        &mut self,
        health: Option<crate::lifecycle::Erased>,
        carry: Option<crate::lifecycle::Erased>,
    ) -> Result<(), crate::lifecycle::WrongState> {
        self.hooks_mut().install(health, carry)
    }

    fn metrics(&self, out: &mut crate::SourceMetrics) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| self.source().metrics(out))) {
            log::warn!("the source's metrics panicked: {}", panic_message(&*p));
            drop_payload(p);
        }
    }
}

/// Closes a queue's source; a panic in its `close` is logged and counted as a source error
/// (nothing retries a close).
pub(crate) fn close_source(q: &QueueState, runner: &dyn Runner) {
    if let Err(message) = runner.close() {
        q.source_errors.fetch_add(1, Ordering::Relaxed);
        log::error!("queue {}: the source's close panicked: {message}", q.name());
    }
}

/// Runs a source callback called on the host's thread, a panic in it becoming a
/// [`SourceError`] that names the callback.
fn guard_source<T>(
    callback: &str,
    f: impl FnOnce() -> Result<T, SourceError>,
) -> Result<T, SourceError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let m = panic_message(&*p);
        drop_payload(p);
        Err(SourceError::new(format!(
            "the source's {callback} panicked: {m}"
        )))
    })
}
