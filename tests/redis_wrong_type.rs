//! Keys of the wrong type (issue 15 item 1), against real `redis-server` processes: each key a
//! script writes is turned into a string before start or mid-run; the pool must report
//! WRONGTYPE, write nothing, and finish every job once the key is fixed.
#![cfg(feature = "redis")]

mod settle_support;
mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use redis::Commands;
use settle_support::{DEAD, Places, Q, RESULTS, Runs, source, wait_settled};
use support::redis::RedisServer;
use support::{Gate, PATIENCE, Recorder, wait_until};
use threadtide::{JobError, ThreadPoolManager};

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
    let events = Recorder::default();
    let pool = ThreadPoolManager::builder()
        .event_handler(events.clone())
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
        // The host hears which key and which type. Not for `Q:retired` (only the keeper writes
        // it, and its errors are logged, not sent as events) nor for `Q` before start (no
        // worker runs yet: the monitor's backlog read fails, with Redis's own message).
        if name != "retired" && !(name == "queue" && when == When::BeforeStart) {
            let wanted = format!("WRONGTYPE key {key} holds a string");
            wait_until(
                PATIENCE,
                &format!("an error event naming {key}"),
                || {
                    events
                        .errors
                        .lock()
                        .iter()
                        .any(|e| e.message.contains(&wanted))
                },
                || {
                    let errors = events.errors.lock();
                    errors.iter().map(|e| e.message.clone()).collect::<Vec<_>>()
                },
            );
        }
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
