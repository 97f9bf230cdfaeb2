//! The in-memory job source: the embedded default, no server needed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, select, unbounded};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::error::{BuildError, JobError, SourceError};
use crate::source::{Consumer, FetchContext, JobSource, Unacked, WorkerInfo};

const NO_RETRY_DUE: u64 = u64::MAX;

/// A counter on cache lines of its own: written on every job by one thread, it must not share
/// a line with what other threads read or write per job (128 bytes, as crossbeam's
/// `CachePadded`, for adjacent-line prefetch).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

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
    /// The executor returned [`JobError::permanent`].
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

struct Envelope<T> {
    job: T,
    attempts: u32,
}

struct Delayed<T> {
    due_ns: u64,
    seq: u64,
    envelope: Envelope<T>,
}

impl<T> PartialEq for Delayed<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.seq) == (other.due_ns, other.seq)
    }
}
impl<T> Eq for Delayed<T> {}
impl<T> PartialOrd for Delayed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Delayed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ns, self.seq).cmp(&(other.due_ns, other.seq))
    }
}

type ResultChannel<T, O> = (Sender<Completed<T, O>>, Receiver<Completed<T, O>>);

struct Shared<T, O> {
    tx: Sender<Envelope<T>>,
    rx: Receiver<Envelope<T>>,
    epoch: Instant,
    delayed: Mutex<(BinaryHeap<Reverse<Delayed<T>>>, u64)>,
    /// Due time of the earliest delayed retry, in ns since `epoch`; `NO_RETRY_DUE` when none.
    next_due_ns: AtomicU64,
    /// Jobs ever pushed. `unfinished = pushed - settled`: producers and workers never write
    /// the same cache line on the hot path.
    pushed: Padded,
    /// Jobs settled (succeeded or dead-lettered) by each live consumer, single writer each,
    /// and by consumers since dropped.
    settled: Mutex<Vec<Arc<Padded>>>,
    settled_by_dropped: AtomicUsize,
    results: Option<ResultChannel<T, O>>,
    dead: Mutex<Vec<DeadLetter<T>>>,
    max_attempts: u32,
    backoff: Backoff,
}

impl<T, O> Shared<T, O> {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(NO_RETRY_DUE - 1)
    }

    /// Moves due retries to the tail of the ready queue. Cheap when nothing is delayed.
    #[inline]
    fn promote_due(&self) {
        // The common case, no retry pending, reads no clock.
        let due = self.next_due_ns.load(Ordering::Acquire);
        if due == NO_RETRY_DUE || due > self.now_ns() {
            return;
        }
        let mut guard = self.delayed.lock();
        let now = self.now_ns();
        while guard.0.peek().is_some_and(|d| d.0.due_ns <= now) {
            let Reverse(d) = guard.0.pop().expect("peeked");
            // The receiver lives in `self`, so the channel is never disconnected.
            let _ = self.tx.send(d.envelope);
        }
        let next = guard.0.peek().map_or(NO_RETRY_DUE, |d| d.0.due_ns);
        self.next_due_ns.store(next, Ordering::Release);
    }

    fn delay(&self, envelope: Envelope<T>) {
        let due = self
            .now_ns()
            .saturating_add(self.backoff.delay(envelope.attempts).as_nanos() as u64);
        let mut guard = self.delayed.lock();
        guard.1 += 1;
        let seq = guard.1;
        guard.0.push(Reverse(Delayed {
            due_ns: due,
            seq,
            envelope,
        }));
        if due < self.next_due_ns.load(Ordering::Acquire) {
            self.next_due_ns.store(due, Ordering::Release);
        }
    }

    /// Settled counts are read before `pushed`: each is monotonic and a job is pushed before it
    /// settles, so the difference never undercounts what is still unfinished.
    fn unfinished(&self) -> usize {
        let settled: usize = self.settled_by_dropped.load(Ordering::Acquire)
            + self
                .settled
                .lock()
                .iter()
                .map(|c| c.0.load(Ordering::Acquire))
                .sum::<usize>();
        self.pushed
            .0
            .load(Ordering::Acquire)
            .saturating_sub(settled)
    }

    fn time_to_next_retry(&self) -> Option<Duration> {
        match self.next_due_ns.load(Ordering::Acquire) {
            NO_RETRY_DUE => None,
            due => Some(Duration::from_nanos(due.saturating_sub(self.now_ns()))),
        }
    }
}

/// An in-memory FIFO job queue: the host pushes jobs of any `Send` type, the pool runs them.
///
/// Cloning gives another handle on the same queue: keep one to push and read results, give one
/// to [`Builder::queue`](crate::Builder::queue).
///
/// * **Retries**: a job whose executor fails with a retryable error or panics is queued again
///   after an exponential back-off with jitter, up to `max_attempts` runs in all; then, or at once
///   for [`JobError::permanent`], it is dead-lettered ([`dead_letters`](Self::dead_letters)).
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
            .field("len", &self.shared.rx.len())
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
        self.shared.pushed.0.fetch_add(1, Ordering::Release);
        // The receiver lives in `shared`, so the channel is never disconnected.
        let _ = self.shared.tx.send(Envelope { job, attempts: 0 });
    }

    /// Appends every job of `jobs`, in order.
    pub fn extend(&self, jobs: impl IntoIterator<Item = T>) {
        for job in jobs {
            self.push(job);
        }
    }

    /// Jobs ready to be fetched (the backlog the pool scales on).
    pub fn len(&self) -> usize {
        self.shared.rx.len()
    }

    /// Whether no job is ready to be fetched.
    pub fn is_empty(&self) -> bool {
        self.shared.rx.is_empty()
    }

    /// Jobs waiting for a retry.
    pub fn delayed(&self) -> usize {
        self.shared.delayed.lock().0.len()
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
                epoch: Instant::now(),
                delayed: Mutex::new((BinaryHeap::new(), 0)),
                next_due_ns: AtomicU64::new(NO_RETRY_DUE),
                pushed: Padded::default(),
                settled: Mutex::new(Vec::new()),
                settled_by_dropped: AtomicUsize::new(0),
                results: self.keep_results.then(unbounded),
                dead: Mutex::new(Vec::new()),
                max_attempts: self.max_attempts,
                backoff: self.backoff,
            }),
        })
    }
}

impl<T: Send + 'static, O: Send + 'static> JobSource for MemorySource<T, O> {
    type Job = T;
    type Output = O;
    type Consumer = MemoryConsumer<T, O>;

    /// The ready jobs: one atomic read, never fails.
    fn backlog(&self) -> Result<usize, SourceError> {
        Ok(self.shared.rx.len())
    }

    fn consumer(&self, _worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        let settled = Arc::new(Padded::default());
        self.shared.settled.lock().push(Arc::clone(&settled));
        Ok(MemoryConsumer {
            shared: Arc::clone(&self.shared),
            attempts: 0,
            settled,
        })
    }
}

/// A worker's handle on a [`MemorySource`].
pub struct MemoryConsumer<T, O> {
    shared: Arc<Shared<T, O>>,
    /// Runs of the job in hand, this one included.
    attempts: u32,
    /// Jobs this consumer settled; it is the only writer.
    settled: Arc<Padded>,
}

impl<T, O> Drop for MemoryConsumer<T, O> {
    fn drop(&mut self) {
        let mut all = self.shared.settled.lock();
        all.retain(|c| !Arc::ptr_eq(c, &self.settled));
        // Under the lock, so a concurrent `unfinished` sees it in exactly one place.
        self.shared
            .settled_by_dropped
            .fetch_add(self.settled.0.load(Ordering::Acquire), Ordering::AcqRel);
    }
}

impl<T, O> fmt::Debug for MemoryConsumer<T, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static, O: Send + 'static> Consumer for MemoryConsumer<T, O> {
    type Job = T;
    type Output = O;

    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<T>, SourceError> {
        let shared = &*self.shared;
        let attempts = &mut self.attempts;
        let mut take = |envelope: Envelope<T>| {
            *attempts = envelope.attempts + 1;
            Some(envelope.job)
        };
        shared.promote_due();
        match shared.rx.try_recv() {
            Ok(envelope) => return Ok(take(envelope)),
            Err(TryRecvError::Disconnected) => unreachable!("the source holds a sender"),
            Err(TryRecvError::Empty) => {}
        }
        loop {
            let mut wait = cx.remaining();
            if wait.is_zero() {
                return Ok(None);
            }
            if let Some(retry) = shared.time_to_next_retry() {
                wait = wait.min(retry);
            }
            select! {
                recv(shared.rx) -> msg => {
                    let envelope = msg.expect("the source holds a sender");
                    return Ok(take(envelope));
                }
                recv(cx.wake) -> _ => return Ok(None),
                recv(cx.stop) -> _ => return Ok(None),
                default(wait) => shared.promote_due(),
            }
        }
    }

    fn complete(&mut self, job: T, outcome: Result<O, JobError>) -> Result<(), Unacked<T, O>> {
        let shared = &self.shared;
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
                shared.delay(Envelope { job, attempts });
                return Ok(());
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
        // Single writer: a plain load and store, no locked read-modify-write.
        let settled = self.settled.0.load(Ordering::Relaxed) + 1;
        self.settled.0.store(settled, Ordering::Release);
        Ok(())
    }
}
