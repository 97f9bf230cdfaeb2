//! A worker state's health check (issue 13): a state that fails it is rebuilt before the next
//! fetch, so no job runs on it and, with the Redis source, none is held during the rebuild;
//! a check that keeps failing backs off; recycles and failures in the metrics.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use parking_lot::Mutex;
use support::{Census, Member, PATIENCE, Recorder, finish, one_worker, wait_until};
use threadtide::{ErrorKind, MemorySource, Queue, ThreadPoolManager};

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
    let broken_carried = Arc::new(AtomicUsize::new(0));
    let events = Recorder::default();
    let (c, b) = (states.clone(), Arc::clone(&on_broken));
    let bc = Arc::clone(&broken_carried);
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
    })
    .carry_over(move |s: Browser, _| {
        if s.broken {
            bc.fetch_add(1, SeqCst);
        }
        None::<()>
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
    // A failed check carries the state over; a panicking one may have left it half-changed,
    // so it is only dropped, as after a job's panic. Fails if a panicking check carried.
    let carried = broken_carried.load(SeqCst);
    assert_eq!(
        carried,
        if panics { 0 } else { 10 },
        "broken states carried"
    );
}

/// `health_check_every` spaces the checks from the state's `init`: with an hour, 20 jobs run
/// unchecked; with the default (zero), the state is checked before each of them. Fails if
/// the interval were ignored.
#[test]
fn health_check_every_spaces_the_checks() {
    let checks_with = |every: Option<Duration>| {
        let source: MemorySource<u32> = MemorySource::new();
        let checks = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&checks);
        let mut queue = Queue::new(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .health_check(move |_: &mut (), _| {
            c.fetch_add(1, SeqCst);
            Ok::<_, Infallible>(())
        });
        if let Some(every) = every {
            queue = queue.health_check_every(every);
        }
        source.extend(0..20);
        let pool = one_worker(ThreadPoolManager::builder(), queue);
        finish(&pool, &source, "the jobs' checks", || {
            every.is_some() || checks.load(SeqCst) >= 20
        });
        checks.load(SeqCst)
    };
    assert_eq!(checks_with(Some(Duration::from_secs(3600))), 0);
    assert!(checks_with(None) >= 20);
}

/// The `retry_in` of every `HealthCheck` event, in order.
fn check_delays(events: &Recorder) -> Vec<Duration> {
    events
        .errors
        .lock()
        .iter()
        .filter(|e| e.kind == ErrorKind::HealthCheck)
        .map(|e| e.retry_in)
        .collect()
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
    let delays = check_delays(&events);
    assert!(delays[0].is_zero(), "{delays:?}");
    assert!(delays[1..].iter().all(|d| !d.is_zero()), "{delays:?}");
    assert_eq!(pool.stats().total.jobs_ok, 0, "no job on a failing state");
    assert_eq!(source.unfinished(), 3);
}

/// The run of failed checks that backs off is reset by a state that ran a job and recycled:
/// state 0 fails after a job (rebuilt at once), state 1 runs two jobs and recycles, state 2
/// fails before its first job: the first failure of a new run, rebuilt at once too. Fails if
/// the run were only counted (state 2 would back off as a second failure in a row).
#[test]
fn a_recycle_resets_the_run_of_failed_checks() {
    /// A state and how many jobs it ran.
    struct Numbered {
        generation: u64,
        jobs: u32,
    }
    let source: MemorySource<u32> = MemorySource::new();
    let events = Recorder::default();
    let queue = Queue::new(
        "q",
        source.clone(),
        |w| {
            Ok::<_, Infallible>(Numbered {
                generation: w.generation(),
                jobs: 0,
            })
        },
        |s: &mut Numbered, _| {
            s.jobs += 1;
            Ok(())
        },
    )
    .recycle_after(2)
    .recycle_jitter(0.0)
    .health_check(|s: &mut Numbered, _| match (s.generation, s.jobs) {
        (0, 1..) | (2, _) => Err("the renderer is gone"),
        _ => Ok(()),
    });
    // State 0 runs one job, state 1 two, state 3 the last.
    source.extend(0..4);
    let pool = one_worker(
        ThreadPoolManager::builder()
            .backoff(Duration::from_secs(5), Duration::from_secs(5))
            .event_handler(events.clone()),
        queue,
    );
    finish(&pool, &source, "two failed checks", || {
        pool.stats().total.health_check_failures == 2
    });
    let delays = check_delays(&events);
    assert_eq!(delays, [Duration::ZERO; 2]);
    assert_eq!(pool.stats().total.recycles, 1);
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
