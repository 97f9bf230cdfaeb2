//! A dynamic thread pool for job-queue workers: it grows and shrinks its threads with each
//! queue's backlog, drains workers gracefully, and never loses a job.
//!
//! Made for workers that each own a heavy resource (a headless browser session, a PDF engine)
//! and take jobs from queues (in memory, or Redis lists with the `redis` feature).
//!
//! # A tour
//!
//! A pool has one or more *queues*. Each queue has a [`JobSource`], an `init` closure that builds
//! a worker's state once per thread, and an executor that runs one job with that state:
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use threadtide::{JobError, MemorySource, ThreadPoolManager};
//!
//! struct Browser { pages: u32 } // stands in for a logged-in session
//!
//! let orders: MemorySource<u32, String> = MemorySource::builder().keep_results(true).build()?;
//! let pool = ThreadPoolManager::builder()
//!     .jobs_per_thread(50)        // threads per queue = ceil(backlog / 50) ...
//!     .max_threads_per_type(10)   // ... at most 10 per queue ...
//!     .max_total_threads(20)      // ... and 20 in all
//!     .queue(
//!         "conferencia",
//!         orders.clone(),
//!         |_worker| Ok::<_, Infallible>(Browser { pages: 0 }), // once per worker thread
//!         |browser, order: &u32| {                             // once per job
//!             browser.pages += 1;
//!             if *order == 0 {
//!                 return Err(JobError::permanent("order 0 does not exist"));
//!             }
//!             Ok(format!("order {order} verified"))
//!         },
//!     )
//!     .build()?;
//!
//! orders.extend(1..=120);          // 120 jobs -> 3 threads
//! pool.start()?;
//! let first = orders.recv_result_timeout(Duration::from_secs(10)).expect("a result");
//! assert!(first.output.ends_with("verified"));
//!
//! pool.shutdown();                 // stop fetching; running jobs finish
//! pool.wait()?;                    // every thread joined
//! let stats = pool.stats();
//! assert!(stats.total.jobs_ok >= 1);
//! // Jobs that were not fetched are still in the source: nothing is lost.
//! assert_eq!(orders.unfinished() as u64, 120 - stats.total.jobs_ok);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # How many threads
//!
//! At [`start`](ThreadPoolManager::start), then every
//! [`rebalance_interval`](Builder::rebalance_interval) (50 ms by default) and whenever a worker
//! exits, a monitor thread reads each queue's backlog and plans:
//!
//! * per queue, `ceil(backlog / jobs_per_thread)` clamped to `[min_threads, max_threads_per_type]`:
//!   with the defaults 1-50 jobs give 1 thread, 51-100 give 2, 322 give 7, 5000 give 10;
//! * when the queues together want more than `max_total_threads`, the cap is split fairly:
//!   every queue with work gets one thread before any gets a second, then threads go to the
//!   queue with the fewest threads per unit of [`weight`](Queue::weight) (weights 40 and 60 split
//!   10 threads 4 / 6);
//! * scale-up is immediate; scale-down waits until the lower target has held for
//!   [`scale_down_delay`](Builder::scale_down_delay) (30 s), so a noisy backlog does not make
//!   threads flap. Held threads only use room no other queue needs, and a hold only keeps
//!   threads a queue has: it never starts one. A queue that gives up threads because another
//!   queue needs the room says so ([`ScaleReason::Shared`]).
//!
//! Shrinking is graceful: an excess worker leaves only between jobs, drops its state (the
//! browser closes), and is joined. An idle worker of the [`MemorySource`] is woken at once; a
//! source that cannot be woken (Redis) notices within its blocking timeout
//! ([`fetch_timeout`](Builder::fetch_timeout), 1 s).
//!
//! # Failures
//!
//! * An executor that panics is caught; the job is reported failed to its source, which
//!   decides about a retry ([`MemorySource`] retries with back-off, then dead-letters), the
//!   worker's state is rebuilt, and the pool keeps its size. std still prints each panic on
//!   stderr; [`silence_job_panics`] stops that for panics inside jobs.
//! * A failing `init`, a failing source, a source whose methods panic, and a thread the
//!   operating system refuses to start are retried with exponential back-off and jitter
//!   ([`Builder::backoff`]), and reported. A back-off pause ends early only for shutdown or the
//!   worker's own retirement.
//! * An [`EventHandler`] that panics is caught and counted; the pool goes on.
//!
//! # A worker's state over its life
//!
//! A worker's state is the expensive thing it owns: a logged-in browser, a PDF engine. The
//! pool builds it with the queue's `init` before the worker's first job and keeps it across
//! jobs; it drops it and builds a new one (on the same thread, holding no job meanwhile):
//!
//! * after [`recycle_after`](Queue::recycle_after) jobs, or once it has lived
//!   [`recycle_after_age`](Queue::recycle_after_age) (a browser leaks memory with every page,
//!   a session expires), each limit shortened per state by up to
//!   [`recycle_jitter`](Queue::recycle_jitter) (a tenth) so that workers started together do
//!   not all recycle together; counted in [`QueueStats::recycles`];
//! * when it fails its [`health_check`](Queue::health_check), which runs before the worker
//!   fetches its next job (at most every
//!   [`health_check_every`](Queue::health_check_every)): a renderer found crashed costs a
//!   rebuild, not a job (one that crashes during the fetch's wait, up to
//!   [`fetch_timeout`](Builder::fetch_timeout), still gets the job that fetch returns);
//!   counted in [`QueueStats::health_check_failures`];
//! * after a job panicked (the state may be half-changed).
//!
//! With [`carry_over`](Queue::carry_over), a state dropped for a recycle, a failed check or its
//! worker's exit (not after a panic) hands something to the next `init` of its queue (cookies,
//! a session token), which takes it with [`WorkerInfo::take_carry`]: a recycle need not log in
//! again. At most [`init_concurrency`](Queue::init_concurrency) `init`s of a queue run at once
//! (by default the CPUs the process may use), and with [`Builder::min_free_memory`] no worker
//! starts while the free memory of the process (its cgroup's limit minus its working set,
//! reclaimable file cache not counted, or `MemAvailable`) is below a minimum
//! ([`SizeReason::Memory`]).
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use threadtide::{MemorySource, Queue, ThreadPoolManager, WorkerInfo};
//!
//! struct Browser { session: String, crashed: bool } // stands in for a headless browser
//!
//! let logins = Arc::new(AtomicU32::new(0));
//! let counted = Arc::clone(&logins);
//! let orders: MemorySource<u32, ()> = MemorySource::builder().keep_results(true).build()?;
//! let queue = Queue::new(
//!     "conferencia",
//!     orders.clone(),
//!     move |worker: &WorkerInfo| {
//!         // Start from the session a dropped browser carried over; log in only without one.
//!         let session = worker.take_carry::<String>().unwrap_or_else(|| {
//!             counted.fetch_add(1, Ordering::SeqCst);
//!             format!("session of {}", worker.name())
//!         });
//!         Ok::<_, Infallible>(Browser { session, crashed: false })
//!     },
//!     |browser: &mut Browser, order: &u32| {
//!         assert!(!browser.crashed, "no job runs on a crashed browser");
//!         std::thread::sleep(Duration::from_millis(1)); // a page
//!         browser.crashed = order % 7 == 6; // the renderer dies now and then
//!         Ok(())
//!     },
//! )
//! .recycle_after(500)                                // pages leak memory
//! .recycle_after_age(Duration::from_secs(30 * 60))   // sessions expire
//! .health_check(|b: &mut Browser, _| if b.crashed { Err("renderer crashed") } else { Ok(()) })
//! .carry_over(|b: Browser, _| Some(b.session))       // the browser closes, the login stays
//! .init_concurrency(2);                              // two browsers launch at a time
//!
//! let pool = ThreadPoolManager::builder()
//!     .max_threads_per_type(2)
//!     .min_free_memory(16 << 20) // no new browser below 16 MiB free
//!     .add_queue(queue)
//!     .build()?;
//! orders.extend(0..100);
//! pool.start()?;
//! for _ in 0..100 {
//!     orders.recv_result_timeout(Duration::from_secs(10)).expect("a result");
//! }
//! pool.shutdown();
//! pool.wait()?;
//! let stats = pool.stats();
//! assert_eq!((stats.total.jobs_ok, stats.total.jobs_panicked), (100, 0));
//! assert!(stats.total.health_check_failures > 0); // crashed browsers were rebuilt first
//! assert!(logins.load(Ordering::SeqCst) <= 2);    // and kept their worker's login
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Watching it
//!
//! * [`ThreadPoolManager::stats`]: workers, busy, backlog, target, job counts and durations,
//!   recycles, failed health checks, carried values, starting workers, the memory gate's
//!   reading.
//! * [`EventHandler`]: scaling decisions, worker starts and exits, errors (every error, even
//!   when the log is quiet about it).
//! * `log`, at these levels (the pool's own lines; a source documents its own):
//!   * `info`: scaling decisions with their reason ("queue conferencia: 322 jobs -> scaling
//!     up 2 -> 7 threads (backlog grew)"), a source, a backlog or spawning working again after
//!     an outage (with its length), the memory gate starting and stopping to hold ("memory
//!     gate: 180 MiB free, minimum 512 MiB: no worker starts"), a shutdown requested by call
//!     or signal, and its end;
//!   * `warn`: a worker losing its source, or the monitor a backlog (one line, then at most
//!     one a minute while it lasts), a failed `init`, a failed health check, free memory the
//!     memory gate cannot read (once), a job that panicked (without its message), a refused
//!     acknowledgement, running jobs put back after a shutdown deadline, a drop that leaves
//!     workers to finish, a second signal while draining;
//!   * `error`: a refused thread spawn, a panic outside a job (an event handler, a `Drop`, a
//!     `carry_over`, a worker or the monitor thread itself), an acknowledgement given up
//!     while stopping, a source that cannot put running jobs back;
//!   * `debug`: a steady queue when its backlog changed, worker starts and exits;
//!   * `trace`: the message of a panic in a job, a source callback, a `carry_over` or a
//!     `Drop`, which may quote the job.
//!
//!   Job payloads never appear above `trace`.
//! * Threads are named `{prefix}-{queue}-{n}`, `{prefix}-monitor`, `{prefix}-signals` and,
//!   for the Redis source, `{prefix}-{queue}-keeper`, shortened to Linux's 15 bytes with the
//!   number or role kept (see
//!   [`thread_name_prefix`](Builder::thread_name_prefix)); logs and events give a worker's
//!   full name.
//!
//! # Stopping
//!
//! [`shutdown`](ThreadPoolManager::shutdown) signals; [`wait`](ThreadPoolManager::wait) blocks
//! until every thread is joined; [`shutdown_timeout`](ThreadPoolManager::shutdown_timeout)
//! bounds it and reports what was still running;
//! [`shutdown_on_signals`](ThreadPoolManager::shutdown_on_signals) wires SIGINT and SIGTERM to a
//! graceful shutdown. Dropping the pool shuts it down gracefully and joins every thread, except
//! after a bounded wait gave up during shutdown (see [`ThreadPoolManager`]'s Drop section).
//!
//! # Redis lists
//!
//! With the `redis` feature (on by default), `RedisSource` consumes lists that producers fill
//! with `RPUSH`, with at-least-once delivery: each job moves atomically into a per-worker
//! processing list before it runs and leaves it atomically with its result; a reaper in every
//! process recovers the jobs of workers whose heartbeat stopped; retries back off; a job that
//! keeps failing, or that the decoder refuses, is dead-lettered with the reason. Its guarantee,
//! key layout and measured fault cases are in `docs/RELIABILITY.md` in the repository.
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::convert::Infallible;
//! use threadtide::{RedisSource, ThreadPoolManager};
//!
//! let source = RedisSource::builder("redis://127.0.0.1:6379", "fila:conferencia")
//!     .results("fila:resultados")
//!     .build()?;
//! let pool = ThreadPoolManager::builder()
//!     .queue("conferencia", source, |_| Ok::<_, Infallible>(()), |_, payload: &Vec<u8>| {
//!         Ok(payload.clone()) // the result pushed to fila:resultados
//!     })
//!     .build()?;
//! pool.shutdown_on_signals()?;
//! pool.start()?;
//! pool.wait()?;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "redis"))]
//! # fn main() {}
//! ```
//!
//! # Writing a source
//!
//! Implement [`JobSource`] (cheap backlog, one [`Consumer`] per worker) and [`Consumer`]
//! (blocking fetch with a deadline, per-job completion). Their contract is in their docs.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod admin;
mod backoff;
mod builder;
mod config;
mod coordination;
mod counters;
mod error;
mod estimate;
mod event;
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
mod fleet_estimate;
mod gate;
mod histogram;
mod life_config;
mod lifecycle;
mod manager;
#[cfg(feature = "metrics")]
mod metrics;
mod monitor;
mod outage;
mod queue;
mod reason;
mod runner;
mod scaling;
// A namespace of its own: a tool (the simulator) rather than part of the pool's API.
#[cfg(feature = "simulate")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulate")))]
pub mod sim;
mod source;
mod state;
mod stats;
mod threads;
mod worker;

pub use builder::{Builder, Queue};
pub use coordination::{FleetShare, QueueView};
pub use error::{
    BuildError, FailureKind, JobError, RunningJob, SourceError, StartError, WaitError,
};
pub use event::{
    ErrorEvent, ErrorKind, EventHandler, ExitReason, ScaleEvent, ScaleReason, WorkerEvent,
};
pub use manager::{ShutdownHandle, ThreadPoolManager};
pub use reason::SizeReason;
pub use source::memory::{
    Completed, DeadLetter, DeadReason, MemoryConsumer, MemorySource, MemorySourceBuilder,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use source::redis::{QueueSummary, RedisConsumer, RedisSource, RedisSourceBuilder, RedisStats};
pub use source::{
    Consumer, FetchContext, FetchWait, JobSource, PoolInfo, SourceMetrics, Unacked, WorkerInfo,
};
pub use stats::{PoolStats, QueueStats};
pub use threads::silence_job_panics;

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
