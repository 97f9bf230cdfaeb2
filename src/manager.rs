//! `ThreadPoolManager`: start, wait, shutdown, stats, and what Drop does.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Config, QueueConfig};
use crate::error::{StartError, WaitError};
use crate::event::{EventHandler, Guarded};
use crate::monitor::Monitor;
use crate::source::PoolInfo;
use crate::state::PoolShared;
use crate::stats::{self, PoolStats};
use crate::threads;
use crate::worker::{Runner, close_source};

static NEXT_POOL_ID: AtomicUsize = AtomicUsize::new(1);

#[derive(Default)]
struct Threads {
    started: bool,
    monitor: Option<JoinHandle<()>>,
    signals: Option<(signal_hook::iterator::Handle, JoinHandle<()>)>,
    /// A bounded wait gave up with jobs still running while the pool was stopping: Drop does
    /// not block on them (see the type's docs).
    abandoned: bool,
    /// Running jobs were handed back to their sources after a shutdown deadline.
    requeued: bool,
    /// The metrics server, from `start` until the pool is joined.
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Server>,
}

/// A pool of worker threads per queue that grows and shrinks with each queue's backlog.
///
/// Build it with [`ThreadPoolManager::builder`], [`start`](Self::start) it, and
/// [`wait`](Self::wait) for it to finish after [`shutdown`](Self::shutdown) (or a signal, with
/// [`shutdown_on_signals`](Self::shutdown_on_signals)). See the [crate docs](crate) for a tour.
///
/// # Drop
///
/// Dropping a started pool shuts it down gracefully and blocks until running jobs finish and
/// every thread (monitor, workers, signal listener) is joined, as [`shutdown`](Self::shutdown)
/// then [`wait`](Self::wait) would. Exactly two cases do not block:
///
/// * a bounded wait ([`shutdown_timeout`](Self::shutdown_timeout), or
///   [`wait_timeout`](Self::wait_timeout) after a shutdown was requested) returned
///   [`WaitError::TimedOut`] and no later wait finished: the host chose a deadline, so the
///   drop does not wait again. The remaining workers, already told to stop, finish their job
///   and exit on their own; their threads are not joined (the process may exit first).
/// * the drop runs on one of the pool's own threads (it would wait for itself): it only
///   signals.
///
/// A [`wait_timeout`](Self::wait_timeout) that timed out on a pool that was still running
/// changes nothing: a later drop shuts down and joins everything. In every case, a never
/// started pool included, the drop closes and joins the signal listener of
/// [`shutdown_on_signals`](Self::shutdown_on_signals), so SIGINT and SIGTERM are released.
pub struct ThreadPoolManager {
    shared: Arc<PoolShared>,
    runners: Vec<Arc<dyn Runner>>,
    threads: Arc<Mutex<Threads>>,
    #[cfg(feature = "metrics")]
    recorder: Arc<crate::metrics::Recorder>,
}

impl fmt::Debug for ThreadPoolManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadPoolManager")
            .field("id", &self.shared.id)
            .field("queues", &self.shared.queues.len())
            .field("stopping", &self.shared.is_stopping())
            .finish_non_exhaustive()
    }
}

/// A cloneable handle that shuts the pool down from anywhere (another thread, a signal
/// handler thread, an HTTP endpoint). See [`ThreadPoolManager::shutdown_handle`].
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<PoolShared>,
    threads: Arc<Mutex<Threads>>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle")
            .field("pool", &self.shared.id)
            .finish()
    }
}

impl ShutdownHandle {
    /// Same as [`ThreadPoolManager::shutdown`].
    pub fn shutdown(&self) {
        signal_stop(&self.shared, &self.threads);
    }

    /// Whether shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        self.shared.is_stopping()
    }
}

fn signal_stop(shared: &PoolShared, threads: &Mutex<Threads>) {
    let threads = threads.lock();
    if shared.stop() {
        log::info!("shutdown requested: no new jobs are fetched, running jobs finish");
        if !threads.started {
            shared.mark_done();
        }
    }
}

impl ThreadPoolManager {
    pub(crate) fn new(
        config: Config,
        queues: Vec<(QueueConfig, Arc<dyn Runner>)>,
        events: Arc<Guarded>,
    ) -> Self {
        let id = NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed);
        let (queues, runners): (Vec<_>, Vec<_>) = queues.into_iter().unzip();
        ThreadPoolManager {
            shared: Arc::new(PoolShared::new(id, config, queues, events)),
            runners,
            threads: Arc::new(Mutex::new(Threads::default())),
            #[cfg(feature = "metrics")]
            recorder: Arc::default(),
        }
    }

    /// Uses `recorder` (fed by the event handler the builder installed) for the metrics.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_recorder(mut self, recorder: Arc<crate::metrics::Recorder>) -> Self {
        self.recorder = recorder;
        self
    }

    /// The pool's metrics in the Prometheus text exposition format (version 0.0.4), as
    /// [`Builder::metrics_addr`](crate::Builder::metrics_addr)'s `GET /metrics` serves them:
    /// for hosts that run their own HTTP server. Every metric and the queries to use are
    /// listed in `docs/OPERATIONS.md`.
    ///
    /// Reads the pool's counters without stopping it, and asks each source for its numbers
    /// ([`JobSource::metrics`](crate::JobSource::metrics)): for the Redis source one round
    /// trip per queue, skipped while Redis is unreachable. Call it at scrape rate (seconds),
    /// not in a loop.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let pool = ThreadPoolManager::builder()
    ///     .queue("pdf", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .build()?;
    /// let text = pool.metrics_text();
    /// assert!(text.contains("threadtide_workers{queue=\"pdf\"} 0"));
    /// # Ok::<(), threadtide::BuildError>(())
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_text(&self) -> String {
        crate::metrics::render(&self.shared, &self.runners, &self.recorder)
    }

    /// Binds and starts the metrics server if an address was set.
    #[cfg(feature = "metrics")]
    fn start_metrics(&self) -> Result<Option<crate::metrics::Server>, StartError> {
        let Some(addr) = self.shared.config.metrics_addr else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|error| StartError::Metrics { addr, error })?;
        let pages = MetricsPages {
            shared: Arc::clone(&self.shared),
            runners: self.runners.clone(),
            recorder: Arc::clone(&self.recorder),
        };
        let name = threads::thread_name(&self.shared.config.thread_name_prefix, None, "metrics");
        crate::metrics::Server::start(listener, name, pages)
            .map(Some)
            .map_err(StartError::Spawn)
    }

    /// The address the metrics server listens on (with the port the system picked for port
    /// 0), from [`start`](Self::start) until [`wait`](Self::wait) returns; `None` when no
    /// [`metrics_addr`](crate::Builder::metrics_addr) was set.
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_local_addr(&self) -> Option<std::net::SocketAddr> {
        self.threads.lock().metrics.as_ref().map(|s| s.addr())
    }

    /// Starts the monitor thread, which spawns workers as the backlogs ask (at once for queues
    /// with work or a `min_threads`). Returns without waiting for any worker.
    ///
    /// # Errors
    ///
    /// [`StartError::AlreadyStarted`] on a second call, [`StartError::ShutDown`] after
    /// [`shutdown`](Self::shutdown), [`StartError::Spawn`] if the monitor thread cannot be
    /// spawned, [`StartError::Source`] if a queue's source refuses to open or panics in
    /// [`JobSource::open`](crate::JobSource::open) (the sources already opened are closed). When it fails, nothing is left running.
    pub fn start(&self) -> Result<(), StartError> {
        let mut threads = self.threads.lock();
        if threads.started {
            return Err(StartError::AlreadyStarted);
        }
        if self.shared.is_stopping() {
            return Err(StartError::ShutDown);
        }
        // First, so that nothing else has started if the address is taken; dropped (stopped
        // and joined) on every error below.
        #[cfg(feature = "metrics")]
        let metrics = self.start_metrics()?;
        let prefix: Arc<str> = Arc::from(self.shared.config.thread_name_prefix.as_str());
        let events: Arc<dyn EventHandler> = self.shared.events.clone();
        for (i, q) in self.shared.queues.iter().enumerate() {
            let info = PoolInfo::new(
                Arc::clone(&q.config.name),
                Arc::clone(&prefix),
                Arc::clone(&events),
            );
            if let Err(error) = self.runners[i].open(&info) {
                // Nothing may be left running: close the sources already opened.
                for (q, opened) in self.shared.queues.iter().zip(&self.runners[..i]) {
                    close_source(q, &**opened);
                }
                return Err(StartError::Source {
                    queue: q.name().to_owned(),
                    error,
                });
            }
        }
        let monitor = Monitor::new(Arc::clone(&self.shared), self.runners.clone());
        let handle = thread::Builder::new()
            .name(monitor.thread_name().to_owned())
            .spawn(move || monitor.run())
            .map_err(|e| {
                for (q, runner) in self.shared.queues.iter().zip(&self.runners) {
                    close_source(q, &**runner);
                }
                StartError::Spawn(e)
            })?;
        threads.started = true;
        threads.monitor = Some(handle);
        #[cfg(feature = "metrics")]
        {
            threads.metrics = metrics;
        }
        Ok(())
    }

    /// Asks the pool to stop: no new job is fetched, running jobs finish, then every worker
    /// exits and drops its state. Returns at once; [`wait`](Self::wait) blocks until it is
    /// done. Calling it again does nothing. Jobs not yet fetched stay in their source.
    pub fn shutdown(&self) {
        signal_stop(&self.shared, &self.threads);
    }

    /// Whether [`shutdown`](Self::shutdown) has been requested (by any means).
    pub fn is_shutdown(&self) -> bool {
        self.shared.is_stopping()
    }

    /// A handle to shut the pool down from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
            threads: Arc::clone(&self.threads),
        }
    }

    /// Blocks until the pool has been shut down (by [`shutdown`](Self::shutdown), a handle or a
    /// signal) and every thread has been joined. Returns at once if that already happened.
    ///
    /// # Errors
    ///
    /// [`WaitError::InsideWorker`] when called from one of this pool's threads (it would wait
    /// for itself); [`WaitError::MonitorPanicked`] if the monitor thread died (the pool then
    /// stopped and joined its workers, so the wait still returns).
    pub fn wait(&self) -> Result<(), WaitError> {
        self.wait_until(None)
    }

    /// Like [`wait`](Self::wait), giving up after `timeout` (a timeout too large for the
    /// clock, such as `Duration::MAX`, waits as [`wait`](Self::wait) does).
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`] listing the jobs still running when the time ran out (the pool
    /// may not even have been asked to stop), [`WaitError::InsideWorker`], or
    /// [`WaitError::MonitorPanicked`].
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), WaitError> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    /// [`shutdown`](Self::shutdown), then waits up to `timeout` for running jobs to finish.
    ///
    /// # Errors
    ///
    /// [`WaitError::TimedOut`] with the jobs still running at the deadline. Their workers stay
    /// told to stop and exit once their job ends; a later [`wait`](Self::wait) joins them, and
    /// a drop does not block on them. [`WaitError::InsideWorker`] from one of the pool's
    /// threads.
    pub fn shutdown_timeout(&self, timeout: Duration) -> Result<(), WaitError> {
        self.shutdown();
        self.wait_timeout(timeout)
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<(), WaitError> {
        if threads::on_pool_thread(self.shared.id) {
            return Err(WaitError::InsideWorker);
        }
        if !self.shared.wait_done(deadline) {
            if self.shared.is_stopping() {
                self.threads.lock().abandoned = true;
            }
            let mut running = Vec::new();
            for q in &self.shared.queues {
                q.running_jobs(&self.shared, &mut running);
            }
            let requeued = if self.shared.is_stopping() {
                self.requeue_running()
            } else {
                0
            };
            return Err(WaitError::TimedOut { running, requeued });
        }
        // Take the handles out and join without the lock: the signal listener takes it (in
        // `shutdown`) and would never finish while we wait for it holding the lock.
        let (monitor, signals) = {
            let mut threads = self.threads.lock();
            threads.abandoned = false;
            (threads.monitor.take(), threads.signals.take())
        };
        if let Some(monitor) = monitor {
            let _ = monitor.join();
        }
        close_signals(signals);
        #[cfg(feature = "metrics")]
        drop(self.threads.lock().metrics.take());
        if self.shared.monitor_died.load(Ordering::Acquire) {
            return Err(WaitError::MonitorPanicked);
        }
        Ok(())
    }

    /// Asks each source, once, to put back the jobs still running (see
    /// [`JobSource::requeue_running`](crate::JobSource::requeue_running)).
    fn requeue_running(&self) -> usize {
        if std::mem::replace(&mut self.threads.lock().requeued, true) {
            return 0;
        }
        let mut total = 0;
        for (q, runner) in self.shared.queues.iter().zip(&self.runners) {
            match runner.requeue_running() {
                Ok(n) => total += n,
                Err(e) => {
                    q.source_errors.fetch_add(1, Ordering::Relaxed);
                    log::error!("queue {}: cannot put back running jobs: {e}", q.name());
                }
            }
        }
        if total > 0 {
            log::warn!("shutdown deadline passed: {total} running job(s) put back in their source");
        }
        total
    }

    /// Makes SIGINT and SIGTERM shut the pool down gracefully, as [`shutdown`](Self::shutdown)
    /// does. A second signal while draining exits the process at once with status 130 (the
    /// Celery and Sidekiq convention: the first signal is warm, the second cold); jobs of a
    /// crash-safe source (Redis) are recovered by the reaper. The listener thread is joined by
    /// [`wait`](Self::wait).
    ///
    /// Unix only.
    ///
    /// # Errors
    ///
    /// The error of registering the handlers or spawning the listener thread.
    pub fn shutdown_on_signals(&self) -> io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let stopper = self.shutdown_handle();
        let thread = thread::Builder::new()
            .name(threads::thread_name(
                &self.shared.config.thread_name_prefix,
                None,
                "signals",
            ))
            .spawn(move || {
                for signal in signals.forever() {
                    if stopper.is_shutdown() {
                        log::warn!("signal {signal} while draining: exiting now");
                        std::process::exit(130);
                    }
                    log::info!("signal {signal}: draining gracefully");
                    stopper.shutdown();
                }
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                handle.close();
                return Err(e);
            }
        };
        // Joined after the lock is released: the old listener may be inside `shutdown`,
        // waiting for that lock.
        let old = self.threads.lock().signals.replace((handle, thread));
        close_signals(old);
        Ok(())
    }

    /// Changes the memory gate's minimum ([`Builder::min_free_memory`](crate::Builder::min_free_memory))
    /// at runtime, or with `None` turns the gate off (`Some(0)` turns it off too). Takes effect
    /// at the monitor's next tick: lowering it lets workers start, raising it stops no worker
    /// already running. Never blocks, never fails.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use threadtide::{MemorySource, ThreadPoolManager};
    ///
    /// let jobs: MemorySource<u32> = MemorySource::new();
    /// let pool = ThreadPoolManager::builder()
    ///     .min_free_memory(512 << 20)
    ///     .queue("pdf", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
    ///     .build()?;
    /// pool.set_min_free_memory(Some(256 << 20));
    /// assert_eq!(pool.stats().min_free_memory, Some(256 << 20));
    /// pool.set_min_free_memory(None);
    /// assert_eq!(pool.stats().min_free_memory, None);
    /// # Ok::<(), threadtide::BuildError>(())
    /// ```
    pub fn set_min_free_memory(&self, bytes: Option<u64>) {
        self.shared.memory.set_min(bytes);
        self.shared.nudge();
    }

    /// A snapshot of every queue and the totals. Cheap (no call to a source: the backlog is the
    /// monitor's last reading); safe to call from any thread, often.
    pub fn stats(&self) -> PoolStats {
        stats::collect(&self.shared)
    }
}

impl Drop for ThreadPoolManager {
    fn drop(&mut self) {
        self.shutdown();
        let (started, abandoned) = {
            let t = self.threads.lock();
            (t.started, t.abandoned)
        };
        let on_pool_thread = threads::on_pool_thread(self.shared.id);
        let abandon = started && !on_pool_thread && abandoned && !self.shared.is_done();
        if abandon {
            log::warn!("dropping the pool with jobs still running: their workers exit after them");
        }
        if !started || on_pool_thread || abandon {
            // No wait joins the signal listener on these paths: close it here, or SIGINT and
            // SIGTERM stay captured by a pool that is gone.
            let signals = self.threads.lock().signals.take();
            close_signals(signals);
            #[cfg(feature = "metrics")]
            drop(self.threads.lock().metrics.take());
            return;
        }
        let _ = self.wait();
    }
}

/// Stops a signal listener and joins its thread (the caller holds no lock the listener takes).
fn close_signals(signals: Option<(signal_hook::iterator::Handle, JoinHandle<()>)>) {
    if let Some((handle, thread)) = signals {
        handle.close();
        let _ = thread.join();
    }
}

/// What the metrics server serves: the pool's text and its health.
#[cfg(feature = "metrics")]
struct MetricsPages {
    shared: Arc<PoolShared>,
    runners: Vec<Arc<dyn Runner>>,
    recorder: Arc<crate::metrics::Recorder>,
}

#[cfg(feature = "metrics")]
impl crate::metrics::Pages for MetricsPages {
    fn metrics(&self) -> String {
        crate::metrics::render(&self.shared, &self.runners, &self.recorder)
    }

    fn health(&self) -> (bool, &'static str) {
        if self.shared.monitor_died.load(Ordering::Acquire) {
            (false, "monitor thread died\n")
        } else if self.shared.is_stopping() {
            (true, "draining\n")
        } else {
            (true, "ok\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::Ordering::SeqCst;

    use super::*;
    use crate::counters::Counters;

    /// A spawned worker counts in `starting` before its thread exists: the thread may run its
    /// `init` and lower the count before `spawn` returns. Fails if the count were raised
    /// after the spawn (the thread's decrement would find 0 and wrap to `usize::MAX`).
    #[test]
    fn starting_is_raised_before_the_worker_thread_can_lower_it() {
        let pool = ThreadPoolManager::builder()
            .queue(
                "q",
                crate::MemorySource::<u32>::new(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .build()
            .unwrap();
        let shared = &pool.shared;
        let q = &shared.queues[0];
        let counters = Arc::new(Counters::default());
        let seen = q
            .spawn_counted(shared, Arc::from("q-0"), Arc::clone(&counters), || {
                // At worst, the new thread's `init` returns before `spawn` does.
                let seen = q.starting.load(SeqCst);
                q.starting.fetch_sub(1, SeqCst);
                Ok(seen)
            })
            .unwrap();
        assert_eq!((seen, q.starting.load(SeqCst)), (1, 0));
        q.leave(shared, &counters, false);
        let refused = q.spawn_counted(shared, Arc::from("q-1"), counters, || {
            Err::<(), _>(std::io::Error::other("no threads left"))
        });
        assert!(refused.is_err());
        assert_eq!(
            q.starting.load(SeqCst),
            0,
            "a refused spawn is not starting"
        );
    }
}
