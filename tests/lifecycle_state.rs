//! A worker state's life (issue 13): recycled by age, with reproducible jitter; carried over
//! to the next `init`, but not after a panic; every new setting checked by `build()`. The
//! health check is in `lifecycle_health.rs`.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{Census, Member, PATIENCE, done, finish, one_worker, wait_until};
use threadtide::{BuildError, Builder, MemorySource, Queue, ThreadPoolManager};

/// A state that knows when its first job started and when its last job ended.
struct Aged {
    _member: Member,
    first_start: Option<Instant>,
    last_end: Option<Instant>,
}

/// With `recycle_after_age(age)` and no jitter, a state is rebuilt between jobs once `age` has
/// passed since its `init` returned: no job starts on a state whose previous job ended after
/// `age` (measured from its first job, which started after `init` returned). Fails without
/// the feature: nothing recycles.
#[test]
fn a_state_is_recycled_by_age_between_jobs() {
    const AGE: Duration = Duration::from_millis(60);
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let late = Arc::new(AtomicUsize::new(0));
    let (c, l) = (states.clone(), Arc::clone(&late));
    let queue = Queue::new(
        "q",
        source.clone(),
        move |_| {
            Ok::<_, Infallible>(Aged {
                _member: c.enter(),
                first_start: None,
                last_end: None,
            })
        },
        move |s: &mut Aged, _| {
            let now = Instant::now();
            let first = *s.first_start.get_or_insert(now);
            if s.last_end.is_some_and(|end| end - first >= AGE) {
                l.fetch_add(1, SeqCst);
            }
            std::thread::sleep(Duration::from_millis(1));
            s.last_end = Some(Instant::now());
            Ok(())
        },
    )
    .recycle_after_age(AGE)
    .recycle_jitter(0.0);
    source.extend(0..1_000_000);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    wait_until(
        PATIENCE,
        "three recycles by age",
        || pool.stats().total.recycles >= 3,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let stats = pool.stats();
    assert_eq!(late.load(SeqCst), 0, "a job ran on a state past its age");
    assert!(states.built() as u64 > stats.total.recycles);
    assert_eq!(stats.total.health_check_failures, 0);
    assert_eq!(states.live(), 0);
}

/// A queue of no-op jobs whose states count themselves in `states`.
fn counted(source: &MemorySource<u32>, states: &Census) -> Queue {
    let c = states.clone();
    Queue::new(
        "q",
        source.clone(),
        move |_| Ok::<_, Infallible>(c.enter()),
        |_, _| Ok(()),
    )
}

/// The longest ages build and RUN: `recycle_after_age(Duration::MAX)` (and
/// `from_secs(u64::MAX)`) with and without jitter means "never", and every job runs on the
/// one state. Fails if the age limit overflowed (`age * (1 - 0)` panics in `Duration` after
/// `init`, outside the job's guard: the worker dies and is respawned, no job runs).
#[test]
fn the_longest_age_starts_and_never_recycles() {
    for (age, jitter) in [
        (Duration::MAX, 0.0),
        (Duration::from_secs(u64::MAX), 0.0),
        (Duration::MAX, 0.5),
    ] {
        let source: MemorySource<u32> = MemorySource::new();
        let states = Census::default();
        let queue = counted(&source, &states)
            .recycle_after_age(age)
            .recycle_jitter(jitter);
        source.extend(0..20);
        let pool = one_worker(ThreadPoolManager::builder(), queue);
        finish(&pool, &source, "the jobs done", || true);
        let stats = pool.stats();
        assert_eq!(stats.total.jobs_ok, 20, "{age:?} {jitter}: {stats:?}");
        assert_eq!(stats.total.recycles, 0, "{age:?} {jitter}");
        assert_eq!(
            states.built(),
            1,
            "{age:?} {jitter}: one state, never respawned"
        );
    }
}

/// An idle worker's state ages too: it is rebuilt within a `fetch_timeout` of its age, with
/// no job to trigger it. Fails if the age were looked at only after a job.
#[test]
fn an_idle_state_is_recycled_by_age_too() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let queue = counted(&source, &states)
        .min_threads(1)
        .recycle_after_age(Duration::from_millis(30));
    let pool = one_worker(
        ThreadPoolManager::builder().fetch_timeout(Duration::from_millis(10)),
        queue,
    );
    wait_until(
        PATIENCE,
        "an idle state recycled twice",
        || pool.stats().total.recycles >= 2,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(pool.stats().total.jobs_ok, 0);
    assert!(states.built() >= 3);
    assert_eq!(states.live(), 0);
}

/// An age shorter than `init` does not rebuild the state in a loop: every state serves a
/// fetch first, so the jobs run, one state each. Fails if the age were checked before a
/// state's first fetch (no job would ever run).
#[test]
fn a_tiny_age_rebuilds_after_every_job_rather_than_spinning() {
    let source: MemorySource<u32> = MemorySource::new();
    let queue = Queue::new(
        "q",
        source.clone(),
        |_| Ok::<_, Infallible>(0u32),
        |jobs: &mut u32, _| {
            *jobs += 1;
            assert_eq!(*jobs, 1, "one job per state");
            Ok(())
        },
    )
    .recycle_after_age(Duration::from_nanos(1));
    source.extend(0..20);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    finish(&pool, &source, "20 recycles", || {
        pool.stats().total.recycles >= 20
    });
    let stats = pool.stats();
    assert_eq!((stats.total.jobs_ok, stats.total.jobs_panicked), (20, 0));
}

/// The reference draw documented on `Queue::recycle_jitter`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn expected_limit(jobs: u64, jitter: f64, index: u64, generation: u64) -> u64 {
    let u = (splitmix64(splitmix64(index) ^ generation) >> 11) as f64 / (1u64 << 53) as f64;
    jobs - (jobs as f64 * jitter * u).floor() as u64
}

/// A state that reports, when dropped, who built it and how many jobs it ran.
struct Counted {
    index: u64,
    generation: u64,
    jobs: u64,
    log: Arc<Mutex<Vec<(u64, u64, u64)>>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.log
            .lock()
            .push((self.index, self.generation, self.jobs));
    }
}

/// `recycle_after(10)` with a jitter of 0.5: every state's job count is the documented draw
/// for its worker index and generation, within [5, 10], and they are not all equal. Fails
/// without jitter (all 10).
#[test]
fn jitter_shortens_each_states_job_limit_by_the_documented_draw() {
    let source: MemorySource<u32> = MemorySource::new();
    let log: Arc<Mutex<Vec<(u64, u64, u64)>>> = Arc::default();
    let l = Arc::clone(&log);
    let queue = Queue::new(
        "q",
        source.clone(),
        move |w| {
            Ok::<_, Infallible>(Counted {
                index: w.index(),
                generation: w.generation(),
                jobs: 0,
                log: Arc::clone(&l),
            })
        },
        |s: &mut Counted, _| {
            s.jobs += 1;
            Ok(())
        },
    )
    .recycle_after(10)
    .recycle_jitter(0.5);
    source.extend(0..10_000);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    wait_until(
        PATIENCE,
        "eight states recycled",
        || log.lock().len() >= 8,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let log = log.lock();
    let recycled: Vec<_> = log.iter().take(8).collect();
    for (i, &&(index, generation, jobs)) in recycled.iter().enumerate() {
        assert_eq!((index, generation), (0, i as u64), "{log:?}");
        assert_eq!(jobs, expected_limit(10, 0.5, index, generation), "{log:?}");
        assert!((5..=10).contains(&jobs), "{log:?}");
    }
    assert!(
        recycled.iter().any(|r| r.2 != recycled[0].2),
        "all equal: {log:?}"
    );
    assert!(pool.stats().total.recycles >= 8);
}

/// A logged-in session: `init` logs in unless a previous state carried one over.
struct Session {
    token: u64,
}

fn logins_queue(source: &MemorySource<u32>, logins: &Arc<AtomicU64>) -> Queue {
    let l = Arc::clone(logins);
    Queue::new(
        "q",
        source.clone(),
        move |w| {
            Ok::<_, Infallible>(w.take_carry::<Session>().unwrap_or_else(|| Session {
                token: l.fetch_add(1, SeqCst),
            }))
        },
        |s: &mut Session, _| {
            assert!(s.token < 1000);
            Ok(())
        },
    )
    .carry_over(|s: Session, _| Some(s))
}

/// 200 jobs, 3 workers, `recycle_after(10)`: every recycle hands its session to the next
/// `init`, so there are no more logins than workers, also after the queue scaled down to no
/// worker and up again. Fails without carry-over (a login per state, about 23).
#[test]
fn carry_over_saves_the_login_of_every_recycle_and_across_a_scale_down() {
    let source: MemorySource<u32> = MemorySource::new();
    let logins = Arc::new(AtomicU64::new(0));
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(3)
        .scale_down_delay(Duration::ZERO)
        .add_queue(logins_queue(&source, &logins).recycle_after(10))
        .build()
        .unwrap();
    source.extend(0..200);
    pool.start().unwrap();
    wait_until(PATIENCE, "200 jobs done", || done(&source), || pool.stats());
    let first = pool.stats();
    assert!(first.total.recycles >= 17, "{first:?}");
    assert!(logins.load(SeqCst) <= 3, "{} logins", logins.load(SeqCst));
    wait_until(
        PATIENCE,
        "scaled down to no worker",
        || {
            pool.stats().total.workers == 0
                && pool.stats().total.spawned == pool.stats().total.retired
        },
        || pool.stats(),
    );
    source.extend(0..200);
    wait_until(PATIENCE, "200 more done", || done(&source), || pool.stats());
    pool.shutdown();
    pool.wait().unwrap();
    let stats = pool.stats();
    assert!(stats.total.spawned > first.total.spawned, "{stats:?}");
    assert!(logins.load(SeqCst) <= 3, "{} logins", logins.load(SeqCst));
    assert!(stats.total.carried >= 34, "{stats:?}");
}

/// A job that panics may leave its state half-changed: the state is dropped without
/// carry-over, so the next `init` logs in again. Fails if the panicked state were carried.
#[test]
fn no_carry_after_a_panic() {
    threadtide::silence_job_panics();
    let source: MemorySource<u32> = MemorySource::new();
    let logins = Arc::new(AtomicU64::new(0));
    let carries = Arc::new(AtomicUsize::new(0));
    let once = Arc::new(AtomicBool::new(false));
    let (l, k) = (Arc::clone(&logins), Arc::clone(&carries));
    let queue = Queue::new(
        "q",
        source.clone(),
        move |w| {
            Ok::<_, Infallible>(w.take_carry::<Session>().unwrap_or_else(|| Session {
                token: l.fetch_add(1, SeqCst),
            }))
        },
        move |_: &mut Session, job: &u32| {
            if *job == 0 && !once.swap(true, SeqCst) {
                panic!("half-way through a form");
            }
            Ok(())
        },
    )
    .carry_over(move |s: Session, _| {
        k.fetch_add(1, SeqCst);
        Some(s)
    });
    source.extend(0..5);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    wait_until(
        PATIENCE,
        "jobs done",
        || pool.stats().total.jobs_ok == 5,
        || pool.stats(),
    );
    assert_eq!(carries.load(SeqCst), 0, "the panicked state was carried");
    assert_eq!(logins.load(SeqCst), 2, "a new login after the panic");
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(
        carries.load(SeqCst),
        1,
        "the exiting worker's state is carried"
    );
    assert_eq!(pool.stats().total.carried, 0);
}

/// The carried value is offered to `init` with its type: a `take_carry` of another type finds
/// nothing and leaves it. Generation counts states built by the worker.
#[test]
fn take_carry_of_another_type_finds_nothing() {
    let source: MemorySource<u32> = MemorySource::new();
    type Seen = Vec<(u64, bool, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let s = Arc::clone(&seen);
    let queue = Queue::new(
        "q",
        source.clone(),
        move |w| {
            let wrong = w.take_carry::<u32>().is_some();
            s.lock()
                .push((w.generation(), wrong, w.take_carry::<String>()));
            Ok::<_, Infallible>(())
        },
        |_, _| Ok(()),
    )
    .recycle_after(1)
    .carry_over(|(), w| Some(format!("from generation {}", w.generation())));
    source.extend(0..3);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    wait_until(PATIENCE, "jobs done", || done(&source), || pool.stats());
    pool.shutdown();
    pool.wait().unwrap();
    let seen = seen.lock();
    assert_eq!(
        seen[..3],
        [
            (0, false, None),
            (1, false, Some("from generation 0".to_owned())),
            (2, false, Some("from generation 1".to_owned())),
        ]
    );
}

fn queue() -> Queue {
    let source: MemorySource<u32> = MemorySource::new();
    Queue::new("q", source, |_| Ok::<_, Infallible>(0u8), |_, _| Ok(()))
}

fn error(builder: Builder) -> BuildError {
    builder
        .build()
        .expect_err("configuration should be refused")
}

#[test]
fn build_refuses_each_bad_lifecycle_setting_by_name_and_value() {
    let b = || ThreadPoolManager::builder();
    let cases: Vec<(Builder, &str, &str)> = vec![
        (
            b().add_queue(queue().recycle_after_age(Duration::ZERO)),
            "queue[q].recycle_after_age",
            "0ns",
        ),
        (
            b().add_queue(queue().recycle_jitter(1.0)),
            "queue[q].recycle_jitter",
            "1",
        ),
        (
            b().add_queue(queue().recycle_jitter(-0.25)),
            "queue[q].recycle_jitter",
            "-0.25",
        ),
        (
            b().add_queue(queue().recycle_jitter(f64::NAN)),
            "queue[q].recycle_jitter",
            "NaN",
        ),
        (
            b().add_queue(queue().health_check_every(Duration::from_secs(2 * 86_400))),
            "queue[q].health_check_every",
            "172800s",
        ),
        (
            b().add_queue(queue().init_concurrency(0)),
            "queue[q].init_concurrency",
            "0",
        ),
        (
            b().add_queue(queue()).min_free_memory(0),
            "min_free_memory",
            "0",
        ),
    ];
    for (builder, field, value) in cases {
        let e = error(builder);
        assert_eq!((e.field(), e.value()), (field, value), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("invalid {field} = {value}: ")),
            "{e}"
        );
    }
}

#[test]
fn build_refuses_hooks_written_for_another_state_type() {
    let e = error(
        ThreadPoolManager::builder()
            .add_queue(queue().health_check(|_: &mut String, _| Ok::<_, Infallible>(()))),
    );
    assert_eq!(e.field(), "queue[q].health_check", "{e}");
    assert_eq!(e.value(), "alloc::string::String", "{e}");
    assert!(e.reason().contains("`u8`"), "{e}");
    let e = error(
        ThreadPoolManager::builder().add_queue(queue().carry_over(|_: Vec<u8>, _| Some(1u32))),
    );
    assert_eq!(e.field(), "queue[q].carry_over", "{e}");
    assert!(e.to_string().contains("alloc::vec::Vec<u8>"), "{e}");
    assert!(e.reason().contains("`u8`"), "{e}");
    // The right types, and the extremes that are allowed, build.
    ThreadPoolManager::builder()
        .min_free_memory(1)
        .add_queue(
            queue()
                .health_check(|_: &mut u8, _| Ok::<_, Infallible>(()))
                .health_check_every(Duration::from_secs(86_400))
                .carry_over(|s: u8, _| Some(s))
                .recycle_after_age(Duration::MAX)
                .recycle_jitter(0.0)
                .init_concurrency(usize::MAX),
        )
        .build()
        .unwrap();
}
