//! The builder and per-queue configuration. Every default lives here; `build()` validates.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::error::{BuildError, JobError};
use crate::event::{EventHandler, NoEvents};
use crate::manager::ThreadPoolManager;
use crate::source::{JobSource, WorkerInfo};
use crate::worker::{QueueDef, Runner};

/// Defaults, in one place. Their reasons are in `src/scaling.md`.
pub(crate) mod defaults {
    use std::time::Duration;

    pub(crate) const JOBS_PER_THREAD: usize = 50;
    pub(crate) const MAX_THREADS_PER_TYPE: usize = 10;
    pub(crate) const MAX_TOTAL_THREADS: usize = 20;
    pub(crate) const REBALANCE_INTERVAL: Duration = Duration::from_millis(50);
    pub(crate) const SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);
    pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(1);
    pub(crate) const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
    pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
    pub(crate) const THREAD_NAME_PREFIX: &str = "threadtide";
}

/// The validated pool-wide settings.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) jobs_per_thread: usize,
    pub(crate) max_threads_per_type: usize,
    pub(crate) max_total_threads: usize,
    pub(crate) rebalance_interval: Duration,
    pub(crate) scale_down_delay: Duration,
    pub(crate) fetch_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) thread_name_prefix: String,
    pub(crate) stack_size: Option<usize>,
}

/// The validated settings of one queue, and its type-erased runner.
pub(crate) struct QueueConfig {
    pub(crate) name: Arc<str>,
    pub(crate) min_threads: usize,
    pub(crate) weight: u32,
    pub(crate) runner: Arc<dyn Runner>,
}

/// One queue: its job source, how to build a worker's state, and how to run a job.
///
/// * `init(&WorkerInfo) -> Result<State, E>` runs once on each worker thread, before its first
///   job: open the browser session, load the PDF engine. The state lives as long as the worker
///   and is dropped when it exits (the browser closes), after a job panics (it is rebuilt), and
///   every [`recycle_after`](Queue::recycle_after) jobs. A failing `init` is retried with
///   back-off.
/// * `exec(&mut State, &Job) -> Result<Output, JobError>` runs one job.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use threadtide::{MemorySource, Queue};
///
/// let pdfs: MemorySource<String> = MemorySource::new();
/// let queue = Queue::new(
///     "pdf",
///     pdfs.clone(),
///     |_worker| Ok::<_, Infallible>(Vec::<u8>::with_capacity(1 << 20)), // the engine's buffers
///     |buffer, path: &String| {
///         buffer.clear();
///         buffer.extend_from_slice(path.as_bytes());
///         Ok(())
///     },
/// )
/// .min_threads(1)
/// .weight(60)
/// .recycle_after(500);
/// # let _ = queue;
/// ```
pub struct Queue {
    name: String,
    min_threads: usize,
    weight: u32,
    recycle_after: Option<u64>,
    make_runner: Box<dyn FnOnce(Option<u64>) -> Arc<dyn Runner>>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("min_threads", &self.min_threads)
            .field("weight", &self.weight)
            .field("recycle_after", &self.recycle_after)
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// A queue named `name` (used in thread names, stats, logs and events), fed by `source`.
    pub fn new<S, St, E, I, X>(name: impl Into<String>, source: S, init: I, exec: X) -> Self
    where
        S: JobSource,
        St: 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
        I: Fn(&WorkerInfo) -> Result<St, E> + Send + Sync + 'static,
        X: Fn(&mut St, &S::Job) -> Result<S::Output, JobError> + Send + Sync + 'static,
    {
        Queue {
            name: name.into(),
            min_threads: 0,
            weight: 1,
            recycle_after: None,
            make_runner: Box::new(move |recycle| {
                Arc::new(QueueDef::new(source, init, exec, recycle)) as Arc<dyn Runner>
            }),
        }
    }

    /// Threads kept even when the queue is empty. Defaults to 0 (an idle queue has no thread).
    /// Keep 1 when a worker's `init` is slow and the first job should not wait for it.
    /// Must not exceed `max_threads_per_type`; the sum over queues must not exceed
    /// `max_total_threads`.
    pub fn min_threads(mut self, threads: usize) -> Self {
        self.min_threads = threads;
        self
    }

    /// The queue's share when the total cap binds: threads are split in proportion to weights
    /// (40 and 60 give a 40% / 60% split). Defaults to 1 (an even split). 0 is refused.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Drop and rebuild a worker's state after it has run this many jobs (a browser that leaks
    /// memory). Defaults to never. 0 is refused.
    pub fn recycle_after(mut self, jobs: u64) -> Self {
        self.recycle_after = Some(jobs);
        self
    }
}

/// Configures a [`ThreadPoolManager`]. Setters never panic; [`build`](Builder::build) checks
/// everything and names the field of any bad value.
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use threadtide::{MemorySource, ThreadPoolManager};
///
/// let orders: MemorySource<u64> = MemorySource::new();
/// let pool = ThreadPoolManager::builder()
///     .jobs_per_thread(50)
///     .max_threads_per_type(10)
///     .max_total_threads(20)
///     .rebalance_interval(Duration::from_secs(60)) // the host's original check
///     .queue("conferencia", orders.clone(), |_| Ok::<_, Infallible>(()), |_, _order| Ok(()))
///     .build()?;
/// # drop(pool);
/// # Ok::<(), threadtide::BuildError>(())
/// ```
pub struct Builder {
    config: Config,
    events: Arc<dyn EventHandler>,
    queues: Vec<Queue>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            config: Config {
                jobs_per_thread: defaults::JOBS_PER_THREAD,
                max_threads_per_type: defaults::MAX_THREADS_PER_TYPE,
                max_total_threads: defaults::MAX_TOTAL_THREADS,
                rebalance_interval: defaults::REBALANCE_INTERVAL,
                scale_down_delay: defaults::SCALE_DOWN_DELAY,
                fetch_timeout: defaults::FETCH_TIMEOUT,
                backoff: Backoff {
                    initial: defaults::BACKOFF_INITIAL,
                    max: defaults::BACKOFF_MAX,
                },
                thread_name_prefix: defaults::THREAD_NAME_PREFIX.to_owned(),
                stack_size: None,
            },
            events: Arc::new(NoEvents),
            queues: Vec::new(),
        }
    }
}

impl Builder {
    /// A builder with every default. Same as [`ThreadPoolManager::builder`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Target threads per queue = `ceil(backlog / jobs_per_thread)`. Defaults to 50.
    /// 0 is refused.
    pub fn jobs_per_thread(mut self, jobs: usize) -> Self {
        self.config.jobs_per_thread = jobs;
        self
    }

    /// No queue gets more threads than this. Defaults to 10. 0 is refused.
    pub fn max_threads_per_type(mut self, threads: usize) -> Self {
        self.config.max_threads_per_type = threads;
        self
    }

    /// The threads of all queues together never pass this; when demand does, the split is
    /// weighted and fair (see the crate docs). Defaults to 20. 0 is refused.
    pub fn max_total_threads(mut self, threads: usize) -> Self {
        self.config.max_total_threads = threads;
        self
    }

    /// How often the monitor reads every queue's backlog and rebalances. Defaults to 50 ms, so
    /// a burst into an idle pool starts within ~50 ms plus the worker's `init`; the host's
    /// original 60 s is `Duration::from_secs(60)`. Zero is refused.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.config.rebalance_interval = interval;
        self
    }

    /// How long a lower target must persist before threads are retired (scale-up is
    /// immediate). Defaults to 30 s: a browser costs seconds to open, so a dip shorter than
    /// that is cheaper to ride out. Zero scales down on the next tick.
    pub fn scale_down_delay(mut self, delay: Duration) -> Self {
        self.config.scale_down_delay = delay;
        self
    }

    /// The longest a worker blocks in one fetch before looking around again; sources that
    /// cannot be woken (Redis) use it as their blocking timeout, which bounds how long an idle
    /// worker takes to retire. Defaults to 1 s. Zero is refused.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// Back-off after a failed `init` or a source error: `initial * 2^(n-1)` capped at `max`,
    /// jittered to 50-100%. Defaults to 500 ms and 30 s. A zero `initial` is refused (it would
    /// be a tight loop), so is `max < initial`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff = Backoff { initial, max };
        self
    }

    /// Worker threads are named `{prefix}-{queue}-{n}`, the monitor `{prefix}-monitor`.
    /// Defaults to `"threadtide"`. Empty is refused.
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_name_prefix = prefix.into();
        self
    }

    /// Stack size of worker threads, in bytes. Defaults to the standard library's (2 MiB,
    /// or `RUST_MIN_STACK`).
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Receives scaling decisions, worker starts and exits, and errors. Defaults to none.
    pub fn event_handler(mut self, handler: impl EventHandler) -> Self {
        self.events = Arc::new(handler);
        self
    }

    /// Adds a queue with default per-queue settings; see [`Queue::new`] for the closures.
    pub fn queue<S, St, E, I, X>(self, name: impl Into<String>, source: S, init: I, exec: X) -> Self
    where
        S: JobSource,
        St: 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
        I: Fn(&WorkerInfo) -> Result<St, E> + Send + Sync + 'static,
        X: Fn(&mut St, &S::Job) -> Result<S::Output, JobError> + Send + Sync + 'static,
    {
        self.add_queue(Queue::new(name, source, init, exec))
    }

    /// Adds a queue configured with [`Queue`]'s setters.
    pub fn add_queue(mut self, queue: Queue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Checks every setting and builds the pool (not started: see
    /// [`ThreadPoolManager::start`]).
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the first bad field and its value: a zero count or interval
    /// where one is refused, no queue, an empty, duplicate or NUL-containing queue name, a
    /// queue `weight` of 0, `recycle_after` of 0, `min_threads` above `max_threads_per_type`,
    /// or minimums that add up past `max_total_threads`.
    pub fn build(self) -> Result<ThreadPoolManager, BuildError> {
        let c = &self.config;
        let positive = [
            ("jobs_per_thread", c.jobs_per_thread),
            ("max_threads_per_type", c.max_threads_per_type),
            ("max_total_threads", c.max_total_threads),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(BuildError::new(field, value, "must be at least 1"));
            }
        }
        let nonzero = [
            ("rebalance_interval", c.rebalance_interval),
            ("fetch_timeout", c.fetch_timeout),
            ("backoff.initial", c.backoff.initial),
        ];
        for (field, value) in nonzero {
            if value.is_zero() {
                return Err(BuildError::new(field, "0s", "must be longer than zero"));
            }
        }
        if c.backoff.max < c.backoff.initial {
            return Err(BuildError::new(
                "backoff.max",
                format!("{:?}", c.backoff.max),
                format!(
                    "must not be shorter than backoff.initial ({:?})",
                    c.backoff.initial
                ),
            ));
        }
        check_name("thread_name_prefix", &c.thread_name_prefix)?;
        if self.queues.is_empty() {
            return Err(BuildError::new("queues", "[]", "add at least one queue"));
        }
        let mut seen = HashSet::new();
        for q in &self.queues {
            check_name("queue.name", &q.name)?;
            let field = |f: &str| format!("queue[{}].{f}", q.name);
            if !seen.insert(q.name.as_str()) {
                return Err(BuildError::new(
                    field("name"),
                    &q.name,
                    "duplicate queue name",
                ));
            }
            if q.weight == 0 {
                return Err(BuildError::new(field("weight"), 0, "must be at least 1"));
            }
            if q.recycle_after == Some(0) {
                return Err(BuildError::new(
                    field("recycle_after"),
                    0,
                    "must be at least 1 (leave unset to never recycle)",
                ));
            }
            if q.min_threads > c.max_threads_per_type {
                return Err(BuildError::new(
                    field("min_threads"),
                    q.min_threads,
                    format!("exceeds max_threads_per_type ({})", c.max_threads_per_type),
                ));
            }
        }
        let mins: usize = self.queues.iter().map(|q| q.min_threads).sum();
        if mins > c.max_total_threads {
            return Err(BuildError::new(
                "max_total_threads",
                c.max_total_threads,
                format!("is below the sum of the queues' min_threads ({mins})"),
            ));
        }
        let queues = self
            .queues
            .into_iter()
            .map(|q| QueueConfig {
                name: Arc::from(q.name),
                min_threads: q.min_threads,
                weight: q.weight,
                runner: (q.make_runner)(q.recycle_after),
            })
            .collect();
        Ok(ThreadPoolManager::new(self.config, queues, self.events))
    }
}

fn check_name(field: &str, name: &str) -> Result<(), BuildError> {
    if name.is_empty() {
        return Err(BuildError::new(field, "\"\"", "must not be empty"));
    }
    if name.contains('\0') {
        return Err(BuildError::new(
            field,
            format!("{name:?}"),
            "must not contain NUL",
        ));
    }
    Ok(())
}
