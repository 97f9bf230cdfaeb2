//! Invalid configuration is a `build()` error naming the field and the value; never a panic.

use std::convert::Infallible;
use std::time::Duration;

use threadtide::{BuildError, Builder, MemorySource, Queue, ThreadPoolManager};

fn queue(name: &str) -> Queue {
    let source: MemorySource<u32> = MemorySource::new();
    Queue::new(name, source, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
}

fn with_queue() -> Builder {
    ThreadPoolManager::builder().add_queue(queue("q"))
}

fn error(builder: Builder) -> BuildError {
    builder
        .build()
        .expect_err("configuration should be refused")
}

#[test]
fn each_bad_value_names_its_field_and_value() {
    let cases: Vec<(Builder, &str, &str)> = vec![
        (with_queue().jobs_per_thread(0), "jobs_per_thread", "0"),
        (
            with_queue().max_threads_per_type(0),
            "max_threads_per_type",
            "0",
        ),
        (with_queue().max_total_threads(0), "max_total_threads", "0"),
        (
            with_queue().rebalance_interval(Duration::ZERO),
            "rebalance_interval",
            "0ns",
        ),
        (
            with_queue().fetch_timeout(Duration::ZERO),
            "fetch_timeout",
            "0ns",
        ),
        (
            with_queue().backoff(Duration::ZERO, Duration::from_secs(1)),
            "backoff.initial",
            "0s",
        ),
        (
            with_queue().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff.max",
            "1s",
        ),
        (
            with_queue().thread_name_prefix(""),
            "thread_name_prefix",
            "\"\"",
        ),
        (ThreadPoolManager::builder(), "queues", "[]"),
        (
            ThreadPoolManager::builder().add_queue(queue("")),
            "queue.name",
            "\"\"",
        ),
        (
            ThreadPoolManager::builder().add_queue(queue("a\0b")),
            "queue.name",
            "\"a\\0b\"",
        ),
        (with_queue().add_queue(queue("q")), "queue[q].name", "q"),
        (
            ThreadPoolManager::builder().add_queue(queue("q").weight(0)),
            "queue[q].weight",
            "0",
        ),
        (
            ThreadPoolManager::builder().add_queue(queue("q").recycle_after(0)),
            "queue[q].recycle_after",
            "0",
        ),
        (
            ThreadPoolManager::builder()
                .max_threads_per_type(3)
                .add_queue(queue("q").min_threads(4)),
            "queue[q].min_threads",
            "4",
        ),
        (
            ThreadPoolManager::builder()
                .max_total_threads(5)
                .add_queue(queue("a").min_threads(3))
                .add_queue(queue("b").min_threads(3)),
            "max_total_threads",
            "5",
        ),
    ];
    for (builder, field, value) in cases {
        let e = error(builder);
        assert_eq!((e.field(), e.value()), (field, value), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("invalid {field} = {value}: ")),
            "{text}"
        );
    }
}

#[test]
fn the_hosts_settings_and_the_defaults_are_valid() {
    with_queue().build().unwrap();
    with_queue()
        .jobs_per_thread(50)
        .max_threads_per_type(10)
        .max_total_threads(20)
        .rebalance_interval(Duration::from_secs(60))
        .scale_down_delay(Duration::ZERO)
        .build()
        .unwrap();
}

#[test]
fn memory_source_settings_are_checked_too() {
    let e = MemorySource::builder()
        .max_attempts(0)
        .build::<u32, ()>()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("max_attempts", "0"));
    let e = MemorySource::builder()
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(1))
        .build::<u32, ()>()
        .unwrap_err();
    assert_eq!(e.field(), "retry_backoff");
}

/// Issue 14 #9: every duration and count setting of the pool builder and of
/// `MemorySourceBuilder`, at the extremes its type allows, gives either a `BuildError` naming
/// the setting or a pool that works (runs its jobs, retries a failing one, shuts down).
#[test]
fn every_setting_at_its_extremes_is_refused_or_works() {
    use threadtide::JobError;
    const MAX: Duration = Duration::MAX;
    const NS: Duration = Duration::from_nanos(1);
    const MS: Duration = Duration::from_millis(1);
    type Pool = fn(Builder) -> Builder;
    type Src = fn(threadtide::MemorySourceBuilder) -> threadtide::MemorySourceBuilder;
    let same: Src = |m| m;
    let cases: Vec<(&str, Pool, Src, Option<&str>)> = vec![
        ("jobs_per_thread=1", |b| b.jobs_per_thread(1), same, None),
        (
            "jobs_per_thread=MAX",
            |b| b.jobs_per_thread(usize::MAX),
            same,
            None,
        ),
        (
            "max_threads_per_type=1",
            |b| b.max_threads_per_type(1),
            same,
            None,
        ),
        (
            "max_threads_per_type=MAX",
            |b| b.max_threads_per_type(usize::MAX),
            same,
            Some("max_threads_per_type"),
        ),
        (
            "max_total_threads=1",
            |b| b.max_total_threads(1),
            same,
            None,
        ),
        (
            "max_total_threads=MAX",
            |b| b.max_total_threads(usize::MAX),
            same,
            Some("max_total_threads"),
        ),
        (
            "rebalance_interval=1ns",
            |b| b.rebalance_interval(NS),
            same,
            Some("rebalance_interval"),
        ),
        (
            "rebalance_interval=1ms",
            |b| b.rebalance_interval(MS),
            same,
            None,
        ),
        (
            "rebalance_interval=MAX",
            |b| b.rebalance_interval(MAX),
            same,
            Some("rebalance_interval"),
        ),
        (
            "scale_down_delay=0",
            |b| b.scale_down_delay(Duration::ZERO),
            same,
            None,
        ),
        (
            "scale_down_delay=MAX",
            |b| b.scale_down_delay(MAX),
            same,
            None,
        ),
        (
            "fetch_timeout=1ns",
            |b| b.fetch_timeout(NS),
            same,
            Some("fetch_timeout"),
        ),
        ("fetch_timeout=1ms", |b| b.fetch_timeout(MS), same, None),
        (
            "fetch_timeout=MAX",
            |b| b.fetch_timeout(MAX),
            same,
            Some("fetch_timeout"),
        ),
        (
            "backoff=1ns..1ns",
            |b| b.backoff(NS, NS),
            same,
            Some("backoff.initial"),
        ),
        ("backoff=1ms..1ms", |b| b.backoff(MS, MS), same, None),
        (
            "backoff=1ns..MAX",
            |b| b.backoff(NS, MAX),
            same,
            Some("backoff.max"),
        ),
        (
            "backoff=MAX..MAX",
            |b| b.backoff(MAX, MAX),
            same,
            Some("backoff.initial"),
        ),
        ("stack_size=0", |b| b.stack_size(0), same, None),
        (
            "stack_size=MAX",
            |b| b.stack_size(usize::MAX),
            same,
            Some("stack_size"),
        ),
        (
            "thread_name_prefix=long",
            |b| b.thread_name_prefix("p".repeat(300)),
            same,
            None,
        ),
        ("max_attempts=1", |b| b, |m| m.max_attempts(1), None),
        (
            "max_attempts=MAX",
            |b| b,
            |m| m.max_attempts(u32::MAX),
            None,
        ),
        (
            "retry_backoff=0..0",
            |b| b,
            |m| m.retry_backoff(Duration::ZERO, Duration::ZERO),
            None,
        ),
        (
            "retry_backoff=1ns..MAX",
            |b| b,
            |m| m.retry_backoff(NS, MAX),
            None,
        ),
        (
            "retry_backoff=MAX..MAX",
            |b| b,
            |m| m.retry_backoff(MAX, MAX),
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (label, pool_setting, source_setting, refused_field) in cases {
        let source = match source_setting(MemorySource::builder()).build::<u32, ()>() {
            Ok(s) => s,
            Err(e) => {
                if Some(e.field()) != refused_field {
                    failures.push(format!("{label}: source refused unexpectedly: {e}"));
                }
                continue;
            }
        };
        let queue = Queue::new(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, job: &u32| {
                if *job == 0 {
                    Err(JobError::permanent("job 0 fails"))
                } else {
                    Ok(())
                }
            },
        );
        let built = pool_setting(ThreadPoolManager::builder().add_queue(queue)).build();
        let pool = match (built, refused_field) {
            (Err(e), Some(field)) if e.field() == field => continue,
            (Err(e), _) => {
                failures.push(format!("{label}: refused: {e}"));
                continue;
            }
            (Ok(_), Some(field)) => {
                failures.push(format!(
                    "{label}: accepted, expected a BuildError for {field}"
                ));
                continue;
            }
            (Ok(pool), None) => pool,
        };
        source.extend(0..6);
        pool.start().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while source.unfinished() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let stats = pool.stats();
        if source.unfinished() != 0 || stats.total.jobs_ok != 5 || stats.total.spawned > 10 {
            failures.push(format!("{label}: does not work: {stats:?}"));
        }
        if let Err(e) = pool.shutdown_timeout(Duration::from_secs(20)) {
            failures.push(format!("{label}: shutdown: {e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn queue_settings_at_their_extremes() {
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .weight(u32::MAX)
            .recycle_after(1),
        )
        .add_queue(
            Queue::new(
                "r",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .weight(1)
            .recycle_after(u64::MAX),
        )
        .build()
        .unwrap();
    source.extend(0..20);
    pool.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while source.unfinished() > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        std::thread::sleep(Duration::from_millis(2));
    }
    pool.shutdown_timeout(Duration::from_secs(20)).unwrap();
    let e = ThreadPoolManager::builder()
        .add_queue(
            Queue::new("q", source, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
                .min_threads(usize::MAX),
        )
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "queue[q].min_threads");
}

/// Issue 14 #9: a worker thread the operating system refuses to start is an error the host
/// sees (an `ErrorKind::Spawn` event and a count), retried with back-off, not a silent pool.
/// Runs itself again as a child under an address-space limit that a 1 GiB stack cannot fit.
#[test]
fn a_refused_spawn_is_an_event_and_a_count() {
    if std::env::var_os("THREADTIDE_SPAWN_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("prlimit")
            .arg("--as=1073741824")
            .arg(exe)
            .args([
                "--exact",
                "a_refused_spawn_is_an_event_and_a_count",
                "--nocapture",
            ])
            .env("THREADTIDE_SPAWN_CHILD", "1")
            .output()
            .expect("prlimit runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("child saw spawn errors"), "{text}");
        return;
    }
    use parking_lot::Mutex;
    use std::sync::Arc;
    #[derive(Clone, Default)]
    struct Errors(Arc<Mutex<Vec<threadtide::ErrorEvent>>>);
    impl threadtide::EventHandler for Errors {
        fn on_error(&self, e: &threadtide::ErrorEvent) {
            self.0.lock().push(e.clone());
        }
    }
    let errors = Errors::default();
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .stack_size(1 << 30)
        .backoff(Duration::from_millis(5), Duration::from_millis(5))
        .event_handler(errors.clone())
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.extend(0..3);
    pool.start().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // Snapshots taken without pause while spawns are refused: none may count a refused spawn
    // as started, not even for a moment (`spawned` never goes down).
    let mut most_spawned = 0;
    while errors.0.lock().len() < 40 {
        assert!(std::time::Instant::now() < deadline, "{:?}", pool.stats());
        most_spawned = most_spawned.max(pool.stats().total.spawned);
    }
    let stats = pool.stats();
    assert!(stats.total.spawn_failures >= 40, "{stats:?}");
    assert_eq!(
        most_spawned, 0,
        "a snapshot counted a refused spawn: {stats:?}"
    );
    assert_eq!(stats.total.spawned, 0, "{stats:?}");
    for e in errors.0.lock().iter() {
        assert_eq!(e.kind, threadtide::ErrorKind::Spawn, "{e:?}");
        assert!(e.retry_in >= Duration::from_millis(2), "{e:?}");
    }
    pool.shutdown_timeout(Duration::from_secs(20)).unwrap();
    println!("child saw spawn errors");
}
