//! Helpers of the `threadtide` command's tests: the root crate's real `redis-server` per test
//! and its `rpa_worker` build (one file, included by `#[path]`), `wait_until`, an `rpa_worker`
//! run as a child process, and the `threadtide` binary.
#![allow(dead_code)] // each test binary uses a different subset

use std::fmt::Debug;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "../../../tests/support/redis.rs"]
mod redis_server;
pub use redis_server::{RedisServer, rpa_worker};

/// Generous: a condition that needs this long is a bug, not a slow machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `condition` until it returns true; panics after `within` with `describe()`, so a
/// failure says what state it saw.
pub fn wait_until<D: Debug>(
    within: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
    describe: impl Fn() -> D,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() > deadline {
            panic!(
                "timed out after {within:?} waiting for {what}; last state: {:?}",
                describe()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The workspace root (the root crate's directory).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running `rpa_worker`, killed (`kill -9`) on drop.
pub struct Worker {
    pub child: Child,
}

impl Worker {
    /// `rpa_worker --redis URL --results fila:resultados --queue NAME=KEY ... EXTRA`, with
    /// short heartbeats so that its fleet record appears fast.
    pub fn start(redis: &RedisServer, queues: &[(&str, &str)], extra: &[&str]) -> Worker {
        let mut cmd = Command::new(rpa_worker());
        cmd.args(["--redis", &redis.url(), "--results", "fila:resultados"])
            .args([
                "--heartbeat-ms",
                "100",
                "--worker-ttl-ms",
                "1000",
                "--init-ms",
                "5",
            ]);
        for (name, key) in queues {
            cmd.arg("--queue").arg(format!("{name}={key}"));
        }
        cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
        Worker {
            child: cmd.spawn().expect("start rpa_worker"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9` now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `threadtide ARGS` (the binary of this package) with `--redis URL`.
pub fn threadtide(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_threadtide"))
        .arg("--redis")
        .arg(url)
        .args(args)
        .env_remove("THREADTIDE_REDIS")
        .output()
        .expect("run threadtide")
}

/// `threadtide ARGS` that must succeed; its stdout.
pub fn ok(url: &str, args: &[&str]) -> String {
    let out = threadtide(url, args);
    assert!(
        out.status.success(),
        "threadtide {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `threadtide --json ARGS` that must succeed, parsed.
pub fn json(url: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(url, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}
