//! A queue's lifecycle settings (issue 13): recycling by age with jitter, the health check,
//! carry-over and the start ramp, the pool's memory gate, and their checks in `build()`. The
//! behaviour is in `lifecycle.rs` and `gate.rs`.

use std::time::Duration;

use crate::builder::{Builder, Queue};
use crate::config::MAX_WAIT;
use crate::error::BuildError;
use crate::lifecycle::{CarryFn, Erased, HealthFn};
use crate::source::WorkerInfo;

impl Queue {
    /// Drop and rebuild a worker's state once it has lived `age` since its `init` returned (a
    /// session that expires, a browser that slows down over hours). Checked between jobs,
    /// before the next fetch: a running job is never interrupted, so a state lives at most
    /// `age` plus one job (an idle worker rebuilds within
    /// [`fetch_timeout`](Builder::fetch_timeout) of it). A state always serves at least one
    /// fetch, so an age shorter than `init` rebuilds after every job rather than in a loop.
    /// Shortened per state by
    /// [`recycle_jitter`](Queue::recycle_jitter); counted in
    /// [`QueueStats::recycles`](crate::QueueStats::recycles).
    ///
    /// Defaults to never. Zero is refused by `build()`. There is no upper bound and no panic:
    /// an age too long to be added to the state's start ([`Duration::MAX`] included) means
    /// never.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use threadtide::{MemorySource, Queue, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// // A session that expires after 8 hours: rebuild the browser every 6.
    /// let queue = Queue::new("emissao", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .recycle_after_age(Duration::from_secs(6 * 3600));
    /// let pool = ThreadPoolManager::builder().add_queue(queue).build().unwrap();
    /// # drop(pool);
    /// ```
    pub fn recycle_after_age(mut self, age: Duration) -> Self {
        self.recycle_after_age = Some(age);
        self
    }

    /// Spreads the recycle points: each state's [`recycle_after`](Queue::recycle_after) limit
    /// `n` becomes `n - floor(n * f)` and its [`recycle_after_age`](Queue::recycle_after_age)
    /// limit `age * (1 - f)`, for a fraction `f` in `[0, jitter)` drawn per state.
    ///
    /// The draw is reproducible: `f = jitter * u` with
    /// `u = (splitmix64(splitmix64(index) ^ generation) >> 11) / 2^53`, where `index` is
    /// [`WorkerInfo::index`] and `generation` [`WorkerInfo::generation`] of the state's
    /// `init`, and `splitmix64` the standard step (add `0x9E3779B97F4A7C15`, then xor-shift
    /// 30, multiply `0xBF58476D1CE4E5B9`, xor-shift 27, multiply `0x94D049BB133111EB`,
    /// xor-shift 31).
    ///
    /// Defaults to 0.1. 0 turns it off. A value outside `[0, 1)` (NaN included) is a
    /// `build()` error naming `recycle_jitter`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, Queue, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// // Each state runs between 76 and 100 jobs (100 shortened by less than a quarter).
    /// let queue = Queue::new("conferencia", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .recycle_after(100)
    ///     .recycle_jitter(0.25);
    /// assert!(ThreadPoolManager::builder().add_queue(queue).build().is_ok());
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let queue = Queue::new("conferencia", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .recycle_jitter(1.0);
    /// let e = ThreadPoolManager::builder().add_queue(queue).build().unwrap_err();
    /// assert_eq!(e.field(), "queue[conferencia].recycle_jitter");
    /// ```
    pub fn recycle_jitter(mut self, jitter: f64) -> Self {
        self.recycle_jitter = jitter;
        self
    }

    /// Checks the worker's state between jobs, before the worker fetches the next one: a
    /// state that fails (a crashed renderer, a closed connection) is dropped
    /// ([`carry_over`](Queue::carry_over) applies, unless the check panicked) and rebuilt
    /// with `init`, so no job is spent on a state the check finds broken, and none is held
    /// while the state is rebuilt (the Redis source's job taken ahead goes back to its list
    /// first).
    ///
    /// The check runs before every fetch (also after a fetch that returned nothing, so an
    /// idle worker checks once per [`fetch_timeout`](Builder::fetch_timeout)), not between
    /// the fetch and the job: a state that breaks while the worker waits in a fetch (up to
    /// `fetch_timeout` on an empty queue) gets the job that fetch returns. The window is one
    /// fetch's wait; [`health_check_every`](Queue::health_check_every) widens it to the
    /// interval.
    ///
    /// It runs on the worker thread, between jobs: [`shutdown`](crate::ThreadPoolManager::shutdown)
    /// and a retirement wait for a check in progress, so it must return in bounded time (give
    /// a browser call its own timeout).
    ///
    /// The check gets the state and the [`WorkerInfo`]; an `Err` or a panic is a failure:
    /// counted in [`QueueStats::health_check_failures`](crate::QueueStats::health_check_failures),
    /// reported as an [`ErrorKind::HealthCheck`](crate::ErrorKind::HealthCheck) event and
    /// logged at `warn`. A state that fails before it ran a job, after a failure already,
    /// waits out the [`backoff`](Builder::backoff) before the next `init`. How often it runs:
    /// [`health_check_every`](Queue::health_check_every).
    ///
    /// Defaults to none. `St` must be the queue's state type: another type is a `build()`
    /// error naming `health_check` and both types.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use std::time::Duration;
    /// use threadtide::{MemorySource, Queue};
    ///
    /// struct Browser { alive: bool }
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let queue = Queue::new(
    ///     "conferencia",
    ///     jobs,
    ///     |_| Ok::<_, Infallible>(Browser { alive: true }),
    ///     |_b: &mut Browser, _| Ok(()),
    /// )
    /// .health_check(|b: &mut Browser, _| if b.alive { Ok(()) } else { Err("renderer gone") })
    /// .health_check_every(Duration::from_secs(30));
    /// # let _ = queue;
    /// ```
    pub fn health_check<St: 'static, E>(
        mut self,
        check: impl Fn(&mut St, &WorkerInfo) -> Result<(), E> + Send + Sync + 'static,
    ) -> Self
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'static,
    {
        let check: HealthFn<St> = Box::new(move |st, w| check(st, w).map_err(Into::into));
        self.health_check = Some(Erased::health(check));
        self
    }

    /// Runs the [`health_check`](Queue::health_check) at most once per `every`, measured from
    /// the last check or the state's `init`. Defaults to zero: before every fetch (so before
    /// every job, and, while idle, once per [`fetch_timeout`](Builder::fetch_timeout)). More
    /// than one day is a `build()` error naming `health_check_every`.
    ///
    /// # Examples
    ///
    /// See [`health_check`](Queue::health_check).
    pub fn health_check_every(mut self, every: Duration) -> Self {
        self.health_check_every = every;
        self
    }

    /// When a state is dropped for a rebuild (recycled by jobs or age, a failed health check)
    /// or because its worker exits (retired, shut down), `carry` turns it into something the
    /// next `init` of this queue can start from (cookies, a storage state, a session token):
    /// [`WorkerInfo::take_carry`] takes it. `carry` owns the state and drops it (the browser
    /// closes); returning `None` carries nothing.
    ///
    /// It is not called after a job panicked (the state may be half-changed): that state is
    /// dropped as before. A panic in `carry` is caught and logged at `error`; nothing is
    /// carried. Carried values wait in a per-queue stash of at most
    /// [`max_threads_per_type`](Builder::max_threads_per_type) values (the oldest is dropped
    /// when it is full) and are taken by the next `init` of the queue, on any worker; they are
    /// dropped with the pool.
    ///
    /// Defaults to none. `St` must be the queue's state type: another type is a `build()`
    /// error naming `carry_over` and both types.
    ///
    /// # Panics
    ///
    /// A panic in `carry` is caught. But when `carry` panics while it owns the state, the
    /// state is dropped during that unwinding: if `St`'s `Drop` panics too, the process
    /// aborts (Rust's rule for a panic during a panic). Keep `St`'s `Drop` from panicking.
    ///
    /// # Examples
    ///
    /// See [`WorkerInfo::take_carry`].
    pub fn carry_over<St: 'static, C: Send + 'static>(
        mut self,
        carry: impl Fn(St, &WorkerInfo) -> Option<C> + Send + Sync + 'static,
    ) -> Self {
        let carry: CarryFn<St> = Box::new(move |st, w| {
            carry(st, w).map(|c| Box::new(c) as Box<dyn std::any::Any + Send>)
        });
        self.carry_over = Some(Erased::carry(carry));
        self
    }

    /// At most `k` `init`s of this queue run at once (the start ramp: a burst does not launch
    /// ten browsers at once on a small machine). A worker waiting for its turn has no state
    /// and holds no job; it counts in [`QueueStats::workers`](crate::QueueStats::workers) and
    /// in [`QueueStats::starting`](crate::QueueStats::starting), and leaves at once if the pool
    /// stops or the queue shrinks.
    ///
    /// Defaults to the CPUs available to the process (`num_cpus::get()`, which honours cgroup
    /// quotas and CPU affinity). Zero is a `build()` error naming `init_concurrency`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, Queue, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// // Launch at most two browsers at once, whatever the burst.
    /// let queue = Queue::new("emissao", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .init_concurrency(2);
    /// assert!(ThreadPoolManager::builder().add_queue(queue).build().is_ok());
    /// ```
    pub fn init_concurrency(mut self, k: usize) -> Self {
        self.init_concurrency = Some(k);
        self
    }
}

impl Builder {
    /// The memory gate: no worker starts while the free memory of the process is below
    /// `bytes`: the monitor spawns none, and a worker spawned before the gate closed waits
    /// before its first `init` (holding no job and no init turn). Workers already running are
    /// never stopped by it, and the rebuilds of their states (recycles, failed health checks,
    /// panics) do not wait for it: the old state was dropped first.
    ///
    /// Free memory is the smallest of: under a cgroup v2 limit, `memory.max` minus the working
    /// set `memory.current - inactive_file` (from `memory.stat`) of the process's cgroup
    /// (from `/proc/self/cgroup`) or of a parent with a limit; under cgroup v1,
    /// `memory.limit_in_bytes` minus `memory.usage_in_bytes - total_inactive_file`;
    /// `MemAvailable` from `/proc/meminfo`. The usage figures include page cache, which the
    /// kernel reclaims only near the limit; the inactive file cache is subtracted as kubelet's
    /// working set does, so a container writing files (PDFs) does not look full. Active file
    /// cache still counts as used. The monitor reads it on every tick while the gate is on; when none of
    /// them can be read the gate does not hold (logged once at `warn`).
    ///
    /// While the gate is on, the monitor also starts at most
    /// [`init_concurrency`](Queue::init_concurrency) workers of a queue whose `init` has not
    /// returned yet, so each reading sees the memory of the workers started before it.
    ///
    /// A queue the gate holds below its target shows
    /// [`SizeReason::Memory`](crate::SizeReason::Memory); the reading and the minimum are in
    /// [`PoolStats`](crate::PoolStats); a line at `info` says when the gate starts and stops
    /// holding ("memory gate: 180 MiB free, minimum 512 MiB: no worker starts").
    /// [`ThreadPoolManager::set_min_free_memory`](crate::ThreadPoolManager::set_min_free_memory)
    /// changes it at runtime.
    ///
    /// Defaults to off. Zero is refused by `build()` (leave it unset for off).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, Queue, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let queue = Queue::new("emissao", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()));
    /// // No new browser while less than 512 MiB is free.
    /// let pool = ThreadPoolManager::builder()
    ///     .min_free_memory(512 << 20)
    ///     .add_queue(queue)
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(pool.stats().min_free_memory, Some(512 << 20));
    /// ```
    pub fn min_free_memory(mut self, bytes: u64) -> Self {
        self.config.min_free_memory = Some(bytes);
        self
    }
}

/// The lifecycle settings of one queue (`field` names a field of it).
pub(crate) fn check(q: &Queue, field: &dyn Fn(&str) -> String) -> Result<(), BuildError> {
    if q.recycle_after_age == Some(Duration::ZERO) {
        return Err(BuildError::new(
            field("recycle_after_age"),
            "0ns",
            "must be longer than zero (leave unset to never recycle by age)",
        ));
    }
    if !(0.0..1.0).contains(&q.recycle_jitter) {
        return Err(BuildError::new(
            field("recycle_jitter"),
            q.recycle_jitter,
            "must be in [0, 1)",
        ));
    }
    if q.health_check_every > MAX_WAIT {
        return Err(BuildError::new(
            field("health_check_every"),
            format!("{:?}", q.health_check_every),
            "must be at most one day (86400s)",
        ));
    }
    if q.init_concurrency == Some(0) {
        return Err(BuildError::new(
            field("init_concurrency"),
            0,
            "must be at least 1",
        ));
    }
    Ok(())
}
