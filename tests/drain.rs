//! Shrinking is graceful: excess workers finish their job, then exit, drop their state and are
//! joined; idle excess workers leave at once.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Census, Gate, PATIENCE, Recorder, threads_named, wait_until};
use threadtide::{ExitReason, MemorySource, ThreadPoolManager};

#[test]
fn shrinking_never_interrupts_a_job() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let gate = Gate::default();
    let recorder = Recorder::default();
    let (s, f, g, c) = (
        started.clone(),
        finished.clone(),
        gate.clone(),
        states.clone(),
    );
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("drn")
        .jobs_per_thread(1)
        .scale_down_delay(Duration::ZERO)
        .event_handler(recorder.clone())
        .queue(
            "q",
            source.clone(),
            move |_| Ok::<_, std::convert::Infallible>(c.enter()),
            move |_, _| {
                s.fetch_add(1, SeqCst);
                g.pass();
                f.fetch_add(1, SeqCst);
                Ok(())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    source.extend(0..6);
    // Six workers each hold one job; the backlog is now 0, so the target drops to 0 at once
    // (no stabilisation window): every worker is in excess, but all are mid-job.
    wait_until(
        PATIENCE,
        "6 jobs running",
        || gate.waiting() == 6,
        || pool.stats(),
    );
    wait_until(
        PATIENCE,
        "target 0",
        || pool.stats().total.target == 0,
        || pool.stats(),
    );
    assert_eq!(states.live(), 6, "no state dropped while its job runs");
    assert_eq!(finished.load(SeqCst), 0);
    assert!(recorder.exits.lock().is_empty(), "a worker left mid-job");
    gate.open();
    wait_until(
        PATIENCE,
        "all workers retired",
        || threads_named("drn-q-").is_empty(),
        || (pool.stats(), threads_named("drn-")),
    );
    assert_eq!((started.load(SeqCst), finished.load(SeqCst)), (6, 6));
    assert_eq!(states.live(), 0, "every state dropped on retirement");
    let exits = recorder.exits.lock().clone();
    assert_eq!(exits.len(), 6);
    assert!(
        exits.iter().all(|e| e.exit == Some(ExitReason::Retired)),
        "{exits:?}"
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.total.retired, stats.total.jobs_ok),
        (6, 6),
        "{stats:?}"
    );
}

#[test]
fn idle_excess_workers_leave_without_waiting_for_their_fetch() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let c = states.clone();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("idl")
        .jobs_per_thread(1)
        .scale_down_delay(Duration::ZERO)
        // An hour-long fetch: an idle worker that waited for it would never leave in time.
        .fetch_timeout(Duration::from_secs(3600))
        .queue(
            "q",
            source.clone(),
            move |_| Ok::<_, std::convert::Infallible>(c.enter()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    source.extend(0..4);
    wait_until(
        PATIENCE,
        "jobs done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    wait_until(
        PATIENCE,
        "idle workers gone",
        || threads_named("idl-q-").is_empty(),
        || (pool.stats(), threads_named("idl-")),
    );
    assert_eq!(states.live(), 0);
    assert!(states.built() >= 1);
}

#[test]
fn a_shrink_keeps_the_workers_still_needed() {
    let source: MemorySource<u32> = MemorySource::new();
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(10)
        .scale_down_delay(Duration::ZERO)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, std::convert::Infallible>(()),
            move |_, job: &u32| {
                if *job < 1000 {
                    g.pass();
                }
                Ok(())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    source.extend(0..4); // 4 jobs held at the gate...
    source.extend(1000..1046); // ...and 46 quick ones: 50 in all -> 5 threads
    wait_until(
        PATIENCE,
        "backlog drained but gated jobs held",
        || source.unfinished() == gate.waiting() && source.is_empty(),
        || pool.stats(),
    );
    // Now 4 jobs are running and the backlog is 0: target 0, but each busy worker stays.
    let s = pool.stats();
    assert!(s.total.workers >= gate.waiting(), "{s:?}");
    gate.open();
    wait_until(
        PATIENCE,
        "scaled to 0",
        || pool.stats().total.workers == 0,
        || pool.stats(),
    );
    assert_eq!(pool.stats().total.jobs_ok, 50);
}
