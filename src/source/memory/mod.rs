//! The in-memory job source: the embedded default, no server needed.
//!
//! `mod.rs` holds the source, its settings and what it hands back; `consumer.rs` a worker's
//! fetch and settle; `retry.rs` the delayed and ready retries; `sleep.rs` (with its design note
//! `sleep.md`) how idle consumers sleep and how a push wakes one.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::error::{BuildError, SourceError};
use crate::source::{JobSource, WorkerInfo};

mod consumer;
mod retry;
mod sleep;

pub use consumer::MemoryConsumer;
use retry::Retries;
use sleep::Sleep;

/// A job that finished successfully, with what the executor returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Completed<T, O> {
    /// The job as it was pushed.
    pub job: T,
    /// What the executor returned.
    pub output: O,
    /// How many times it ran (1 when it succeeded at once).
    pub attempts: u32,
}

/// Why a job was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadReason {
    /// The executor returned [`JobError::permanent`](crate::JobError::permanent).
    Permanent,
    /// It failed (error or panic) on every one of `max_attempts` runs.
    AttemptsExhausted,
}

/// A job the source gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter<T> {
    /// The job as it was pushed.
    pub job: T,
    /// Why it was given up on.
    pub reason: DeadReason,
    /// The last error, as text.
    pub error: String,
    /// How many times it ran.
    pub attempts: u32,
}

type ResultChannel<T, O> = (Sender<Completed<T, O>>, Receiver<Completed<T, O>>);

struct Shared<T, O> {
    /// New jobs, as the host pushed them. The hot path is exactly a bare crossbeam channel of
    /// `T` drained by `recv`: a wrapper type (a run count, an enum for retries) measured 1.4-2x
    /// slower to dispatch, from larger slots, and so did waiting on this channel in `select!`,
    /// because crossbeam's receive path is then no longer inlined. Idle consumers therefore
    /// sleep on a bell of their own (`sleep.rs`), not on this channel.
    tx: Sender<T>,
    rx: Receiver<T>,
    /// Idle consumers and the bell that wakes them.
    sleep: Sleep,
    /// Failed jobs waiting for a retry, and retries ready to run (taken before new jobs).
    retries: Retries<T>,
    /// A moment already past: `recv_deadline(epoch)` never blocks.
    epoch: Instant,
    /// Jobs ever pushed. `unfinished = pushed - settled`: producers and workers never write
    /// the same cache line on the hot path.
    pushed: CachePadded<AtomicUsize>,
    /// Jobs settled (succeeded or dead-lettered) by each live consumer, single writer each,
    /// and by consumers since dropped.
    settled: Mutex<Vec<Arc<CachePadded<AtomicUsize>>>>,
    settled_by_dropped: AtomicUsize,
    results: Option<ResultChannel<T, O>>,
    dead: Mutex<Vec<DeadLetter<T>>>,
    max_attempts: u32,
}

impl<T, O> Shared<T, O> {
    /// Settled counts are read before `pushed`: each is monotonic and a job is pushed before it
    /// settles, so the difference never undercounts what is still unfinished.
    fn unfinished(&self) -> usize {
        let settled: usize = self.settled_by_dropped.load(Ordering::Acquire)
            + self
                .settled
                .lock()
                .iter()
                .map(|c| c.load(Ordering::Acquire))
                .sum::<usize>();
        self.pushed.load(Ordering::Acquire).saturating_sub(settled)
    }

    fn ready(&self) -> usize {
        self.rx.len() + self.retries.ready()
    }

    /// Moves the retries whose back-off has passed to the ready retries, waking a sleeping
    /// consumer for each. One atomic load while none is due. Consumers do it when they fetch;
    /// `backlog` does it too, because a queue scaled to zero has no consumer left to do it,
    /// and a due retry no one promotes is never counted, so no worker is ever spawned for it.
    fn promote_due(&self) {
        for _ in 0..self.retries.promote_due() {
            self.sleep.notify_one();
        }
    }
}

/// An in-memory FIFO job queue: the host pushes jobs of any `Send` type, the pool runs them.
///
/// Cloning gives another handle on the same queue: keep one to push and read results, give one
/// to [`Builder::queue`](crate::Builder::queue).
///
/// * **Retries**: a job whose executor fails with a retryable error or panics runs again after
///   an exponential back-off with jitter, up to `max_attempts` runs in all; then, or at once
///   for [`JobError::permanent`](crate::JobError::permanent), it is dead-lettered ([`dead_letters`](Self::dead_letters)).
///   A retry whose back-off has passed is taken before newer jobs: it has waited once already.
/// * **Idle workers sleep**: a worker finding the queue empty spins for a few microseconds,
///   then sleeps until a push wakes it (or a retry falls due, or the pool needs it): an idle
///   pool uses no CPU, and a push costs the producer one extra atomic read while no worker is
///   asleep.
/// * **Results**: with [`keep_results`](MemorySourceBuilder::keep_results), each success is
///   kept as a [`Completed`] for [`recv_result_timeout`](Self::recv_result_timeout).
/// * **Nothing lost on shutdown**: jobs not yet fetched stay in the queue; [`len`](Self::len)
///   and [`unfinished`](Self::unfinished) tell what is left.
///
/// Jobs live in this process only: for jobs that must survive a crash use the Redis source.
///
/// # Examples
///
/// ```
/// use threadtide::MemorySource;
///
/// let source: MemorySource<u32, u32> = MemorySource::builder().keep_results(true).build()?;
/// source.push(20);
/// source.extend([21, 22]);
/// assert_eq!(source.len(), 3);
/// assert_eq!(source.unfinished(), 3);
/// # Ok::<(), threadtide::BuildError>(())
/// ```
pub struct MemorySource<T, O = ()> {
    shared: Arc<Shared<T, O>>,
}

impl<T, O> Clone for MemorySource<T, O> {
    fn clone(&self) -> Self {
        MemorySource {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T, O> fmt::Debug for MemorySource<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemorySource")
            .field("len", &self.shared.ready())
            .field("unfinished", &self.shared.unfinished())
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, O: Send + 'static> Default for MemorySource<T, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource<()> {
    /// Configures a source; the job and output types are fixed by
    /// [`build`](MemorySourceBuilder::build) (usually inferred from the binding).
    pub fn builder() -> MemorySourceBuilder {
        MemorySourceBuilder::default()
    }
}

impl<T: Send + 'static, O: Send + 'static> MemorySource<T, O> {
    /// A source with the defaults of [`MemorySourceBuilder`]: 3 attempts, back-off from 100 ms
    /// to 10 s, results not kept.
    pub fn new() -> Self {
        MemorySourceBuilder::default()
            .build()
            .expect("the default settings are valid")
    }

    /// Appends a job at the tail of the queue. Never blocks.
    pub fn push(&self, job: T) {
        self.shared.pushed.fetch_add(1, Ordering::Release);
        // The receiver lives in `shared`, so the channel is never disconnected.
        let _ = self.shared.tx.send(job);
        // After the send: the handshake of `sleep.md`.
        self.shared.sleep.notify_one();
    }

    /// Appends every job of `jobs`, in order.
    pub fn extend(&self, jobs: impl IntoIterator<Item = T>) {
        for job in jobs {
            self.push(job);
        }
    }

    /// Jobs ready to be fetched, new ones and retries whose back-off has passed (the backlog
    /// the pool scales on).
    pub fn len(&self) -> usize {
        self.shared.promote_due();
        self.shared.ready()
    }

    /// Whether no job is ready to be fetched.
    pub fn is_empty(&self) -> bool {
        self.shared.promote_due();
        self.shared.rx.is_empty() && self.shared.retries.none_ready()
    }

    /// Jobs waiting for a retry.
    pub fn delayed(&self) -> usize {
        self.shared.retries.delayed()
    }

    /// Jobs pushed that have neither succeeded nor been dead-lettered: ready, running, or
    /// waiting for a retry. Zero means all work is done.
    pub fn unfinished(&self) -> usize {
        self.shared.unfinished()
    }

    /// Takes one kept result without blocking. Always `None` unless results are kept.
    pub fn try_recv_result(&self) -> Option<Completed<T, O>> {
        self.shared.results.as_ref()?.1.try_recv().ok()
    }

    /// Takes one kept result, waiting up to `timeout`. Always `None` unless results are kept.
    pub fn recv_result_timeout(&self, timeout: Duration) -> Option<Completed<T, O>> {
        self.shared.results.as_ref()?.1.recv_timeout(timeout).ok()
    }

    /// Takes every dead-lettered job so far, oldest first.
    pub fn dead_letters(&self) -> Vec<DeadLetter<T>> {
        std::mem::take(&mut *self.shared.dead.lock())
    }
}

/// Settings of a [`MemorySource`].
#[derive(Debug, Clone)]
pub struct MemorySourceBuilder {
    max_attempts: u32,
    backoff: Backoff,
    keep_results: bool,
}

impl Default for MemorySourceBuilder {
    fn default() -> Self {
        MemorySourceBuilder {
            max_attempts: 3,
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
            keep_results: false,
        }
    }
}

impl MemorySourceBuilder {
    /// Runs of a job before it is dead-lettered, the first run included. Defaults to 3;
    /// 1 means no retry; 0 is refused by `build`.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Delay before retry `n` is `initial * 2^(n-1)` capped at `max`, jittered to 50-100%.
    /// Defaults to 100 ms and 10 s. A zero `initial` retries at once.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }

    /// Keep each success as a [`Completed`] for the host to take. Defaults to `false` (outputs
    /// are dropped), so a host that never reads results does not grow memory.
    pub fn keep_results(mut self, keep: bool) -> Self {
        self.keep_results = keep;
        self
    }

    /// Builds the source.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming `max_attempts` when it is 0, or `retry_backoff` when `max` is
    /// shorter than `initial`.
    pub fn build<T: Send + 'static, O: Send + 'static>(
        self,
    ) -> Result<MemorySource<T, O>, BuildError> {
        if self.max_attempts == 0 {
            return Err(BuildError::new(
                "max_attempts",
                0,
                "must be at least 1 (1 = no retry)",
            ));
        }
        if self.backoff.max < self.backoff.initial {
            return Err(BuildError::new(
                "retry_backoff",
                format!("{:?}..{:?}", self.backoff.initial, self.backoff.max),
                "max must not be shorter than initial",
            ));
        }
        let (tx, rx) = unbounded();
        Ok(MemorySource {
            shared: Arc::new(Shared {
                tx,
                rx,
                sleep: Sleep::new(),
                retries: Retries::new(self.backoff),
                epoch: Instant::now(),
                pushed: CachePadded::new(AtomicUsize::new(0)),
                settled: Mutex::new(Vec::new()),
                settled_by_dropped: AtomicUsize::new(0),
                results: self.keep_results.then(unbounded),
                dead: Mutex::new(Vec::new()),
                max_attempts: self.max_attempts,
            }),
        })
    }
}

impl<T: Send + 'static, O: Send + 'static> JobSource for MemorySource<T, O> {
    type Job = T;
    type Output = O;
    type Consumer = MemoryConsumer<T, O>;

    /// The ready jobs ([`len`](MemorySource::len)), after moving the retries whose back-off
    /// has passed to the ready ones (so a retry falling due while the queue has no worker is
    /// seen and gets one): a few atomic reads, a short lock while a retry is due, never fails.
    fn backlog(&self) -> Result<usize, SourceError> {
        self.shared.promote_due();
        Ok(self.shared.ready())
    }

    fn consumer(&self, _worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        let settled = Arc::new(CachePadded::new(AtomicUsize::new(0)));
        self.shared.settled.lock().push(Arc::clone(&settled));
        Ok(MemoryConsumer {
            shared: Arc::clone(&self.shared),
            attempts: 0,
            settled,
        })
    }
}
