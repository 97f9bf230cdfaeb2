//! The in-memory job source: the embedded default, no server needed.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select, unbounded};
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

/// A job that failed, with the runs it has had.
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
    /// New jobs, as the host pushed them. The hot path is exactly a bare crossbeam channel of
    /// `T` drained by `recv`: a wrapper type (a run count, an enum for retries) measured 1.4-2x
    /// slower to dispatch, from larger slots, and so did waiting on this channel in `select!`,
    /// because crossbeam's receive path is then no longer inlined. Idle consumers therefore
    /// wait on `bell`, not on this channel.
    tx: Sender<T>,
    rx: Receiver<T>,
    /// Consumers about to sleep or asleep, minus bells rung for them (an eventcount: see
    /// `MemoryConsumer::wait`). Producers read it after every push; it is written only when a
    /// consumer goes to sleep or is woken, so it has a line of its own.
    sleepers: Padded,
    /// One token per wake-up owed to a sleeping consumer.
    bell_tx: Sender<()>,
    bell_rx: Receiver<()>,
    /// Retries whose back-off has passed; taken before new jobs.
    retry_tx: Sender<Envelope<T>>,
    retry_rx: Receiver<Envelope<T>>,
    /// Retries delayed or ready and not yet taken: while it is 0 a fetch skips retries with
    /// one load.
    retries: AtomicUsize,
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

    /// Moves retries whose back-off has passed to the ready-retry channel.
    fn promote_due(&self) {
        let due = self.next_due_ns.load(Ordering::Acquire);
        if due == NO_RETRY_DUE || due > self.now_ns() {
            return;
        }
        let mut guard = self.delayed.lock();
        let now = self.now_ns();
        while guard.0.peek().is_some_and(|d| d.0.due_ns <= now) {
            let Reverse(d) = guard.0.pop().expect("peeked");
            // The receiver lives in `self`, so the channel is never disconnected.
            let _ = self.retry_tx.send(d.envelope);
        }
        let next = guard.0.peek().map_or(NO_RETRY_DUE, |d| d.0.due_ns);
        self.next_due_ns.store(next, Ordering::Release);
    }

    fn delay(&self, envelope: Envelope<T>) {
        let due = self
            .now_ns()
            .saturating_add(self.backoff.delay(envelope.attempts).as_nanos() as u64);
        self.retries.fetch_add(1, Ordering::AcqRel);
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

    /// Takes one sleeper's registration back; false when none is left.
    fn take_registration(&self) -> bool {
        self.sleepers
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Wakes one sleeping consumer, if one is still registered.
    #[cold]
    #[inline(never)]
    fn ring(&self) {
        if self.take_registration() {
            // The receiver lives in `self`, so the channel is never disconnected.
            let _ = self.bell_tx.send(());
        }
    }

    /// A consumer that registered as a sleeper leaves without a bell. When the count is already
    /// 0, a bell was rung for it and stays unanswered: the next sleeper wakes once for nothing.
    fn unregister_sleeper(&self) {
        self.take_registration();
    }

    fn ready(&self) -> usize {
        self.rx.len() + self.retry_rx.len()
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
/// * **Retries**: a job whose executor fails with a retryable error or panics runs again after
///   an exponential back-off with jitter, up to `max_attempts` runs in all; then, or at once
///   for [`JobError::permanent`], it is dead-lettered ([`dead_letters`](Self::dead_letters)).
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
        self.shared.pushed.0.fetch_add(1, Ordering::Release);
        // The receiver lives in `shared`, so the channel is never disconnected.
        let _ = self.shared.tx.send(job);
        // SeqCst pairs with the consumer's registration (see `MemoryConsumer::wait`).
        if self.shared.sleepers.0.load(Ordering::SeqCst) != 0 {
            self.shared.ring();
        }
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
        self.shared.ready()
    }

    /// Whether no job is ready to be fetched.
    pub fn is_empty(&self) -> bool {
        self.shared.rx.is_empty() && self.shared.retry_rx.is_empty()
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
        let (retry_tx, retry_rx) = unbounded();
        let (bell_tx, bell_rx) = unbounded();
        Ok(MemorySource {
            shared: Arc::new(Shared {
                tx,
                rx,
                retry_tx,
                retry_rx,
                sleepers: Padded::default(),
                bell_tx,
                bell_rx,
                retries: AtomicUsize::new(0),
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

    /// The ready jobs ([`len`](MemorySource::len)): a few atomic reads, never fails.
    fn backlog(&self) -> Result<usize, SourceError> {
        Ok(self.shared.ready())
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

impl<T: Send + 'static, O: Send + 'static> MemoryConsumer<T, O> {
    /// Takes a ready retry, after promoting those whose back-off has passed.
    #[cold]
    #[inline(never)]
    fn take_retry(&mut self) -> Option<T> {
        self.shared.promote_due();
        let envelope = self.shared.retry_rx.try_recv().ok()?;
        Some(self.retry(envelope))
    }

    fn retry(&mut self, envelope: Envelope<T>) -> T {
        self.shared.retries.fetch_sub(1, Ordering::AcqRel);
        self.attempts = envelope.attempts + 1;
        envelope.job
    }

    /// The job's first run.
    #[inline(always)]
    fn fresh(&mut self, job: T) -> T {
        self.attempts = 1;
        job
    }

    /// The queue stayed empty through the spin: sleep until a job, a due retry, a wake from
    /// the monitor, the pool stopping, or the fetch deadline.
    ///
    /// A consumer registers in `sleepers` and then looks at the queue again; a producer sends
    /// and then reads `sleepers`. Both sides are `SeqCst`, so either the producer sees the
    /// registration and rings, or the consumer sees the job: no wake-up is lost. Every
    /// registration is taken back once, by a bell or by the consumer leaving, so the count
    /// plus the unanswered bells is never below the consumers asleep.
    #[cold]
    #[inline(never)]
    fn wait(&mut self, cx: &FetchContext<'_>) -> Option<T> {
        let shared = Arc::clone(&self.shared);
        loop {
            let mut wait = cx.remaining();
            if wait.is_zero() || cx.is_interrupted() {
                return None;
            }
            if let Some(retry) = shared.time_to_next_retry() {
                wait = wait.min(retry);
            }
            shared.sleepers.0.fetch_add(1, Ordering::SeqCst);
            if !shared.rx.is_empty() {
                shared.unregister_sleeper();
            } else {
                select! {
                    // The ringer took our registration back.
                    recv(shared.bell_rx) -> _ => {}
                    recv(shared.retry_rx) -> msg => {
                        shared.unregister_sleeper();
                        return Some(self.retry(msg.expect("the source holds a sender")));
                    }
                    recv(cx.wake) -> _ => {
                        shared.unregister_sleeper();
                        return None;
                    }
                    recv(cx.stop) -> _ => {
                        shared.unregister_sleeper();
                        return None;
                    }
                    default(wait) => {
                        shared.unregister_sleeper();
                        if let Some(job) = self.take_retry() {
                            return Some(job);
                        }
                    }
                }
            }
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
                shared.delay(Envelope { job, attempts });
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
        if self.shared.retries.load(Ordering::Acquire) != 0
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
            let n = self.settled.0.load(Ordering::Relaxed) + 1;
            self.settled.0.store(n, Ordering::Release);
        }
        Ok(())
    }
}
