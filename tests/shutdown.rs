//! Shutdown: stops fetching, lets running jobs finish, joins every thread, loses nothing;
//! bounded, idempotent, refused from inside a worker; Drop is graceful.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use support::{Census, Gate, PATIENCE, threads_named, wait_threads_gone, wait_until};
use threadtide::{MemorySource, StartError, ThreadPoolManager, WaitError};

fn gated_pool(
    prefix: &str,
    source: &MemorySource<u32>,
    gate: &Gate,
    states: &Census,
) -> ThreadPoolManager {
    let (g, c) = (gate.clone(), states.clone());
    ThreadPoolManager::builder()
        .thread_name_prefix(prefix)
        .jobs_per_thread(1)
        .max_threads_per_type(4)
        .queue(
            "q",
            source.clone(),
            move |_| Ok::<_, Infallible>(c.enter()),
            move |_, _| {
                g.pass();
                Ok(())
            },
        )
        .build()
        .unwrap()
}

#[test]
fn shutdown_finishes_running_jobs_joins_every_thread_and_loses_nothing() {
    let source = MemorySource::new();
    let (gate, states) = (Gate::default(), Census::default());
    let pool = gated_pool("sd1", &source, &gate, &states);
    source.extend(0..100);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "4 jobs running",
        || gate.waiting() == 4,
        || pool.stats(),
    );
    assert_eq!(threads_named("sd1-").len(), 5, "4 workers and the monitor");
    pool.shutdown();
    assert!(pool.is_shutdown());
    // Running jobs are not interrupted: the wait cannot end while they are held.
    assert!(matches!(
        pool.wait_timeout(Duration::from_millis(30)),
        Err(WaitError::TimedOut { .. })
    ));
    gate.open();
    pool.wait().unwrap();
    wait_threads_gone("sd1-");
    let stats = pool.stats();
    assert_eq!(
        stats.total.jobs_ok, 4,
        "only the running jobs finished: {stats:?}"
    );
    assert_eq!(source.unfinished(), 96, "the rest stay in the source");
    assert_eq!(source.len(), 96);
    assert_eq!(states.live(), 0, "every state dropped");
}

#[test]
fn shutdown_timeout_reports_what_is_still_running_and_a_later_wait_joins_it() {
    let source = MemorySource::new();
    let (gate, states) = (Gate::default(), Census::default());
    let pool = gated_pool("sd2", &source, &gate, &states);
    source.extend(0..2);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "2 jobs running",
        || gate.waiting() == 2,
        || pool.stats(),
    );
    match pool.shutdown_timeout(Duration::from_millis(20)) {
        Err(WaitError::TimedOut { running, requeued }) => {
            assert_eq!(
                requeued, 0,
                "the memory source cannot put back a running job"
            );
            assert_eq!(running.len(), 2, "{running:?}");
            assert!(
                running
                    .iter()
                    .all(|r| r.queue == "q" && r.worker.starts_with("sd2-q-"))
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    gate.open();
    pool.wait().unwrap();
    wait_threads_gone("sd2-");
    assert_eq!(pool.stats().total.jobs_ok, 2);
}

#[test]
fn shutdown_is_idempotent_and_start_is_refused_after_it() {
    let source = MemorySource::new();
    let (gate, states) = (Gate::default(), Census::default());
    let pool = gated_pool("sd3", &source, &gate, &states);
    pool.start().unwrap();
    assert!(matches!(pool.start(), Err(StartError::AlreadyStarted)));
    pool.shutdown();
    pool.shutdown();
    pool.wait().unwrap();
    pool.wait().unwrap();
    pool.shutdown_timeout(Duration::ZERO).unwrap();

    let never_started = gated_pool("sd3b", &source, &gate, &states);
    never_started.shutdown();
    assert!(matches!(never_started.start(), Err(StartError::ShutDown)));
    never_started.wait().unwrap();
}

#[test]
fn wait_from_inside_a_worker_is_an_error_not_a_deadlock() {
    let source: MemorySource<u32> = MemorySource::new();
    let slot: Arc<Mutex<Option<threadtide::ShutdownHandle>>> = Arc::default();
    let seen = Arc::new(Mutex::new(None));
    let pool_cell: Arc<Mutex<Option<Arc<ThreadPoolManager>>>> = Arc::default();
    let (p, s) = (pool_cell.clone(), seen.clone());
    let pool = Arc::new(
        ThreadPoolManager::builder()
            .queue(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, _| {
                    let pool = p.lock().clone().expect("pool set before start");
                    *s.lock() = Some(pool.wait().map_err(|e| e.to_string()));
                    Ok(())
                },
            )
            .build()
            .unwrap(),
    );
    *pool_cell.lock() = Some(pool.clone());
    *slot.lock() = Some(pool.shutdown_handle());
    source.push(1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "job ran",
        || seen.lock().is_some(),
        || pool.stats(),
    );
    let result = seen.lock().clone().unwrap();
    assert_eq!(
        result,
        Err("cannot wait for the pool from one of its own threads".to_owned())
    );
    pool_cell.lock().take();
    pool.shutdown();
    pool.wait().unwrap();
}

#[test]
fn a_shutdown_handle_stops_the_pool_from_another_thread() {
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let handle = pool.shutdown_handle();
    let stopper = std::thread::spawn(move || handle.shutdown());
    pool.wait().unwrap();
    stopper.join().unwrap();
    assert!(pool.is_shutdown());
}

#[test]
fn drop_is_a_graceful_shutdown() {
    let source = MemorySource::new();
    let (gate, states) = (Gate::default(), Census::default());
    let finished = Arc::new(AtomicUsize::new(0));
    let pool = gated_pool("sd4", &source, &gate, &states);
    source.extend(0..3);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "3 jobs running",
        || gate.waiting() == 3,
        || pool.stats(),
    );
    let (g, f, handle) = (gate.clone(), finished.clone(), pool.shutdown_handle());
    let opener = std::thread::spawn(move || {
        // Open the gate only once the drop has begun (it shuts the pool down first).
        wait_until(PATIENCE, "drop to begin", || handle.is_shutdown(), || ());
        f.store(1, SeqCst);
        g.open();
    });
    drop(pool);
    assert_eq!(
        finished.load(SeqCst),
        1,
        "drop returned before the running jobs were let go"
    );
    opener.join().unwrap();
    wait_threads_gone("sd4-");
    assert_eq!(states.live(), 0);
    assert_eq!(source.unfinished(), 0, "the three running jobs finished");
}

/// Issue 14 #2: a `wait_timeout` that times out on a pool still running does not make a later
/// drop detach: the drop shuts down and joins every thread, the running job's state included.
#[test]
fn drop_after_a_timed_out_wait_still_joins_everything() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = support::Census::default();
    let handle: Arc<std::sync::OnceLock<threadtide::ShutdownHandle>> = Arc::default();
    let (c, h) = (states.clone(), handle.clone());
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("dtw")
        .queue(
            "q",
            source.clone(),
            move |_| Ok::<_, Infallible>(c.enter()),
            move |_, _| {
                // Runs until the pool is asked to stop: only a drop that waits sees it end.
                while !h.get().is_some_and(|h| h.is_shutdown()) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::thread::sleep(Duration::from_millis(50));
                Ok(())
            },
        )
        .build()
        .unwrap();
    handle.set(pool.shutdown_handle()).unwrap();
    source.push(1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the job running",
        || pool.stats().total.busy == 1,
        || pool.stats(),
    );
    assert!(matches!(
        pool.wait_timeout(Duration::from_millis(10)),
        Err(WaitError::TimedOut { .. })
    ));
    drop(pool);
    assert_eq!(
        states.live(),
        0,
        "the drop returned before the worker was joined"
    );
    assert_eq!(source.unfinished(), 0);
    wait_threads_gone("dtw-");
}

/// Issue 14 #3: the acknowledgement retry waits out its back-off on a channel that stop
/// wakes: a shutdown does not sit through a 10 s back-off.
#[test]
fn shutdown_cuts_an_acknowledgement_back_off_short() {
    let source = support::Faulty::default();
    source.complete_refusals.store(usize::MAX, SeqCst);
    let recorder = support::Recorder::default();
    let pool = ThreadPoolManager::builder()
        .backoff(Duration::from_secs(20), Duration::from_secs(40))
        .event_handler(recorder.clone())
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.push([1]);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the refused ack reported",
        || !recorder.errors.lock().is_empty(),
        || pool.stats(),
    );
    let started = std::time::Instant::now();
    pool.shutdown_timeout(Duration::from_secs(5))
        .expect("the back-off of 10-20 s was cut short by the shutdown");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Issue 14 #9: `wait_timeout(Duration::MAX)` waits as `wait` does instead of panicking.
#[test]
fn wait_timeout_of_duration_max_waits() {
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.extend(0..5);
    pool.start().unwrap();
    let stopper = pool.shutdown_handle();
    let s = source.clone();
    let t = std::thread::spawn(move || {
        while s.unfinished() > 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
        stopper.shutdown();
    });
    pool.wait_timeout(Duration::MAX).unwrap();
    t.join().unwrap();
    assert_eq!(source.unfinished(), 0);
}

/// A worker tells its consumer it will not fetch again before it exits
/// (`Consumer::suspend`), so a job taken ahead is put back.
#[test]
fn every_worker_suspends_its_consumer_before_it_exits() {
    let source = support::Faulty::default();
    let pool = ThreadPoolManager::builder()
        .add_queue(
            threadtide::Queue::new(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .min_threads(3),
        )
        .max_threads_per_type(3)
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "three consumers",
        || source.consumers.load(SeqCst) == 3,
        || pool.stats(),
    );
    assert_eq!(source.suspends.load(SeqCst), 0);
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_eq!(source.suspends.load(SeqCst), 3);
}
