//! A worker's handle on the in-memory source: the hot fetch, the idle wait, and how each
//! outcome settles.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use crossbeam_utils::CachePadded;

use super::retry::Envelope;
use super::sleep::Slept;
use super::{Completed, DeadLetter, DeadReason, Shared};
use crate::error::{JobError, SourceError};
use crate::source::{Consumer, FetchContext, Unacked};

/// A worker's handle on a [`MemorySource`](super::MemorySource), built by
/// [`JobSource::consumer`](crate::JobSource::consumer).
pub struct MemoryConsumer<T, O> {
    pub(super) shared: Arc<Shared<T, O>>,
    /// Runs of the job in hand, this one included.
    pub(super) attempts: u32,
    /// Jobs this consumer settled; it is the only writer.
    pub(super) settled: Arc<CachePadded<AtomicUsize>>,
}

impl<T, O> Drop for MemoryConsumer<T, O> {
    fn drop(&mut self) {
        let mut all = self.shared.settled.lock();
        all.retain(|c| !Arc::ptr_eq(c, &self.settled));
        // Under the lock, so a concurrent `unfinished` sees it in exactly one place.
        self.shared
            .settled_by_dropped
            .fetch_add(self.settled.load(Ordering::Acquire), Ordering::AcqRel);
    }
}

impl<T, O> fmt::Debug for MemoryConsumer<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, O: Send + 'static> MemoryConsumer<T, O> {
    /// Takes a ready retry, after promoting those whose back-off has passed (and waking a
    /// sleeping consumer for each one promoted).
    #[cold]
    #[inline(never)]
    fn take_retry(&mut self) -> Option<T> {
        self.shared.promote_due();
        let envelope = self.shared.retries.try_take()?;
        Some(self.retry(envelope))
    }

    fn retry(&mut self, envelope: Envelope<T>) -> T {
        self.attempts = envelope.attempts + 1;
        envelope.job
    }

    /// The job's first run.
    #[inline(always)]
    fn fresh(&mut self, job: T) -> T {
        self.attempts = 1;
        job
    }

    /// The queue stayed empty through the spin: sleep (`sleep.rs`) until a push or a promoted
    /// retry rings, a delayed retry falls due, the fetch is interrupted, or its deadline
    /// passes. Uses the public [`FetchContext`] and nothing else.
    #[cold]
    #[inline(never)]
    fn wait(&mut self, cx: &FetchContext<'_>) -> Option<T> {
        let shared = Arc::clone(&self.shared);
        loop {
            if cx.remaining().is_zero() {
                return None;
            }
            let limit = shared.retries.time_to_next_due().unwrap_or(Duration::MAX);
            let has_work = || !shared.rx.is_empty() || !shared.retries.none_ready();
            if shared.sleep.sleep(cx, limit, has_work) == Slept::Interrupted {
                return None;
            }
            if shared.retries.any_pending()
                && let Some(job) = self.take_retry()
            {
                return Some(job);
            }
            // Takes a job at once, or spins a few microseconds (see `fetch`).
            if let Ok(job) = shared.rx.recv_deadline(shared.epoch) {
                return Some(self.fresh(job));
            }
        }
    }

    /// Every outcome but a success whose result is not kept. Returns whether the job is settled
    /// (false: it waits for a retry).
    #[cold]
    #[inline(never)]
    fn settle_slow(&mut self, job: T, outcome: Result<O, JobError>) -> bool {
        let shared = &*self.shared;
        let attempts = self.attempts;
        match outcome {
            Ok(output) => {
                if let Some((tx, _)) = &shared.results {
                    let _ = tx.send(Completed {
                        job,
                        output,
                        attempts,
                    });
                }
            }
            Err(e) if e.is_retryable() && attempts < shared.max_attempts => {
                shared.retries.delay(Envelope { job, attempts });
                return false;
            }
            Err(e) => {
                let reason = if e.is_retryable() {
                    DeadReason::AttemptsExhausted
                } else {
                    DeadReason::Permanent
                };
                shared.dead.lock().push(DeadLetter {
                    job,
                    reason,
                    error: e.to_string(),
                    attempts,
                });
            }
        }
        true
    }
}

impl<T: Send + 'static, O: Send + 'static> Consumer for MemoryConsumer<T, O> {
    type Job = T;
    type Output = O;

    #[inline(always)]
    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<T>, SourceError> {
        if self.shared.retries.any_pending()
            && let Some(job) = self.take_retry()
        {
            return Ok(Some(job));
        }
        // A deadline already past makes `recv_deadline` crossbeam's own receive loop: take a
        // ready job, else spin and yield for a few microseconds (so a burst arriving a little
        // faster than it is drained never puts workers to sleep), then give up. It is the same
        // code the bare-channel floor runs; `try_recv` measured three times its instructions.
        match self.shared.rx.recv_deadline(self.shared.epoch) {
            Ok(job) => Ok(Some(self.fresh(job))),
            Err(RecvTimeoutError::Timeout) => Ok(self.wait(cx)),
            Err(RecvTimeoutError::Disconnected) => unreachable!("the source holds a sender"),
        }
    }

    #[inline(always)]
    fn complete(&mut self, job: T, outcome: Result<O, JobError>) -> Result<(), Unacked<T, O>> {
        let settled = match outcome {
            Ok(_) if self.shared.results.is_none() => true,
            outcome => self.settle_slow(job, outcome),
        };
        if settled {
            // Single writer: a plain load and store, no locked read-modify-write.
            let n = self.settled.load(Ordering::Relaxed) + 1;
            self.settled.store(n, Ordering::Release);
        }
        Ok(())
    }
}
