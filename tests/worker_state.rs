//! Per-worker state: built once per worker by `init`, kept across jobs, dropped when the
//! worker exits, rebuilt after `recycle_after` jobs; a failing `init` is retried with back-off.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{Census, PATIENCE, Recorder, wait_until};
use threadtide::{
    Consumer, ErrorKind, FetchContext, JobError, JobSource, MemorySource, Queue, SourceError,
    ThreadPoolManager, Unacked, WorkerInfo,
};

#[test]
fn state_is_built_once_per_worker_and_kept_across_jobs() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let c = states.clone();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .queue(
            "q",
            source.clone(),
            move |w| {
                assert_eq!(w.queue(), "q");
                Ok::<_, std::convert::Infallible>((c.enter(), 0u32))
            },
            |(_, jobs), _| {
                *jobs += 1;
                Ok(())
            },
        )
        .build()
        .unwrap();
    source.extend(0..100);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "jobs done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    assert_eq!(states.built(), 1, "one worker, one state for 100 jobs");
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(
        (states.live(), states.dropped()),
        (0, 1),
        "state dropped when the worker exits"
    );
}

#[test]
fn recycle_after_rebuilds_the_state() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let c = states.clone();
    let queue = Queue::new(
        "q",
        source.clone(),
        move |_| Ok::<_, std::convert::Infallible>(c.enter()),
        |_, _| Ok(()),
    )
    .recycle_after(10);
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .add_queue(queue)
        .build()
        .unwrap();
    source.extend(0..35);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "jobs done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    // Jobs 1-10, 11-20, 21-30 each end a state; 31-35 use a fourth.
    assert_eq!(states.built(), 4);
    assert_eq!(states.live(), 0);
}

/// A memory source whose consumers fail every `every`-th fetch.
#[derive(Clone)]
struct Flaky {
    inner: MemorySource<u32>,
    every: u32,
}

struct FlakyConsumer {
    inner: <MemorySource<u32> as JobSource>::Consumer,
    every: u32,
    fetches: u32,
}

impl JobSource for Flaky {
    type Job = u32;
    type Output = ();
    type Consumer = FlakyConsumer;

    fn backlog(&self) -> Result<usize, SourceError> {
        self.inner.backlog()
    }

    fn consumer(&self, worker: &WorkerInfo) -> Result<FlakyConsumer, SourceError> {
        Ok(FlakyConsumer {
            inner: self.inner.consumer(worker)?,
            every: self.every,
            fetches: 0,
        })
    }
}

impl Consumer for FlakyConsumer {
    type Job = u32;
    type Output = ();

    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<u32>, SourceError> {
        self.fetches += 1;
        if self.fetches.is_multiple_of(self.every) {
            return Err(SourceError::new("connection reset"));
        }
        self.inner.fetch(cx)
    }

    fn complete(
        &mut self,
        job: u32,
        outcome: Result<(), JobError>,
    ) -> Result<(), Unacked<u32, ()>> {
        self.inner.complete(job, outcome)
    }
}

/// A source error between jobs keeps the worker's state, and its jobs still count towards
/// `recycle_after`.
#[test]
fn recycle_after_counts_jobs_across_source_errors() {
    let memory: MemorySource<u32> = MemorySource::new();
    let source = Flaky {
        inner: memory.clone(),
        every: 4,
    };
    let states = Census::default();
    let c = states.clone();
    let queue = Queue::new(
        "q",
        source,
        move |_| Ok::<_, std::convert::Infallible>(c.enter()),
        |_, _| Ok(()),
    )
    .recycle_after(10);
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .add_queue(queue)
        .build()
        .unwrap();
    memory.extend(0..35);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "jobs done",
        || memory.unfinished() == 0,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert!(pool.stats().total.source_errors >= 10, "{:?}", pool.stats());
    // As without errors: jobs 1-10, 11-20, 21-30 each end a state; 31-35 use a fourth.
    assert_eq!(states.built(), 4);
    assert_eq!(states.live(), 0);
}

#[test]
fn failing_init_is_retried_with_backoff_not_a_tight_loop() {
    const INITIAL: Duration = Duration::from_millis(40);
    let source: MemorySource<u32> = MemorySource::new();
    let attempts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let ran = Arc::new(AtomicUsize::new(0));
    let recorder = Recorder::default();
    let (a, r) = (attempts.clone(), ran.clone());
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .backoff(INITIAL, Duration::from_secs(1))
        .event_handler(recorder.clone())
        .queue(
            "q",
            source.clone(),
            move |_| {
                let mut a = a.lock();
                a.push(Instant::now());
                if a.len() < 4 {
                    Err("login refused")
                } else {
                    Ok(())
                }
            },
            move |_, _| {
                r.fetch_add(1, SeqCst);
                Ok(())
            },
        )
        .build()
        .unwrap();
    source.extend(0..3);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "jobs done after init succeeds",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    let attempts = attempts.lock().clone();
    assert_eq!(attempts.len(), 4);
    // Retry n waits at least half of INITIAL * 2^(n-1) (equal jitter).
    for (n, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = INITIAL * (1 << n) / 2;
        assert!(
            gap >= floor,
            "retry {} after {gap:?}, expected >= {floor:?}",
            n + 1
        );
    }
    let init_errors: Vec<_> = recorder
        .errors
        .lock()
        .iter()
        .filter(|e| e.kind == ErrorKind::Init)
        .cloned()
        .collect();
    assert_eq!(init_errors.len(), 3);
    assert!(init_errors[0].message.contains("login refused"));
    assert_eq!(pool.stats().total.init_failures, 3);
    assert_eq!(ran.load(SeqCst), 3);
}

#[test]
fn a_worker_stuck_in_init_backoff_still_shuts_down_promptly() {
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .queue(
            "q",
            source.clone(),
            |_| Err::<(), _>("never"),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.push(1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "init failed once",
        || pool.stats().total.init_failures == 1,
        || pool.stats(),
    );
    // An hour of back-off ahead: a bounded wait proves the pause is interruptible.
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_eq!(source.unfinished(), 1, "the job stays in the source");
}
