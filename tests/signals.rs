//! SIGTERM and SIGINT trigger a graceful shutdown (this test binary is its own process, so
//! raising a signal here touches nothing else).

mod support;

use std::convert::Infallible;
use std::time::Duration;

use support::{Gate, PATIENCE, threads_named, wait_threads_gone, wait_until};
use threadtide::{MemorySource, ThreadPoolManager};

/// Every listener in this process sees every raised signal, and a second one while a pool
/// drains exits the process: the tests of this binary run one at a time.
static ONE_AT_A_TIME: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

#[test]
fn sigterm_drains_the_pool_gracefully() {
    let _one = ONE_AT_A_TIME.lock();
    let source: MemorySource<u32> = MemorySource::new();
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("zsg")
        .jobs_per_thread(1)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, _| {
                g.pass();
                Ok(())
            },
        )
        .build()
        .unwrap();
    pool.shutdown_on_signals().unwrap();
    source.extend(0..5);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "jobs running",
        || gate.waiting() == 5,
        || pool.stats(),
    );
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    wait_until(
        PATIENCE,
        "shutdown requested",
        || pool.is_shutdown(),
        || pool.stats(),
    );
    assert!(
        pool.wait_timeout(Duration::from_millis(20)).is_err(),
        "running jobs still held"
    );
    gate.open();
    pool.wait().unwrap();
    wait_threads_gone("zsg");
    assert_eq!(pool.stats().total.jobs_ok, 5);
}

/// A pool dropped before it started still owns its signal listener: the drop joins it.
#[test]
fn dropping_a_pool_that_never_started_joins_its_signal_listener() {
    let _one = ONE_AT_A_TIME.lock();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("zsn")
        .queue(
            "q",
            MemorySource::<u32>::new(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    pool.shutdown_on_signals().unwrap();
    wait_until(
        PATIENCE,
        "the listener thread",
        || threads_named("zsn-signals") == ["zsn-signals"],
        || threads_named("zsn"),
    );
    drop(pool);
    wait_threads_gone("zsn");
}
