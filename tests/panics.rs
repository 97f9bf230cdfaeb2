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
    // Size kept: the workers that panicked are the same threads, never replaced (on a loaded
    // machine one worker may run every job before the monitor spawns the second).
    assert!((1..=2).contains(&stats.total.spawned), "{stats:?}");
    assert_eq!(stats.total.retired, 0, "{stats:?}");
    // State rebuilt once per panic, on top of the first build of each worker.
    assert_eq!(
        states.built() as u64,
        stats.total.spawned + stats.total.jobs_panicked,
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

/// Issue 14 #1: a handler that panics in every callback, and a source whose `backlog` panics,
/// must not end the monitor: jobs keep running and `wait()` returns.
#[test]
fn panicking_callbacks_and_backlog_do_not_stop_the_pool() {
    struct Explosive;
    impl threadtide::EventHandler for Explosive {
        fn on_scale(&self, _: &threadtide::ScaleEvent) {
            panic!("on_scale exploded");
        }
        fn on_worker_start(&self, _: &threadtide::WorkerEvent) {
            panic!("on_worker_start exploded");
        }
        fn on_worker_exit(&self, _: &threadtide::WorkerEvent) {
            panic!("on_worker_exit exploded");
        }
        fn on_error(&self, _: &threadtide::ErrorEvent) {
            panic!("on_error exploded");
        }
    }
    let source = support::Faulty::default();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("boom")
        .event_handler(Explosive)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.push(0..10);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the first jobs done despite on_scale panicking",
        || source.completed.load(SeqCst) == 10,
        || pool.stats(),
    );
    source.backlog_panics.store(true, SeqCst);
    let errors = pool.stats().total.source_errors;
    wait_until(
        PATIENCE,
        "backlog panics counted as source errors",
        || pool.stats().total.source_errors >= errors + 3,
        || pool.stats(),
    );
    source.backlog_panics.store(false, SeqCst);
    source.push(10..20);
    wait_until(
        PATIENCE,
        "later jobs done: the monitor survived",
        || source.completed.load(SeqCst) == 20,
        || pool.stats(),
    );
    assert!(pool.stats().handler_panics >= 2, "{:?}", pool.stats());
    pool.shutdown_timeout(PATIENCE).unwrap();
    support::wait_threads_gone("boom-");
}

/// Issue 14 #9: a source whose `fetch` or `consumer()` panics is backed off like a failing
/// `init`, by the same worker: it is not replaced by a new thread per panic.
#[test]
fn a_panicking_source_is_backed_off_not_respawned() {
    for fault in ["fetch", "consumer"] {
        let source = support::Faulty::default();
        let flag = if fault == "fetch" {
            &source.fetch_panics
        } else {
            &source.consumer_panics
        };
        flag.store(true, SeqCst);
        let recorder = Recorder::default();
        let pool = ThreadPoolManager::builder()
            .backoff(Duration::from_millis(20), Duration::from_millis(40))
            .event_handler(recorder.clone())
            .add_queue(
                threadtide::Queue::new(
                    "q",
                    source.clone(),
                    |_| Ok::<_, Infallible>(()),
                    |_, _| Ok(()),
                )
                .min_threads(1),
            )
            .build()
            .unwrap();
        pool.start().unwrap();
        wait_until(
            PATIENCE,
            "five panics of the source reported",
            || recorder.errors.lock().len() >= 5,
            || pool.stats(),
        );
        let stats = pool.stats();
        assert_eq!(stats.total.spawned, 1, "{fault}: {stats:?}");
        assert!(stats.total.source_errors >= 5, "{fault}: {stats:?}");
        let errors = recorder.errors.lock().clone();
        for e in &errors {
            assert_eq!(e.kind, ErrorKind::Source, "{e:?}");
            assert!(e.message.contains("panicked"), "{e:?}");
            assert!(e.retry_in >= Duration::from_millis(10), "{e:?}");
        }
        flag.store(false, SeqCst);
        source.push(0..5);
        wait_until(
            PATIENCE,
            "jobs run once the source heals",
            || source.completed.load(SeqCst) == 5,
            || pool.stats(),
        );
        pool.shutdown_timeout(PATIENCE).unwrap();
    }
}

/// Issue 14 #8: `silence_job_panics` skips std's panic print for panics inside jobs only;
/// a panic in `init` or on another thread still reaches the previous hook.
#[test]
fn silence_job_panics_skips_only_the_panics_of_jobs() {
    static SEEN: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
    // Stands in for std's printing hook, which silence_job_panics keeps for other panics.
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        SEEN.lock().push(text);
    }));
    threadtide::silence_job_panics();
    let source: MemorySource<u32> = MemorySource::builder().max_attempts(1).build().unwrap();
    let inits = Arc::new(AtomicUsize::new(0));
    let i = inits.clone();
    let pool = ThreadPoolManager::builder()
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .queue(
            "q",
            source.clone(),
            move |_| {
                if i.fetch_add(1, SeqCst) == 0 {
                    panic!("init-marker");
                }
                Ok::<_, Infallible>(())
            },
            |_, job: &u32| -> Result<(), threadtide::JobError> {
                panic!("job-marker {job}");
            },
        )
        .build()
        .unwrap();
    source.extend(0..3);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "three jobs dead-lettered",
        || source.dead_letters().len() == 3,
        || pool.stats(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let _ = std::panic::catch_unwind(|| panic!("outside-marker"));
    let seen = SEEN.lock().clone();
    let count = |m: &str| seen.iter().filter(|s| s.contains(m)).count();
    assert_eq!(count("job-marker"), 0, "{seen:?}");
    assert_eq!(count("init-marker"), 1, "{seen:?}");
    assert_eq!(count("outside-marker"), 1, "{seen:?}");
    assert_eq!(pool.stats().total.jobs_panicked, 3);
}
