//! The Redis source against real `redis-server` processes, pool in this process: the fault and
//! bad-input cases of the Redis reliable-delivery design needing no process kill (those are in
//! `redis_faults.rs`). Every case checks: lost = 0, duplicate results = 0, and counts
//! duplicate executions.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use support::proxy::Proxy;
use support::redis::{RedisServer, command_calls};
use support::{Gate, PATIENCE, wait_until};
use threadtide::{
    JobError, RedisSource, RedisSourceBuilder, ShutdownHandle, ThreadPoolManager, WaitError,
};

const Q: &str = "fila:conferencia";
const RESULTS: &str = "fila:resultados";

/// Executions per payload id, as the executor saw them.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<String, u32>>>);

impl Runs {
    fn record(&self, id: &str) -> u32 {
        let mut m = self.0.lock();
        let n = m.entry(id.to_owned()).or_default();
        *n += 1;
        *n
    }
    fn of(&self, id: &str) -> u32 {
        self.0.lock().get(id).copied().unwrap_or(0)
    }
    fn duplicates(&self) -> u32 {
        self.0.lock().values().map(|n| n.saturating_sub(1)).sum()
    }
}

/// What ended where, read from Redis.
#[derive(Debug)]
struct Tally {
    results: HashMap<String, u32>,
    dead: Vec<serde_json::Value>,
    ready: usize,
    delayed: usize,
    processing: usize,
}

impl Tally {
    fn read(server: &RedisServer) -> Tally {
        let mut c = server.conn();
        let results: Vec<String> = c.lrange(RESULTS, 0, -1).unwrap();
        let dead: Vec<String> = c.lrange(format!("{Q}:dead"), 0, -1).unwrap();
        let mut counts = HashMap::new();
        for r in results {
            *counts.entry(r).or_insert(0) += 1;
        }
        let processing_keys: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
        let processing = processing_keys
            .iter()
            .map(|k| c.llen::<_, usize>(k).unwrap())
            .sum();
        Tally {
            results: counts,
            dead: dead
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect(),
            ready: c.llen(Q).unwrap(),
            delayed: c.zcard(format!("{Q}:delayed")).unwrap(),
            processing,
        }
    }

    fn duplicate_results(&self) -> u32 {
        self.results.values().map(|n| n - 1).sum()
    }

    /// Ids pushed that are in neither the results nor the dead letters nor still queued.
    fn lost(&self, ids: &[String]) -> Vec<String> {
        let dead: Vec<String> = self
            .dead
            .iter()
            .filter_map(|d| d["payload"].as_str().map(str::to_owned))
            .collect();
        ids.iter()
            .filter(|id| !self.results.contains_key(*id) && !dead.contains(id))
            .cloned()
            .collect()
    }
}

/// A pool with one queue on `source` whose executor records each run and returns the job's id
/// as its result.
fn recording_pool(
    builder: threadtide::Builder,
    source: &RedisSource<String>,
    runs: &Runs,
) -> ThreadPoolManager {
    let r = runs.clone();
    builder
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id);
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap()
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn source(server: &RedisServer) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(50))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_millis(500))
        .block_timeout(Duration::from_millis(200))
}

fn wait_idle(server: &RedisServer, expected_results: usize) {
    wait_until(
        PATIENCE,
        "every job settled",
        || {
            let t = Tally::read(server);
            t.ready + t.delayed + t.processing == 0
                && t.results.values().sum::<u32>() as usize + t.dead.len() >= expected_results
        },
        || Tally::read(server),
    );
}

#[test]
fn case_01_no_faults_thousands_of_jobs() {
    let server = RedisServer::start();
    let source = source(&server).build().unwrap();
    let all = ids("j", 3000);
    source.push(&all).unwrap();
    let runs = Runs::default();
    let pool = recording_pool(ThreadPoolManager::builder(), &source, &runs);
    pool.start().unwrap();
    wait_idle(&server, all.len());
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.lost(&all), Vec::<String>::new());
    assert_eq!(
        (t.duplicate_results(), runs.duplicates(), t.dead.len()),
        (0, 0, 0)
    );
    let summary = source.summary().unwrap();
    assert_eq!(
        (summary.workers, summary.processing),
        (0, 0),
        "workers deregistered"
    );
    assert!(
        pool.stats().total.spawned >= 2,
        "3000 jobs scaled past one thread"
    );
}

#[test]
fn case_03_panics_on_first_attempts_all_succeed_on_retry_and_keep_the_pool_size() {
    let server = RedisServer::start();
    let source = source(&server).build().unwrap();
    let all = ids("p", 300);
    source.push(&all).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(100)
        .max_threads_per_type(3)
        .scale_down_delay(Duration::from_secs(60))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                if r.record(id) == 1 && id.ends_with('7') {
                    panic!("first run of {id} crashes the page");
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_idle(&server, all.len());
    let stats = pool.stats();
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.lost(&all), Vec::<String>::new());
    assert_eq!((t.duplicate_results(), t.dead.len()), (0, 0));
    assert_eq!(stats.total.jobs_panicked, 30, "{stats:?}");
    assert_eq!(
        runs.duplicates(),
        30,
        "each panicked job ran exactly once more"
    );
    assert_eq!(
        (stats.total.spawned, stats.total.retired),
        (3, 0),
        "pool size kept: {stats:?}"
    );
}

#[test]
fn case_04_a_job_that_always_panics_runs_max_attempts_then_is_dead_lettered() {
    let server = RedisServer::start();
    let source = source(&server).max_attempts(4).build().unwrap();
    let mut all = ids("ok", 50);
    all.insert(25, "poison".to_owned());
    source.push(&all).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id);
                if id == "poison" {
                    panic!("always");
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_idle(&server, all.len());
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.lost(&all), Vec::<String>::new());
    assert_eq!(runs.of("poison"), 4);
    assert_eq!(t.dead.len(), 1);
    assert_eq!(t.dead[0]["reason"], "attempts_exhausted");
    assert_eq!(t.dead[0]["attempts"], 4);
    assert_eq!(t.dead[0]["payload"], "poison");
    assert!(t.dead[0]["error"].as_str().unwrap().contains("always"));
    assert_eq!(
        (t.results.len(), t.duplicate_results()),
        (50, 0),
        "other jobs unaffected"
    );
    assert_eq!(source.stats().dead_exhausted, 1);
}

#[test]
fn case_06_a_hung_job_is_fenced_recovered_rerun_and_its_late_ack_refused() {
    let server = RedisServer::start();
    let source = source(&server)
        .job_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    source.push(&["hang", "after"]).unwrap();
    let runs = Runs::default();
    let gate = Gate::default();
    let (r, g) = (runs.clone(), gate.clone());
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(1)
        .scale_down_delay(Duration::from_secs(60))
        .add_queue(
            threadtide::Queue::new(
                "conferencia",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, id: &String| {
                    if r.record(id) == 1 && id == "hang" {
                        g.pass(); // hangs until the test lets it go
                    }
                    Ok(id.clone().into_bytes())
                },
            )
            .min_threads(2),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    // Past the job timeout its heartbeat stops, the reaper puts the job back, and the other
    // worker runs it again.
    wait_until(
        PATIENCE,
        "the hung job rerun",
        || runs.of("hang") == 2,
        || (pool.stats(), Tally::read(&server)),
    );
    wait_until(
        PATIENCE,
        "the rerun's result",
        || Tally::read(&server).results.contains_key("hang"),
        || Tally::read(&server),
    );
    gate.open(); // the first run finally returns: its ack must be refused
    wait_until(
        PATIENCE,
        "the late ack refused",
        || source.stats().acks_refused == 1,
        || source.stats(),
    );
    wait_idle(&server, 2);
    let t = Tally::read(&server);
    assert_eq!(
        t.results.get("hang"),
        Some(&1),
        "exactly one result for the hung job"
    );
    assert_eq!((t.duplicate_results(), t.dead.len()), (0, 0));
    assert!(source.stats().recovered >= 1);
    // The fenced worker registered again under a new id and keeps working.
    source.push(&["later"]).unwrap();
    wait_idle(&server, 3);
    assert_eq!(Tally::read(&server).results.get("later"), Some(&1));
    pool.shutdown();
    pool.wait().unwrap();
}

#[test]
fn case_08_malformed_payloads_are_dead_lettered_without_reaching_the_executor() {
    let server = RedisServer::start();
    // The host's decoder: JSON objects with an "id".
    let source = RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(b).map_err(|e| e.to_string())?;
            v["id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| "no id".to_owned())
        })
        .build()
        .unwrap();
    let huge = vec![b'x'; 1 << 20];
    let bad: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, 0x00],       // not UTF-8
        Vec::new(),                   // empty
        huge,                         // huge, not JSON
        b"{\"id\": \"trunc".to_vec(), // truncated
        b"[1, 2, 3]".to_vec(),        // JSON, not the expected shape
    ];
    let good = br#"{"id":"fine"}"#.to_vec();
    let mut payloads = bad.clone();
    payloads.push(good);
    source.push(&payloads).unwrap();
    let calls = Runs::default();
    let c = calls.clone();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                c.record(id);
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_idle(&server, payloads.len());
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(
        calls.0.lock().len(),
        1,
        "only the good job reached the executor"
    );
    assert_eq!(t.results.get("fine"), Some(&1));
    assert_eq!(t.dead.len(), bad.len());
    assert!(
        t.dead.iter().all(|d| d["reason"] == "malformed"),
        "{:?}",
        t.dead
    );
    // Every byte of each bad payload is kept.
    assert_eq!(t.dead[0]["payload_hex"], "fffe00");
    assert_eq!(t.dead[1]["payload"], "");
    assert_eq!(t.dead[2]["payload"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(source.stats().dead_malformed, bad.len() as u64);
}

#[test]
fn case_09_byte_identical_payloads_each_run_and_each_yield_a_result() {
    let server = RedisServer::start();
    let source = source(&server)
        .max_attempts(2)
        .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build()
        .unwrap();
    let same = vec!["same".to_owned(); 500];
    source.push(&same).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(10)
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                // The first 100 runs fail once. Identical payloads must not share a retry count.
                if r.record(id) <= 100 {
                    return Err(JobError::retryable("flaky"));
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let delayed = format!("{Q}:delayed");
    let mut c = server.conn();
    wait_until(
        PATIENCE,
        "first runs settled",
        || {
            Tally::read(&server).results.get("same") == Some(&400)
                && c.zcard::<_, usize>(&delayed).unwrap() == 100
        },
        || Tally::read(&server),
    );
    // One entry per failed job, though all 100 payloads are the same bytes. Make them due now.
    let members: Vec<Vec<u8>> = c.zrange(&delayed, 0, -1).unwrap();
    for m in &members {
        let _: () = c.zadd(&delayed, m, 0).unwrap();
    }
    wait_idle(&server, 500);
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.results.get("same"), Some(&500), "{t:?}");
    assert!(t.dead.is_empty(), "{:?}", t.dead);
    assert_eq!(runs.of("same"), 600);
}

#[test]
fn case_11_a_pool_started_before_redis_waits_and_then_works() {
    let mut server = RedisServer::reserve();
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    // redis-conn: the keeper reports the outage to the event handler (the monitor's backlog
    // reads no longer touch Redis, so they no longer count source errors).
    let events = support::Recorder::default();
    let pool = recording_pool(
        ThreadPoolManager::builder()
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .event_handler(events.clone()),
        &source,
        &runs,
    );
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "a connection error reported",
        || !events.errors.lock().is_empty(),
        || pool.stats(),
    );
    assert!(
        server.spawn(),
        "redis-server did not start:\n{}",
        server.log()
    );
    let all = ids("late", 100);
    source.push(&all).unwrap();
    wait_idle(&server, all.len());
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(
        (t.lost(&all).len(), t.duplicate_results(), runs.duplicates()),
        (0, 0, 0)
    );
}

#[test]
fn case_13_resize_storm_under_load_loses_nothing_and_never_runs_a_job_twice() {
    let server = RedisServer::start();
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(5)
        .max_threads_per_type(8)
        .scale_down_delay(Duration::ZERO)
        .rebalance_interval(Duration::from_millis(10))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id);
                std::thread::sleep(Duration::from_millis(2));
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let mut all = Vec::new();
    // Bursts of 0..=40 jobs every 100 ms: the target swings between 0 and 8 threads.
    for round in 0..30usize {
        let burst = ids(&format!("r{round}-"), (round * 17) % 41);
        source.push(&burst).unwrap();
        all.extend(burst);
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_idle(&server, all.len());
    let stats = pool.stats();
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.lost(&all), Vec::<String>::new());
    assert_eq!(
        (t.duplicate_results(), runs.duplicates()),
        (0, 0),
        "a job ran on two workers"
    );
    assert!(
        stats.total.retired >= 3,
        "the storm never shrank the pool: {stats:?}"
    );
}

#[test]
fn case_14_graceful_shutdown_with_a_deadline_leaves_nothing_in_processing() {
    let server = RedisServer::start();
    let source = source(&server).build().unwrap();
    let all = ids("s", 400);
    source.push(&all).unwrap();
    let gate = Gate::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(50)
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                if id == "s3" {
                    g.pass(); // one job outlives the deadline
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the long job running",
        || gate.waiting() == 1,
        || pool.stats(),
    );
    let outcome = pool.shutdown_timeout(Duration::from_millis(300));
    match outcome {
        Err(WaitError::TimedOut { running, requeued }) => {
            assert_eq!((running.len(), requeued), (1, 1), "{running:?}");
        }
        other => panic!("expected the long job to outlive the deadline: {other:?}"),
    }
    // The deadline passed: the long job is back at the head of the queue, and nothing is left
    // in any processing list.
    let t = Tally::read(&server);
    assert_eq!(t.processing, 0, "{t:?}");
    let head: Vec<String> = server.conn().lrange(Q, 0, 0).unwrap();
    assert!(head[0].ends_with("s3"), "{head:?}");
    gate.open();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    assert_eq!(t.processing, 0);
    assert!(
        !t.results.contains_key("s3"),
        "the abandoned run's result was refused"
    );
    assert_eq!(
        t.results.len() + t.ready,
        all.len(),
        "every job is done or back in the queue"
    );
    assert_eq!(t.duplicate_results(), 0);
    assert_eq!(source.stats().acks_refused, 1);
}

#[test]
fn case_15_several_reapers_at_once_requeue_each_orphan_exactly_once() {
    let server = RedisServer::start();
    let mut c = server.conn();
    // Ten dead workers (heartbeat at time 0), each with a job in its processing list.
    for w in 0..10 {
        let wid = format!("ghost:{w}");
        let _: () = c.zadd(format!("{Q}:workers"), &wid, 0).unwrap();
        let _: () = c
            .rpush(format!("{Q}:processing:{wid}"), format!("orphan{w}"))
            .unwrap();
    }
    // Eight sources (as in eight processes) start their keepers at the same moment
    // (redis-conn: a pool's `start` opens the source, which starts its keeper).
    let sources: Vec<_> = (0..8).map(|_| source(&server).build().unwrap()).collect();
    let barrier = Arc::new(std::sync::Barrier::new(sources.len()));
    let handles: Vec<_> = sources
        .iter()
        .map(|s| {
            let (s, b) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                // An `init` that always fails: the pool's workers never fetch the orphans.
                let pool = ThreadPoolManager::builder()
                    .queue(
                        "q",
                        s,
                        |_| Err::<(), _>("no"),
                        |_, _: &String| Ok(Vec::new()),
                    )
                    .build()
                    .unwrap();
                b.wait();
                pool.start().unwrap();
                pool
            })
        })
        .collect();
    let pools: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    wait_until(
        PATIENCE,
        "every ghost reaped",
        || c.zcard::<_, usize>(format!("{Q}:workers")).unwrap() == 0,
        || (),
    );
    let queued: Vec<Vec<u8>> = c.lrange(Q, 0, -1).unwrap();
    let mut names: Vec<String> = queued
        .iter()
        .map(|e| {
            String::from_utf8_lossy(e)
                .rsplit(':')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..10).map(|w| format!("orphan{w}")).collect();
    expected.sort();
    assert_eq!(names, expected, "each orphan exactly once");
    // Each keeper counts after its script returns: wait for the counts, then check them.
    let recovered = || sources.iter().map(|s| s.stats().recovered).sum::<u64>();
    wait_until(
        PATIENCE,
        "recoveries counted",
        || recovered() >= 10,
        recovered,
    );
    assert_eq!(recovered(), 10);
    for pool in pools {
        pool.shutdown();
        pool.wait().unwrap();
    }
}

#[test]
fn a_blmove_left_pending_by_a_reaped_worker_is_swept_back() {
    let server = RedisServer::start();
    // A "stopped" worker: registered long ago, with a BLMOVE pending on the server.
    let mut c = server.conn();
    let ghost = "ghost:stopped";
    let _: () = c.zadd(format!("{Q}:workers"), ghost, 0).unwrap();
    let mut pending = server.conn();
    let blmove = std::thread::spawn(move || {
        redis::cmd("BLMOVE")
            .arg(Q)
            .arg(format!("{Q}:processing:{ghost}"))
            .arg("LEFT")
            .arg("LEFT")
            .arg(8)
            .query::<Option<String>>(&mut pending)
            .unwrap()
    });
    wait_until(
        PATIENCE,
        "the BLMOVE blocked",
        || {
            let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut c).unwrap();
            clients.contains("cmd=blmove")
        },
        || (),
    );
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    let pool = recording_pool(ThreadPoolManager::builder(), &source, &runs);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the ghost reaped",
        || c.zcard::<_, usize>(format!("{Q}:workers")).unwrap() == 0,
        || (),
    );
    // The pool is idle (no worker blocks on the queue yet), so the ghost's pending BLMOVE takes
    // the job into the processing list of a worker the server no longer knows.
    source.push(&["late"]).unwrap();
    assert_eq!(blmove.join().unwrap().as_deref(), Some("late"));
    wait_idle(&server, 1);
    let t = Tally::read(&server);
    assert_eq!(t.results.get("late"), Some(&1), "{t:?}");
    assert_eq!(runs.of("late"), 1);
    pool.shutdown();
    pool.wait().unwrap();
}

#[test]
fn case_12_a_silent_network_and_connection_resets_lose_nothing() {
    let server = RedisServer::start();
    let proxy = Proxy::start(server.port);
    let source = RedisSource::builder(proxy.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_millis(500))
        .block_timeout(Duration::from_millis(200))
        .io_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let all = ids("n", 1500);
    let _: () = server.conn().rpush(Q, &all).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id);
                std::thread::sleep(Duration::from_millis(2));
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let results = || server.conn().llen::<_, usize>(RESULTS).unwrap();
    wait_until(PATIENCE, "progress", || results() >= 200, results);
    // Silence: every command hangs. Read timeouts must fire and the workers must back off.
    proxy.go_silent();
    let errors = pool.stats().total.source_errors;
    wait_until(
        PATIENCE,
        "timeouts reported",
        || pool.stats().total.source_errors >= errors + 3,
        || pool.stats(),
    );
    proxy.heal();
    let done = results();
    wait_until(
        PATIENCE,
        "progress after healing",
        || results() >= done + 200,
        results,
    );
    // Resets: every connection is cut at once.
    let before = proxy.connections.load(std::sync::atomic::Ordering::SeqCst);
    proxy.reset_all();
    wait_until(
        PATIENCE,
        "reconnected",
        || proxy.connections.load(std::sync::atomic::Ordering::SeqCst) > before,
        || (),
    );
    wait_idle(&server, all.len());
    let stats = pool.stats();
    pool.shutdown();
    pool.wait().unwrap();
    let t = Tally::read(&server);
    eprintln!(
        "case 12: {} jobs, silent network + resets: lost {}, duplicate results {}, duplicate \
         executions {}, source errors {}, reconnects {}",
        all.len(),
        t.lost(&all).len(),
        t.duplicate_results(),
        runs.duplicates(),
        stats.total.source_errors,
        source.stats().reconnects
    );
    assert_eq!(t.lost(&all), Vec::<String>::new());
    assert_eq!(t.duplicate_results(), 0);
    assert!(t.dead.is_empty(), "{:?}", t.dead);
}

/// While the queue is busy, a worker's acknowledgement also takes its next job (one round trip
/// per job, not two); a worker that leaves before starting that job puts it back at the head of
/// the queue exactly as it was: no run counted.
#[test]
fn an_ack_takes_the_next_job_and_a_leaving_worker_puts_it_back_unrun() {
    let server = RedisServer::start();
    let source = source(&server).build().unwrap();
    let all = ids("n", 100);
    source.push(&all).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let handle: Arc<OnceLock<ShutdownHandle>> = Arc::default();
    let h = handle.clone();
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(1)
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id);
                if id == "n49" {
                    h.get().expect("set before start").shutdown();
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    assert!(handle.set(pool.shutdown_handle()).is_ok());
    let mut conn = server.conn();
    let blmoves = |conn: &mut redis::Connection| command_calls(conn).get("blmove").copied();
    let blmoves_before = blmoves(&mut conn).unwrap_or(0);
    pool.start().unwrap();
    pool.wait().unwrap();
    let blmoves = blmoves(&mut conn).unwrap_or(0) - blmoves_before;
    let t = Tally::read(&server);
    assert_eq!((t.results.len(), t.processing), (50, 0), "{t:?}");
    assert_eq!(runs.duplicates(), 0);
    assert!(
        blmoves <= 1,
        "{blmoves} BLMOVEs for 50 jobs: acks did not take the next"
    );
    // n50 was taken by n49's acknowledgement, then put back untouched when the worker left.
    let queue: Vec<String> = conn.lrange(Q, 0, -1).unwrap();
    assert_eq!(queue, all[50..]);
}
