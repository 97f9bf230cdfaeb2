//! The builder and per-queue settings: setters that never panic, and `build()`, which checks
//! every value in one place (`builder/check.rs`). The defaults and the validated settings live
//! in `config.rs`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::config::{Config, QueueConfig, defaults};
use crate::error::{BuildError, JobError};
use crate::event::{EventHandler, Guarded, NoEvents};
use crate::lifecycle::Erased;
use crate::manager::ThreadPoolManager;
use crate::queue::QueueDef;
use crate::source::{JobSource, WorkerInfo};
use crate::worker::Runner;

mod check;

impl ThreadPoolManager {
    /// Starts configuring a pool. Every setting has a default; see [`Builder`].
    pub fn builder() -> Builder {
        Builder::new()
    }
}

/// One queue: its job source, how to build a worker's state, and how to run a job.
///
/// * `init(&WorkerInfo) -> Result<State, E>` runs once on each worker thread, before its first
///   job: open the browser session, load the PDF engine. The state lives as long as the worker
///   and is dropped when it exits (the browser closes), after a job panics (it is rebuilt),
///   after [`recycle_after`](Queue::recycle_after) jobs or
///   [`recycle_after_age`](Queue::recycle_after_age), and when it fails its
///   [`health_check`](Queue::health_check). A failing `init` is retried with back-off. At most
///   [`init_concurrency`](Queue::init_concurrency) `init`s of a queue run at once, and a
///   dropped state can hand something to the next `init` ([`carry_over`](Queue::carry_over)).
///   The crate docs' "A worker's state over its life" walks through all of it.
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
    target_wait: Option<Duration>,
    pub(crate) recycle_after_age: Option<Duration>,
    pub(crate) recycle_jitter: f64,
    pub(crate) health_check: Option<Erased>,
    pub(crate) health_check_every: Duration,
    pub(crate) carry_over: Option<Erased>,
    pub(crate) init_concurrency: Option<usize>,
    runner: Arc<dyn Runner>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("min_threads", &self.min_threads)
            .field("weight", &self.weight)
            .field("recycle_after", &self.recycle_after)
            .field("target_wait", &self.target_wait)
            .field("recycle_after_age", &self.recycle_after_age)
            .field("recycle_jitter", &self.recycle_jitter)
            .field("health_check", &self.health_check)
            .field("health_check_every", &self.health_check_every)
            .field("carry_over", &self.carry_over)
            .field("init_concurrency", &self.init_concurrency)
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
            weight: defaults::WEIGHT,
            recycle_after: None,
            target_wait: None,
            recycle_after_age: None,
            recycle_jitter: defaults::RECYCLE_JITTER,
            health_check: None,
            health_check_every: defaults::HEALTH_CHECK_EVERY,
            carry_over: None,
            init_concurrency: None,
            runner: Arc::new(QueueDef::new(source, init, exec)),
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
    ///
    /// Each state's limit is shortened by [`recycle_jitter`](Queue::recycle_jitter) (by
    /// default up to a tenth, rounded down: `recycle_after(10)` stays 10, `recycle_after(500)`
    /// becomes 451 to 500), so workers started together do not all recycle together. The
    /// rebuild happens between jobs; recycles are counted in
    /// [`QueueStats::recycles`](crate::QueueStats::recycles).
    pub fn recycle_after(mut self, jobs: u64) -> Self {
        self.recycle_after = Some(jobs);
        self
    }

    // --- wait-target scaling (issue 12) ---

    /// Sizes the queue so that a job waits about `target` before a worker takes it, instead
    /// of by [`Builder::jobs_per_thread`]. Defaults to unset (the divisor rule).
    ///
    /// The pool measures the queue's job duration `D` (a median over windows of 16 jobs,
    /// smoothed; `init` is not part of it), its arrival rate `λ` (a burst-robust mean over
    /// four targets) and how long its waiting jobs have waited, and asks for about
    /// `ceil(λ D) + ceil(backlog D / (target - age))` threads (Little's law in whole threads,
    /// plus starting every waiting job within what is left of its target), within
    /// `min_threads` and the caps. It scales up at once when the estimated wait (about
    /// `age + backlog D / workers`) passes `target / 2`, and scales down over a window of
    /// [`Builder::scale_down_delay`], or `min(target / 2, 2 min)` if that is longer (a delay
    /// of zero still scales down at once): the threads it no longer asks for are shed by
    /// halves every quarter of the window, the last one held for all of it (on a coordinated
    /// Redis source, the fleet's window, shed the same way), never below the threads that
    /// keep the estimated wait under `target / 4`.
    /// Until the first job is timed, `jobs_per_thread` decides. The learned divisor (`target / D`) and
    /// the estimated wait are in [`QueueStats`](crate::QueueStats) and in the log line of
    /// every decision. On a coordinated Redis source (the default) the processes of the fleet
    /// measure together and the rule sizes the whole fleet on its numbers; the learned
    /// duration is kept in Redis across restarts. The reasoning is in `docs/SCALING.md`.
    ///
    /// Less than 1 ms or more than one day is refused by `build()`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use threadtide::{MemorySource, Queue};
    ///
    /// let orders: MemorySource<u64> = MemorySource::new();
    /// let queue = Queue::new("conferencia", orders, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .target_wait(Duration::from_secs(5 * 60));
    /// # let _ = queue;
    /// ```
    pub fn target_wait(mut self, target: Duration) -> Self {
        self.target_wait = Some(target);
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
    pub(crate) config: Config,
    events: Box<dyn EventHandler>,
    queues: Vec<Queue>,
    /// `metrics_addr` as given; parsed in `build()`.
    #[cfg(feature = "metrics")]
    metrics_addr: Option<String>,
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
            config: Config::default(),
            events: Box::new(NoEvents),
            queues: Vec::new(),
            #[cfg(feature = "metrics")]
            metrics_addr: None,
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

    /// No queue gets more threads than this **in this process** (one host's memory). Defaults
    /// to 10. 0 is refused, so is more than 2^20. A limit over every process serving a Redis
    /// queue is [`RedisSourceBuilder::fleet_max_threads`](crate::RedisSourceBuilder::fleet_max_threads).
    pub fn max_threads_per_type(mut self, threads: usize) -> Self {
        self.config.max_threads_per_type = threads;
        self
    }

    /// The threads of all queues together never pass this; when demand does, the split is
    /// weighted and fair (see the crate docs). Per process, like `max_threads_per_type`.
    /// Defaults to 20. 0 is refused, so is more than 2^20. A limit over every process of a
    /// fleet is
    /// [`RedisSourceBuilder::fleet_max_total_threads`](crate::RedisSourceBuilder::fleet_max_total_threads).
    pub fn max_total_threads(mut self, threads: usize) -> Self {
        self.config.max_total_threads = threads;
        self
    }

    /// The longest the monitor goes between two readings of every queue's backlog and
    /// rebalances. It also rebalances at once, between ticks, whenever a worker exits (so a
    /// queue waiting for room under the total cap gets it as soon as another's worker is
    /// gone), and once at [`start`](ThreadPoolManager::start). Defaults to 50 ms, so a burst
    /// into an idle pool starts within ~50 ms plus the worker's `init`; the host's original
    /// 60 s is `Duration::from_secs(60)`. Less than 1 ms is refused (the monitor would spin on
    /// a core), so is more than one day.
    pub fn rebalance_interval(mut self, interval: Duration) -> Self {
        self.config.rebalance_interval = interval;
        self
    }

    /// How long a lower target must persist before threads are retired (scale-up is
    /// immediate). Defaults to 30 s: a browser costs seconds to open, so a dip shorter than
    /// that is cheaper to ride out. Zero scales down on the next tick. Any value is accepted
    /// (`Duration::MAX` never scales down while room allows).
    pub fn scale_down_delay(mut self, delay: Duration) -> Self {
        self.config.scale_down_delay = delay;
        self
    }

    /// The longest a worker blocks in one fetch before looking around again; sources that
    /// cannot be woken (Redis) use it as their blocking timeout, which bounds how long an idle
    /// worker takes to retire. Defaults to 1 s. Less than 1 ms is refused (idle workers would
    /// spin), so is more than one day.
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.config.fetch_timeout = timeout;
        self
    }

    /// Back-off after a failed `init` or a source error: `initial * 2^(n-1)` capped at `max`,
    /// jittered to 50-100%. Defaults to 500 ms and 30 s. An `initial` under 1 ms is refused (it
    /// would be a tight loop), so are `max < initial` and a `max` of more than one day. A pause is
    /// cut short only by shutdown or by the worker's own retirement.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff = Backoff { initial, max };
        self
    }

    /// Names the pool's threads: workers `{prefix}-{queue}-{n}` (`n` is
    /// [`WorkerInfo::index`]), the monitor `{prefix}-monitor`, the signal listener
    /// `{prefix}-signals`, and a source's own threads `{prefix}-{queue}-{role}` (the Redis
    /// source's `keeper`, through [`PoolInfo::thread_name`](crate::PoolInfo::thread_name)).
    ///
    /// Linux keeps only 15 bytes of a thread name (`ps -L`, `top -H`), so a longer name is
    /// shortened: the number or role is kept whole, the prefix and the queue name are cut
    /// (the queue keeps at least half the room). `threadtide-conferencia-12` becomes
    /// `threa-confer-12`; with the prefix `rpa`, `rpa-conferenc-6`. A short prefix keeps more
    /// of the queue name. Logs, events, stats and [`WorkerInfo::name`] use the full name,
    /// which is unique in the pool; the number ties the two together. Defaults to
    /// `"threadtide"`. Empty is refused, and so is a NUL byte.
    pub fn thread_name_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.thread_name_prefix = prefix.into();
        self
    }

    /// Stack size of worker threads, in bytes. Defaults to the standard library's (2 MiB,
    /// or `RUST_MIN_STACK`). 0 gives the platform's smallest stack; more than 1 GiB is
    /// refused. If the operating system refuses to start a thread anyway (memory, limits),
    /// the host sees an [`ErrorKind::Spawn`](crate::ErrorKind::Spawn) event and a
    /// `spawn_failures` count, and the monitor retries with back-off.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.config.stack_size = Some(bytes);
        self
    }

    /// Receives scaling decisions, worker starts and exits, and errors. Defaults to none. A
    /// handler that panics is caught (see [`EventHandler`]).
    pub fn event_handler(mut self, handler: impl EventHandler) -> Self {
        self.events = Box::new(handler);
        self
    }

    /// Serves Prometheus metrics over HTTP at `addr` (`HOST:PORT`, such as `"0.0.0.0:9464"`
    /// or `"127.0.0.1:9464"`; a host name is resolved once, in `build()`): `GET /metrics`
    /// answers the text exposition format (what
    /// [`metrics_text`](ThreadPoolManager::metrics_text) renders), `GET /healthz` answers
    /// `200 ok` (`draining` while shutting down, `503` if the monitor thread died). One thread
    /// of the pool (`{prefix}-metrics`) listens from [`start`](ThreadPoolManager::start) until
    /// [`wait`](ThreadPoolManager::wait) returns. Port 0 picks a free port.
    ///
    /// Defaults to none: nothing listens unless asked. An address that does not parse is a
    /// [`BuildError`] naming `metrics_addr`; one that cannot be bound (taken, not local) fails
    /// `start()` with [`StartError::Metrics`](crate::StartError::Metrics).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let pool = ThreadPoolManager::builder()
    ///     .metrics_addr("127.0.0.1:0")
    ///     .queue("pdf", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .build()?;
    /// # drop(pool);
    /// # Ok::<(), threadtide::BuildError>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_addr(mut self, addr: impl Into<String>) -> Self {
        self.metrics_addr = Some(addr.into());
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
    /// where one is refused, a `rebalance_interval`, `fetch_timeout` or `backoff.initial` under 1 ms, no queue, an empty, duplicate or NUL-containing queue name, a
    /// queue `weight` of 0, `recycle_after` of 0, a `target_wait` under 1 ms or over one day,
    /// a `recycle_after_age` of zero, a `recycle_jitter` outside `[0, 1)`, a
    /// `health_check_every` over one day, an `init_concurrency` of 0, a `health_check` or
    /// `carry_over` written for another state type than the queue's (the message names both),
    /// a `min_free_memory` of 0, `min_threads` above `max_threads_per_type`,
    /// minimums that add up past `max_total_threads`, a thread cap above 2^20, a wait
    /// (`rebalance_interval`, `fetch_timeout`, `backoff.max`) above one day, or a
    /// `stack_size` above 1 GiB.
    pub fn build(self) -> Result<ThreadPoolManager, BuildError> {
        check::pool(&self.config)?;
        check::queues(&self.queues, &self.config)?;
        let mut queues = Vec::with_capacity(self.queues.len());
        for mut q in self.queues {
            // The queue owns the only reference to its runner until now.
            let hooks = (q.health_check.take(), q.carry_over.take());
            let Some(runner) = Arc::get_mut(&mut q.runner) else {
                unreachable!("a queue's runner is shared with nothing before build()");
            };
            if let Err(wrong) = runner.install(hooks.0, hooks.1) {
                return Err(BuildError::new(
                    format!("queue[{}].{}", q.name, wrong.field),
                    wrong.given,
                    format!(
                        "takes the state type `{}` but the queue's state is `{}`",
                        wrong.given, wrong.state
                    ),
                ));
            }
            let config = QueueConfig {
                name: Arc::from(q.name),
                min_threads: q.min_threads,
                weight: q.weight,
                recycle_after: q.recycle_after,
                target_wait: q.target_wait,
                recycle_after_age: q.recycle_after_age,
                recycle_jitter: q.recycle_jitter,
                health_check_every: q.health_check_every,
                init_concurrency: q
                    .init_concurrency
                    .unwrap_or_else(crate::lifecycle::default_init_concurrency),
            };
            queues.push((config, q.runner));
        }
        #[cfg(feature = "metrics")]
        {
            let mut config = self.config;
            config.metrics_addr = match &self.metrics_addr {
                Some(raw) => Some(parse_addr(raw)?),
                None => None,
            };
            let recorder = Arc::new(crate::metrics::Recorder::default());
            let tee = crate::metrics::Tee {
                recorder: Arc::clone(&recorder),
                inner: self.events,
            };
            let events = Arc::new(Guarded::new(Box::new(tee)));
            Ok(ThreadPoolManager::new(config, queues, events).with_recorder(recorder))
        }
        #[cfg(not(feature = "metrics"))]
        {
            let events = Arc::new(Guarded::new(self.events));
            Ok(ThreadPoolManager::new(self.config, queues, events))
        }
    }
}

/// `metrics_addr` as a socket address: `IP:PORT`, or `HOST:PORT` resolved once.
#[cfg(feature = "metrics")]
fn parse_addr(raw: &str) -> Result<std::net::SocketAddr, BuildError> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = raw.parse() {
        return Ok(addr);
    }
    let quoted = format!("{raw:?}");
    match raw.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| BuildError::new("metrics_addr", &quoted, "resolves to no address")),
        Err(e) => Err(BuildError::new(
            "metrics_addr",
            &quoted,
            format!("must be HOST:PORT ({e})"),
        )),
    }
}
