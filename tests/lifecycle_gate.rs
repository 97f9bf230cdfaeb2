//! Starting workers (issue 13): the memory gate holds every start while free memory is below
//! its minimum. The start ramp (`init_concurrency`) is in `lifecycle_ramp.rs`.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use support::{Gate, OpenOnDrop, PATIENCE, wait_until};
use threadtide::{MemorySource, Queue, SizeReason, ThreadPoolManager};

const FAR_ABOVE: u64 = u64::MAX / 2;

/// The thread name prefix of the test that counts log lines: only its pool's monitor's lines
/// are kept (other tests' pools log the same lines from the same process-global logger).
const LOG_PREFIX: &str = "gatelog";

/// Keeps the memory gate's log lines of the pool named [`LOG_PREFIX`] (its monitor thread).
struct Capture(parking_lot::Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let monitor = format!("{LOG_PREFIX}-monitor");
        if std::thread::current().name() != Some(monitor.as_str()) {
            return;
        }
        let line = record.args().to_string();
        if line.starts_with("memory gate") {
            self.0.lock().push(format!("{} {line}", record.level()));
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(parking_lot::Mutex::new(Vec::new()));

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&LOG).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn lines_with(text: &str) -> usize {
    LOG.0.lock().iter().filter(|l| l.contains(text)).count()
}

/// With a minimum above what is free no worker starts and the reason says memory; lowering it
/// at runtime lets workers start; raising it again stops none of them. Fails without the gate
/// (workers start at once). The log says when the gate starts and stops holding, once each.
#[test]
fn the_memory_gate_holds_starts_and_never_stops_running_workers() {
    capture_logs();
    let source: MemorySource<u32> = MemorySource::new();
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix(LOG_PREFIX)
        .max_threads_per_type(3)
        .min_free_memory(FAR_ABOVE)
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
    source.extend(0..100);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the gate holding the queue",
        || {
            let s = pool.stats();
            s.queues[0].size_reason == SizeReason::Memory && s.free_memory.is_some()
        },
        || pool.stats(),
    );
    let s = pool.stats();
    assert_eq!((s.total.spawned, s.total.workers), (0, 0), "{s:?}");
    assert_eq!(s.queues[0].target, 2, "{s:?}");
    assert_eq!(s.min_free_memory, Some(FAR_ABOVE));
    assert!(s.free_memory.unwrap() < FAR_ABOVE, "{s:?}");

    pool.set_min_free_memory(Some(1));
    wait_until(
        PATIENCE,
        "two workers busy once the minimum is lowered",
        || pool.stats().total.busy == 2,
        || pool.stats(),
    );
    assert_eq!(pool.stats().min_free_memory, Some(1));

    // Raised again with more work waiting: the queue wants a third worker, which the gate
    // holds; the two running ones go on.
    pool.set_min_free_memory(Some(FAR_ABOVE));
    source.extend(100..200);
    wait_until(
        PATIENCE,
        "the gate holding the third worker",
        || {
            let s = pool.stats();
            s.queues[0].size_reason == SizeReason::Memory && s.queues[0].target == 3
        },
        || pool.stats(),
    );
    gate.open();
    wait_until(
        PATIENCE,
        "the running workers finishing jobs",
        || pool.stats().total.jobs_ok >= 20,
        || pool.stats(),
    );
    let s = pool.stats();
    assert_eq!((s.total.spawned, s.total.retired), (2, 0), "{s:?}");
    assert_eq!(s.total.workers, 2, "{s:?}");
    pool.set_min_free_memory(None);
    wait_until(
        PATIENCE,
        "every job done with the gate off, and no reading",
        || source.unfinished() == 0 && pool.stats().free_memory.is_none(),
        || pool.stats(),
    );
    // FAR_ABOVE is 8796093022207 MiB; the lowered minimum of 1 byte shows as 0 MiB.
    let lines = LOG.0.lock().clone();
    assert_eq!(
        lines_with("minimum 8796093022207 MiB: no worker starts"),
        2,
        "{lines:#?}"
    );
    assert_eq!(
        lines_with("minimum 0 MiB: workers start again"),
        1,
        "{lines:#?}"
    );
    assert_eq!(
        lines_with("turned off: workers start again"),
        1,
        "{lines:#?}"
    );
    assert!(lines.iter().all(|l| l.starts_with("INFO")), "{lines:#?}");
    pool.shutdown();
    pool.wait().unwrap();
}

/// The gate's reading and minimum, and the starting workers, in the metrics.
#[cfg(feature = "metrics")]
#[test]
fn the_gate_is_in_the_metrics() {
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .min_free_memory(FAR_ABOVE)
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    let before = pool.metrics_text();
    assert!(
        before.contains("threadtide_min_free_memory_bytes "),
        "{before}"
    );
    assert!(
        !before.contains("threadtide_free_memory_bytes "),
        "no reading before start"
    );
    source.extend(0..10);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "a reading",
        || pool.stats().free_memory.is_some(),
        || pool.stats(),
    );
    let text = pool.metrics_text();
    assert!(text.contains("threadtide_free_memory_bytes "), "{text}");
    assert!(
        text.contains(r#"threadtide_queue_size_reason{queue="q",reason="memory"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"threadtide_workers_starting{queue="q"} 0"#),
        "{text}"
    );
    pool.shutdown();
    pool.wait().unwrap();
}

/// A worker that waits for memory holds no init turn: with the gate closed, a second worker
/// spawned before it closed waits, and the first one's rebuilds (`recycle_after(1)`, one
/// turn in all) still get the turn. Fails if the waiting worker kept the turn (the rebuild
/// would wait for memory too, and no job would run). The queue shows `SizeReason::Memory`
/// meanwhile, though both its workers are alive.
#[test]
fn a_worker_waiting_for_memory_does_not_keep_rebuilds_from_their_turn() {
    let source: MemorySource<u32> = MemorySource::new();
    let release = Gate::default();
    let builders: Arc<parking_lot::Mutex<Vec<u64>>> = Arc::default();
    let hold = Gate::default();
    let holding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (r, b) = (release.clone(), builders.clone());
    let (h, hold_on) = (hold.clone(), holding.clone());
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(2)
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                move |w| {
                    let first = {
                        let mut b = b.lock();
                        b.push(w.index());
                        b.len() == 1
                    };
                    if first {
                        r.pass();
                    }
                    Ok::<_, Infallible>(())
                },
                // Time for the waiting worker to take the turn the first gave back; then
                // held in a job when the test asks, so that no rebuild is in `starting`.
                move |_, _| {
                    std::thread::sleep(Duration::from_millis(5));
                    if hold_on.load(SeqCst) {
                        h.pass();
                    }
                    Ok(())
                },
            )
            .recycle_after(1)
            .init_concurrency(1),
        )
        .build()
        .unwrap();
    let _open = OpenOnDrop(release.clone());
    source.extend(0..100);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "one worker in init, one waiting for the turn",
        || pool.stats().total.starting == 2 && release.waiting() == 1,
        || pool.stats(),
    );
    pool.set_min_free_memory(Some(FAR_ABOVE));
    wait_until(
        PATIENCE,
        "the gate read",
        || pool.stats().free_memory.is_some(),
        || pool.stats(),
    );
    release.open();
    wait_until(
        PATIENCE,
        "the first worker rebuilding after every job",
        || pool.stats().total.recycles >= 10,
        || pool.stats(),
    );
    // The first worker held in a job: its own rebuilds no longer count in `starting`.
    let _open_hold = OpenOnDrop(hold.clone());
    holding.store(true, SeqCst);
    wait_until(
        PATIENCE,
        "the first worker held in a job",
        || hold.waiting() == 1,
        || pool.stats(),
    );
    let s = pool.stats();
    assert_eq!(
        s.total.starting, 1,
        "the other worker waits for memory: {s:?}"
    );
    // Two workers alive, target two, but one waits for memory: the reason says so. Fails if
    // the waiting worker counted as there (the queue would show another reason).
    wait_until(
        PATIENCE,
        "the queue held by memory",
        || pool.stats().queues[0].size_reason == SizeReason::Memory,
        || pool.stats(),
    );
    hold.open();
    let builders = builders.lock().clone();
    assert!(
        builders.iter().all(|&i| i == builders[0]),
        "the worker waiting for memory ran init: {builders:?}"
    );
    pool.shutdown();
    pool.wait().unwrap();
}
