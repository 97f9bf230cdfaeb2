//! No processing list is left that no sweep visits (issue 15 item 3), and the reaper writes
//! nothing into a queue of the wrong type (item 1, the reaper's half). Real `redis-server`
//! processes; the frozen-process case runs the `rpa_worker` example as a child and stops it
//! with `SIGSTOP`.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};
use threadtide::{Queue, RedisSource, RedisSourceBuilder, ThreadPoolManager};

const Q: &str = "fila:conferencia";
const RESULTS: &str = "fila:resultados";

fn source(server: &RedisServer) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_millis(500))
}

/// Executions per payload, in this process.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<Vec<String>>>);

impl Runs {
    fn of(&self, job: &str) -> usize {
        self.0.lock().iter().filter(|j| *j == job).count()
    }
}

/// A pool on `source` that records each run and returns the payload as its result.
fn pool(source: &RedisSource<String>, runs: &Runs, min_threads: usize) -> ThreadPoolManager {
    let r = runs.clone();
    ThreadPoolManager::builder()
        .fetch_timeout(Duration::from_secs(3)) // with block_timeout: a long BLMOVE
        .add_queue(
            Queue::new(
                "conferencia",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, job: &String| {
                    r.0.lock().push(job.clone());
                    Ok(job.clone().into_bytes())
                },
            )
            .min_threads(min_threads),
        )
        .build()
        .unwrap()
}

fn results_of(c: &mut redis::Connection, job: &str) -> usize {
    let results: Vec<String> = c.lrange(RESULTS, 0, -1).unwrap();
    results.iter().filter(|r| r.contains(job)).count()
}

fn processing(c: &mut redis::Connection) -> usize {
    let keys: Vec<String> = c.keys(format!("{Q}:processing:*")).unwrap();
    keys.iter().map(|k| c.llen::<_, usize>(k).unwrap()).sum()
}

fn blocked_clients(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Script calls that returned an error (`INFO commandstats`, `failed_calls` of `evalsha`):
/// with no worker running, only the keeper's reap script.
fn failed_scripts(c: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(c).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:"))
        .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("failed_calls=")))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// An operator deletes `Q:workers` while a worker waits in `BLMOVE`: the job that `BLMOVE`
/// then moves lands in the list of a worker nobody knows. Its ack is refused, and the refusal
/// itself puts the list back; the job runs again under the worker's new id and yields one
/// result.
#[test]
fn deleting_the_workers_set_strands_no_job() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let source = source(&server)
        .block_timeout(Duration::from_secs(3)) // the BLMOVE stays pending meanwhile
        .build()
        .unwrap();
    let runs = Runs::default();
    let pool = pool(&source, &runs, 1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the worker waits in BLMOVE",
        || {
            blocked_clients(&mut c) == 1
                && c.zcard::<_, usize>(format!("{Q}:workers")).unwrap() == 1
        },
        || blocked_clients(&mut server.conn()),
    );
    let _: () = c.del(format!("{Q}:workers")).unwrap();
    source.push(&["order-1"]).unwrap();
    wait_until(
        PATIENCE,
        "order-1 has its result and nothing is left anywhere",
        || {
            results_of(&mut c, "order-1") == 1
                && processing(&mut c) == 0
                && c.llen::<_, usize>(Q).unwrap() == 0
        },
        || {
            (
                results_of(&mut server.conn(), "order-1"),
                processing(&mut server.conn()),
            )
        },
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(results_of(&mut c, "order-1"), 1);
    assert_eq!(processing(&mut c), 0);
    assert!(source.stats().acks_refused >= 1, "{:?}", source.stats());
    eprintln!(
        "DEL workers: 1 job, 0 lost, 0 duplicate results, {} executions",
        runs.of("order-1")
    );
}

/// 600 workers retired in the same millisecond (equal scores in `Q:retired`), and a job in the
/// list of the one that sorts last: one reap visits at most 500, so the sampling and the
/// `SCAN` backstop must still find it. The retired set and the list are written as a burst of
/// short-lived workers leaves them (their ids in the crate's format).
#[test]
fn six_hundred_retirements_at_once_hide_no_job() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut c).unwrap();
    let now_ms = secs * 1000 + micros / 1000;
    let retired = format!("{Q}:retired");
    for i in 0..600 {
        let _: () = c
            .zadd(&retired, format!("vm:4242:00000000cafe:{i:03}:0"), now_ms)
            .unwrap();
    }
    let _: () = c
        .lpush(
            format!("{Q}:processing:vm:4242:00000000cafe:599:0"),
            "order-600",
        )
        .unwrap();
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    let pool = pool(&source, &runs, 0);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "order-600 swept back and run",
        || results_of(&mut c, "order-600") == 1 && processing(&mut c) == 0,
        || processing(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(runs.of("order-600"), 1);
}

/// A dead worker's jobs wait for the reaper while an operator has turned the queue into a
/// hash: the reaper must write nothing (before, it popped the job and then failed to push
/// it), and requeue the job once the queue is a list again. The dead worker is what a `kill -9`
/// leaves: a registration with an old heartbeat and a processing list.
#[test]
fn the_reaper_writes_nothing_into_a_queue_of_the_wrong_type() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let wid = "vm:4242:00000000dead:0:0";
    let _: () = c.zadd(format!("{Q}:workers"), wid, 1).unwrap();
    let pk = format!("{Q}:processing:{wid}");
    let _: () = c.lpush(&pk, "order-r").unwrap();
    let _: () = c.hset(Q, "operator", "mistake").unwrap();
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    let pool = pool(&source, &runs, 0);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the reaper tried twice and refused",
        || failed_scripts(&mut c) >= 2,
        || failed_scripts(&mut server.conn()),
    );
    let left: Vec<String> = c.lrange(&pk, 0, -1).unwrap();
    assert_eq!(left, vec!["order-r"], "the job stays where it was");
    let _: () = c.del(Q).unwrap();
    wait_until(
        PATIENCE,
        "order-r requeued and run",
        || results_of(&mut c, "order-r") == 1 && processing(&mut c) == 0,
        || processing(&mut server.conn()),
    );
    pool.shutdown();
    pool.wait().unwrap();
    assert_eq!(runs.of("order-r"), 1);
}

// ---------------------------------------------------------------------------------------
// A process frozen past the retired grace (a laptop lid, a paused VM).
// ---------------------------------------------------------------------------------------

struct Child9(Child);

impl Child9 {
    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

impl Drop for Child9 {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.id().to_string()])
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Process A waits in `BLMOVE` (5 s) and is stopped; this process's keeper reaps A's worker,
/// and the retired entry expires (deleted here: the reaper trims it the same way once the
/// 10-minute grace has passed). A job pushed now goes to A's pending `BLMOVE`, into a list no
/// registered or retired worker owns. The `SCAN` backstop requeues it and this process runs
/// it; when A wakes and runs it too, its ack is refused: one result.
#[test]
fn a_process_frozen_past_the_retired_grace_strands_no_job() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let dir = std::env::temp_dir().join(format!("threadtide-orphans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exec_log = dir.join("executions.log");
    let a_log = dir.join("a.log");
    let a = Child9(
        Command::new(support::redis::rpa_worker())
            .args(["--redis", &server.url(), "--results", RESULTS])
            .args(["--queue", &format!("conferencia={Q}")])
            .args(["--exec-log", exec_log.to_str().unwrap()])
            .args([
                "--heartbeat-ms",
                "100",
                "--worker-ttl-ms",
                "500",
                "--init-ms",
                "10",
            ])
            .args(["--block-ms", "5000", "--scale-down-delay-ms", "60000"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&a_log).unwrap())
            .spawn()
            .unwrap(),
    );
    let _: () = c.rpush(Q, r#"{"id":"warm-up","ms":1}"#).unwrap();
    wait_until(
        PATIENCE,
        "A ran the warm-up job and waits in BLMOVE",
        || results_of(&mut c, "warm-up") == 1 && blocked_clients(&mut c) == 1,
        || blocked_clients(&mut server.conn()),
    );
    a.signal("-STOP");
    let source = source(&server).build().unwrap();
    let runs = Runs::default();
    let b = pool(&source, &runs, 0);
    b.start().unwrap();
    let workers = format!("{Q}:workers");
    let retired = format!("{Q}:retired");
    wait_until(
        PATIENCE,
        "A's worker reaped by this process",
        || {
            c.zcard::<_, usize>(&workers).unwrap() == 0
                && c.zcard::<_, usize>(&retired).unwrap() == 1
        },
        || (),
    );
    let _: () = c.del(&retired).unwrap(); // the grace has run out
    let job = r#"{"id":"frozen","ms":1}"#;
    let _: () = c.rpush(Q, job).unwrap();
    wait_until(
        PATIENCE,
        "the job swept back from A's list and run here",
        || results_of(&mut c, "frozen") == 1,
        || processing(&mut server.conn()),
    );
    a.signal("-CONT");
    // A wakes: either its read returns the job (it runs it, and its ack is refused) or the
    // signal interrupts the read (the reply is lost); either way it finds itself reaped.
    wait_until(
        PATIENCE,
        "A woke and found itself reaped",
        || {
            let log = std::fs::read_to_string(&a_log).unwrap_or_default();
            let ran = std::fs::read_to_string(&exec_log)
                .unwrap_or_default()
                .contains(" frozen ");
            (ran && log.contains("ack refused")) || (!ran && log.contains("registering again"))
        },
        || {
            (
                std::fs::read_to_string(&exec_log).unwrap_or_default(),
                std::fs::read_to_string(&a_log).unwrap_or_default(),
                source.stats(),
            )
        },
    );
    wait_until(
        PATIENCE,
        "nothing left anywhere",
        || processing(&mut c) == 0 && c.llen::<_, usize>(Q).unwrap() == 0,
        || processing(&mut server.conn()),
    );
    b.shutdown();
    b.wait().unwrap();
    drop(a);
    assert_eq!(results_of(&mut c, "frozen"), 1, "one result");
    assert_eq!(runs.of(job), 1);
    assert!(
        source.stats().recovered >= 1,
        "the job came back through the sweep: {:?}",
        source.stats()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
