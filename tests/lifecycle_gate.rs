//! Starting workers (issue 13): the memory gate holds every start while free memory is below
//! its minimum, and the start ramp (`init_concurrency`) bounds the `init`s in flight.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Gate, OpenOnDrop, PATIENCE, wait_until};
use threadtide::{
    JobSource, MemorySource, Queue, SizeReason, SourceError, ThreadPoolManager, WorkerInfo,
};

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

/// Holds `init`s until the test lets them through one at a time; counts the waiting ones.
#[derive(Default, Clone)]
struct Turnstile(Arc<(parking_lot::Mutex<(usize, usize)>, parking_lot::Condvar)>);

impl Turnstile {
    /// Waits for a permit (`(permits, waiting)` under the lock).
    fn pass(&self) {
        let mut s = self.0.0.lock();
        s.1 += 1;
        while s.0 == 0 {
            self.0.1.wait(&mut s);
        }
        s.0 -= 1;
        s.1 -= 1;
    }
    fn release(&self, n: usize) {
        let mut s = self.0.0.lock();
        s.0 = s.0.saturating_add(n);
        self.0.1.notify_all();
    }
    fn waiting(&self) -> usize {
        self.0.0.lock().1
    }
}

/// Lets every held `init` through when dropped (a failed test does not hang the pool's drop).
struct ReleaseOnDrop(Turnstile);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release(usize::MAX / 2);
    }
}

/// Whether every thread named `{prefix}-q-...` is asleep (`S` in `/proc/self/task/*/stat`):
/// blocked in a wait, none on its way into `init`.
fn workers_asleep(prefix: &str) -> bool {
    let name = format!("{prefix}-q-");
    std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
        .filter(|stat| stat.contains(&format!("({name}")))
        .all(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
        })
}

/// The most `init`s in flight while six workers start, with `init_concurrency(k)` (`None`:
/// the default, which lets `expect` in). Each `init` is held until the test lets it through,
/// one at a time; before each, the test waits until `expect` (or what is left) are held and
/// every other worker is asleep (waiting for its turn, or done), so a worker the ramp let in
/// too many would be held too, and counted. No sleep: a broken ramp shows in the high-water
/// mark once its extra workers have left the CPU.
fn inits_in_flight(k: Option<usize>, expect: usize) -> usize {
    let prefix = format!("ramp{}", k.unwrap_or(0));
    let source: MemorySource<u32> = MemorySource::new();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let high = Arc::new(AtomicUsize::new(0));
    let turnstile = Turnstile::default();
    let (f, h, t) = (in_flight.clone(), high.clone(), turnstile.clone());
    let mut queue = Queue::new(
        "q",
        source.clone(),
        move |_| {
            let now = f.fetch_add(1, SeqCst) + 1;
            h.fetch_max(now, SeqCst);
            t.pass();
            f.fetch_sub(1, SeqCst);
            Ok::<_, Infallible>(())
        },
        |_, _| Ok(()),
    )
    .min_threads(6);
    if let Some(k) = k {
        queue = queue.init_concurrency(k);
    }
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix(prefix.as_str())
        .max_threads_per_type(6)
        .add_queue(queue)
        .build()
        .unwrap();
    // After the pool: dropped first, so a failed test's pool drop does not wait on held inits.
    let _release = ReleaseOnDrop(turnstile.clone());
    pool.start().unwrap();
    for released in 0..6 {
        let held = expect.min(6 - released);
        wait_until(
            PATIENCE,
            "the next inits held, every other worker asleep",
            || {
                pool.stats().total.spawned == 6
                    && turnstile.waiting() >= held
                    && workers_asleep(&prefix)
            },
            || (pool.stats(), turnstile.waiting(), high.load(SeqCst)),
        );
        turnstile.release(1);
    }
    wait_until(
        PATIENCE,
        "six workers started",
        || {
            let s = pool.stats();
            s.total.workers == 6 && s.total.starting == 0
        },
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(pool.stats().total.init_failures, 0);
    high.load(SeqCst)
}

#[test]
fn init_concurrency_bounds_the_inits_in_flight() {
    assert_eq!(inits_in_flight(Some(1), 1), 1);
    assert_eq!(inits_in_flight(Some(2), 2), 2);
}

#[test]
fn init_concurrency_defaults_to_the_cpus_available() {
    let k = num_cpus::get().min(6);
    assert_eq!(inits_in_flight(None, k), k);
}

/// Workers waiting for an init turn count as `starting` and as workers, hold no job, and leave
/// at once on shutdown without running `init`. Fails without the ramp (six inits run).
#[test]
fn workers_waiting_for_a_turn_are_starting_hold_no_job_and_leave_on_shutdown() {
    let source: MemorySource<u32> = MemorySource::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Gate::default();
    let (e, r) = (entered.clone(), release.clone());
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(6)
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                move |_| {
                    e.fetch_add(1, SeqCst);
                    r.pass();
                    Ok::<_, Infallible>(())
                },
                |_, _| Ok(()),
            )
            .min_threads(6)
            .init_concurrency(1),
        )
        .build()
        .unwrap();
    let _open = OpenOnDrop(release.clone());
    source.extend(0..10);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "six workers, all starting",
        || {
            let s = pool.stats();
            s.total.workers == 6 && s.total.starting == 6 && release.waiting() == 1
        },
        || pool.stats(),
    );
    let s = pool.stats();
    assert_eq!((s.total.busy, s.total.jobs_ok), (0, 0), "{s:?}");
    assert_eq!(source.unfinished(), 10);
    assert_eq!(entered.load(SeqCst), 1);
    pool.shutdown();
    release.open();
    pool.wait().unwrap();
    assert_eq!(
        entered.load(SeqCst),
        1,
        "a waiting worker ran init after the stop"
    );
    assert_eq!(pool.stats().total.starting, 0);
    assert_eq!(source.unfinished(), 10, "no job taken");
}

/// A [`MemorySource`] that counts the monitor's ticks (it reads every backlog once a tick).
#[derive(Clone)]
struct Ticking {
    jobs: MemorySource<u32>,
    ticks: Arc<AtomicUsize>,
}

impl JobSource for Ticking {
    type Job = <MemorySource<u32> as JobSource>::Job;
    type Output = <MemorySource<u32> as JobSource>::Output;
    type Consumer = <MemorySource<u32> as JobSource>::Consumer;

    fn backlog(&self) -> Result<usize, SourceError> {
        self.ticks.fetch_add(1, SeqCst);
        self.jobs.backlog()
    }

    fn consumer(&self, worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        self.jobs.consumer(worker)
    }
}

/// With the gate on, the monitor starts at most `init_concurrency` workers whose `init` has not
/// returned, so each reading sees the memory of the workers before it: while an `init` is
/// held, two monitor ticks pass and the workers spawned but not built are still just that
/// one. Fails without that bound (the monitor starts all six in one tick).
#[test]
fn with_the_gate_on_workers_are_started_one_init_turn_at_a_time() {
    let source = Ticking {
        jobs: MemorySource::new(),
        ticks: Arc::default(),
    };
    let built = Arc::new(AtomicUsize::new(0));
    let turnstile = Turnstile::default();
    let (b, t) = (built.clone(), turnstile.clone());
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(6)
        .min_free_memory(1)
        .rebalance_interval(Duration::from_millis(10))
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                move |_| {
                    t.pass();
                    b.fetch_add(1, SeqCst);
                    Ok::<_, Infallible>(())
                },
                |_, _| Ok(()),
            )
            .min_threads(6)
            .init_concurrency(1),
        )
        .build()
        .unwrap();
    let _release = ReleaseOnDrop(turnstile.clone());
    pool.start().unwrap();
    for n in 0..6 {
        wait_until(
            PATIENCE,
            "an init held",
            || turnstile.waiting() == 1,
            || pool.stats(),
        );
        let ticks = source.ticks.load(SeqCst);
        wait_until(
            PATIENCE,
            "two monitor ticks while it is held",
            || source.ticks.load(SeqCst) >= ticks + 2,
            || pool.stats(),
        );
        let s = pool.stats();
        assert_eq!(
            s.total.spawned as usize - built.load(SeqCst),
            1,
            "more than one worker started before init {n} returned: {s:?}"
        );
        turnstile.release(1);
    }
    wait_until(
        PATIENCE,
        "six workers built",
        || built.load(SeqCst) == 6,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let s = pool.stats();
    assert_eq!(s.min_free_memory, Some(1));
    assert!(s.free_memory.is_some(), "{s:?}");
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

/// Workers waiting for an init turn leave as soon as the queue sheds them (its backlog is
/// gone), without running `init`. Fails if a waiting worker could not be retired (it would
/// wait for its turn, then build a state only to drop it).
#[test]
fn workers_waiting_for_a_turn_retire_without_running_init() {
    let source = support::Faulty::default();
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Gate::default();
    let (e, r) = (entered.clone(), release.clone());
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(6)
        .scale_down_delay(Duration::ZERO)
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                move |_| {
                    e.fetch_add(1, SeqCst);
                    r.pass();
                    Ok::<_, Infallible>(())
                },
                |_, _| Ok(()),
            )
            .init_concurrency(1),
        )
        .build()
        .unwrap();
    let _open = OpenOnDrop(release.clone());
    source.push(0..300);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "six workers, all starting",
        || pool.stats().total.starting == 6 && release.waiting() == 1,
        || pool.stats(),
    );
    source.jobs.lock().clear();
    wait_until(
        PATIENCE,
        "the five waiting workers retired",
        || {
            let s = pool.stats();
            s.total.retired == 5 && s.total.starting == 1
        },
        || pool.stats(),
    );
    assert_eq!(entered.load(SeqCst), 1, "a retiring worker ran init");
    release.open();
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(entered.load(SeqCst), 1);
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
