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

/// Holds the listener of the pool prefixed `zsr` inside its "draining gracefully" log line
/// (just before it calls `shutdown`, which takes the pool's threads lock) until the test is
/// about to replace that listener, then a moment longer so the replacing call reaches its join.
struct HoldingLogger {
    entered: parking_lot::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    go: parking_lot::Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl log::Log for HoldingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let here = std::thread::current();
        if here.name() == Some("zsr-signals")
            && record.args().to_string().contains("draining gracefully")
            && let Some(entered) = self.entered.lock().take()
        {
            let _ = entered.send(());
            if let Some(go) = self.go.lock().take() {
                let _ = go.recv();
            }
            // Widens the window in which the old code joined this thread under the lock.
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    fn flush(&self) {}
}

static HOLDING: std::sync::OnceLock<HoldingLogger> = std::sync::OnceLock::new();

#[test]
fn replacing_a_listener_that_is_shutting_the_pool_down_does_not_deadlock() {
    let _one = ONE_AT_A_TIME.lock();
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel();
    let logger = HOLDING.get_or_init(|| HoldingLogger {
        entered: parking_lot::Mutex::new(Some(entered_tx)),
        go: parking_lot::Mutex::new(Some(go_rx)),
    });
    log::set_logger(logger).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let pool = std::sync::Arc::new(
        ThreadPoolManager::builder()
            .thread_name_prefix("zsr")
            .queue(
                "q",
                MemorySource::<u32>::new(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .build()
            .unwrap(),
    );
    pool.shutdown_on_signals().unwrap();
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    entered_rx
        .recv_timeout(PATIENCE)
        .expect("the listener got the signal");
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let p = std::sync::Arc::clone(&pool);
    std::thread::spawn(move || {
        let _ = done_tx.send(p.shutdown_on_signals());
    });
    go_tx.send(()).unwrap();
    match done_rx.recv_timeout(PATIENCE) {
        Ok(result) => result.unwrap(),
        Err(_) => {
            // Deadlocked: the pool can never be dropped cleanly, so do not try.
            std::mem::forget(pool);
            panic!("replacing the listener deadlocked with the old one's shutdown");
        }
    }
    assert!(pool.is_shutdown());
}
