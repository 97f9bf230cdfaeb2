//! Start-up checks: a warning when the server would lose jobs silently (AOF off, an evicting
//! maxmemory policy), silence when it is configured safely.
#![cfg(feature = "redis")]

mod support;

use parking_lot::Mutex;
use support::redis::RedisServer;
use threadtide::RedisSource;

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.level() == log::Level::Warn {
            self.0.lock().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

fn warnings_for(queue: &str) -> Vec<String> {
    LOG.0
        .lock()
        .iter()
        .filter(|m| m.contains(queue))
        .cloned()
        .collect()
}

#[test]
fn unsafe_server_settings_are_warned_about_and_safe_ones_are_not() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Warn);

    let risky =
        RedisServer::start_with(&["--appendonly", "no", "--maxmemory-policy", "allkeys-lru"]);
    let source = RedisSource::builder(risky.url(), "fila:risky")
        .build()
        .unwrap();
    source.summary().unwrap(); // the first connection runs the checks
    let warnings = warnings_for("fila:risky");
    assert!(
        warnings.iter().any(|w| w.contains("appendonly is off")),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("maxmemory-policy is allkeys-lru")),
        "{warnings:?}"
    );

    // Once per source, however many connections race to be first: two queues share this
    // source, each with three workers connecting at once.
    let source = RedisSource::builder(risky.url(), "fila:once")
        .build()
        .unwrap();
    let queue = |name: &str| {
        threadtide::Queue::new(
            name,
            source.clone(),
            |_| Ok::<_, std::convert::Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .min_threads(3)
    };
    let pool = threadtide::ThreadPoolManager::builder()
        .add_queue(queue("a"))
        .add_queue(queue("b"))
        .build()
        .unwrap();
    pool.start().unwrap();
    support::wait_until(
        support::PATIENCE,
        "six workers",
        || pool.stats().total.workers == 6,
        || pool.stats().total.workers,
    );
    pool.shutdown();
    pool.wait().unwrap();
    let once: Vec<String> = warnings_for("fila:once")
        .into_iter()
        .filter(|w| w.contains("appendonly is off"))
        .collect();
    assert_eq!(once.len(), 1, "{once:?}");

    let safe = RedisServer::start_durable();
    let source = RedisSource::builder(safe.url(), "fila:safe")
        .build()
        .unwrap();
    source.summary().unwrap();
    assert_eq!(warnings_for("fila:safe"), Vec::<String>::new());
}

#[test]
fn bad_source_settings_are_build_errors_naming_the_field() {
    let url = "redis://127.0.0.1:1/";
    let e = RedisSource::builder("not a url", "q").build().unwrap_err();
    assert_eq!((e.field(), e.value()), ("url", "not a url"));
    let e = RedisSource::builder(url, "").build().unwrap_err();
    assert_eq!(e.field(), "queue_key");
    let e = RedisSource::builder(url, "q")
        .max_attempts(0)
        .build()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("max_attempts", "0"));
    let e = RedisSource::builder(url, "q")
        .heartbeat_interval(std::time::Duration::from_secs(2))
        .build()
        .unwrap_err();
    assert_eq!((e.field(), e.value()), ("worker_ttl", "5s"));
    let e = RedisSource::builder(url, "q")
        .block_timeout(std::time::Duration::from_millis(1))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "block_timeout");
    let e = RedisSource::builder(url, "q")
        .results("")
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "results");
    #[cfg(not(feature = "tls"))]
    {
        let e = RedisSource::builder("rediss://:pw-x1@h:6380/", "q")
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid url = rediss://:***@h:6380/: a rediss:// (TLS) URL needs threadtide's `tls` \
             feature"
        );
    }
}

/// Issue 14 item 9: every setting of the Redis builder, at any value its type allows, gives a
/// `BuildError` naming it or a source that works (`heartbeat_interval(Duration::MAX)` used to
/// panic in `build()`).
#[test]
fn every_setting_at_its_extremes_is_a_build_error_or_a_working_source() {
    use std::convert::Infallible;
    use std::time::Duration;
    use support::{PATIENCE, wait_until};
    use threadtide::{RedisSourceBuilder, ThreadPoolManager};

    type Setter = Box<dyn Fn(RedisSourceBuilder) -> RedisSourceBuilder>;
    let ds = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(9),
        Duration::from_millis(10),
        Duration::from_millis(50),
        Duration::from_millis(100),
        Duration::from_secs(3600),
        Duration::from_secs(3600) + Duration::from_nanos(1),
        Duration::from_secs(24 * 3600) + Duration::from_nanos(1),
        Duration::from_secs(365 * 24 * 3600) + Duration::from_nanos(1),
        Duration::MAX,
    ];
    // (setter, fields its error may name, whether an accepted value is run)
    let mut cases: Vec<(String, Setter, &[&str], bool)> = Vec::new();
    for d in ds {
        cases.push((
            format!("heartbeat_interval({d:?})"),
            Box::new(move |b| b.heartbeat_interval(d)),
            &["heartbeat_interval", "worker_ttl"],
            true,
        ));
        cases.push((
            format!("worker_ttl({d:?})"),
            Box::new(move |b| b.worker_ttl(d)),
            &["worker_ttl"],
            true,
        ));
        cases.push((
            format!("job_timeout({d:?})"),
            Box::new(move |b| b.job_timeout(d)),
            &["job_timeout"],
            true,
        ));
        cases.push((
            format!("block_timeout({d:?})"),
            Box::new(move |b| b.block_timeout(d)),
            &["block_timeout"],
            true,
        ));
        cases.push((
            format!("io_timeout({d:?})"),
            Box::new(move |b| b.io_timeout(d)),
            &["io_timeout"],
            true,
        ));
        cases.push((
            format!("retry_backoff({d:?}, {d:?})"),
            Box::new(move |b| b.retry_backoff(d, d)),
            &["retry_backoff"],
            true,
        ));
        cases.push((
            format!("retry_backoff(0, {d:?})"),
            Box::new(move |b| b.retry_backoff(Duration::ZERO, d)),
            &["retry_backoff"],
            true,
        ));
        // Waiting for replicas that do not exist takes the whole timeout per job: built only.
        cases.push((
            format!("wait_for_replicas(1, {d:?})"),
            Box::new(move |b| b.wait_for_replicas(1, d)),
            &["wait_for_replicas"],
            false,
        ));
    }
    for n in [0, 1, u32::MAX] {
        cases.push((
            format!("max_attempts({n})"),
            Box::new(move |b| b.max_attempts(n)),
            &["max_attempts"],
            true,
        ));
        cases.push((
            format!("wait_for_replicas({n}, 1s)"),
            Box::new(move |b| b.wait_for_replicas(n, Duration::from_secs(1))),
            &["wait_for_replicas"],
            false,
        ));
    }
    let server = RedisServer::start();
    let mut pool = ThreadPoolManager::builder()
        .thread_name_prefix("ex")
        .max_total_threads(200)
        .scale_down_delay(Duration::ZERO);
    let mut accepted = Vec::new();
    for (i, (what, set, fields, run)) in cases.into_iter().enumerate() {
        let key = format!("fila:extreme:{i}");
        let builder =
            set(RedisSource::builder(server.url(), key.as_str()).results("fila:extreme-results"));
        match builder.build() {
            Err(e) => assert!(fields.contains(&e.field()), "{what}: {e}"),
            Ok(source) if run => {
                source.push(&[what.as_bytes()]).unwrap();
                pool = pool.queue(
                    format!("q{i}"),
                    source,
                    |_| Ok::<_, Infallible>(()),
                    |_, j: &Vec<u8>| Ok(j.clone()),
                );
                accepted.push(what);
            }
            Ok(_) => {}
        }
    }
    assert!(accepted.len() >= 40, "{accepted:?}");
    let pool = pool.build().unwrap();
    pool.start().unwrap();
    let mut conn = server.conn();
    let done = |c: &mut redis::Connection| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg("fila:extreme-results")
            .arg(0)
            .arg(-1)
            .query(c)
            .unwrap()
    };
    wait_until(
        PATIENCE,
        "a result from every accepted setting",
        || done(&mut conn).len() >= accepted.len(),
        || {
            let d = done(&mut server.conn());
            accepted
                .iter()
                .filter(|a| !d.contains(a))
                .cloned()
                .collect::<Vec<_>>()
        },
    );
    pool.shutdown();
    pool.wait().unwrap();
}
