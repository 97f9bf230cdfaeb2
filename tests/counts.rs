//! Worker counts stay right when a worker dies after it committed to retiring: it leaves
//! `alive` once, not twice (which wrapped the count and stopped the queue from ever spawning
//! again).

mod support;

use std::convert::Infallible;
use std::time::Duration;

use support::{PATIENCE, wait_until};
use threadtide::{MemorySource, ThreadPoolManager};

/// A logger that panics on the line the pool writes after a state's `Drop` panicked: the
/// simplest way to make a worker thread panic outside every guard after `try_retire`.
struct PanickyLogger;

impl log::Log for PanickyLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.args().to_string().contains("a drop panicked") {
            panic!("the logger fails");
        }
    }
    fn flush(&self) {}
}

static LOGGER: PanickyLogger = PanickyLogger;

/// A worker's state whose `Drop` panics (a browser that fails to close).
struct Sulky;

impl Drop for Sulky {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("cannot close the browser");
        }
    }
}

#[test]
fn a_worker_that_panics_after_it_retired_leaves_alive_once() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .rebalance_interval(Duration::from_millis(5))
        .scale_down_delay(Duration::ZERO)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(Sulky),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.push(1);
    pool.start().unwrap();
    let q = || pool.stats().queue("q").cloned().expect("queue q");
    wait_until(
        PATIENCE,
        "the worker to retire and its thread to die",
        || {
            let q = q();
            q.jobs_ok == 1 && q.retired == 1
        },
        q,
    );
    let seen = q();
    if seen.workers != 0 {
        // A wrapped count: the pool can never drain, so do not let its drop hang the test.
        std::mem::forget(pool);
        panic!("alive left twice: {seen:?}");
    }
    // The queue still scales up: its count of alive workers is right.
    source.push(2);
    wait_until(PATIENCE, "the second job", || q().jobs_ok == 2, q);
    pool.shutdown_timeout(PATIENCE).unwrap();
}
