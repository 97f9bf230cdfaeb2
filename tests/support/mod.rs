//! Shared test helpers: waiting on conditions with deadlines, recording events, counting
//! threads, and a gate that holds jobs until the test releases them.
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

#[cfg(feature = "redis")]
pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis;
use threadtide::{ErrorEvent, EventHandler, ScaleEvent, WorkerEvent};

/// Generous: a condition that needs this long is a bug, not a slow machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `condition` until it returns true; panics after `within` with `describe()`, so a
/// failure says what state it saw.
pub fn wait_until<D: Debug>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> D,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {within:?} waiting for {what}; last state: {:?}",
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Names of this process's threads whose name starts with `prefix` (Linux: /proc/self/task).
/// Thread names are cut to 15 bytes by the kernel, so keep prefixes short.
pub fn threads_named(prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").expect("procfs") {
        let path = entry.expect("task entry").path().join("comm");
        if let Ok(name) = std::fs::read_to_string(path) {
            let name = name.trim_end().to_owned();
            if name.starts_with(prefix) {
                names.push(name);
            }
        }
    }
    names
}

/// Waits until no thread of this process is named with `prefix`. After a join returns, the
/// kernel may list the finished thread for a moment longer; a thread still running stays
/// listed and fails the wait.
pub fn wait_threads_gone(prefix: &str) {
    wait_until(
        PATIENCE,
        &format!("threads {prefix}* gone"),
        || threads_named(prefix).is_empty(),
        || threads_named(prefix),
    );
}

/// Records every event the pool reports.
#[derive(Default, Clone)]
pub struct Recorder {
    pub scales: Arc<Mutex<Vec<(Instant, ScaleEvent)>>>,
    pub starts: Arc<Mutex<Vec<WorkerEvent>>>,
    pub exits: Arc<Mutex<Vec<WorkerEvent>>>,
    pub errors: Arc<Mutex<Vec<ErrorEvent>>>,
}

impl EventHandler for Recorder {
    fn on_scale(&self, event: &ScaleEvent) {
        self.scales.lock().push((Instant::now(), event.clone()));
    }
    fn on_worker_start(&self, event: &WorkerEvent) {
        self.starts.lock().push(event.clone());
    }
    fn on_worker_exit(&self, event: &WorkerEvent) {
        self.exits.lock().push(event.clone());
    }
    fn on_error(&self, event: &ErrorEvent) {
        self.errors.lock().push(event.clone());
    }
}

/// Holds executors until the test opens it; counts how many are waiting.
#[derive(Default, Clone)]
pub struct Gate {
    inner: Arc<(Mutex<bool>, Condvar)>,
    waiting: Arc<AtomicUsize>,
}

impl Gate {
    /// Blocks the calling executor until [`open`](Self::open).
    pub fn pass(&self) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut open = self.inner.0.lock();
        while !*open {
            self.inner.1.wait(&mut open);
        }
        drop(open);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn open(&self) {
        *self.inner.0.lock() = true;
        self.inner.1.notify_all();
    }

    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

/// Counts live values and remembers the highest count seen: a worker state that tracks
/// itself, so tests see when states are built and dropped.
#[derive(Default, Clone, Debug)]
pub struct Census {
    live: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    built: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl Census {
    pub fn enter(&self) -> Member {
        let now = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.built.fetch_add(1, Ordering::SeqCst);
        Member(self.clone())
    }
    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    pub fn built(&self) -> usize {
        self.built.load(Ordering::SeqCst)
    }
    pub fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// One live member of a [`Census`]; dropping it leaves.
#[derive(Debug)]
pub struct Member(Census);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// A job source whose every method can be made to fail or panic, for the pool's fault paths.
/// Jobs are `u32`s in a queue; a fetch with no job waits up to 5 ms and returns `None`.
#[derive(Default, Clone)]
pub struct Faulty {
    pub jobs: Arc<Mutex<std::collections::VecDeque<u32>>>,
    pub backlog_panics: Arc<std::sync::atomic::AtomicBool>,
    pub consumer_panics: Arc<std::sync::atomic::AtomicBool>,
    pub consumer_fails: Arc<std::sync::atomic::AtomicBool>,
    pub fetch_panics: Arc<std::sync::atomic::AtomicBool>,
    pub fetch_fails: Arc<std::sync::atomic::AtomicBool>,
    /// Completions to refuse before accepting again.
    pub complete_refusals: Arc<AtomicUsize>,
    pub consumers: Arc<AtomicUsize>,
    pub fetches: Arc<AtomicUsize>,
    pub suspends: Arc<AtomicUsize>,
    pub completed: Arc<AtomicUsize>,
}

impl Faulty {
    pub fn push(&self, jobs: impl IntoIterator<Item = u32>) {
        self.jobs.lock().extend(jobs);
    }
    fn on(flag: &std::sync::atomic::AtomicBool) -> bool {
        flag.load(Ordering::SeqCst)
    }
}

pub struct FaultyConsumer(Faulty);

impl threadtide::JobSource for Faulty {
    type Job = u32;
    type Output = ();
    type Consumer = FaultyConsumer;

    fn backlog(&self) -> Result<usize, threadtide::SourceError> {
        if Self::on(&self.backlog_panics) {
            panic!("backlog exploded");
        }
        Ok(self.jobs.lock().len())
    }

    fn consumer(
        &self,
        _: &threadtide::WorkerInfo,
    ) -> Result<FaultyConsumer, threadtide::SourceError> {
        self.consumers.fetch_add(1, Ordering::SeqCst);
        if Self::on(&self.consumer_panics) {
            panic!("consumer exploded");
        }
        if Self::on(&self.consumer_fails) {
            return Err(threadtide::SourceError::new("wrong password"));
        }
        Ok(FaultyConsumer(self.clone()))
    }
}

impl threadtide::Consumer for FaultyConsumer {
    type Job = u32;
    type Output = ();

    fn fetch(
        &mut self,
        cx: &threadtide::FetchContext<'_>,
    ) -> Result<Option<u32>, threadtide::SourceError> {
        let s = &self.0;
        s.fetches.fetch_add(1, Ordering::SeqCst);
        if Faulty::on(&s.fetch_panics) {
            panic!("fetch exploded");
        }
        if Faulty::on(&s.fetch_fails) {
            return Err(threadtide::SourceError::new("connection reset"));
        }
        if let Some(job) = s.jobs.lock().pop_front() {
            return Ok(Some(job));
        }
        std::thread::sleep(cx.remaining().min(Duration::from_millis(5)));
        Ok(None)
    }

    fn complete(
        &mut self,
        job: u32,
        outcome: Result<(), threadtide::JobError>,
    ) -> Result<(), threadtide::Unacked<u32, ()>> {
        let refusals = &self.0.complete_refusals;
        if refusals
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(threadtide::Unacked::new(
                threadtide::SourceError::new("ack refused"),
                job,
                outcome,
            ));
        }
        self.0.completed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn suspend(&mut self) -> Result<(), threadtide::SourceError> {
        self.0.suspends.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Opens a [`Gate`] when dropped, so that a failing assertion unwinds through a pool's drop
/// instead of hanging on held jobs. Declare it after the pool (locals drop in reverse).
pub struct OpenOnDrop(pub Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// Whether every job of a memory source is done (none waiting or running).
pub fn done(source: &threadtide::MemorySource<u32>) -> bool {
    source.unfinished() == 0
}

/// Builds and starts a pool of one worker for `queue` (the builder may carry other settings).
pub fn one_worker(
    builder: threadtide::Builder,
    queue: threadtide::Queue,
) -> threadtide::ThreadPoolManager {
    let pool = builder
        .max_threads_per_type(1)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    pool
}

/// Waits until every job of `source` is done and then `condition`, and stops the pool.
pub fn finish(
    pool: &threadtide::ThreadPoolManager,
    source: &threadtide::MemorySource<u32>,
    what: &str,
    condition: impl Fn() -> bool,
) {
    wait_until(PATIENCE, "jobs done", || done(source), || pool.stats());
    wait_until(PATIENCE, what, condition, || pool.stats());
    pool.shutdown();
    pool.wait().unwrap();
}
