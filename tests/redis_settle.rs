//! The settle scripts against real `redis-server` processes: operator mistakes (a key of the
//! wrong type, before start and mid-run), a server that stalls past the read timeout, payloads
//! with any bytes, processes with different `max_attempts`, and who a dead letter names.
//! Every case checks that each job ends in exactly one place.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use support::redis::RedisServer;
use support::{Gate, PATIENCE, wait_until};
use threadtide::{JobError, RedisSource, RedisSourceBuilder, ThreadPoolManager};

const Q: &str = "fila:conferencia";
const RESULTS: &str = "fila:resultados";
const DEAD: &str = "fila:conferencia:dead";

fn source(server: &RedisServer) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(100))
}

/// Executions per payload.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<Vec<u8>, u32>>>);

impl Runs {
    fn record(&self, payload: &[u8]) -> u32 {
        let mut m = self.0.lock();
        let n = m.entry(payload.to_vec()).or_default();
        *n += 1;
        *n
    }
    fn of(&self, payload: &[u8]) -> u32 {
        self.0.lock().get(payload).copied().unwrap_or(0)
    }
    fn total(&self) -> u32 {
        self.0.lock().values().sum()
    }
}

/// Where every job is, read from the server.
struct Places {
    results: Vec<Vec<u8>>,
    dead: Vec<serde_json::Value>,
    ready: usize,
    delayed: usize,
    processing: usize,
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let results: Vec<_> = self
            .results
            .iter()
            .map(|r| String::from_utf8_lossy(r))
            .collect();
        let dead: Vec<_> = self.dead.iter().map(|d| d["payload"].to_string()).collect();
        f.debug_struct("Places")
            .field("ready", &self.ready)
            .field("delayed", &self.delayed)
            .field("processing", &self.processing)
            .field("results", &(results.len(), results))
            .field("dead", &(dead.len(), dead))
            .finish()
    }
}

impl Places {
    fn read(c: &mut redis::Connection) -> Places {
        let results: Vec<Vec<u8>> = c.lrange(RESULTS, 0, -1).unwrap_or_default();
        let dead: Vec<String> = c.lrange(DEAD, 0, -1).unwrap_or_default();
        let keys: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
        let processing = keys
            .iter()
            .map(|k| c.llen::<_, usize>(k).unwrap_or(0))
            .sum();
        Places {
            results,
            dead: dead
                .iter()
                .map(|d| serde_json::from_str(d).unwrap())
                .collect(),
            ready: c.llen(Q).unwrap_or(0),
            delayed: c.zcard(format!("{Q}:delayed")).unwrap_or(0),
            processing,
        }
    }

    fn settled(&self) -> usize {
        self.results.len() + self.dead.len()
    }

    fn in_flight(&self) -> usize {
        self.ready + self.delayed + self.processing
    }
}

fn wait_settled(c: &mut redis::Connection, jobs: usize) -> Places {
    let last = Mutex::new(None);
    wait_until(
        PATIENCE,
        "every job settled",
        || {
            let p = Places::read(c);
            let done = p.in_flight() == 0 && p.settled() >= jobs;
            *last.lock() = Some(p);
            done
        },
        || format!("{:?}", last.lock()),
    );
    Places::read(c)
}

/// `INFO errorstats`: how many WRONGTYPE errors the server has replied so far.
fn wrongtype_errors(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("errorstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_WRONGTYPE:count="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Item 1: a key of the wrong type. Each key a script writes is turned into a string (its
// contents kept aside, as an operator's `RENAME` + `SET` would), before start or mid-run; the
// pool must report WRONGTYPE, write nothing, and finish every job once the key is fixed.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum When {
    BeforeStart,
    MidRun,
}

/// Turns `key` into a string, keeping its contents under `saved:<key>`, in one step (two
/// separate commands would let a worker's write land between them and be overwritten by the
/// test itself).
fn break_key(c: &mut redis::Connection, key: &str) {
    let _: () = redis::Script::new(
        "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[2]) end
         redis.call('SET', KEYS[1], ARGV[1])",
    )
    .key(key)
    .key(format!("saved:{key}"))
    .arg("an operator's mistake")
    .invoke(c)
    .unwrap();
}

/// Deletes the string and puts the original contents back, in one step.
fn fix_key(c: &mut redis::Connection, key: &str) {
    let _: () = redis::Script::new(
        "redis.call('DEL', KEYS[1])
         if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) end",
    )
    .key(key)
    .key(format!("saved:{key}"))
    .invoke(c)
    .unwrap();
}

/// 40 jobs that succeed, 10 that fail once (retry: the delayed set), 10 that fail for good
/// (dead letters); one `hold-0` job waits on a gate so that a processing list exists mid-run.
fn wrong_type_case(name: &str, when: When) {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server).build().unwrap();
    let mut jobs: Vec<String> = Vec::new();
    jobs.push("hold-0".to_owned());
    jobs.extend((0..40).map(|i| format!("ok-{i}")));
    jobs.extend((0..10).map(|i| format!("retry-{i}")));
    jobs.extend((0..10).map(|i| format!("perm-{i}")));
    source.push(&jobs).unwrap();
    let runs = Runs::default();
    let gate = Gate::default();
    let (r, g) = (runs.clone(), gate.clone());
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(10)
        .max_threads_per_type(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                let n = r.record(id.as_bytes());
                if id.starts_with("hold") {
                    g.pass();
                }
                std::thread::sleep(Duration::from_millis(2));
                if id.starts_with("retry") && n == 1 {
                    return Err(JobError::retryable("flaky"));
                }
                if id.starts_with("perm") {
                    return Err(JobError::permanent("bad order"));
                }
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    let key = match name {
        "queue" => Q.to_owned(),
        "results" => RESULTS.to_owned(),
        "dead" => DEAD.to_owned(),
        "delayed" => format!("{Q}:delayed"),
        "workers" => format!("{Q}:workers"),
        "retired" => format!("{Q}:retired"),
        "settles" => format!("{Q}:settles"),
        "processing" => String::new(), // found once a worker holds `hold-0`
        other => panic!("no key {other}"),
    };
    let before = wrongtype_errors(&mut c);
    if when == When::BeforeStart && name != "processing" {
        break_key(&mut c, &key);
    }
    if when == When::BeforeStart && name == "processing" {
        // No worker id is known before start: a foreign string under the prefix must be
        // skipped by every sweep, and the real lists must work around it.
        let _: () = c.set(format!("{Q}:processing:foreign"), "x").unwrap();
    }
    pool.start().unwrap();
    let key = if name == "processing" && when == When::MidRun {
        let mut found = String::new();
        wait_until(
            PATIENCE,
            "a worker holds hold-0",
            || {
                let keys: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
                for k in keys {
                    let items: Vec<String> = c.lrange(&k, 0, -1).unwrap_or_default();
                    if items.iter().any(|i| i == "hold-0") && gate.waiting() == 1 {
                        found = k;
                        return true;
                    }
                }
                false
            },
            || gate.waiting(),
        );
        break_key(&mut c, &found);
        found
    } else {
        key
    };
    if when == When::MidRun && name != "processing" {
        wait_until(
            PATIENCE,
            "some jobs done",
            || Places::read(&mut c).results.len() >= 5,
            || Places::read(&mut server.conn()),
        );
        break_key(&mut c, &key);
    }
    gate.open();
    if name != "processing" || when == When::MidRun {
        // The scripts refuse to write into the wrong type: the server counts the errors.
        wait_until(
            PATIENCE,
            &format!("a WRONGTYPE error for {key}"),
            || wrongtype_errors(&mut c) > before,
            || Places::read(&mut server.conn()),
        );
        // While broken, no job may have been written twice.
        let p = Places::read(&mut c);
        let mut seen = HashMap::new();
        for r in &p.results {
            *seen.entry(r.clone()).or_insert(0) += 1;
        }
        assert!(seen.values().all(|&n| n == 1), "duplicate results: {p:?}");
        fix_key(&mut c, &key);
    }
    let p = wait_settled(&mut c, jobs.len());
    pool.shutdown();
    pool.wait().unwrap();
    let p_after = Places::read(&mut c);
    assert_eq!(p_after.in_flight(), 0, "{p_after:?}");
    let results: Vec<String> = p
        .results
        .iter()
        .map(|r| String::from_utf8(r.clone()).unwrap())
        .collect();
    let dead: Vec<String> = p
        .dead
        .iter()
        .map(|d| d["payload"].as_str().unwrap().to_owned())
        .collect();
    for id in &jobs {
        let want_dead = id.starts_with("perm");
        let in_results = results.iter().filter(|r| *r == id).count();
        let in_dead = dead.iter().filter(|d| *d == id).count();
        assert_eq!(
            (in_results, in_dead),
            if want_dead { (0, 1) } else { (1, 0) },
            "{name} {when:?}: job {id} ended in the wrong place(s); runs {}",
            runs.of(id.as_bytes())
        );
    }
    eprintln!(
        "wrong type {name} {when:?}: {} jobs, 0 lost, 0 duplicate results, {} executions",
        jobs.len(),
        runs.total()
    );
}

macro_rules! wrong_type_tests {
    ($($test:ident: $name:literal, $when:expr;)*) => {
        $(
            #[test]
            fn $test() {
                wrong_type_case($name, $when);
            }
        )*
    };
}

wrong_type_tests! {
    wrong_type_queue_before_start: "queue", When::BeforeStart;
    wrong_type_queue_mid_run: "queue", When::MidRun;
    wrong_type_results_before_start: "results", When::BeforeStart;
    wrong_type_results_mid_run: "results", When::MidRun;
    wrong_type_dead_before_start: "dead", When::BeforeStart;
    wrong_type_dead_mid_run: "dead", When::MidRun;
    wrong_type_delayed_before_start: "delayed", When::BeforeStart;
    wrong_type_delayed_mid_run: "delayed", When::MidRun;
    wrong_type_processing_before_start: "processing", When::BeforeStart;
    wrong_type_processing_mid_run: "processing", When::MidRun;
    wrong_type_workers_before_start: "workers", When::BeforeStart;
    wrong_type_workers_mid_run: "workers", When::MidRun;
    wrong_type_retired_before_start: "retired", When::BeforeStart;
    wrong_type_retired_mid_run: "retired", When::MidRun;
    wrong_type_settles_before_start: "settles", When::BeforeStart;
    wrong_type_settles_mid_run: "settles", When::MidRun;
}

// ---------------------------------------------------------------------------------------
// Item 2: a stall longer than the read timeout. The first settle times out on the client but
// runs when the server wakes; the retried call must change nothing, even though the next job
// (moved into the same processing list by the first call) has the same bytes.
// ---------------------------------------------------------------------------------------

#[test]
fn a_settle_retried_after_a_stall_never_touches_the_next_identical_job() {
    let server = RedisServer::start_with(&["--appendonly", "no", "--enable-debug-command", "yes"]);
    let mut c = server.conn();
    let source = source(&server)
        .io_timeout(Duration::from_millis(150)) // reads time out after 250 ms
        .build()
        .unwrap();
    let jobs = 600;
    source.push(&vec!["same order"; jobs]).unwrap();
    let runs = Runs::default();
    let r = runs.clone();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(50)
        .max_threads_per_type(4)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, id: &String| {
                r.record(id.as_bytes());
                std::thread::sleep(Duration::from_millis(1));
                Ok(id.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let mut stalls = 0;
    for threshold in [100, 300] {
        wait_until(
            PATIENCE,
            "jobs under way",
            || runs.total() >= threshold,
            || Places::read(&mut server.conn()),
        );
        // The server sleeps 1 s: every settle in flight times out (250 ms) on its worker.
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(1)
            .query(&mut c)
            .unwrap();
        stalls += 1;
    }
    let p = wait_settled(&mut c, jobs);
    pool.shutdown();
    pool.wait().unwrap();
    let timeouts = source.stats().reconnects;
    eprintln!(
        "stall: {jobs} identical payloads, {stalls} stalls of 1 s, {} executions, {} results, \
         {timeouts} reconnects",
        runs.total(),
        p.results.len()
    );
    assert!(timeouts > 0, "the stalls must have timed out some calls");
    assert_eq!(
        p.results.len() as u32,
        runs.total(),
        "one result per execution: {p:?}"
    );
    assert!(p.dead.is_empty(), "{:?}", p.dead);
    assert!(p.results.len() >= jobs);
}

// ---------------------------------------------------------------------------------------
// Item 6: payloads round-trip byte for byte, whatever their bytes, including ones that look
// like the internal envelope; other readers of the list see `ESC tt2:` envelopes only for
// jobs that went back to it.
// ---------------------------------------------------------------------------------------

#[test]
fn payloads_round_trip_byte_exact_to_the_executor_the_results_and_the_dead_letters() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .max_attempts(3)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let tricky: Vec<Vec<u8>> = vec![
        b"\x1ftt1:3:ab:looks like the old envelope".to_vec(),
        b"\x1ftt2:3:5:ab:0123456789abcdef:looks like the envelope".to_vec(),
        b"\x1ftt2:".to_vec(),
        b"\x1ftt2:1:5:0:04263884e0a4b0e1:p".to_vec(), // an envelope with one wrong digit
        b"".to_vec(),
        b"\x00\xff\x1f\n".to_vec(),
        "ol\u{e1} \"json\"".as_bytes().to_vec(),
    ];
    // Each payload twice: one copy succeeds on its second run, the other ends dead.
    let mut pushed = tricky.clone();
    pushed.extend(tricky.iter().map(|p| [b"D".as_slice(), p].concat()));
    source.push(&pushed).unwrap();
    let seen: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let runs = Runs::default();
    let (s, r) = (Arc::clone(&seen), runs.clone());
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &Vec<u8>| {
                s.lock().push(job.clone());
                let n = r.record(job);
                if n == 1 {
                    return Err(JobError::retryable("first run fails: goes back wrapped"));
                }
                if job.starts_with(b"D") {
                    return Err(JobError::permanent("dead on the second run"));
                }
                Ok(job.clone())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let p = wait_settled(&mut c, pushed.len());
    pool.shutdown();
    pool.wait().unwrap();
    for payload in &pushed {
        assert_eq!(runs.of(payload), 2, "{payload:?} ran twice, as itself");
    }
    assert_eq!(
        seen.lock().len(),
        pushed.len() * 2,
        "no other bytes reached it"
    );
    let mut results = p.results.clone();
    results.sort();
    let mut want = tricky.clone();
    want.sort();
    assert_eq!(results, want, "results byte-exact");
    let mut dead: Vec<Vec<u8>> = p
        .dead
        .iter()
        .map(|d| {
            assert_eq!(d["attempts"], 2, "{d}");
            match d["payload"].as_str() {
                Some(text) => text.as_bytes().to_vec(),
                None => {
                    let hex = d["payload_hex"].as_str().unwrap();
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                        .collect()
                }
            }
        })
        .collect();
    dead.sort();
    let mut want_dead: Vec<Vec<u8>> = tricky
        .iter()
        .map(|p| [b"D".as_slice(), p].concat())
        .collect();
    want_dead.sort();
    assert_eq!(dead, want_dead, "dead letters byte-exact");
}

/// What another reader of the main list sees of a retried job: the envelope, then the bytes.
#[test]
fn a_retried_job_goes_back_to_the_list_as_an_envelope_around_the_exact_bytes() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server)
        .retry_backoff(Duration::from_secs(3600), Duration::from_secs(3600))
        .build()
        .unwrap();
    source.push(&["{\"id\":7}"]).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _: &String| Err::<Vec<u8>, _>(JobError::retryable("later")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let delayed = format!("{Q}:delayed");
    wait_until(
        PATIENCE,
        "the job waits for its retry",
        || c.zcard::<_, usize>(&delayed).unwrap() == 1,
        || Places::read(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    let entry: Vec<Vec<u8>> = c.zrange(&delayed, 0, -1).unwrap();
    let text = String::from_utf8(entry[0].clone()).unwrap();
    let fields: Vec<&str> = text.splitn(6, ':').collect();
    assert_eq!(fields[0], "\x1ftt2", "{text:?}");
    assert_eq!(fields[1], "1", "runs so far: {text:?}");
    assert_eq!(
        fields[2], "5",
        "the cap it carries (max_attempts): {text:?}"
    );
    assert_eq!(fields[4].len(), 16, "check: {text:?}");
    assert_eq!(
        fields[5], "{\"id\":7}",
        "the producer's bytes, unchanged, after the header"
    );
}

// ---------------------------------------------------------------------------------------
// Item 12 (dead-letter half): the record names the worker as logs and events do.
// ---------------------------------------------------------------------------------------

#[test]
fn a_dead_letter_names_the_worker_thread_and_keeps_its_redis_id() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server).build().unwrap();
    source.push(&["bad order"]).unwrap();
    let thread: Arc<Mutex<Option<String>>> = Arc::default();
    let t = Arc::clone(&thread);
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, _: &String| {
                *t.lock() = std::thread::current().name().map(str::to_owned);
                Err::<Vec<u8>, _>(JobError::permanent("refused by the site"))
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    let p = wait_settled(&mut c, 1);
    pool.shutdown();
    pool.wait().unwrap();
    let thread = thread.lock().clone().expect("the worker thread is named");
    let record = &p.dead[0];
    assert_eq!(record["worker"], thread.as_str(), "{record}");
    let wid = record["worker_id"].as_str().unwrap();
    assert!(
        wid.contains(&format!(":{}:", std::process::id())),
        "the Redis id (host:pid:nonce:slot:generation): {record}"
    );
}

// ---------------------------------------------------------------------------------------
// Item 14: processes with different `max_attempts` on one queue agree: a job is judged by the
// cap of the process that first ran it, which travels with the job.
// ---------------------------------------------------------------------------------------

#[test]
fn a_job_keeps_the_cap_of_the_process_that_first_ran_it() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let runs = Arc::new(AtomicU32::new(0));
    let pool_with = |max_attempts: u32| {
        let source = source(&server).max_attempts(max_attempts).build().unwrap();
        let r = Arc::clone(&runs);
        let pool = ThreadPoolManager::builder()
            .queue(
                "conferencia",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, _: &String| {
                    r.fetch_add(1, Ordering::SeqCst);
                    Err::<Vec<u8>, _>(JobError::retryable("site down"))
                },
            )
            .build()
            .unwrap();
        (source, pool)
    };
    // A process with max_attempts 4 runs the job once; it goes to the delayed set.
    let (first, pool) = pool_with(4);
    first.push(&["order"]).unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the first run failed",
        || runs.load(Ordering::SeqCst) == 1 && Places::read(&mut c).delayed == 1,
        || Places::read(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    // A process with max_attempts 1 takes over: the job still gets its 4 runs.
    let (_second, pool) = pool_with(1);
    pool.start().unwrap();
    let p = wait_settled(&mut c, 1);
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 4, "{p:?}");
    assert_eq!(p.dead.len(), 1, "{p:?}");
    assert_eq!(p.dead[0]["attempts"], 4, "{p:?}");
    assert_eq!(p.dead[0]["reason"], "attempts_exhausted", "{p:?}");
}
