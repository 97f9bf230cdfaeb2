//! The validated settings of a pool and of each queue, and every default, in one place.
//!
//! [`Builder`](crate::Builder) fills these and checks them in `build()`; the rest of the pool
//! only reads them.

use std::sync::Arc;
use std::time::Duration;

use crate::backoff::Backoff;

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
    pub(crate) const WEIGHT: u32 = 1;
    /// `Queue::recycle_jitter`: workers started together spread their recycles over a tenth
    /// of the limit.
    pub(crate) const RECYCLE_JITTER: f64 = 0.1;
    /// `Queue::health_check_every`: before every job.
    pub(crate) const HEALTH_CHECK_EVERY: Duration = Duration::ZERO;
}

/// The longest a duration setting that the pool waits on may be (`rebalance_interval`,
/// `fetch_timeout`, `backoff`): one day. A wait is a deadline `now + d`, and an `Instant` that
/// far out is representable on every platform.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// The shortest `rebalance_interval` and `fetch_timeout`: below it the monitor, or every idle
/// worker, loops without sleeping and burns a core doing nothing.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(1);

/// The largest `max_threads_per_type` and `max_total_threads`: far more threads than any
/// machine runs, small enough that counts never overflow.
pub(crate) const MAX_THREADS: usize = 1 << 20;

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
    /// The memory gate's minimum of free bytes (`None`: off).
    pub(crate) min_free_memory: Option<u64>,
    /// Where the metrics server listens (`None`: nowhere).
    #[cfg(feature = "metrics")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
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
            min_free_memory: None,
            #[cfg(feature = "metrics")]
            metrics_addr: None,
        }
    }
}

/// The validated settings of one queue.
#[derive(Debug, Clone)]
pub(crate) struct QueueConfig {
    pub(crate) name: Arc<str>,
    pub(crate) min_threads: usize,
    pub(crate) weight: u32,
    /// Rebuild a worker's state after this many jobs (`None`: never).
    pub(crate) recycle_after: Option<u64>,
    /// The wait target of the wait-target rule (`None`: the divisor rule).
    pub(crate) target_wait: Option<std::time::Duration>,
    /// Rebuild a worker's state once it has lived this long (`None`: never).
    pub(crate) recycle_after_age: Option<Duration>,
    /// The largest fraction a state's recycle limits are shortened by, in `[0, 1)`.
    pub(crate) recycle_jitter: f64,
    /// The shortest time between two health checks of a state (zero: before every job).
    pub(crate) health_check_every: Duration,
    /// At most this many `init`s of the queue run at once.
    pub(crate) init_concurrency: usize,
}
