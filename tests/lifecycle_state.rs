//! A worker state's life (issue 13): recycled by age, with reproducible jitter; rebuilt when it
//! fails its health check, before the next job; carried over to the next `init`, but not
//! after a panic; every new setting checked by `build()`.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{Census, Member, PATIENCE, Recorder, wait_until};
use threadtide::{BuildError, Builder, ErrorKind, MemorySource, Queue, ThreadPoolManager};

fn done(source: &MemorySource<u32>) -> bool {
    source.unfinished() == 0
}

/// Builds and starts a pool of one worker for `queue` (the builder may carry other settings).
fn one_worker(builder: Builder, queue: Queue) -> ThreadPoolManager {
    let pool = builder
        .max_threads_per_type(1)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    pool
}

/// Waits until every job of `source` is done and then `condition`, and stops the pool.
fn finish(
    pool: &ThreadPoolManager,
    source: &MemorySource<u32>,
    what: &str,
    condition: impl Fn() -> bool,
) {
    wait_until(PATIENCE, "jobs done", || done(source), || pool.stats());
    wait_until(PATIENCE, what, condition, || pool.stats());
    pool.shutdown();
    pool.wait().unwrap();
}

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

/// An idle worker's state ages too: it is rebuilt within a `fetch_timeout` of its age, with
/// no job to trigger it. Fails if the age were looked at only after a job.
#[test]
fn an_idle_state_is_recycled_by_age_too() {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let c = states.clone();
    let queue = Queue::new(
        "q",
        source.clone(),
        move |_| Ok::<_, Infallible>(c.enter()),
        |_, _| Ok(()),
    )
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

/// A browser stand-in: some jobs break it (the renderer crashed).
struct Browser {
    _member: Member,
    broken: bool,
}

/// Every third job breaks the state; the health check sees it before the next fetch, the state
/// is rebuilt, and no job runs on a broken state. Counted and reported as `HealthCheck`.
/// Fails without the check: jobs run on broken states.
#[test]
fn a_state_that_fails_its_health_check_is_rebuilt_before_the_next_job() {
    health_check_case(false);
}

/// The same with a check that panics on a broken state: a panic is a failure.
#[test]
fn a_panicking_health_check_counts_as_a_failure() {
    threadtide::silence_job_panics();
    health_check_case(true);
}

fn health_check_case(panics: bool) {
    let source: MemorySource<u32> = MemorySource::new();
    let states = Census::default();
    let on_broken = Arc::new(AtomicUsize::new(0));
    let events = Recorder::default();
    let (c, b) = (states.clone(), Arc::clone(&on_broken));
    let queue = Queue::new(
        "q",
        source.clone(),
        move |_| {
            Ok::<_, Infallible>(Browser {
                _member: c.enter(),
                broken: false,
            })
        },
        move |s: &mut Browser, job: &u32| {
            if s.broken {
                b.fetch_add(1, SeqCst);
            }
            if job % 3 == 2 {
                s.broken = true;
            }
            Ok(())
        },
    )
    .health_check(move |s: &mut Browser, _| {
        if !s.broken {
            Ok(())
        } else if panics {
            panic!("the renderer is gone");
        } else {
            Err("the renderer is gone")
        }
    });
    source.extend(0..30);
    let pool = one_worker(
        ThreadPoolManager::builder().event_handler(events.clone()),
        queue,
    );
    finish(&pool, &source, "the last broken state checked", || {
        pool.stats().total.health_check_failures == 10
    });
    assert_eq!(on_broken.load(SeqCst), 0, "a job ran on a broken state");
    let stats = pool.stats();
    assert_eq!(stats.total.jobs_ok, 30);
    assert_eq!(stats.total.recycles, 0, "a rebuild is not a recycle");
    assert_eq!(states.built(), 11, "one state, then one per failed check");
    let errors = events.errors.lock();
    let checks: Vec<_> = errors
        .iter()
        .filter(|e| e.kind == ErrorKind::HealthCheck)
        .collect();
    assert_eq!(checks.len(), 10, "{errors:?}");
    assert!(
        checks
            .iter()
            .all(|e| e.message.contains("the renderer is gone")),
        "{checks:?}"
    );
    // A state that failed after running jobs is rebuilt at once.
    assert!(checks.iter().all(|e| e.retry_in.is_zero()), "{checks:?}");
}

/// A state that fails its check again before running a job backs off before the next `init`
/// (the first failure after jobs rebuilds at once), so a check that always fails does not
/// spin on rebuilds. Fails without the back-off (every `retry_in` zero).
#[test]
fn a_state_that_keeps_failing_its_check_backs_off() {
    let source: MemorySource<u32> = MemorySource::new();
    let events = Recorder::default();
    let inits = Arc::new(AtomicUsize::new(0));
    let i = Arc::clone(&inits);
    let queue = Queue::new(
        "q",
        source.clone(),
        move |_| Ok::<_, Infallible>(i.fetch_add(1, SeqCst)),
        |_, _| Ok(()),
    )
    .health_check(|_: &mut usize, _| Err::<(), _>("the site is down"));
    source.extend(0..3);
    let pool = one_worker(
        ThreadPoolManager::builder()
            .backoff(Duration::from_millis(10), Duration::from_millis(40))
            .event_handler(events.clone()),
        queue,
    );
    wait_until(
        PATIENCE,
        "four failed checks",
        || pool.stats().total.health_check_failures >= 4,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let errors = events.errors.lock();
    let delays: Vec<Duration> = errors
        .iter()
        .filter(|e| e.kind == ErrorKind::HealthCheck)
        .map(|e| e.retry_in)
        .collect();
    assert!(delays[0].is_zero(), "{delays:?}");
    assert!(delays[1..].iter().all(|d| !d.is_zero()), "{delays:?}");
    assert_eq!(pool.stats().total.jobs_ok, 0, "no job on a failing state");
    assert_eq!(source.unfinished(), 3);
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

/// With the Redis source: the job that the acknowledgement of the breaking job took ahead goes
/// back to the list before the state is rebuilt (nothing waits in the worker's processing list
/// during the rebuild), then runs once on the healthy state. Fails if the check ran after
/// the fetch (the job would sit in the processing list during `init`) or not at all (the job
/// would run on the broken state).
#[cfg(feature = "redis")]
#[test]
fn with_redis_no_job_is_held_while_an_unhealthy_state_is_rebuilt() {
    use redis::Commands;
    use support::redis::RedisServer;
    use threadtide::RedisSource;

    const Q: &str = "fila:conferencia";
    const RESULTS: &str = "fila:resultados";
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .max_attempts(1)
        .block_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    source.push(&["a"]).unwrap();
    let (running_tx, running_rx) = crossbeam_channel::unbounded::<()>();
    let (pushed_tx, pushed_rx) = crossbeam_channel::unbounded::<()>();
    let (rebuilding_tx, rebuilding_rx) = crossbeam_channel::unbounded::<()>();
    let (go_tx, go_rx) = crossbeam_channel::unbounded::<()>();
    let runs: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let r = Arc::clone(&runs);
    let queue = Queue::new(
        "conferencia",
        source.clone(),
        move |w| {
            if w.generation() == 1 {
                rebuilding_tx.send(()).unwrap();
                go_rx
                    .recv_timeout(PATIENCE)
                    .expect("the test lets the rebuild go on");
            }
            Ok::<_, Infallible>(false) // broken?
        },
        move |broken: &mut bool, job: &String| {
            r.lock().push((job.clone(), *broken));
            if job == "a" {
                running_tx.send(()).unwrap();
                pushed_rx.recv_timeout(PATIENCE).expect("b pushed");
                *broken = true;
            }
            Ok(job.clone().into_bytes())
        },
    )
    .health_check(|broken: &mut bool, _| {
        if *broken {
            Err("renderer crashed")
        } else {
            Ok(())
        }
    });
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    running_rx.recv_timeout(PATIENCE).expect("a runs");
    source.push(&["b"]).unwrap();
    pushed_tx.send(()).unwrap();
    rebuilding_rx
        .recv_timeout(PATIENCE)
        .expect("the state is rebuilt");
    let processing: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
    let held: usize = processing
        .iter()
        .map(|k| c.llen::<_, usize>(k).unwrap())
        .sum();
    let ready: Vec<String> = c.lrange(Q, 0, -1).unwrap();
    assert_eq!(
        (held, ready),
        (0, vec!["b".to_owned()]),
        "b held during the rebuild"
    );
    go_tx.send(()).unwrap();
    wait_until(
        PATIENCE,
        "b done",
        || c.llen::<_, usize>(RESULTS).unwrap() == 2,
        || pool.stats(),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let results: Vec<String> = c.lrange(RESULTS, 0, -1).unwrap();
    assert_eq!(results, ["a", "b"], "each once");
    assert_eq!(
        *runs.lock(),
        [("a".to_owned(), false), ("b".to_owned(), false)],
        "b ran once, on a healthy state"
    );
    assert_eq!(pool.stats().total.health_check_failures, 1);
}

/// Recycles and failed health checks in the metrics.
#[cfg(feature = "metrics")]
#[test]
fn recycles_and_health_check_failures_are_in_the_metrics() {
    let source: MemorySource<u32> = MemorySource::new();
    let queue = Queue::new(
        "q",
        source.clone(),
        |_| Ok::<_, Infallible>(0u32),
        |jobs: &mut u32, _| {
            *jobs += 1;
            Ok(())
        },
    )
    .recycle_after(3)
    .recycle_jitter(0.0)
    // States of odd generations fail their check after one job; the others recycle after
    // three: 3 + 1 + 3 + 1 + 1 jobs.
    .health_check(|jobs: &mut u32, w| {
        if w.generation() % 2 == 1 && *jobs == 1 {
            Err("tired")
        } else {
            Ok(())
        }
    });
    source.extend(0..9);
    let pool = one_worker(ThreadPoolManager::builder(), queue);
    finish(&pool, &source, "the last state checked", || {
        pool.stats().total.health_check_failures == 2
    });
    let text = pool.metrics_text();
    assert!(
        text.contains(r#"threadtide_worker_health_check_failures_total{queue="q"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"threadtide_worker_recycles_total{queue="q"} 2"#),
        "{text}"
    );
}
