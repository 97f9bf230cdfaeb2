//! A real `redis-server` per test: free loopback port, its own directory, bounded start-up
//! wait, log printed when the test fails, killed (and the directory removed) on drop.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct RedisServer {
    pub port: u16,
    /// The default user's password (`--requirepass`), put in [`url`](Self::url) when set.
    pub password: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// A server without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(&["--appendonly", "no"])
    }

    /// A server with AOF on and fsync at every write: what a deployment that must not lose
    /// jobs runs.
    pub fn start_durable() -> RedisServer {
        Self::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "threadtide-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let password = extra
            .windows(2)
            .find(|w| w[0] == "--requirepass")
            .map(|w| w[1].to_owned());
        let mut server = RedisServer {
            port: 0,
            password,
            dir,
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
        };
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server; log:\n{}", server.log());
    }

    /// Picks a free port without starting a server there yet (for "Redis comes up later").
    pub fn reserve() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "threadtide-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        RedisServer {
            port: free_port(),
            password: None,
            dir,
            child: None,
            args: vec!["--appendonly".into(), "no".into()],
        }
    }

    /// `redis://[:password@]127.0.0.1:port/`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}/", self.port),
            None => format!("redis://127.0.0.1:{}/", self.port),
        }
    }

    /// A URL for an ACL user.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("redis://{user}:{password}@127.0.0.1:{}/", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the server on `self.port`; true once it answers PING (within 30 s: generous, so
    /// that a suite run on a loaded 2-core machine does not fail here).
    pub fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--dir", self.dir.to_str().unwrap()])
            .args(["--logfile", self.log_path().to_str().unwrap()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (bash .ci/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!(
                    "redis-server exited at start ({status}) on port {}",
                    self.port
                );
                self.child = None;
                return false;
            }
            if let Ok(mut c) = self
                .client()
                .get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not up in time (a starved machine): stop this one before the caller tries another
        // port, so no server outlives the test.
        eprintln!(
            "redis-server did not answer PING within 30 s on port {}",
            self.port
        );
        self.kill();
        false
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub fn conn(&self) -> redis::Connection {
        let c = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap();
        // Generous: on a loaded machine a test's own reads must not time out first.
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    }

    /// `kill -9`: no shutdown, no final AOF rewrite.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `SHUTDOWN` (graceful: the server flushes its AOF), waiting for the process to exit.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = redis::cmd("SHUTDOWN").query::<()>(&mut self.conn());
            let _ = child.wait();
        }
    }

    /// Starts again on the same port and directory (the AOF, if on, is replayed).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100)); // port in TIME_WAIT
        }
        panic!("could not restart redis-server; log:\n{}", self.log());
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}",
                self.port,
                self.log()
            );
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of `INFO <section>` as a number (`total_connections_received`, say).
pub fn info_number(conn: &mut redis::Connection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
        .trim()
        .parse()
        .unwrap()
}

/// Calls of every command the server has run so far, from `INFO commandstats` (commands run
/// inside scripts count too).
pub fn command_calls(conn: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

/// The `rpa_worker` example, built (once per test binary, through the same cargo) next to the
/// test's own binary: `cargo test --test X` alone does not build examples, and a stale binary
/// would test old code.
pub fn rpa_worker() -> PathBuf {
    example("rpa_worker")
}

/// The example `name`, built once per test binary as [`rpa_worker`] is.
pub fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<std::sync::Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(bin) = built.get(name) {
        return bin.clone();
    }
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let profile_dir = deps.parent().unwrap().to_path_buf();
    let mut cmd = Command::new(env!("CARGO"));
    // `-p threadtide`: the command's tests (cli/) include this file by `#[path]`.
    cmd.args(["build", "--quiet", "-p", "threadtide", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    // Cargo gives a test these; a build script that watches one (ring's watches
    // CARGO_MANIFEST_DIR) would see it change and rebuild, and the test's next build again.
    for (var, _) in std::env::vars_os() {
        let var = var.to_string_lossy().into_owned();
        if var == "CARGO_MANIFEST_DIR" || var.starts_with("CARGO_PKG_") || var == "CARGO_CRATE_NAME"
        {
            cmd.env_remove(var);
        }
    }
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    assert!(
        cmd.status().expect("run cargo").success(),
        "building {name} failed"
    );
    let bin = profile_dir.join("examples").join(name);
    assert!(bin.exists(), "{} missing", bin.display());
    built.insert(name.to_owned(), bin.clone());
    bin
}
