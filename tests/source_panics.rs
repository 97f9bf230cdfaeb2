//! A source's callbacks that run on the host's thread (`open`, `close` when `start` fails,
//! `requeue_running`) are guarded: a panic in one is an error the host sees, never a panic
//! in `start` or `shutdown_timeout`, and nothing is left open.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Gate, PATIENCE, wait_until};
use threadtide::{
    JobSource, MemoryConsumer, MemorySource, PoolInfo, SourceError, StartError, ThreadPoolManager,
    WaitError, WorkerInfo,
};

/// A memory source whose host-thread callbacks can be told to panic, counting its calls.
#[derive(Clone, Default)]
struct Touchy {
    inner: MemorySource<u32>,
    panic_in_open: bool,
    panic_in_close: bool,
    panic_in_requeue: bool,
    opened: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl JobSource for Touchy {
    type Job = u32;
    type Output = ();
    type Consumer = MemoryConsumer<u32, ()>;

    fn open(&self, _pool: &PoolInfo) -> Result<(), SourceError> {
        assert!(!self.panic_in_open, "open blew up");
        self.opened.fetch_add(1, SeqCst);
        Ok(())
    }
    fn backlog(&self) -> Result<usize, SourceError> {
        self.inner.backlog()
    }
    fn consumer(&self, worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        self.inner.consumer(worker)
    }
    fn close(&self) {
        self.closed.fetch_add(1, SeqCst);
        assert!(!self.panic_in_close, "close blew up");
    }
    fn requeue_running(&self) -> Result<usize, SourceError> {
        assert!(!self.panic_in_requeue, "requeue_running blew up");
        Ok(0)
    }
}

#[test]
fn a_panic_in_the_second_queues_open_fails_start_and_closes_the_first() {
    // The first source's close panics too: that is logged and counted, not a panic in start.
    let first = Touchy {
        panic_in_close: true,
        ..Touchy::default()
    };
    let second = Touchy {
        panic_in_open: true,
        ..Touchy::default()
    };
    let pool = ThreadPoolManager::builder()
        .queue(
            "a",
            first.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .queue(
            "b",
            second.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    match pool.start() {
        Err(StartError::Source { queue, error }) => {
            assert_eq!(queue, "b");
            assert!(error.to_string().contains("open panicked"), "{error}");
        }
        other => panic!("expected StartError::Source for b, got {other:?}"),
    }
    assert_eq!(first.opened.load(SeqCst), 1);
    assert_eq!(first.closed.load(SeqCst), 1, "the opened source is closed");
    assert_eq!(
        second.closed.load(SeqCst),
        0,
        "the source that did not open is not closed"
    );
    assert_eq!(pool.stats().queue("a").unwrap().source_errors, 1);
}

#[test]
fn a_panic_in_requeue_running_is_a_counted_error_not_a_panic_in_shutdown_timeout() {
    let source = Touchy {
        panic_in_requeue: true,
        ..Touchy::default()
    };
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
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
    source.inner.push(1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the job running",
        || gate.waiting() == 1,
        || pool.stats(),
    );
    match pool.shutdown_timeout(Duration::from_millis(10)) {
        Err(WaitError::TimedOut { requeued, .. }) => assert_eq!(requeued, 0),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(pool.stats().queue("q").unwrap().source_errors, 1);
    gate.open();
    pool.wait().unwrap();
}
