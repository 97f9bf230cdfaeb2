//! What a fetch may wait for: [`FetchContext`], the one view of the pool that every source gets,
//! the in-memory source included.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

/// What a fetch may wait for: its deadline, and the pool interrupting it because the worker
/// should retire or the pool is shutting down.
///
/// Every source, the crate's own included, sees the pool only through these methods:
///
/// * [`deadline`](Self::deadline) and [`remaining`](Self::remaining): when the fetch should
///   give up and return `Ok(None)`;
/// * [`is_interrupted`](Self::is_interrupted): a cheap check for a source that blocks in slices
///   (a socket read with a timeout);
/// * [`recv_timeout`](Self::recv_timeout): waits on a crossbeam-channel [`Receiver`] of the
///   source's own, waking at once on an interruption: a source fed by a channel, or one that
///   rings a bell when work arrives (the in-memory source does), blocks here;
/// * [`wait_timeout`](Self::wait_timeout): sleeps, waking at once on an interruption: a source
///   that polls sleeps here between polls.
///
/// The deadline is fixed the first time it is asked for, so a fetch that finds a job at once
/// never reads the clock.
///
/// # Examples
///
/// A source fed by a channel: its fetch blocks until a job, the deadline, or an interruption.
///
/// ```
/// use threadtide::{Consumer, FetchContext, JobError, SourceError, Unacked, FetchWait};
///
/// struct ChannelConsumer {
///     jobs: crossbeam_channel::Receiver<String>,
/// }
///
/// impl Consumer for ChannelConsumer {
///     type Job = String;
///     type Output = ();
///
///     fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<String>, SourceError> {
///         match cx.recv_timeout(&self.jobs, cx.remaining()) {
///             FetchWait::Ready(job) => Ok(Some(job)),
///             FetchWait::Disconnected => Err(SourceError::new("the producer is gone")),
///             // Timed out or interrupted: the worker looks at the pool and calls again.
///             _ => Ok(None),
///         }
///     }
///
///     fn complete(&mut self, _: String, _: Result<(), JobError>) -> Result<(), Unacked<String, ()>> {
///         Ok(())
///     }
/// }
/// ```
#[derive(Debug)]
pub struct FetchContext<'a> {
    timeout: Duration,
    deadline: Cell<Option<Instant>>,
    /// This fetch took a retirement request: it stays interrupted until the next fetch.
    retire_taken: Cell<bool>,
    /// One token per worker the monitor wants to retire.
    retire: &'a Receiver<()>,
    /// Disconnected when the pool stops.
    stop: &'a Receiver<()>,
    stopping: &'a AtomicBool,
}

impl<'a> FetchContext<'a> {
    #[inline]
    pub(crate) fn new(
        timeout: Duration,
        wake: &'a Receiver<()>,
        stop: &'a Receiver<()>,
        stopping: &'a AtomicBool,
    ) -> Self {
        FetchContext {
            timeout,
            deadline: Cell::new(None),
            retire_taken: Cell::new(false),
            retire: wake,
            stop,
            stopping,
        }
    }

    /// Starts a new fetch: the deadline is taken again, lazily, on its first use, and a
    /// retirement request taken by the last fetch is forgotten (the worker has acted on it).
    #[inline(always)]
    pub(crate) fn rearm(&self) {
        self.deadline.set(None);
        self.retire_taken.set(false);
    }

    /// When the fetch should give up and return `Ok(None)`: the pool's
    /// [`fetch_timeout`](crate::Builder::fetch_timeout) after the first call. Reads the clock
    /// on the first call of each fetch only.
    #[inline]
    pub fn deadline(&self) -> Instant {
        match self.deadline.get() {
            Some(d) => d,
            None => {
                let d = Instant::now()
                    .checked_add(self.timeout)
                    .unwrap_or_else(far_future);
                self.deadline.set(Some(d));
                d
            }
        }
    }

    /// Time left until the [`deadline`](Self::deadline) (zero once it has passed).
    #[inline]
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Whether the fetch should return `Ok(None)` as soon as it can: the pool is shutting down,
    /// or it has more workers than the queue needs and asks an idle one to retire.
    ///
    /// Cheap (a few atomic loads while nothing is asked: a flag and an empty channel) and
    /// never blocks. Taking a retirement
    /// request is final for this fetch: once `true`, it stays `true` until the fetch returns.
    /// A worker that returns `Ok(None)` then retires unless another worker already did.
    #[inline]
    pub fn is_interrupted(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || self.retire_taken.get() || self.take_retire()
    }

    fn take_retire(&self) -> bool {
        let taken = self.retire.try_recv().is_ok();
        self.retire_taken.set(taken);
        taken
    }

    /// Waits up to `limit`, and never past the [`deadline`](Self::deadline), for a message on
    /// `rx`, waking at once when the fetch is [interrupted](Self::is_interrupted).
    ///
    /// Returns [`FetchWait::Ready`] with the message; [`FetchWait::Interrupted`] (without taking a
    /// message) if the fetch was interrupted before or during the wait; [`FetchWait::TimedOut`] when
    /// `limit` or the deadline passed; [`FetchWait::Disconnected`] when every sender of `rx` is gone
    /// and it is empty. A zero `limit` only looks. Never panics.
    ///
    /// `rx` is a [crossbeam-channel](https://docs.rs/crossbeam-channel) 0.5 receiver, any
    /// flavour (`bounded`, `unbounded`, `never`, `after`, ...).
    pub fn recv_timeout<T>(&self, rx: &Receiver<T>, limit: Duration) -> FetchWait<T> {
        if self.is_interrupted() {
            return FetchWait::Interrupted;
        }
        let wait = limit.min(self.remaining());
        select! {
            recv(rx) -> msg => match msg {
                Ok(msg) => FetchWait::Ready(msg),
                Err(_) => FetchWait::Disconnected,
            },
            recv(self.retire) -> _ => {
                self.retire_taken.set(true);
                FetchWait::Interrupted
            }
            recv(self.stop) -> _ => FetchWait::Interrupted,
            default(wait) => FetchWait::TimedOut,
        }
    }

    /// Sleeps up to `limit`, and never past the [`deadline`](Self::deadline), waking at once
    /// when the fetch is [interrupted](Self::is_interrupted): the wait of a source that polls.
    ///
    /// Returns [`FetchWait::Interrupted`] or [`FetchWait::TimedOut`], nothing else. Never panics.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use threadtide::{FetchContext, SourceError};
    /// # fn poll_server() -> Result<Option<String>, SourceError> { Ok(None) }
    /// fn fetch(cx: &FetchContext<'_>) -> Result<Option<String>, SourceError> {
    ///     loop {
    ///         if let Some(job) = poll_server()? {
    ///             return Ok(Some(job));
    ///         }
    ///         if !cx.wait_timeout(Duration::from_millis(200)).is_timed_out()
    ///             || cx.remaining().is_zero()
    ///         {
    ///             return Ok(None); // interrupted, or the deadline passed
    ///         }
    ///     }
    /// }
    /// ```
    pub fn wait_timeout(&self, limit: Duration) -> FetchWait<std::convert::Infallible> {
        match self.recv_timeout(&crossbeam_channel::never::<()>(), limit) {
            FetchWait::Interrupted => FetchWait::Interrupted,
            _ => FetchWait::TimedOut,
        }
    }
}

/// A deadline for a `fetch_timeout` too long to add to the clock: a year, later than any real
/// wait (a worker's fetch still ends on an interruption).
#[cold]
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(365 * 86_400))
        .unwrap_or(now)
}

/// How a wait of [`FetchContext::recv_timeout`] or [`FetchContext::wait_timeout`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchWait<T> {
    /// A message arrived.
    Ready(T),
    /// The limit or the fetch's deadline passed.
    TimedOut,
    /// The pool is shutting down or asks the worker to retire: the fetch should return
    /// `Ok(None)`.
    Interrupted,
    /// Every sender of the channel is gone and it is empty.
    Disconnected,
}

impl<T> FetchWait<T> {
    /// Whether the wait ended because the fetch was interrupted.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, FetchWait::Interrupted)
    }

    /// Whether the wait ended because its limit or the deadline passed.
    pub fn is_timed_out(&self) -> bool {
        matches!(self, FetchWait::TimedOut)
    }
}
