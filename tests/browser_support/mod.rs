//! Helpers of the real-browser tests (`browser_jobs`, `browser_figures`): the example's
//! modules, a scratch directory, the leak checks, pushing jobs and reading results.
#![allow(dead_code)] // each test binary uses a different subset

#[path = "../../examples/browser_worker/browser.rs"]
pub mod browser;
#[path = "../../examples/browser_worker/jobs.rs"]
pub mod jobs;
#[path = "../../examples/browser_worker/pool.rs"]
pub mod pool;
#[path = "../../examples/browser_worker/procs.rs"]
pub mod procs;
#[path = "../../examples/browser_worker/site.rs"]
pub mod site;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::Commands;
use serde_json::Value;

use crate::support::redis::RedisServer;
use crate::support::{PATIENCE, wait_until};

pub const RESULTS: &str = "fila:resultados";

/// Prints how long the test took when dropped (`--nocapture` shows it).
pub struct Took(pub &'static str, pub std::time::Instant);

impl Took {
    pub fn new(name: &'static str) -> Took {
        Took(name, std::time::Instant::now())
    }
}

impl Drop for Took {
    fn drop(&mut self) {
        println!("{} took {:.1} s", self.0, self.1.elapsed().as_secs_f64());
    }
}

/// A directory for one test's profiles and PDFs; removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        // The example's warnings (a profile not removed, a browser still running) show in a
        // failing test's output.
        let _ = env_logger::builder()
            .is_test(true)
            .parse_filters(
                &std::env::var("BROWSER_TEST_LOG")
                    .unwrap_or_else(|_| "warn,headless_chrome=off".into()),
            )
            .try_init();
        let dir = std::env::temp_dir().join(format!(
            "threadtide-browser-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        Scratch(dir)
    }
    pub fn profiles(&self) -> PathBuf {
        self.0.join("profiles")
    }
    pub fn pdfs(&self) -> PathBuf {
        self.0.join("pdf")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The leak checks every test ends with: no process runs with a profile under `root`, no
/// profile directory is left there, and no child of this process is a zombie.
pub fn assert_no_leaks(root: &Path) {
    let prefix = root.join("threadtide-browser-");
    wait_until(
        PATIENCE,
        "no browser process left",
        || procs::with_profile_prefix(&prefix).is_empty(),
        || procs::with_profile_prefix(&prefix),
    );
    let left = || -> Vec<String> {
        std::fs::read_dir(root)
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if !left().is_empty() {
        let mut report = String::new();
        for dir in left() {
            let path = root.join(&dir);
            let entries: Vec<String> = std::fs::read_dir(&path)
                .map(|d| {
                    d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                        .collect()
                })
                .unwrap_or_default();
            let age = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            report.push_str(&format!("\n{dir} (changed {age:?} ago): {entries:?}"));
        }
        panic!("profile directories left:{report}");
    }
    // A zombie is a child that exited and was not waited for; one that is being reaped right
    // now (another thread's wait) goes away, a leaked one stays.
    let me = std::process::id();
    wait_until(
        PATIENCE,
        "no <defunct> child",
        || procs::zombies_of(me).is_empty(),
        || procs::zombies_of(me),
    );
}

/// `examples/browser_worker` as a process, its stderr in a log file. Stopped on drop, so a
/// test that gives up leaves no process behind: SIGTERM first (its exit kills its browsers;
/// a `kill -9` would leave them running), `kill -9` if it is still running after
/// [`PATIENCE`] times 2.
pub struct Example {
    child: std::process::Child,
    log_path: PathBuf,
}

impl Example {
    /// Starts the example on `server`, `site` and `scratch`'s profiles and PDFs, with `more`
    /// options (split on spaces), logging to `scratch/browser_worker.log`.
    pub fn on(server: &RedisServer, site: &site::Site, scratch: &Scratch, more: &str) -> Example {
        let mut args: Vec<std::ffi::OsString> = vec![
            "--redis-url".into(),
            server.url().into(),
            "--site-url".into(),
            site.url().into(),
            "--profile-root".into(),
            scratch.profiles().into(),
            "--pdf-dir".into(),
            scratch.pdfs().into(),
        ];
        args.extend(more.split_whitespace().map(Into::into));
        Example::start(scratch, &args)
    }

    /// Starts the example with `args`, logging to `scratch/browser_worker.log`.
    pub fn start(scratch: &Scratch, args: &[impl AsRef<std::ffi::OsStr>]) -> Example {
        let log_path = scratch.0.join("browser_worker.log");
        let child = std::process::Command::new(crate::support::redis::example("browser_worker"))
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        Example { child, log_path }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits up to `within` for `condition` while the process runs; panics with `what`, what
    /// `state` says and the log if it exits first or the time is up.
    pub fn wait_until<S: std::fmt::Debug>(
        &mut self,
        within: Duration,
        what: &str,
        mut condition: impl FnMut() -> bool,
        state: impl Fn() -> S,
    ) {
        let deadline = std::time::Instant::now() + within;
        while !condition() {
            let exited = self.child.try_wait().unwrap();
            if exited.is_some() || std::time::Instant::now() > deadline {
                panic!(
                    "{what}: not after {within:?} (exited: {exited:?}); state {:?}; log:\n{}",
                    state(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for the process to exit; its status.
    pub fn exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "browser_worker still running after {within:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + PATIENCE * 2;
        while self.child.try_wait().ok().flatten().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn push(server: &RedisServer, key: &str, jobs: impl IntoIterator<Item = Value>) {
    let payloads: Vec<String> = jobs.into_iter().map(|j| j.to_string()).collect();
    let _: () = server.conn().rpush(key, payloads).unwrap();
}

pub fn results(server: &RedisServer) -> Vec<Value> {
    let raw: Vec<String> = server.conn().lrange(RESULTS, 0, -1).unwrap();
    raw.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Checks a conferencia result against the site's data.
pub fn check_order(result: &Value) -> u64 {
    let id = result["id"].as_u64().unwrap();
    let (customer, total, items) = site::order(id);
    assert_eq!(result["customer"], customer, "{result}");
    assert_eq!(result["total"], total, "{result}");
    assert_eq!(result["items"], items, "{result}");
    id
}

/// Checks an emissao result and its file: it opens with lopdf, has the invoice's pages and
/// its number in the text, and is the size the result says.
pub fn check_invoice(result: &Value) -> u64 {
    let id = result["id"].as_u64().unwrap();
    let path = PathBuf::from(result["path"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(result["bytes"], bytes.len(), "{result}");
    let pdf = jobs::read_pdf(&bytes).unwrap();
    assert_eq!(pdf.pages, usize::from(site::invoice_pages(id)), "{result}");
    assert_eq!(result["pages"], pdf.pages, "{result}");
    assert!(
        pdf.text.contains(&site::invoice_number(id)),
        "invoice {id}: {:?}",
        pdf.text
    );
    // The last line item is in the text too (on page 2 of a 2-page invoice).
    let last = format!("Item {} do pedido {id}", site::invoice_rows(id));
    assert!(pdf.text.contains(&last), "invoice {id} lacks {last:?}");
    id
}

/// A pool of the example's conferencia queue in this process, its browsers' profiles and PDFs
/// in `scratch`, threads named `prefix-...`; quick retries and heartbeats for tests.
pub fn conferencia_config(
    server: &RedisServer,
    site: &site::Site,
    scratch: &Scratch,
    prefix: &str,
) -> pool::Config {
    let mut config = pool::Config::new(server.url(), site.url(), scratch.pdfs());
    config.queues = vec![("conferencia".to_owned(), "fila:conferencia".to_owned())];
    config.browser.profile_root = scratch.profiles();
    config.thread_prefix = prefix.to_owned();
    config.heartbeat = Some(Duration::from_millis(100));
    config.retry_backoff = Some(Duration::from_millis(50));
    config
}

pub fn orders(ids: impl IntoIterator<Item = u64>) -> impl Iterator<Item = Value> {
    ids.into_iter().map(|id| serde_json::json!({ "id": id }))
}

/// Waits for `n` results, checks every one against the site and that each of `ids` has
/// exactly one.
pub fn wait_orders(server: &RedisServer, ids: std::ops::RangeInclusive<u64>, what: &str) {
    let n = ids.clone().count();
    wait_until(
        PATIENCE * 2,
        what,
        || results(server).len() >= n,
        || results(server).len(),
    );
    let mut got: Vec<u64> = results(server).iter().map(check_order).collect();
    got.sort_unstable();
    assert_eq!(got, ids.collect::<Vec<_>>());
}
