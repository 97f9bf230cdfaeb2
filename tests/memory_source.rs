//! The in-memory source: FIFO, results for the host, retries with back-off, dead letters.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{PATIENCE, wait_until};
use threadtide::{DeadReason, JobError, MemorySource, ThreadPoolManager};

#[test]
fn one_worker_runs_jobs_in_fifo_order_and_results_reach_the_host() {
    let source: MemorySource<u32, u32> =
        MemorySource::builder().keep_results(true).build().unwrap();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, job: &u32| Ok(job * 2),
        )
        .build()
        .unwrap();
    source.extend(0..200);
    pool.start().unwrap();
    let results: Vec<_> = (0..200)
        .map(|_| source.recv_result_timeout(PATIENCE).expect("a result"))
        .collect();
    assert!(
        results
            .iter()
            .enumerate()
            .all(|(i, r)| r.job == i as u32 && r.output == 2 * i as u32 && r.attempts == 1)
    );
    assert_eq!(source.unfinished(), 0);
    assert!(source.try_recv_result().is_none());
}

#[test]
fn retryable_failures_back_off_then_succeed_permanent_ones_are_dead_at_once() {
    const INITIAL: Duration = Duration::from_millis(30);
    let source: MemorySource<&'static str, ()> = MemorySource::builder()
        .max_attempts(3)
        .retry_backoff(INITIAL, Duration::from_secs(1))
        .keep_results(true)
        .build()
        .unwrap();
    let runs: Arc<Mutex<Vec<(&'static str, Instant)>>> = Arc::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &&'static str| {
                let mut runs = r.lock();
                runs.push((job, Instant::now()));
                let mine = runs.iter().filter(|(j, _)| j == job).count();
                match *job {
                    "flaky" if mine < 3 => Err(JobError::retryable("timeout")),
                    "bad" => Err(JobError::permanent("no such order")),
                    _ => Ok(()),
                }
            },
        )
        .build()
        .unwrap();
    source.extend(["flaky", "bad", "fine"]);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "all settled",
        || source.unfinished() == 0,
        || (pool.stats(), source.delayed()),
    );
    let runs = runs.lock().clone();
    let flaky: Vec<Instant> = runs
        .iter()
        .filter(|(j, _)| *j == "flaky")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(flaky.len(), 3);
    assert!(
        flaky[1] - flaky[0] >= INITIAL / 2,
        "first retry after {:?}",
        flaky[1] - flaky[0]
    );
    assert!(
        flaky[2] - flaky[1] >= INITIAL,
        "second retry after {:?}",
        flaky[2] - flaky[1]
    );
    assert_eq!(
        runs.iter().filter(|(j, _)| *j == "bad").count(),
        1,
        "permanent: no retry"
    );
    let dead = source.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].job, dead[0].reason, dead[0].attempts),
        ("bad", DeadReason::Permanent, 1)
    );
    assert_eq!(dead[0].error, "no such order");
    let mut ok: Vec<_> = std::iter::from_fn(|| source.try_recv_result())
        .map(|c| (c.job, c.attempts))
        .collect();
    ok.sort();
    assert_eq!(ok, vec![("fine", 1), ("flaky", 3)]);
    let stats = pool.stats();
    assert_eq!((stats.total.jobs_ok, stats.total.jobs_failed), (2, 3));
}

#[test]
fn retries_wait_while_other_jobs_run() {
    let source: MemorySource<u32> = MemorySource::builder()
        .max_attempts(2)
        .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build()
        .unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, job: &u32| {
                if *job == 0 {
                    Err(JobError::retryable("later"))
                } else {
                    Ok(())
                }
            },
        )
        .build()
        .unwrap();
    source.extend(0..50);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "others done",
        || pool.stats().total.jobs_ok == 49,
        || pool.stats(),
    );
    assert_eq!(
        (source.delayed(), source.unfinished(), source.len()),
        (1, 1, 0)
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(
        source.unfinished(),
        1,
        "a delayed retry is not lost by shutdown"
    );
}

/// An idle worker sleeps until a push rings for it. The fetch timeout is an hour, so a lost
/// wake-up cannot be hidden by the worker looking again on its own: the job would not run.
/// Each job is pushed after the previous one finished, after a pause that sweeps 0-60 us, so
/// pushes land at every point of the worker's way to sleep: still spinning, registering as a
/// sleeper, asleep.
#[test]
fn every_push_wakes_a_sleeping_worker() {
    const JOBS: u64 = 3000;
    let source: MemorySource<u64> = MemorySource::new();
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<u64>();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .fetch_timeout(Duration::from_secs(3600))
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &u64| {
                done_tx.send(*job).unwrap();
                Ok(())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    for job in 0..JOBS {
        let pause = Duration::from_micros(job % 61);
        let start = Instant::now();
        while start.elapsed() < pause {
            std::hint::spin_loop();
        }
        source.push(job);
        let ran = done_rx.recv_timeout(PATIENCE);
        assert_eq!(
            ran,
            Ok(job),
            "job {job} of {JOBS} did not run: a lost wake-up"
        );
    }
    // The executor reports before the worker acknowledges its job: wait for the settle.
    wait_until(
        PATIENCE,
        "the last job settled",
        || source.unfinished() == 0,
        || source.unfinished(),
    );
    pool.shutdown();
    pool.wait().unwrap();
}

/// A retry whose back-off has passed is taken before new jobs: it has already waited once.
#[test]
fn a_due_retry_runs_before_newer_jobs() {
    let source: MemorySource<u32> = MemorySource::builder()
        .max_attempts(2)
        .retry_backoff(Duration::ZERO, Duration::ZERO)
        .build()
        .unwrap();
    let runs: Arc<Mutex<Vec<u32>>> = Arc::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &u32| {
                let mut runs = r.lock();
                runs.push(*job);
                if *job == 0 && runs.len() == 1 {
                    Err(JobError::retryable("once"))
                } else {
                    Ok(())
                }
            },
        )
        .build()
        .unwrap();
    source.extend(0..5);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "all settled",
        || source.unfinished() == 0,
        || (pool.stats(), source.delayed(), runs.lock().clone()),
    );
    assert_eq!(*runs.lock(), vec![0, 0, 1, 2, 3, 4]);
}

/// A queue scaled to zero has no consumer left to promote a retry whose back-off passes: the
/// backlog the monitor reads must see it, or the job waits forever with no worker.
#[test]
fn a_retry_falling_due_after_its_queue_scaled_to_zero_gets_a_worker() {
    const BACKOFF: Duration = Duration::from_millis(600);
    let source: MemorySource<u32> = MemorySource::builder()
        .max_attempts(2)
        .retry_backoff(BACKOFF, BACKOFF)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .rebalance_interval(Duration::from_millis(5))
        .scale_down_delay(Duration::ZERO)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, _: &u32| {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(JobError::retryable("once"))
                } else {
                    Ok(())
                }
            },
        )
        .build()
        .unwrap();
    source.push(7);
    pool.start().unwrap();
    let state = || {
        let q = pool.stats().queue("q").cloned().expect("queue q");
        (q.workers, q.retired, source.delayed(), source.unfinished())
    };
    // The stranded state of the defect: the only worker retired while the retry waits.
    wait_until(
        PATIENCE,
        "the worker to retire while the retry is delayed",
        || {
            let (workers, retired, delayed, _) = state();
            workers == 0 && retired >= 1 && delayed == 1
        },
        state,
    );
    wait_until(
        PATIENCE,
        "the retry to run once its back-off passed",
        || source.unfinished() == 0,
        state,
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
