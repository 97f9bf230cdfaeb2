//! The in-memory source: FIFO, results for the host, retries with back-off, dead letters.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
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
