//! The `metrics` feature: `/metrics` and `/healthz` over real HTTP from a running pool, the
//! server's life (listens only when asked, stops with the pool), configuration errors, and
//! that every metric the shipped alert rules use is one the pool exports.
#![cfg(feature = "metrics")]

mod support;

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use support::{PATIENCE, wait_threads_gone, wait_until};
use threadtide::{JobError, MemorySource, StartError, ThreadPoolManager};

/// One HTTP/1.1 request; returns (status code, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    if method == "GET" && status == 200 {
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
    }
    (status, body.to_owned())
}

/// The value of the sample written exactly as `series` (`name{labels}`).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_running_pool_serves_its_metrics_and_health_and_stops_serving_when_joined() {
    let jobs: MemorySource<u32> = MemorySource::builder().max_attempts(1).build().unwrap();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("mh")
        .metrics_addr("127.0.0.1:0")
        .queue(
            "pdf",
            jobs.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, n: &u32| {
                // Every job lasts over 50 us, so every one is timed (none sampled).
                std::thread::sleep(Duration::from_millis(2));
                match n % 10 {
                    0 => Err(JobError::permanent("bad page")),
                    _ => Ok(()),
                }
            },
        )
        .build()
        .unwrap();
    assert_eq!(
        pool.metrics_local_addr(),
        None,
        "nothing listens before start"
    );
    pool.start().unwrap();
    let addr = pool.metrics_local_addr().expect("listening after start");
    jobs.extend(1..=50);
    wait_until(
        PATIENCE,
        "50 jobs settled",
        || jobs.unfinished() == 0,
        || jobs.unfinished(),
    );

    let (status, text) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        value(&text, r#"threadtide_jobs_total{queue="pdf",outcome="ok"}"#),
        Some(45.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"threadtide_jobs_total{queue="pdf",outcome="failed"}"#
        ),
        Some(5.0)
    );
    assert_eq!(
        value(
            &text,
            r#"threadtide_job_duration_seconds_count{queue="pdf"}"#
        ),
        Some(50.0)
    );
    // Every job took ~2 ms: all of them fall under the first bound, 0.1 s.
    assert_eq!(
        value(
            &text,
            r#"threadtide_job_duration_seconds_bucket{queue="pdf",le="0.1"}"#
        ),
        Some(50.0)
    );
    let inits = value(
        &text,
        r#"threadtide_worker_init_duration_seconds_count{queue="pdf"}"#,
    )
    .unwrap();
    let starts = value(&text, r#"threadtide_worker_starts_total{queue="pdf"}"#).unwrap();
    // A worker started last may still be in its init: at most one init per start.
    assert!(
        inits >= 1.0 && inits <= starts,
        "inits {inits}, starts {starts}"
    );
    assert_eq!(
        value(
            &text,
            r#"threadtide_scale_events_total{queue="pdf",direction="up",reason="backlog_grew"}"#
        )
        .map(|v| v >= 1.0),
        Some(true)
    );
    assert!(text.contains("# TYPE threadtide_job_duration_seconds histogram"));
    assert!(
        !text.contains("threadtide_queue_dead"),
        "the memory source reports no Redis gauges"
    );

    assert_eq!(http(addr, "GET", "/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(http(addr, "HEAD", "/metrics").1, "", "HEAD has no body");
    assert_eq!(http(addr, "GET", "/other").0, 404);
    assert_eq!(http(addr, "POST", "/metrics").0, 405);

    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_eq!(pool.metrics_local_addr(), None);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "still listening"
    );
    wait_threads_gone("mh-");
    let after = pool.metrics_text();
    let workers = value(
        &after,
        r#"threadtide_worker_exits_total{queue="pdf",reason="shutdown"}"#,
    )
    .unwrap();
    assert_eq!(
        Some(workers),
        value(&after, r#"threadtide_worker_starts_total{queue="pdf"}"#),
        "{after}"
    );
}

#[test]
fn nothing_listens_unless_asked_and_bad_addresses_are_errors() {
    let jobs: MemorySource<u32> = MemorySource::new();
    let quiet = ThreadPoolManager::builder()
        .queue(
            "q",
            jobs.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    quiet.start().unwrap();
    assert_eq!(quiet.metrics_local_addr(), None);
    quiet.shutdown_timeout(PATIENCE).unwrap();

    let err = ThreadPoolManager::builder()
        .metrics_addr("localhost:notaport")
        .queue(
            "q",
            jobs.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "metrics_addr");
    assert!(err.to_string().contains("localhost:notaport"), "{err}");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("mt")
        .metrics_addr(format!("127.0.0.1:{port}"))
        .queue("q", jobs, |_| Ok::<_, Infallible>(()), |_, _| Ok(()))
        .build()
        .unwrap();
    match pool.start() {
        Err(StartError::Metrics { addr, .. }) => assert_eq!(addr.port(), port),
        other => panic!("expected StartError::Metrics, got {other:?}"),
    }
    assert!(
        support::threads_named("mt-").is_empty(),
        "nothing may be left running"
    );
}

#[cfg(feature = "redis")]
#[test]
fn every_metric_the_alert_rules_use_is_exported_by_a_redis_pool() {
    use support::redis::RedisServer;
    let redis = RedisServer::start();
    let source = threadtide::RedisSource::builder(redis.url(), "fila:metrics")
        .build()
        .unwrap();
    source.push(&[b"x".to_vec()]).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source,
            |_| Ok::<_, Infallible>(()),
            |_, _: &Vec<u8>| Err(JobError::permanent("no")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the job dead-lettered and counted",
        || {
            // The record lands in Redis just before this process counts it: wait for both.
            let text = pool.metrics_text();
            value(&text, r#"threadtide_queue_dead{queue="conferencia"}"#) == Some(1.0)
                && value(
                    &text,
                    r#"threadtide_jobs_dead_lettered_total{queue="conferencia",reason="permanent"}"#,
                ) == Some(1.0)
        },
        || pool.metrics_text(),
    );
    let text = pool.metrics_text();
    assert_eq!(
        value(&text, r#"threadtide_source_up{queue="conferencia"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            r#"threadtide_jobs_dead_lettered_total{queue="conferencia",reason="permanent"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, r#"threadtide_queue_paused{queue="conferencia"}"#),
        Some(0.0)
    );
    assert!(
        !text.contains("threadtide_queue_fleet_max_threads{"),
        "no fleet cap set"
    );
    let on: f64 = text
        .lines()
        .filter(|l| l.starts_with("threadtide_queue_size_reason{queue=\"conferencia\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(on, 1.0, "exactly one reason at a time:\n{text}");
    // A fleet cap set at runtime (as `threadtide set KEY fleet-max-threads 3` does) shows.
    let _: () = redis::cmd("HSET")
        .arg("fila:metrics:settings")
        .arg("fleet_max_threads")
        .arg(3)
        .query(&mut redis.conn())
        .unwrap();
    let text = pool.metrics_text();
    assert_eq!(
        value(
            &text,
            r#"threadtide_queue_fleet_max_threads{queue="conferencia"}"#
        ),
        Some(3.0),
        "{text}"
    );
    let rules = include_str!("../docs/prometheus/alerts.yml");
    let mut used: Vec<&str> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("threadtide_"))
        .collect();
    used.sort();
    used.dedup();
    assert!(used.len() >= 6, "{used:?}");
    for name in used {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "alerts.yml uses {name}, not exported:\n{text}"
        );
    }
    pool.shutdown_timeout(PATIENCE).unwrap();
}

#[test]
fn a_client_that_drips_bytes_cannot_hold_the_server() {
    let jobs: MemorySource<u32> = MemorySource::builder().build().unwrap();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("md")
        .metrics_addr("127.0.0.1:0")
        .queue(
            "pdf",
            jobs,
            |_| Ok::<_, Infallible>(()),
            |_, _: &u32| Ok(()),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let addr = pool.metrics_local_addr().unwrap();
    // One byte every 200 ms: each read is well inside any per-read timeout, and the head never
    // ends. It drips until the server drops it (or the test is over).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    let dripper = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if slow.write_all(b"x").is_err() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            false
        })
    };
    // Stops the dripper however this test ends (else a failure would hang the shutdown).
    struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let guard = StopOnDrop(std::sync::Arc::clone(&stop));
    // Served within the 10 s read timeout of `http` only if the dripper is dropped first.
    let (status, text) = http(addr, "GET", "/metrics");
    drop(guard);
    assert_eq!(status, 200, "{text}");
    dripper.join().unwrap();
    pool.shutdown_timeout(PATIENCE).unwrap();
}

/// A coordinated Redis queue with a wait target exports the fleet's duration estimate, its
/// estimated wait, the learned divisor and the target, and the document passes
/// `promtool check metrics` (Debian's `prometheus` package).
#[cfg(feature = "redis")]
#[test]
fn a_wait_target_queue_exports_its_fleet_estimates_and_promtool_accepts_them() {
    use std::io::Write as _;
    use support::redis::RedisServer;
    let redis = RedisServer::start();
    let source = threadtide::RedisSource::builder(redis.url(), "fila:wait")
        .build()
        .unwrap();
    let jobs: Vec<Vec<u8>> = (0..20).map(|i| vec![i]).collect();
    source.push(&jobs).unwrap();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("mw")
        .add_queue(
            threadtide::Queue::new(
                "conferencia",
                source,
                |_| Ok::<_, Infallible>(()),
                |_, _: &Vec<u8>| {
                    std::thread::sleep(Duration::from_millis(20));
                    Ok::<_, JobError>(Vec::new())
                },
            )
            .target_wait(Duration::from_secs(2)),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let learned = r#"threadtide_queue_learned_jobs_per_thread{queue="conferencia"}"#;
    wait_until(
        PATIENCE,
        "the learned divisor exported",
        || value(&pool.metrics_text(), learned).is_some(),
        || pool.metrics_text(),
    );
    let text = pool.metrics_text();
    let d = value(
        &text,
        r#"threadtide_queue_job_duration_estimate_seconds{queue="conferencia"}"#,
    )
    .unwrap();
    assert!((d - 0.02).abs() <= 0.02 / 8.0, "{text}");
    assert_eq!(
        value(
            &text,
            r#"threadtide_queue_target_wait_seconds{queue="conferencia"}"#
        ),
        Some(2.0)
    );
    assert!(
        (value(&text, learned).unwrap() - 2.0 / d).abs() < 1e-6,
        "{text}"
    );
    assert!(
        value(
            &text,
            r#"threadtide_queue_estimated_wait_seconds{queue="conferencia"}"#
        )
        .is_some(),
        "{text}"
    );
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install it (Debian: apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
}
