//! Real headless Chromium workers (`examples/browser_worker.rs`) on a real `redis-server`:
//! order pages read right, invoices printed to PDFs that open with the right pages and text,
//! a browser killed with `kill -9` mid-job rebuilt with the job retried, a recycle that keeps
//! the login, the memory gate. Every test ends with the leak checks: no browser process left,
//! no profile directory left, no `<defunct>` child of the test process.
//!
//! The tests run one at a time (a lock): each starts several browsers, and the machine has 2
//! cores.
#![cfg(feature = "redis")]

mod support;

#[path = "../examples/browser_worker/browser.rs"]
mod browser;
#[path = "../examples/browser_worker/jobs.rs"]
mod jobs;
#[path = "../examples/browser_worker/pool.rs"]
mod pool;
#[path = "../examples/browser_worker/procs.rs"]
mod procs;
#[path = "../examples/browser_worker/site.rs"]
mod site;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use serde_json::Value;

use browser::Counters;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const RESULTS: &str = "fila:resultados";

/// A directory for one test's profiles and PDFs; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "threadtide-browser-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        Scratch(dir)
    }
    fn profiles(&self) -> PathBuf {
        self.0.join("profiles")
    }
    fn pdfs(&self) -> PathBuf {
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
fn assert_no_leaks(root: &Path) {
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
    assert!(left().is_empty(), "profile directories left: {:?}", left());
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

fn push(server: &RedisServer, key: &str, jobs: impl IntoIterator<Item = Value>) {
    let payloads: Vec<String> = jobs.into_iter().map(|j| j.to_string()).collect();
    let _: () = server.conn().rpush(key, payloads).unwrap();
}

fn results(server: &RedisServer) -> Vec<Value> {
    let raw: Vec<String> = server.conn().lrange(RESULTS, 0, -1).unwrap();
    raw.iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect()
}

/// Checks a conferencia result against the site's data.
fn check_order(result: &Value) -> u64 {
    let id = result["id"].as_u64().unwrap();
    let (customer, total, items) = site::order(id);
    assert_eq!(result["customer"], customer, "{result}");
    assert_eq!(result["total"], total, "{result}");
    assert_eq!(result["items"], items, "{result}");
    id
}

/// Checks an emissao result and its file: it opens with lopdf, has the invoice's pages and
/// its number in the text, and is the size the result says.
fn check_invoice(result: &Value) -> u64 {
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

/// Item 7: the example as a process, 4 workers per kind, 40 jobs of each kind.
#[test]
fn four_workers_forty_jobs_of_each_kind() {
    let _one = ONE_AT_A_TIME.lock();
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new("forty");
    let ids = 1..=40u64;
    push(
        &server,
        "fila:conferencia",
        ids.clone().map(|id| serde_json::json!({ "id": id })),
    );
    push(
        &server,
        "fila:emissao",
        ids.clone().map(|id| serde_json::json!({ "id": id })),
    );
    let out = Command::new(support::redis::example("browser_worker"))
        .args(["--redis-url", &server.url(), "--site-url", &site.url()])
        .arg("--profile-root")
        .arg(scratch.profiles())
        .arg("--pdf-dir")
        .arg(scratch.pdfs())
        .args(["--max-threads-per-type", "4", "--jobs-per-thread", "10"])
        .args(["--exit-when-idle", "--heartbeat-ms", "100"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser_worker failed: {log}");
    let all = results(&server);
    let mut seen: BTreeMap<(String, u64), usize> = BTreeMap::new();
    for result in &all {
        let queue = result["queue"].as_str().unwrap().to_owned();
        let id = if queue == "conferencia" {
            check_order(result)
        } else {
            check_invoice(result)
        };
        *seen.entry((queue, id)).or_default() += 1;
    }
    for queue in ["conferencia", "emissao"] {
        for id in ids.clone() {
            assert_eq!(
                seen.get(&(queue.to_owned(), id)),
                Some(&1),
                "{queue} {id} should have one result; log:\n{log}"
            );
        }
    }
    assert_eq!(all.len(), 80);
    let done = log
        .lines()
        .find(|l| l.contains(" done: "))
        .unwrap_or_else(|| panic!("no done line in {log}"));
    println!("{done}");
    // Every browser logged in once (no job needed a new login), at most 4 per kind.
    let launched: u64 = done
        .split("browsers: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((2..=8).contains(&launched), "{done}");
    assert_eq!(site.logins(), launched, "{done}");
    assert_no_leaks(&scratch.profiles());
}
