//! A panicking executor is caught per job, counted, reported failed to its source, the
//! worker's state is rebuilt, and the pool keeps its size.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Census, PATIENCE, Recorder, wait_until};
use threadtide::{DeadReason, ErrorKind, MemorySource, ThreadPoolManager};

#[test]
fn panics_are_caught_retried_and_keep_the_pool_size() {
    let source: MemorySource<u32> = MemorySource::builder()
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .build()
        .unwrap();
    let states = Census::default();
    let seen = Arc::new(parking_lot::Mutex::new(std::collections::HashSet::new()));
    let recorder = Recorder::default();
    let (c, r) = (states.clone(), seen.clone());
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(1)
        .max_threads_per_type(2)
        .event_handler(recorder.clone())
        .queue(
            "q",
            source.clone(),
            move |_| Ok::<_, Infallible>(c.enter()),
            move |_, job: &u32| {
                // Every even job panics on its first run and succeeds on the second.
                if job.is_multiple_of(2) && r.lock().insert(*job) {
                    panic!("boom on job {job}");
                }
                Ok(())
            },
        )
        .build()
        .unwrap();
    // Keep both workers busy with a steady trickle of jobs.
    pool.start().unwrap();
    source.extend(0..40);
    wait_until(
        PATIENCE,
        "every job done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    let stats = pool.stats();
    assert_eq!(stats.total.jobs_panicked, 20, "{stats:?}");
    assert_eq!(stats.total.jobs_ok, 40, "{stats:?}");
    assert!(source.dead_letters().is_empty());
    // Size kept: the workers that panicked are the same threads, never replaced.
    assert_eq!(stats.total.spawned, 2, "{stats:?}");
    assert_eq!(stats.total.retired, 0, "{stats:?}");
    // State rebuilt once per panic, on top of the first build of each worker.
    assert_eq!(
        states.built() as u64,
        2 + stats.total.jobs_panicked,
        "{stats:?}"
    );
    let panics = recorder
        .errors
        .lock()
        .iter()
        .filter(|e| e.kind == ErrorKind::JobPanic)
        .count();
    assert_eq!(panics as u64, stats.total.jobs_panicked);
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(states.live(), 0);
}

#[test]
fn a_job_that_always_panics_is_dead_lettered_after_max_attempts() {
    let source: MemorySource<&'static str> = MemorySource::builder()
        .max_attempts(4)
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .build()
        .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &&str| {
                if *job == "poison" {
                    r.fetch_add(1, SeqCst);
                    panic!("always");
                }
                Ok(())
            },
        )
        .build()
        .unwrap();
    source.extend(["a", "poison", "b"]);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "all settled",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    let dead = source.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].job, dead[0].reason, dead[0].attempts),
        ("poison", DeadReason::AttemptsExhausted, 4)
    );
    assert!(dead[0].error.contains("always"), "{}", dead[0].error);
    assert_eq!(runs.load(SeqCst), 4);
    let stats = pool.stats();
    assert_eq!((stats.total.jobs_ok, stats.total.jobs_panicked), (2, 4));
}

#[test]
fn a_state_whose_drop_panics_does_not_kill_the_worker() {
    struct Fragile;
    impl Drop for Fragile {
        fn drop(&mut self) {
            panic!("browser refused to close");
        }
    }
    let source: MemorySource<u32> = MemorySource::builder().max_attempts(1).build().unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(Fragile),
            |_, job: &u32| {
                if *job == 0 {
                    panic!("job panics, state dropped, drop panics too");
                }
                Ok(())
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
        || pool.stats(),
    );
    let stats = pool.stats();
    assert_eq!(
        (
            stats.total.jobs_ok,
            stats.total.jobs_panicked,
            stats.total.spawned
        ),
        (4, 1, 1)
    );
    pool.shutdown();
    pool.wait().unwrap();
}
