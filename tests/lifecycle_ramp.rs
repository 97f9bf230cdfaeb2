//! The start ramp (issue 13): `init_concurrency` bounds the `init`s in flight, workers waiting
//! for a turn hold no job and leave at once, and with the memory gate on the monitor starts
//! at most one turn's worth of workers whose `init` has not returned. The gate itself is in
//! `lifecycle_gate.rs`.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use support::{Gate, OpenOnDrop, PATIENCE, wait_until};
use threadtide::{JobSource, MemorySource, Queue, SourceError, ThreadPoolManager, WorkerInfo};

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

/// A queue `q` on `source` with one init turn, whose every `init` counts itself in `entered`
/// and then waits at `release`.
fn held_inits<S>(source: S, entered: &Arc<AtomicUsize>, release: &Gate) -> Queue
where
    S: threadtide::JobSource<Job = u32, Output = ()>,
{
    let (e, r) = (Arc::clone(entered), release.clone());
    Queue::new(
        "q",
        source,
        move |_| {
            e.fetch_add(1, SeqCst);
            r.pass();
            Ok::<_, Infallible>(())
        },
        |_, _| Ok(()),
    )
    .init_concurrency(1)
}

/// Workers waiting for an init turn count as `starting` and as workers, hold no job, and leave
/// at once on shutdown without running `init`. Fails without the ramp (six inits run).
#[test]
fn workers_waiting_for_a_turn_are_starting_hold_no_job_and_leave_on_shutdown() {
    let source: MemorySource<u32> = MemorySource::new();
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Gate::default();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(6)
        .add_queue(held_inits(source.clone(), &entered, &release).min_threads(6))
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

/// Workers waiting for an init turn leave as soon as the queue sheds them (its backlog is
/// gone), without running `init`. Fails if a waiting worker could not be retired (it would
/// wait for its turn, then build a state only to drop it).
#[test]
fn workers_waiting_for_a_turn_retire_without_running_init() {
    let source = support::Faulty::default();
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Gate::default();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(6)
        .scale_down_delay(Duration::ZERO)
        .add_queue(held_inits(source.clone(), &entered, &release))
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
