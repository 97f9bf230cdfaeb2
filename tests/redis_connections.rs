//! The Redis source's connections against real `redis-server` processes: permanent errors fail
//! `start()`, a silent server never stalls the monitor, a stalled server reaps no live worker,
//! reconnects back off, error replies keep the connection, connections are named, and no
//! password appears in any output.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Commands;
use support::proxy::Proxy;
use support::redis::{RedisServer, info_number};
use support::{Gate, PATIENCE, Recorder, wait_until};
use threadtide::{MemorySource, Queue, RedisSource, StartError, ThreadPoolManager};

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.0.lock().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        log::set_logger(&LOG).unwrap();
        log::set_max_level(log::LevelFilter::Info);
    });
}

fn lines_with(needle: &str) -> Vec<String> {
    LOG.0
        .lock()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Opens a gate when dropped: a failing test does not hang on executors still waiting.
struct OpenOnDrop(Gate);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

fn results_len(conn: &mut redis::Connection, key: &str) -> usize {
    conn.llen(key).unwrap()
}

/// A pool on `source` whose executor returns the payload; `start()`'s error, if any.
fn start_error(url: &str, queue_key: &str) -> Option<StartError> {
    let source = RedisSource::builder(url, queue_key).build().unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source,
            |_| Ok::<_, Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .build()
        .unwrap();
    let err = pool.start().err();
    pool.shutdown();
    pool.wait().unwrap();
    err
}

fn permanent_start_error(url: &str, queue_key: &str) -> String {
    match start_error(url, queue_key) {
        Some(StartError::Source { queue, error }) => {
            assert_eq!(queue, "q");
            assert!(error.is_permanent(), "{error}");
            error.to_string()
        }
        other => panic!("expected StartError::Source, got {other:?}"),
    }
}

#[test]
fn permanent_errors_fail_start_and_transient_ones_wait() {
    let server = RedisServer::start_with(&["--appendonly", "no", "--requirepass", "right-Pw1"]);
    let port = server.port;
    let mut admin = server.conn();

    let wrong = permanent_start_error(&format!("redis://:wrong-Pw7@127.0.0.1:{port}/"), "fila:p");
    assert!(wrong.contains("authentication failed"), "{wrong}");
    assert!(!wrong.contains("wrong-Pw7"), "{wrong}");

    let db = permanent_start_error(&format!("redis://:right-Pw1@127.0.0.1:{port}/99"), "fila:p");
    assert!(db.contains("DB index is out of range"), "{db}");

    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER",
            "nozadd",
            "on",
            ">nozadd-Pw",
            "~fila:*",
            "+@all",
            "-zadd",
        ])
        .query(&mut admin)
        .unwrap();
    let acl = permanent_start_error(&server.url_as("nozadd", "nozadd-Pw"), "fila:acl");
    assert!(acl.contains("may not run `zadd fila:acl:"), "{acl}");

    // Transient: nothing listens there yet. `start()` succeeds and the source waits.
    let down = RedisServer::reserve();
    assert!(start_error(&down.url(), "fila:later").is_none());

    // The example exits 2 with the reason, and without the password.
    let out = std::process::Command::new(support::redis::rpa_worker())
        .args(["--redis", &format!("redis://:wrong-Pw7@127.0.0.1:{port}/")])
        .args(["--queue", "a=fila:rpa", "--results", "fila:rpa-results"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rpa_worker: queue a: the job source cannot start")
            && stderr.contains("authentication failed"),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-Pw7"), "{stderr}");
}

#[test]
fn no_password_in_build_errors_or_debug_output() {
    for url in [
        "redis://:s3cret-Pw@127.0.0.1:99999/",
        "redis://:s3cret-Pw@127.0.0.1:6379/abc",
        "redis://user:s3cret-Pw@127.0.0.1:port/0",
        "redis://:s3cret%2DPw@[::1/",
        "redis://:s3cret?Pw@127.0.0.1:99999/",
        "redis://user:s3cret?P@w@127.0.0.1:99999/0",
    ] {
        let e = RedisSource::builder(url, "q").build().unwrap_err();
        assert_eq!(e.field(), "url");
        for shown in [e.to_string(), format!("{e:?}"), e.value().to_owned()] {
            assert!(!shown.contains("s3cret"), "{url}: {shown}");
            assert!(shown.contains("***"), "{url}: {shown}");
        }
    }
    let url = "redis://user:s3cret-Pw@127.0.0.1:6379/0";
    let builder = format!("{:?}", RedisSource::builder(url, "q"));
    assert!(
        !builder.contains("s3cret") && builder.contains("user:***@"),
        "{builder}"
    );
    let source = RedisSource::builder(url, "q").build().unwrap();
    let shown = format!("{source:?} {:?}", source.stats());
    assert!(
        !shown.contains("s3cret") && shown.contains("user:***@"),
        "{shown}"
    );
}

#[test]
fn connections_are_named_for_who_holds_them() {
    let server = RedisServer::start();
    let source = RedisSource::builder(server.url(), "fila:names")
        .build()
        .unwrap();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("cn")
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, j: &Vec<u8>| Ok(j.clone()),
            )
            .min_threads(1),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    source.summary().unwrap();
    let mut admin = server.conn();
    let pid = std::process::id();
    let list = || -> String {
        redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut server.conn())
            .unwrap()
    };
    let wanted = [
        format!(":{pid}:worker:cn-q-"),
        format!(":{pid}:keeper:fila:names"),
        format!(":{pid}:shared:fila:names"),
    ];
    wait_until(
        PATIENCE,
        "every connection named",
        || {
            let l = list();
            wanted.iter().all(|w| l.contains(w))
        },
        list,
    );
    let listed: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    assert!(listed.contains("name=tt:"), "{listed}");
    pool.shutdown();
    pool.wait().unwrap();
}

#[test]
fn a_silent_server_never_stalls_the_monitor() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port);
    let io = Duration::from_secs(5);
    let redis = RedisSource::builder(proxy.url(), "fila:silent")
        .io_timeout(io)
        .block_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let memory: MemorySource<u32> = MemorySource::new();
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("sl")
        .jobs_per_thread(1)
        .queue(
            "redis",
            redis.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .queue(
            "mem",
            memory.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, _: &u32| {
                g.pass();
                Ok(())
            },
        )
        .build()
        .unwrap();
    let _open = OpenOnDrop(gate.clone()); // a failed assertion must not leave jobs blocked
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the keeper at work",
        || redis.stats().reaps >= 1,
        || (),
    );
    proxy.go_silent();
    wait_until(
        PATIENCE,
        "the count to age",
        || {
            redis
                .stats()
                .backlog_age
                .is_some_and(|a| a > Duration::from_secs(1))
        },
        || redis.stats(),
    );
    // Four memory jobs need four new workers: the monitor must tick while every read of
    // Redis would block for the read timeout.
    let pushed = Instant::now();
    memory.extend(0..4);
    wait_until(
        Duration::from_secs(2),
        "4 memory workers busy while Redis is silent",
        || gate.waiting() == 4,
        || (gate.waiting(), pool.stats().queue("mem").map(|q| q.workers)),
    );
    let scaled = pushed.elapsed();
    gate.open();
    let stopping = Instant::now();
    pool.shutdown_timeout(Duration::from_secs(10)).unwrap();
    eprintln!(
        "silent Redis: 4 memory workers busy {scaled:?} after the push; shutdown took {:?}",
        stopping.elapsed()
    );
    // Bounded by the one command in flight on the keeper's connection.
    assert!(
        stopping.elapsed() < io + Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    proxy.heal();
}

#[test]
fn a_stalled_server_reaps_no_live_worker() {
    capture_logs();
    const Q: &str = "fila:stall";
    let server = RedisServer::start_with(&["--appendonly", "no", "--enable-debug-command", "yes"]);
    let proxy = Proxy::start(server.port);
    let ttl = Duration::from_secs(2);
    let source = |url: String, io: Duration| {
        RedisSource::builder(url, Q)
            .results("fila:stall-results")
            .heartbeat_interval(Duration::from_millis(100))
            .worker_ttl(ttl)
            .block_timeout(Duration::from_millis(100))
            .io_timeout(io)
            .build()
            .unwrap()
    };
    // Process A reaches Redis through the proxy, with reads that outlast the whole fault;
    // process B directly.
    let a = source(proxy.url(), Duration::from_secs(8));
    let b = source(server.url(), Duration::from_secs(2));
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Gate::default();
    let pool = |prefix: &str, s: &RedisSource| {
        let (runs, gate) = (runs.clone(), gate.clone());
        ThreadPoolManager::builder()
            .thread_name_prefix(prefix)
            .jobs_per_thread(1)
            .queue(
                "q",
                s.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, j: &Vec<u8>| {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.pass();
                    Ok(j.clone())
                },
            )
            .build()
            .unwrap()
    };
    let mut admin = server.conn();
    let _: () = admin.rpush(Q, &["job1", "job2"]).unwrap();
    let pool_a = pool("sa", &a);
    pool_a.start().unwrap();
    wait_until(
        PATIENCE,
        "A runs both jobs",
        || gate.waiting() == 2,
        || gate.waiting(),
    );
    let pool_b = pool("sb", &b);
    let _open = OpenOnDrop(gate.clone()); // a failed assertion must not leave jobs blocked
    pool_b.start().unwrap();
    wait_until(PATIENCE, "B reaping", || b.stats().reaps >= 3, || b.stats());

    // The server stalls longer than the TTL; A's path stays silent a moment longer, so that
    // B is back first and finds every beat of A older than the TTL.
    proxy.go_silent();
    let _: () = redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg(3)
        .query(&mut admin)
        .unwrap();
    wait_until(
        PATIENCE,
        "B declining to reap",
        || b.stats().reaps_skipped >= 3,
        || b.stats(),
    );
    proxy.heal();
    let reaps = b.stats().reaps;
    wait_until(
        PATIENCE,
        "B reaping again",
        || b.stats().reaps >= reaps + 3,
        || b.stats(),
    );

    gate.open();
    wait_until(
        PATIENCE,
        "both results",
        || results_len(&mut admin, "fila:stall-results") == 2,
        || (a.stats(), b.stats()),
    );
    eprintln!(
        "DEBUG SLEEP 3 with worker_ttl 2 s: {} runs of 2 jobs; B skipped {} reaps, then ran {}",
        runs.load(Ordering::SeqCst),
        b.stats().reaps_skipped,
        b.stats().reaps - reaps
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a job ran twice");
    assert_eq!((a.stats().acks_refused, b.stats().recovered), (0, 0));
    assert_eq!(a.stats().reaped_workers + b.stats().reaped_workers, 0);
    assert!(!lines_with("not reaping for 2 s").is_empty());
    for p in [pool_a, pool_b] {
        p.shutdown();
        p.wait().unwrap();
    }
}

#[test]
fn a_wrong_password_backs_off_and_recovers_with_one_line_per_outage() {
    capture_logs();
    const Q: &str = "fila:pw";
    const RESULTS: &str = "fila:pw-results";
    let server = RedisServer::start_with(&["--appendonly", "no", "--requirepass", "first-Pw1"]);
    let mut admin = server.conn();
    let source = RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .build()
        .unwrap();
    let events = Recorder::default();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("pw")
        .jobs_per_thread(5)
        .event_handler(events.clone())
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, j: &Vec<u8>| Ok(j.clone()),
        )
        .build()
        .unwrap();
    let jobs: Vec<String> = (0..10).map(|i| format!("job{i}")).collect();
    let _: () = admin.rpush(Q, &jobs).unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "10 results",
        || results_len(&mut admin, RESULTS) == 10,
        || (),
    );

    // The password changes under the running pool, and every connection is cut.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "second-Pw2"])
        .query(&mut admin)
        .unwrap();
    let before = info_number(&mut admin, "stats", "total_connections_received");
    let errors_before = events.errors.lock().len();
    let _: () = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal"])
        .query(&mut admin)
        .unwrap();
    // The fault lasts 10 s (its length is the point, not a wait for a condition).
    std::thread::sleep(Duration::from_secs(10));
    let connections = info_number(&mut admin, "stats", "total_connections_received") - before;
    let errors = events.errors.lock().len() - errors_before;
    let workers = pool.stats().queue("q").unwrap().workers;
    eprintln!(
        "10 s of wrong password: {connections} connections, {errors} error events, {workers} workers"
    );
    // Each of the pool's connections (workers, keeper) tries about 7 times in 10 s with
    // back-off from 500 ms; without back-off it was hundreds.
    assert!(
        connections <= 8 * (workers as u64 + 1),
        "{connections} connections"
    );
    assert!(errors <= 8 * (workers + 1), "{errors} error events");
    let keeper_lines = lines_with("redis keeper for fila:pw:");
    assert_eq!(keeper_lines.len(), 1, "{keeper_lines:?}");
    assert!(
        keeper_lines[0].contains("lost Redis") && keeper_lines[0].contains("closed by the server")
    );
    assert!(
        events
            .errors
            .lock()
            .iter()
            .any(|e| e.worker == "pw-q-keeper" && e.message == keeper_lines[0]),
        "the keeper's line is an event too"
    );

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "first-Pw1"])
        .query(&mut admin)
        .unwrap();
    let more: Vec<String> = (10..20).map(|i| format!("job{i}")).collect();
    let _: () = admin.rpush(Q, &more).unwrap();
    wait_until(
        PATIENCE,
        "20 results",
        || results_len(&mut admin, RESULTS) == 20,
        || (),
    );
    wait_until(
        PATIENCE,
        "the keeper back",
        || !lines_with("redis keeper for fila:pw: Redis is back after").is_empty(),
        || lines_with("fila:pw"),
    );
    pool.shutdown();
    pool.wait().unwrap();

    // No password anywhere: log lines, events, stats.
    let mut outputs: Vec<String> = LOG.0.lock().clone();
    outputs.extend(events.errors.lock().iter().map(|e| format!("{e:?}")));
    outputs.push(format!(
        "{:?} {:?} {source:?}",
        source.stats(),
        pool.stats()
    ));
    for out in &outputs {
        assert!(
            !out.contains("first-Pw1") && !out.contains("second-Pw2"),
            "{out}"
        );
    }
}

#[test]
fn an_error_reply_keeps_the_connection() {
    const Q: &str = "fila:wrongtype";
    let server = RedisServer::start();
    let mut admin = server.conn();
    let source = RedisSource::builder(server.url(), Q)
        .results("fila:wrongtype-results")
        .block_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let events = Recorder::default();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("wt")
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .event_handler(events.clone())
        .add_queue(
            Queue::new(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, j: &Vec<u8>| Ok(j.clone()),
            )
            .min_threads(1),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let _: () = admin.rpush(Q, "first").unwrap();
    let mut watch = server.conn();
    let mut results = move || results_len(&mut watch, "fila:wrongtype-results");
    wait_until(PATIENCE, "the first result", || results() == 1, || ());
    let before = info_number(&mut admin, "stats", "total_connections_received");
    let clients_before: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();

    // An operator turns the queue into a string: every fetch gets WRONGTYPE.
    let _: () = admin.del(Q).unwrap();
    let _: () = admin.set(Q, "oops").unwrap();
    let wrongtype = || {
        events
            .errors
            .lock()
            .iter()
            .filter(|e| e.message.contains("WRONGTYPE"))
            .count()
    };
    wait_until(
        PATIENCE,
        "four WRONGTYPE fetches",
        || wrongtype() >= 4,
        || events.errors.lock().clone(),
    );
    let _: () = admin.del(Q).unwrap();
    let _: () = admin.rpush(Q, "second").unwrap();
    wait_until(PATIENCE, "the second result", || results() == 2, || ());
    let after = info_number(&mut admin, "stats", "total_connections_received");
    let clients_after: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).unwrap();
    assert_eq!(
        after - before,
        0,
        "new connections after {} error replies; clients before:\n{clients_before}\nafter:\n\
         {clients_after}\nerrors: {:#?}",
        wrongtype(),
        events.errors.lock()
    );
    pool.shutdown();
    pool.wait().unwrap();
}
