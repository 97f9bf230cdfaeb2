//! Where jobs come from: the [`JobSource`] trait and its per-worker [`Consumer`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::coordination::{FleetShare, QueueView};
use crate::error::{JobError, SourceError};
use crate::event::{ErrorEvent, ErrorKind, EventHandler};

mod context;
pub(crate) mod memory;
mod metrics;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub use context::{FetchContext, FetchWait};
pub use metrics::SourceMetrics;

/// A queue of jobs the pool drains: an in-memory queue, a Redis list, anything else.
///
/// The pool calls [`backlog`](JobSource::backlog) from its monitor thread to decide how many
/// workers the queue needs, and [`consumer`](JobSource::consumer) once on each worker thread to
/// get that worker's own handle for fetching and acknowledging jobs.
///
/// # Contract
///
/// | method | called on | may block | cost |
/// |---|---|---|---|
/// | `open` | [`start`](crate::ThreadPoolManager::start), once, before any other call | briefly (a start-up check) | once |
/// | `backlog` | the monitor, every `rebalance_interval` | briefly (one round trip at most) | must be cheap: it runs ~20 times a second by default |
/// | `consumer` | each new worker, before its first fetch | yes (connect, register) | once per worker |
/// | [`Consumer::fetch`] | the worker, in a loop | up to the context's deadline | per job |
/// | [`Consumer::complete`] | the worker, after each job | yes (one round trip) | per job |
///
/// Errors are never fatal: the pool reports them (log, [`EventHandler`](crate::EventHandler),
/// stats) and retries with exponential back-off. A source must therefore leave a job it could not
/// acknowledge recoverable (still in the source, or handed back in [`Unacked`]).
///
/// Delivery is at-least-once when the source keeps a job until it is completed; the in-memory
/// source gives exactly-once within the process, the Redis source at-least-once across crashes.
pub trait JobSource: Send + Sync + 'static {
    /// What the executor receives.
    type Job: Send + 'static;
    /// What the executor returns on success, handed back to the source.
    type Output: Send + 'static;
    /// A worker's handle on the source.
    type Consumer: Consumer<Job = Self::Job, Output = Self::Output>;

    /// Called once by [`start`](crate::ThreadPoolManager::start), on the caller's thread,
    /// before any other method: check the configuration against the server, start background
    /// threads (name them with [`PoolInfo::thread_name`]). Defaults to nothing.
    ///
    /// # Errors
    ///
    /// Return an error only for what retrying cannot fix (a wrong password, a missing
    /// permission); it fails `start()` with [`StartError::Source`](crate::StartError::Source)
    /// and nothing is left running. A transient failure (the server is not up yet) is not an
    /// error here: the source waits for it in the background, as its other methods do.
    ///
    /// # Panics
    ///
    /// A panic here is caught: `start()` fails with `StartError::Source` and the sources
    /// already opened are closed.
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError> {
        let _ = pool;
        Ok(())
    }

    /// Jobs waiting to be fetched (not counting jobs being run or waiting for a retry).
    ///
    /// # Errors
    ///
    /// Returns an error when the count cannot be read; the monitor keeps the last known count.
    fn backlog(&self) -> Result<usize, SourceError>;

    /// Builds the consumer for one worker thread. Called on that thread.
    ///
    /// # Errors
    ///
    /// Returns an error when the consumer cannot be built (server down); the worker retries with
    /// back-off until it succeeds or is told to stop.
    fn consumer(&self, worker: &WorkerInfo) -> Result<Self::Consumer, SourceError>;

    /// Called once, on the monitor thread, after every worker of the pool has exited and been
    /// joined: stop background threads (the Redis source's heartbeat) here. Defaults to
    /// nothing.
    ///
    /// Also called on the host's thread when `start()` fails after this source opened. A
    /// panic here is caught, logged at `error` and counted in
    /// [`QueueStats::source_errors`](crate::QueueStats::source_errors); it is not retried.
    fn close(&self) {}

    /// Called once when a bounded shutdown ([`shutdown_timeout`]) gives up while jobs of this
    /// source still run: put those jobs back where another process can take them, and make sure
    /// their late completions are refused. Returns how many were put back.
    ///
    /// Defaults to `Ok(0)`: an in-memory job in a worker's hands cannot be handed to another
    /// worker without running it twice in one process.
    ///
    /// # Errors
    ///
    /// When the jobs could not be put back; they stay recoverable by the source's own means.
    /// The error (or a panic, which is caught) is logged at `error` and counted in
    /// [`QueueStats::source_errors`](crate::QueueStats::source_errors).
    ///
    /// [`shutdown_timeout`]: crate::ThreadPoolManager::shutdown_timeout
    fn requeue_running(&self) -> Result<usize, SourceError> {
        Ok(0)
    }

    /// Fills in what the source knows for the pool's metrics (feature `metrics`:
    /// [`ThreadPoolManager::metrics_text`](crate::ThreadPoolManager) and the `/metrics`
    /// endpoint). Called on the thread that renders the metrics, once per scrape (typically
    /// every 15 s), never by the monitor or a worker. May block briefly (one round trip);
    /// a source whose server is down should say so in
    /// [`reachable`](SourceMetrics::reachable) rather than wait for it. Defaults to nothing.
    ///
    /// A panic here is caught: that scrape has no numbers from this source.
    fn metrics(&self, out: &mut SourceMetrics) {
        let _ = out;
    }

    /// Takes part in scaling across processes (a fleet): called by the monitor on every
    /// rebalance with what this process runs for the queue (`view`, the state after the
    /// previous rebalance); returns this process's [`FleetShare`] of the fleet's demand, which
    /// the monitor then plans with instead of `ceil(backlog / jobs_per_thread)` (local caps
    /// and weights still apply). `None` means the queue is not coordinated: the pool follows
    /// its own backlog, as one process alone does.
    ///
    /// Runs on the monitor thread every `rebalance_interval`, so it must be as cheap as
    /// [`backlog`](JobSource::backlog): no network call (the Redis source returns what its
    /// keeper computed last, and hands `view` to the keeper to publish). A panic is caught,
    /// counted in [`QueueStats::source_errors`](crate::QueueStats::source_errors) and treated
    /// as `None`.
    ///
    /// Defaults to `None` (the in-memory source never coordinates).
    fn coordinate(&self, view: &QueueView) -> Option<FleetShare> {
        let _ = view;
        None
    }
}

/// One worker's handle on a [`JobSource`]. It holds at most one job at a time: every job returned
/// by [`fetch`](Consumer::fetch) is passed to [`complete`](Consumer::complete) before the next
/// fetch. Dropping the consumer is the worker leaving (the Redis source deregisters).
pub trait Consumer: 'static {
    /// What the executor receives.
    type Job;
    /// What the executor returns on success.
    type Output;

    /// Takes the next job, blocking until one arrives, the context's
    /// [`deadline`](FetchContext::deadline) passes, or the worker is
    /// [interrupted](FetchContext::is_interrupted) (asked to retire, or the pool is shutting
    /// down). Returns `Ok(None)` in the latter two cases; the worker then retires, stops, or
    /// calls again.
    ///
    /// How to wait: a source fed by a crossbeam channel (or ringing one when work arrives)
    /// blocks in [`FetchContext::recv_timeout`], a polling source sleeps in
    /// [`FetchContext::wait_timeout`]; both wake at once on an interruption. A source that
    /// blocks elsewhere (a socket read) blocks in slices of a few hundred milliseconds and
    /// checks [`FetchContext::is_interrupted`] between them, so that an idle worker retires
    /// and a shutdown ends promptly. The in-memory source uses this same view and nothing
    /// else.
    ///
    /// # Errors
    ///
    /// Returns an error when the source failed; the worker backs off and calls again.
    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<Self::Job>, SourceError>;

    /// Records how the fetched `job` ended: the source stores the output, schedules a retry or
    /// dead-letters it.
    ///
    /// # Errors
    ///
    /// On failure the job and its outcome are handed back in [`Unacked`]; the worker retries
    /// with back-off.
    fn complete(
        &mut self,
        job: Self::Job,
        outcome: Result<Self::Output, JobError>,
    ) -> Result<(), Unacked<Self::Job, Self::Output>>;

    /// The worker will not fetch again for a while: it is about to rebuild its state (after a
    /// panic or `recycle_after`), back off after an error, or leave. Called between jobs, after
    /// the last [`complete`](Consumer::complete). A source that took a job ahead of the worker
    /// (the Redis source's acknowledgement takes the next job) puts it back untouched, with no
    /// run counted, so that no job waits hidden behind a slow `init`. Defaults to nothing.
    ///
    /// # Errors
    ///
    /// When the job taken ahead could not be put back; the source must keep it recoverable
    /// (the worker still holds it and fetches it next).
    fn suspend(&mut self) -> Result<(), SourceError> {
        Ok(())
    }
}

/// A completion the source could not record, handed back so that the worker can try again.
#[derive(Debug)]
#[non_exhaustive]
pub struct Unacked<J, O> {
    /// Why it failed.
    pub error: SourceError,
    /// The job, as it was passed to `complete`.
    pub job: J,
    /// The outcome, as it was passed to `complete`.
    pub outcome: Result<O, JobError>,
}

impl<J, O> Unacked<J, O> {
    /// Bundles a failed completion.
    pub fn new(error: SourceError, job: J, outcome: Result<O, JobError>) -> Self {
        Unacked {
            error,
            job,
            outcome,
        }
    }
}

/// What a source learns about the pool that runs it, in [`JobSource::open`]: names for its
/// threads, and the pool's event handler for errors those threads meet.
#[derive(Clone)]
pub struct PoolInfo {
    queue: Arc<str>,
    thread_name_prefix: Arc<str>,
    events: Arc<dyn EventHandler>,
}

impl fmt::Debug for PoolInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolInfo")
            .field("queue", &self.queue)
            .field("thread_name_prefix", &self.thread_name_prefix)
            .finish_non_exhaustive()
    }
}

impl PoolInfo {
    pub(crate) fn new(
        queue: Arc<str>,
        thread_name_prefix: Arc<str>,
        events: Arc<dyn EventHandler>,
    ) -> Self {
        PoolInfo {
            queue,
            thread_name_prefix,
            events,
        }
    }

    /// The queue's name as given to the builder.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The pool's [`thread_name_prefix`](crate::Builder::thread_name_prefix).
    pub fn thread_name_prefix(&self) -> &str {
        &self.thread_name_prefix
    }

    /// The name for a thread the source starts for this queue, in `role` (`keeper`):
    /// `{prefix}-{queue}-{role}`, shortened to Linux's 15 bytes like the pool's own thread
    /// names (the role is kept whole; see
    /// [`Builder::thread_name_prefix`](crate::Builder::thread_name_prefix)), so that `top -H`
    /// and panics say whose it is.
    pub fn thread_name(&self, role: &str) -> String {
        crate::threads::thread_name(&self.thread_name_prefix, Some(&self.queue), role)
    }

    /// Reports an error met by one of the source's own threads (named `thread`) to the pool's
    /// [`EventHandler`] as an [`ErrorKind::Source`] event, so that the host sees what the log
    /// says. `retry_in` is when the thread tries again. Never put a job payload or a secret
    /// in `message`.
    pub fn report_error(&self, thread: &str, message: impl Into<String>, retry_in: Duration) {
        self.events.on_error(&ErrorEvent {
            kind: ErrorKind::Source,
            queue: self.queue.to_string(),
            worker: thread.to_owned(),
            message: message.into(),
            retry_in,
        });
    }
}

/// Who a worker is: passed to a queue's `init` closure, its health check and carry-over, and
/// to [`JobSource::consumer`].
///
/// Two infos are equal when they name the same worker at the same generation.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    queue: Arc<str>,
    name: String,
    index: u64,
    generation: u64,
    /// The queue's carry-over stash (`None` for an info made outside a pool).
    stash: Option<Arc<crate::lifecycle::Stash>>,
}

impl PartialEq for WorkerInfo {
    fn eq(&self, other: &Self) -> bool {
        self.queue == other.queue
            && self.name == other.name
            && self.index == other.index
            && self.generation == other.generation
    }
}

impl Eq for WorkerInfo {}

impl WorkerInfo {
    pub(crate) fn new(queue: Arc<str>, name: String, index: u64) -> Self {
        WorkerInfo {
            queue,
            name,
            index,
            generation: 0,
            stash: None,
        }
    }

    /// This info with the queue's carry-over stash, for `take_carry`.
    pub(crate) fn with_stash(mut self, stash: Arc<crate::lifecycle::Stash>) -> Self {
        self.stash = Some(stash);
        self
    }

    pub(crate) fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    /// The queue's name as given to the builder.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The worker's name, `{prefix}-{queue}-{index}`, unique in the pool: logs, events and
    /// stats use it. The OS thread's name is the same shortened to Linux's 15 bytes, number
    /// kept (see [`Builder::thread_name_prefix`](crate::Builder::thread_name_prefix)).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A number unique among the workers this pool started for the queue; never reused.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// How many states this worker built before the current one: 0 in its first `init`, 1
    /// after its first recycle or rebuild, and so on (failed `init`s do not count). In
    /// [`JobSource::consumer`] it is 0. With [`index`](Self::index) it seeds the state's
    /// [`recycle_jitter`](crate::Queue::recycle_jitter) draw.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, Queue, WorkerInfo};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let queue = Queue::new(
    ///     "conferencia",
    ///     jobs,
    ///     |w: &WorkerInfo| {
    ///         if w.generation() > 0 {
    ///             log::info!("{}: rebuilding its browser ({})", w.name(), w.generation());
    ///         }
    ///         Ok::<_, Infallible>(())
    ///     },
    ///     |_, _| Ok(()),
    /// );
    /// # let _ = queue;
    /// ```
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Takes the value a previous state of this queue carried over
    /// ([`Queue::carry_over`](crate::Queue::carry_over)), if one is waiting and it is a `C`:
    /// the most recently carried value, from any worker of the queue. Call it from `init`;
    /// a value taken is counted in [`QueueStats::carried`](crate::QueueStats::carried).
    ///
    /// Returns `None` when nothing waits, when the newest value waiting is not a `C` (it
    /// stays), and for a queue without `carry_over`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, Queue, WorkerInfo};
    ///
    /// struct Session { token: String }
    ///
    /// fn login(worker: &WorkerInfo) -> Result<Session, Infallible> {
    ///     // A recycled worker's successor starts from its token instead of logging in.
    ///     let token = worker
    ///         .take_carry::<String>()
    ///         .unwrap_or_else(|| format!("fresh login by {}", worker.name()));
    ///     Ok(Session { token })
    /// }
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let queue = Queue::new("conferencia", jobs, login, |_s: &mut Session, _| Ok(()))
    ///     .recycle_after(100)
    ///     .carry_over(|s: Session, _| Some(s.token));
    /// # let _ = queue;
    /// ```
    pub fn take_carry<C: 'static>(&self) -> Option<C> {
        self.stash.as_ref()?.take::<C>()
    }
}
