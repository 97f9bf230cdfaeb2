//! Fault cases with real processes: the pool runs as the `rpa_worker` example in a child
//! process, so `kill -9`, `abort()`, `SIGSTOP` and server restarts are real. A checker reads
//! the results and dead-letter lists and the execution log and counts lost jobs (must be 0),
//! duplicate results (must be 0) and duplicate executions (counted, bounded).
#![cfg(feature = "redis")]

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};

const Q: &str = "fila:conferencia";
const Q2: &str = "fila:emissao";
const RESULTS: &str = "fila:resultados";

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("threadtide-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("worker") {
                    let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(40).collect();
                    eprintln!("--- {name} (last lines) ---");
                    for line in tail.iter().rev() {
                        eprintln!("{line}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `rpa_worker` process; killed on drop if still running.
struct Worker {
    child: Child,
}

impl Worker {
    fn start(server: &RedisServer, scratch: &Scratch, n: usize, extra: &[&str]) -> Worker {
        let log = std::fs::File::create(scratch.path(&format!("worker{n}.log"))).unwrap();
        let exec_log = scratch.path("executions.log");
        let child = Command::new(support::redis::rpa_worker())
            .args(["--redis", &server.url(), "--results", RESULTS])
            .args([
                "--queue",
                &format!("conferencia={Q}"),
                "--queue",
                &format!("emissao={Q2}"),
            ])
            .args(["--exec-log", exec_log.to_str().unwrap()])
            .args([
                "--heartbeat-ms",
                "100",
                "--worker-ttl-ms",
                "500",
                "--init-ms",
                "10",
            ])
            .args(["--retry-backoff-ms", "20", "--scale-down-delay-ms", "200"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Worker { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, signal: i32) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {} did not exit within {within:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn push_jobs(server: &RedisServer, key: &str, prefix: &str, n: usize, ms: u64) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let payloads: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id":"{id}","ms":{ms}}}"#))
        .collect();
    let _: () = server.conn().rpush(key, &payloads).unwrap();
    ids
}

/// What the checker counted.
#[derive(Debug)]
struct Report {
    jobs: usize,
    lost: Vec<String>,
    duplicate_results: usize,
    duplicate_executions: usize,
    executions: HashMap<String, usize>,
    dead: HashMap<String, String>,
}

impl Report {
    /// Prints the case's figures (they go into docs/RELIABILITY.md), then `extra`.
    fn print(&self, case: &str, extra: &str) {
        eprintln!(
            "{case}: {} jobs: lost {}, duplicate results {}, duplicate executions {}{extra}",
            self.jobs,
            self.lost.len(),
            self.duplicate_results,
            self.duplicate_executions
        );
    }

    /// The guarantee: every job ended somewhere, and its result was pushed at most once.
    fn assert_nothing_lost(&self) {
        assert_eq!(
            (self.lost.len(), self.duplicate_results),
            (0, 0),
            "{self:?}"
        );
    }
}

fn check(server: &RedisServer, scratch: &Scratch, ids: &[String]) -> Report {
    let mut c = server.conn();
    let results: Vec<String> = c.lrange(RESULTS, 0, -1).unwrap();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in &results {
        let v: serde_json::Value = serde_json::from_str(r).unwrap();
        for field in ["queue", "ok", "worker", "started_ms", "finished_ms"] {
            assert!(!v[field].is_null(), "result without {field}: {r}");
        }
        *by_id
            .entry(v["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut dead = HashMap::new();
    for key in [format!("{Q}:dead"), format!("{Q2}:dead")] {
        let records: Vec<String> = c.lrange(key, 0, -1).unwrap();
        for d in records {
            let v: serde_json::Value = serde_json::from_str(&d).unwrap();
            let payload: serde_json::Value =
                serde_json::from_str(v["payload"].as_str().unwrap_or("null")).unwrap_or_default();
            let id = payload["id"].as_str().unwrap_or("?").to_owned();
            dead.insert(id, v["reason"].as_str().unwrap().to_owned());
        }
    }
    let mut executions: HashMap<String, usize> = HashMap::new();
    let log = std::fs::read_to_string(scratch.path("executions.log")).unwrap_or_default();
    for line in log.lines() {
        if let Some(id) = line.split(' ').nth(1) {
            *executions.entry(id.to_owned()).or_default() += 1;
        }
    }
    Report {
        jobs: ids.len(),
        lost: ids
            .iter()
            .filter(|id| !by_id.contains_key(*id) && !dead.contains_key(*id))
            .cloned()
            .collect(),
        duplicate_results: by_id.values().map(|n| n - 1).sum(),
        duplicate_executions: executions.values().map(|n| n - 1).sum(),
        executions,
        dead,
    }
}

fn results_len(server: &RedisServer) -> usize {
    server.conn().llen(RESULTS).unwrap()
}

fn processing_left(server: &RedisServer) -> usize {
    let mut c = server.conn();
    let keys: Vec<String> = c.keys("fila:*:processing:*").unwrap();
    keys.iter().map(|k| c.llen::<_, usize>(k).unwrap()).sum()
}

/// Runs a last worker with `--exit-when-idle` and expects it to finish everything.
fn drain(server: &RedisServer, scratch: &Scratch, n: usize) {
    let mut w = Worker::start(server, scratch, n, &["--exit-when-idle"]);
    let status = w.wait_exit(PATIENCE * 3);
    assert!(status.success(), "draining worker exited with {status}");
}

#[test]
fn case_02_kill_9_at_random_moments_loses_nothing() {
    const KILLS: usize = 6;
    let server = RedisServer::start_durable();
    let scratch = Scratch::new("kill9");
    let mut ids = push_jobs(&server, Q, "c", 5000, 20);
    ids.extend(push_jobs(&server, Q2, "e", 2000, 20));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut recovery = Vec::new();
    let mut w = Worker::start(&server, &scratch, 0, &["--max-attempts", "20"]);
    for n in 1..=KILLS {
        // Kill after a pseudo-random amount of progress: mid-scale-up, mid-run, mid-drain.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let before = results_len(&server);
        let progress = 10 + (seed % 150) as usize;
        wait_until(
            PATIENCE,
            "progress before the kill",
            || results_len(&server) >= before + progress,
            || results_len(&server),
        );
        w.kill9();
        let killed = Instant::now();
        let dead = std::mem::replace(
            &mut w,
            Worker::start(&server, &scratch, n, &["--max-attempts", "20"]),
        );
        // The new process's keeper reaps the dead one's workers and requeues their jobs.
        wait_until(
            PATIENCE,
            "orphans requeued",
            || processing_of_dead(&server, &dead) == 0,
            || processing_left(&server),
        );
        recovery.push(killed.elapsed());
    }
    w.signal(15);
    assert!(w.wait_exit(PATIENCE).success());
    drain(&server, &scratch, 999);
    let report = check(&server, &scratch, &ids);
    recovery.sort();
    report.print(
        &format!("case 2, {KILLS} kill -9"),
        &format!(
            ", recovery p50 {:?} max {:?}",
            recovery[recovery.len() / 2],
            recovery.last().unwrap()
        ),
    );
    report.assert_nothing_lost();
    assert!(report.dead.is_empty(), "{:?}", report.dead);
    // A kill interrupts at most one job per worker thread (20 at most).
    assert!(report.duplicate_executions <= KILLS * 20, "{report:?}");
    assert_eq!(processing_left(&server), 0);
}

/// Jobs still in processing lists of a dead process's workers (its pid is in their ids).
fn processing_of_dead(server: &RedisServer, w: &Worker) -> usize {
    let mut c = server.conn();
    let keys: Vec<String> = c
        .keys(format!("fila:*:processing:*:{}:*", w.pid()))
        .unwrap();
    keys.iter().map(|k| c.llen::<_, usize>(k).unwrap()).sum()
}

#[test]
fn case_05_a_job_that_aborts_its_process_is_dead_lettered_after_the_claim_cap() {
    let server = RedisServer::start_durable();
    let scratch = Scratch::new("abort");
    let mut ids = push_jobs(&server, Q, "ok", 30, 5);
    let _: () = server
        .conn()
        .rpush(Q, r#"{"id":"killer","ms":5,"fail":"abort"}"#)
        .unwrap();
    ids.push("killer".to_owned());
    ids.extend(push_jobs(&server, Q, "late", 30, 5));
    let mut crashes = 0;
    for n in 0..10 {
        let mut w = Worker::start(
            &server,
            &scratch,
            n,
            &["--max-attempts", "3", "--exit-when-idle"],
        );
        let status = w.wait_exit(PATIENCE * 2);
        if status.success() {
            break;
        }
        crashes += 1;
    }
    let report = check(&server, &scratch, &ids);
    report.print(
        &format!("case 5, {crashes} process crashes"),
        &format!(", killer ran {} times", report.executions["killer"]),
    );
    assert_eq!(report.executions["killer"], 3, "exactly max_attempts runs");
    assert_eq!(crashes, 3);
    assert_eq!(
        report.dead.get("killer").map(String::as_str),
        Some("attempts_exhausted")
    );
    assert_eq!(
        (
            report.lost.len(),
            report.duplicate_results,
            report.dead.len()
        ),
        (0, 0, 1)
    );
}

#[test]
fn case_07_sigstop_past_the_ttl_reruns_jobs_elsewhere_and_refuses_late_acks() {
    let server = RedisServer::start_durable();
    let scratch = Scratch::new("sigstop");
    let ids = push_jobs(&server, Q, "s", 40, 300);
    let opts = [
        "--max-threads-per-type",
        "2",
        "--jobs-per-thread",
        "1",
        "--exit-when-idle",
    ];
    let mut a = Worker::start(&server, &scratch, 0, &opts);
    wait_until(
        PATIENCE,
        "A running jobs",
        || a_busy(&server, &a) > 0,
        || processing_left(&server),
    );
    a.signal(19); // SIGSTOP: A's heartbeats stop with jobs in hand
    let stopped = Instant::now();
    let mut b = Worker::start(&server, &scratch, 1, &opts);
    wait_until(
        PATIENCE,
        "A reaped",
        || a_busy(&server, &a) == 0 && stopped.elapsed() > Duration::from_millis(600),
        || processing_left(&server),
    );
    let reaped_after = stopped.elapsed();
    a.signal(18); // SIGCONT: A's running jobs finish; their acks must be refused
    assert!(a.wait_exit(PATIENCE * 2).success());
    assert!(b.wait_exit(PATIENCE * 2).success());
    let report = check(&server, &scratch, &ids);
    let a_log = std::fs::read_to_string(scratch.path("worker0.log")).unwrap();
    let refused = a_log.matches("refused").count();
    report.print(
        "case 7, SIGSTOP past TTL",
        &format!(", late acks refused {refused}, reaped after {reaped_after:?}"),
    );
    report.assert_nothing_lost();
    // A held at most two jobs (two threads): each runs once more, elsewhere, and no more.
    assert!((1..=2).contains(&report.duplicate_executions), "{report:?}");
    assert_eq!(
        report.duplicate_executions, refused,
        "one rerun per refused late ack"
    );
    assert_eq!(processing_left(&server), 0);
}

/// Jobs in the processing lists of worker process `a`.
fn a_busy(server: &RedisServer, a: &Worker) -> usize {
    processing_of_dead(server, a)
}

#[test]
fn case_10_redis_restarts_graceful_and_kill_9_with_aof_lose_nothing() {
    let mut server = RedisServer::start_durable();
    let scratch = Scratch::new("restart");
    let ids = push_jobs(&server, Q, "r", 1200, 5);
    let mut w = Worker::start(&server, &scratch, 0, &["--max-attempts", "20"]);
    wait_until(
        PATIENCE,
        "progress",
        || results_len(&server) >= 200,
        || results_len(&server),
    );
    server.stop_gracefully();
    std::thread::sleep(Duration::from_millis(700)); // downtime: workers see connection errors
    server.restart();
    wait_until(
        PATIENCE,
        "progress after restart",
        || results_len(&server) >= 500,
        || results_len(&server),
    );
    server.kill();
    std::thread::sleep(Duration::from_millis(700));
    server.restart();
    wait_until(
        PATIENCE * 2,
        "progress after kill -9",
        || results_len(&server) >= 800,
        || results_len(&server),
    );
    w.signal(15);
    assert!(
        w.wait_exit(PATIENCE).success(),
        "SIGTERM drains and exits 0"
    );
    drain(&server, &scratch, 1);
    let report = check(&server, &scratch, &ids);
    report.print("case 10, redis SHUTDOWN + kill -9 (AOF always)", "");
    report.assert_nothing_lost();
    assert!(report.dead.is_empty());
}

#[test]
fn sigterm_drains_running_jobs_and_exits_0() {
    let server = RedisServer::start_durable();
    let scratch = Scratch::new("sigterm");
    let ids = push_jobs(&server, Q, "t", 200, 200);
    let mut w = Worker::start(&server, &scratch, 0, &["--jobs-per-thread", "10"]);
    wait_until(
        PATIENCE,
        "jobs running",
        || processing_left(&server) >= 5,
        || processing_left(&server),
    );
    w.signal(15);
    let status = w.wait_exit(PATIENCE);
    assert!(status.success(), "{status}");
    assert_eq!(
        processing_left(&server),
        0,
        "running jobs finished and were acked"
    );
    let report = check(&server, &scratch, &ids);
    let left: usize = server.conn().llen(Q).unwrap();
    assert_eq!(
        report.executions.len(),
        ids.len() - left,
        "every started job finished"
    );
    assert_eq!(report.lost.len(), left, "unstarted jobs stay in the queue");
    assert_eq!(report.duplicate_results, 0);
}

#[test]
fn rpa_worker_dead_letters_what_is_not_its_json_as_malformed() {
    let server = RedisServer::start_durable();
    let scratch = Scratch::new("malformed");
    let ids = push_jobs(&server, Q, "ok", 5, 1);
    let bad: Vec<Vec<u8>> = vec![
        vec![0xff, 0xfe, b'{'],             // not UTF-8
        br#"{"id":"trunc","ms":"#.to_vec(), // truncated
        Vec::new(),                         // empty
        br#"{"ms":5}"#.to_vec(),            // JSON without an id
    ];
    let _: () = server.conn().rpush(Q, &bad).unwrap();
    drain(&server, &scratch, 0);
    let report = check(&server, &scratch, &ids);
    report.assert_nothing_lost();
    let dead: Vec<String> = server.conn().lrange(format!("{Q}:dead"), 0, -1).unwrap();
    assert_eq!(dead.len(), bad.len(), "{dead:?}");
    for record in &dead {
        let v: serde_json::Value = serde_json::from_str(record).unwrap();
        assert_eq!(v["reason"], "malformed", "{record}");
    }
    assert_eq!(
        report.executions.len(),
        ids.len(),
        "no malformed payload reached the executor"
    );
}
