//! Helpers of the fleet tests: several real `rpa_worker` processes on one real `redis-server`,
//! and what their results say (peak concurrency from each job's start and finish times, lost
//! and duplicate jobs).
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use redis::Commands;

use crate::support;
use crate::support::redis::RedisServer;

pub const Q: &str = "fila:conferencia";
pub const Q2: &str = "fila:emissao";
pub const RESULTS: &str = "fila:resultados";
/// Heartbeat and TTL of every process in these tests: recovery within ~0.5 s.
pub const HEARTBEAT_MS: u64 = 100;
pub const TTL_MS: u64 = 500;

/// How soon a change must reach every process (a runtime setting, a killed process's share
/// taken up): it takes a grant, a TTL or a heartbeat or two; this is several times that, so a
/// loaded 2-core machine passes, and a change that never propagates (or waits for something
/// slower) fails.
pub const PROPAGATION: Duration = Duration::from_millis(3 * TTL_MS + 10 * HEARTBEAT_MS);

/// A directory for the processes' logs, removed on drop (printed when the test fails).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("threadtide-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                eprintln!("--- {name} (last lines) ---");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `rpa_worker` process serving both queues; killed on drop if still running.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn start(server: &RedisServer, scratch: &Scratch, name: &str, extra: &[&str]) -> Proc {
        let log = std::fs::File::create(scratch.path(&format!("{name}.log"))).unwrap();
        let child = Command::new(support::redis::rpa_worker())
            .args(["--redis", &server.url(), "--results", RESULTS])
            .args(["--queue", &format!("conferencia={Q}")])
            .args(["--queue", &format!("emissao={Q2}")])
            .args(["--heartbeat-ms", &HEARTBEAT_MS.to_string()])
            .args(["--worker-ttl-ms", &TTL_MS.to_string()])
            .args(["--init-ms", "10", "--block-ms", "100"])
            .args(["--retry-backoff-ms", "20"])
            .args(["--exec-log", scratch.path(EXEC_LOG).to_str().unwrap()])
            .arg("--exec-log-finish")
            .args(extra)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {within:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Pushes `n` jobs of `ms` milliseconds to `queue`, ids `prefix0..`.
pub fn push(conn: &mut redis::Connection, queue: &str, prefix: &str, n: usize, ms: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let jobs: Vec<String> = chunk
            .iter()
            .map(|i| format!(r#"{{"id":"{prefix}{i}","ms":{ms}}}"#))
            .collect();
        let _: () = conn.rpush(queue, jobs).unwrap();
    }
}

/// Every process's execution log (`rpa_worker --exec-log`), in the scratch directory.
pub const EXEC_LOG: &str = "exec.log";

/// Every run any process started, kept or not (a refused settle, a killed process): from the
/// execution log's start and finish lines. A run with no finish line (its process was killed,
/// or is still running it) counts as running until the last line its process wrote.
pub fn runs(scratch: &Scratch) -> Vec<Done> {
    let text = std::fs::read_to_string(scratch.path(EXEC_LOG)).unwrap_or_default();
    let mut started: Vec<(String, String, String, u64, String)> = Vec::new();
    let mut finished: HashMap<(String, String, String, u64, String), u64> = HashMap::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue; // a line cut by a kill -9
        }
        let Ok(start) = f[3].parse::<u64>() else {
            continue;
        };
        let key = (f[0].into(), f[1].into(), f[2].into(), start, f[4].into());
        let seen = last.entry(f[4].to_owned()).or_default();
        *seen = (*seen).max(start);
        match f.get(5).and_then(|t| t.parse::<u64>().ok()) {
            Some(end) => {
                *seen = (*seen).max(end);
                finished.insert(key, end);
            }
            None if f.len() == 5 => started.push(key),
            None => {}
        }
    }
    started
        .into_iter()
        .map(|key| Done {
            finished_ms: finished.get(&key).copied().unwrap_or(last[&key.4]),
            id: key.1,
            queue: key.0,
            started_ms: key.3,
            pid: key.4,
        })
        .collect()
}

/// One success, from the results list.
#[derive(Debug, Clone)]
pub struct Done {
    pub id: String,
    pub queue: String,
    pub started_ms: u64,
    pub finished_ms: u64,
    /// The process that ran it (empty when read from the results).
    pub pid: String,
}

pub fn results(conn: &mut redis::Connection) -> Vec<Done> {
    let raw: Vec<String> = conn.lrange(RESULTS, 0, -1).unwrap();
    raw.iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            Done {
                id: v["id"].as_str().unwrap().to_owned(),
                queue: v["queue"].as_str().unwrap().to_owned(),
                started_ms: v["started_ms"].as_u64().unwrap(),
                finished_ms: v["finished_ms"].as_u64().unwrap(),
                pid: String::new(),
            }
        })
        .collect()
}

pub fn result_count(conn: &mut redis::Connection) -> usize {
    conn.llen(RESULTS).unwrap()
}

/// The most jobs of `queue` that ran at once, from their start and finish times (a job that
/// finishes in the millisecond another starts does not overlap it: the slot is freed after
/// the finish is stamped).
pub fn peak(done: &[Done], queue: &str) -> usize {
    peak_of(done.iter().filter(|d| d.queue == queue))
}

/// The most jobs of every queue together that ran at once.
pub fn peak_all(done: &[Done]) -> usize {
    peak_of(done.iter())
}

fn peak_of<'a>(done: impl Iterator<Item = &'a Done>) -> usize {
    let mut events: Vec<(u64, i64)> = done
        .flat_map(|d| [(d.started_ms, 1), (d.finished_ms, -1)])
        .collect();
    events.sort_by_key(|&(t, delta)| (t, delta));
    let (mut now, mut max) = (0i64, 0i64);
    for (_, delta) in events {
        now += delta;
        max = max.max(now);
    }
    max as usize
}

/// The runs of `queue` going on at the first instant the peak was reached (for a failure's
/// message).
pub fn at_peak(done: &[Done], queue: &str) -> Vec<Done> {
    let of: Vec<&Done> = done.iter().filter(|d| d.queue == queue).collect();
    let top = peak_of(of.iter().copied());
    let mut starts: Vec<u64> = of.iter().map(|d| d.started_ms).collect();
    starts.sort_unstable();
    for t in starts {
        let on: Vec<Done> = of
            .iter()
            .filter(|d| d.started_ms <= t && t < d.finished_ms)
            .map(|d| (*d).clone())
            .collect();
        if on.len() >= top {
            return on;
        }
    }
    Vec::new()
}

/// Ids missing from `done` among `prefix0..prefix{n-1}`, and ids with more than one result.
pub fn lost_and_duplicates(done: &[Done], prefix: &str, n: usize) -> (Vec<String>, Vec<String>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for d in done {
        *seen.entry(d.id.as_str()).or_default() += 1;
    }
    let lost = (0..n)
        .map(|i| format!("{prefix}{i}"))
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    let dups = seen
        .into_iter()
        .filter(|&(id, c)| c > 1 && id.starts_with(prefix))
        .map(|(id, _)| id.to_owned())
        .collect();
    (lost, dups)
}
