//! The snapshots [`ThreadPoolManager::stats`](crate::ThreadPoolManager::stats) returns, and
//! the one place they are assembled from the pool's state.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::counters::Accumulator;
use crate::state::PoolShared;

/// Assembles the snapshot of every queue and the totals. Each queue's worker counts are read
/// under its roster's lock, so they agree with each other.
pub(crate) fn collect(pool: &PoolShared) -> PoolStats {
    let mut queues = Vec::with_capacity(pool.queues.len());
    let mut all = Accumulator::default();
    for q in &pool.queues {
        let mut acc = Accumulator::default();
        let mut busy = 0;
        let (spawned, retired, spawn_failures, workers) = {
            let roster = q.roster();
            roster.exited.add_to(&mut acc);
            for (_, c) in &roster.workers {
                c.add_to(&mut acc);
                busy += usize::from(c.busy.load(Ordering::Relaxed));
            }
            (
                roster.spawned,
                roster.retired,
                roster.refused,
                q.alive.load(Ordering::Acquire),
            )
        };
        let estimate = *q.estimate.lock();
        queues.push(QueueStats {
            name: q.name().to_owned(),
            workers,
            busy,
            backlog: q.backlog.load(Ordering::Relaxed),
            target: q.target.load(Ordering::Relaxed),
            jobs_ok: acc.ok,
            jobs_failed: acc.failed,
            jobs_panicked: acc.panicked,
            spawned,
            retired,
            init_failures: q.init_failures.load(Ordering::Relaxed),
            source_errors: q.source_errors.load(Ordering::Relaxed),
            spawn_failures,
            mean_job_time: acc.mean(),
            p99_job_time: acc.quantile(0.99),
            size_reason: crate::reason::SizeReason::ALL
                .get(usize::from(q.size_reason.load(Ordering::Relaxed)))
                .copied()
                .unwrap_or_default(),
            target_wait: q.config.target_wait,
            job_duration_estimate: estimate.duration,
            arrival_rate: estimate.arrival_per_s,
            completion_rate: estimate.completion_per_s,
            estimated_wait: estimate.estimated_wait,
            learned_jobs_per_thread: estimate.learned_jobs_per_thread,
            recycles: q.recycles.load(Ordering::Relaxed),
            health_check_failures: q.health_check_failures.load(Ordering::Relaxed),
            carried: q.stash.carried.load(Ordering::Relaxed),
            starting: q.starting.load(Ordering::Acquire),
        });
        all.merge(&acc);
    }
    let sum = |f: fn(&QueueStats) -> usize| queues.iter().map(f).sum::<usize>();
    let sum64 = |f: fn(&QueueStats) -> u64| queues.iter().map(f).sum::<u64>();
    let total = QueueStats {
        name: "total".to_owned(),
        workers: sum(|q| q.workers),
        busy: sum(|q| q.busy),
        backlog: sum(|q| q.backlog),
        target: sum(|q| q.target),
        jobs_ok: all.ok,
        jobs_failed: all.failed,
        jobs_panicked: all.panicked,
        spawned: sum64(|q| q.spawned),
        retired: sum64(|q| q.retired),
        init_failures: sum64(|q| q.init_failures),
        source_errors: sum64(|q| q.source_errors),
        spawn_failures: sum64(|q| q.spawn_failures),
        mean_job_time: all.mean(),
        p99_job_time: all.quantile(0.99),
        size_reason: crate::reason::SizeReason::default(),
        target_wait: None,
        job_duration_estimate: None,
        arrival_rate: rate_sum(&queues, |q| q.arrival_rate),
        completion_rate: rate_sum(&queues, |q| q.completion_rate),
        estimated_wait: None,
        learned_jobs_per_thread: None,
        recycles: sum64(|q| q.recycles),
        health_check_failures: sum64(|q| q.health_check_failures),
        carried: sum64(|q| q.carried),
        starting: sum(|q| q.starting),
    };
    PoolStats {
        queues,
        total,
        handler_panics: pool.events.panics(),
        free_memory: pool.memory.free(),
        min_free_memory: pool.memory.min(),
    }
}

/// The sum of a rate over the queues that have measured it (`None` if none has).
fn rate_sum(queues: &[QueueStats], f: fn(&QueueStats) -> Option<f64>) -> Option<f64> {
    queues.iter().filter_map(f).reduce(|a, b| a + b)
}

/// A point-in-time view of one queue, from [`ThreadPoolManager::stats`](crate::ThreadPoolManager::stats).
///
/// Counts are read without stopping the pool, so fields may be a few jobs apart from each other.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue's name as given to the builder (`"total"` in [`PoolStats::total`]).
    pub name: String,
    /// Worker threads serving the queue, idle or busy (excludes workers already retiring).
    pub workers: usize,
    /// Workers running a job right now.
    pub busy: usize,
    /// Jobs waiting in the source at the monitor's last check.
    pub backlog: usize,
    /// Threads the scaling policy wants for this queue right now.
    pub target: usize,
    /// Jobs completed successfully.
    pub jobs_ok: u64,
    /// Jobs whose executor returned an error.
    pub jobs_failed: u64,
    /// Jobs whose executor panicked.
    pub jobs_panicked: u64,
    /// Worker threads started over the pool's life. Counted when the thread is started, with
    /// `workers`, so `spawned - retired` is always the number of threads not yet finished. A
    /// spawn the operating system refuses is not counted here (see `spawn_failures`): this
    /// count never goes down.
    pub spawned: u64,
    /// Worker threads that have exited.
    pub retired: u64,
    /// Failed attempts to build a worker's state (the `init` closure returned an error or panicked).
    pub init_failures: u64,
    /// Errors reported by the job source (fetch, acknowledgement, backlog), panics of the
    /// source's methods included.
    pub source_errors: u64,
    /// Times the operating system refused to start a worker thread (see
    /// [`ErrorKind::Spawn`](crate::ErrorKind::Spawn)).
    pub spawn_failures: u64,
    /// Mean executor time per job, `None` before the first timed job. Every job lasting 50 µs
    /// or more is timed; shorter ones are sampled one in 64 (reading the clock would cost more
    /// than dispatching them), so for them this is an estimate.
    pub mean_job_time: Option<Duration>,
    /// 99th percentile of executor time per job (within 6%), sampled as for
    /// [`mean_job_time`](Self::mean_job_time).
    pub p99_job_time: Option<Duration>,
    /// Why the queue has its current size (see [`SizeReason`](crate::SizeReason)); in
    /// [`PoolStats::total`] always the default, `NoBacklog`.
    pub size_reason: crate::reason::SizeReason,
    /// The queue's [`Queue::target_wait`](crate::Queue::target_wait), `None` when it scales
    /// by `jobs_per_thread` (and in [`PoolStats::total`]).
    pub target_wait: Option<Duration>,
    /// The job duration the scaling policy uses: a median over windows of 16 jobs, smoothed
    /// (`init` excluded; see `docs/SCALING.md`). `None` before the first timed job, and in
    /// [`PoolStats::total`]. Measured for every queue, whatever its rule. For a queue with a
    /// wait target on a coordinated Redis source, the fleet's: the median of the fleet's last
    /// 64 to 128 jobs, kept in Redis (so known before this process finishes a job).
    pub job_duration_estimate: Option<Duration>,
    /// Jobs arriving per second, inferred from the backlog and the jobs taken: the mean of the
    /// middle eight of the rates of the last 16 windows of a quarter of the wait target each
    /// (of 15 s for a queue on the divisor rule), so a one-off burst does not move it; the
    /// rate of the last four windows when they bring too few jobs to be a lull (a drop,
    /// followed after one target; see `docs/SCALING.md`). `None` before the
    /// first window closes; the sum over queues in [`PoolStats::total`]. Fleet-wide (measured
    /// at each heartbeat) for a queue with a wait target on a coordinated Redis source.
    pub arrival_rate: Option<f64>,
    /// Jobs finished per second, an exponential average over the wait target (a minute for a
    /// queue on the divisor rule). `None` before the monitor's second reading.
    pub completion_rate: Option<f64>,
    /// The longest wait among the jobs waiting now, at the current speed: the larger of the
    /// first in line's (its age plus one job) and the last's (its age plus
    /// `backlog x job_duration_estimate / workers`); one worker assumed when there is none.
    /// `None` without a duration estimate, and in [`PoolStats::total`]. For a queue with a
    /// wait target on a coordinated Redis source, the fleet's: its backlog on its slots.
    pub estimated_wait: Option<Duration>,
    /// The divisor the wait-target rule has learned: `target_wait / job_duration_estimate`,
    /// the jobs one thread clears within the target (what `jobs_per_thread` is to the
    /// divisor rule). `None` for a queue without a wait target or before a job is timed.
    pub learned_jobs_per_thread: Option<f64>,
    /// States rebuilt because they reached their
    /// [`recycle_after`](crate::Queue::recycle_after) jobs or
    /// [`recycle_after_age`](crate::Queue::recycle_after_age) (not rebuilds after a panic or a
    /// failed health check).
    pub recycles: u64,
    /// Health checks that failed (an error or a panic; see
    /// [`Queue::health_check`](crate::Queue::health_check)); each state that failed was
    /// rebuilt.
    pub health_check_failures: u64,
    /// Values carried over from a dropped state and handed to an `init`
    /// ([`WorkerInfo::take_carry`](crate::WorkerInfo::take_carry) calls that returned one).
    pub carried: u64,
    /// Workers waiting for an init turn ([`Queue::init_concurrency`](crate::Queue::init_concurrency))
    /// or the memory gate, or running `init`: from their spawn to the end of their first
    /// `init`, and during each rebuild. They count in [`workers`](Self::workers) too.
    pub starting: usize,
}

/// A point-in-time view of the pool, from [`ThreadPoolManager::stats`](crate::ThreadPoolManager::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PoolStats {
    /// One entry per queue, in the order they were added to the builder.
    pub queues: Vec<QueueStats>,
    /// Sums over all queues; durations are over all jobs of all queues.
    pub total: QueueStats,
    /// Calls of the [`EventHandler`](crate::EventHandler) that panicked (caught; the pool
    /// went on).
    pub handler_panics: u64,
    /// The free memory the memory gate read at the monitor's last tick, in bytes (see
    /// [`Builder::min_free_memory`](crate::Builder::min_free_memory)); `None` while the gate
    /// is off, before its first reading, or when nothing could be read.
    pub free_memory: Option<u64>,
    /// The memory gate's minimum, in bytes; `None` while it is off.
    pub min_free_memory: Option<u64>,
}

impl PoolStats {
    /// The stats of the queue called `name`.
    pub fn queue(&self, name: &str) -> Option<&QueueStats> {
        self.queues.iter().find(|q| q.name == name)
    }
}
