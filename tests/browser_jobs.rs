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

/// A pool of the example's conferencia queue in this process, its browsers' profiles and PDFs
/// in `scratch`, threads named `prefix-...`; quick retries and heartbeats for tests.
fn conferencia_config(
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

fn orders(ids: impl IntoIterator<Item = u64>) -> impl Iterator<Item = Value> {
    ids.into_iter().map(|id| serde_json::json!({ "id": id }))
}

/// Waits for `n` results, checks every one against the site and that each of `ids` has
/// exactly one.
fn wait_orders(server: &RedisServer, ids: std::ops::RangeInclusive<u64>, what: &str) {
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

/// Lets held pages through when dropped: a failing test does not leave a job waiting.
struct ReleaseOnDrop<'a>(&'a site::Site);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release_holds();
    }
}

/// Item 8: `kill -9` of a worker's Chromium while its job's page is loading. The job fails on
/// the dead browser and is retried, the health check before the worker's next fetch finds the
/// browser dead, the state is dropped (the zombie reaped, the profile removed) and rebuilt.
#[test]
fn browser_killed_mid_job_is_rebuilt_and_the_job_retried() {
    let _one = ONE_AT_A_TIME.lock();
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new("kill");
    let mut config = conferencia_config(&server, &site, &scratch, "bk");
    config.min_threads = Some(2);
    config.max_threads_per_type = Some(2);
    let counters = std::sync::Arc::clone(&config.browser.counters);
    let pool = pool::builder(&config).unwrap().0.build().unwrap();
    push(&server, "fila:conferencia", orders(1..=2));
    push(
        &server,
        "fila:conferencia",
        [serde_json::json!({"id": 3, "hold": true})],
    );
    push(&server, "fila:conferencia", orders(4..=6));
    pool.start().unwrap();
    let _release = ReleaseOnDrop(&site);

    wait_until(
        PATIENCE,
        "job 3's page held",
        || site.held() == 1,
        || site.held(),
    );
    let agent = site.held_agents().pop().unwrap();
    let worker = agent.rsplit('/').next().unwrap().to_owned();
    let me = std::process::id();
    let profile = scratch
        .profiles()
        .join(format!("threadtide-browser-{me}-{worker}-"));
    let main: Vec<u32> = procs::with_profile_prefix(&profile)
        .into_iter()
        .filter(|pid| procs::stat(*pid).is_some_and(|(_, ppid)| ppid == me))
        .collect();
    assert_eq!(main.len(), 1, "{worker}'s browser: {main:?}");
    procs::kill(&main);
    wait_until(
        PATIENCE,
        "the browser dead",
        || !procs::running(main[0]),
        || procs::stat(main[0]),
    );
    site.release_holds();

    wait_orders(&server, 1..=6, "all 6 orders read");
    let stats = pool.stats();
    let q = stats.queue("conferencia").unwrap();
    // The killed browser's job failed (and was retried), the check found the browser dead.
    assert!(q.jobs_failed >= 1, "{q:?}");
    assert!(q.health_check_failures >= 1, "{q:?}");
    // Two browsers, and one rebuilt: the other worker's was never touched.
    assert_eq!(Counters::get(&counters.launches), 3);
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_eq!(Counters::get(&counters.closed), 3);
    assert_no_leaks(&scratch.profiles());
}

/// One run of item 9: 3 workers, 60 orders, `recycle_after(10)`; returns the site's login
/// count and the queue's recycles and carried counts.
fn recycle_run(carry: bool) -> (u64, u64, u64) {
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new(if carry { "carry" } else { "nocarry" });
    let mut config = conferencia_config(&server, &site, &scratch, "br");
    config.min_threads = Some(3);
    config.max_threads_per_type = Some(3);
    config.recycle_after = Some(10);
    config.carry_over = carry;
    let counters = std::sync::Arc::clone(&config.browser.counters);
    let pool = pool::builder(&config).unwrap().0.build().unwrap();
    push(&server, "fila:conferencia", orders(1..=60));
    pool.start().unwrap();
    wait_orders(&server, 1..=60, "all 60 orders read");
    pool.shutdown_timeout(PATIENCE).unwrap();
    let stats = pool.stats();
    let q = stats.queue("conferencia").unwrap();
    assert_eq!(
        Counters::get(&counters.closed),
        Counters::get(&counters.launches)
    );
    assert_eq!(site.logins(), Counters::get(&counters.logins));
    assert_no_leaks(&scratch.profiles());
    (site.logins(), q.recycles, q.carried)
}

/// Item 9: with carry-over, a recycled browser's session cookie goes to the next one, so 60
/// jobs over 3 workers recycled every 10 jobs log in no more than 3 times; without it, every
/// new browser logs in.
#[test]
fn recycle_with_carry_over_logs_in_once_per_worker() {
    let _one = ONE_AT_A_TIME.lock();
    let (logins, recycles, carried) = recycle_run(true);
    println!("carry-over: {logins} logins, {recycles} recycles, {carried} carried");
    // Some worker ran at least 20 of the 60 jobs, so it was recycled at least once.
    assert!(
        recycles >= 1 && carried >= 1,
        "{recycles} recycles, {carried} carried"
    );
    assert!(logins <= 3, "{logins} logins with carry-over");
    let (logins, recycles, carried) = recycle_run(false);
    println!("no carry-over: {logins} logins, {recycles} recycles, {carried} carried");
    assert!(recycles >= 1, "{recycles}");
    assert_eq!(carried, 0);
    assert!(logins > 3, "{logins} logins without carry-over");
}

/// Item 10: with a minimum above the free memory no browser starts and the queue's reason
/// says memory; lowering it at runtime lets the worker start and the jobs complete.
#[test]
fn memory_gate_holds_browsers_until_lowered() {
    let _one = ONE_AT_A_TIME.lock();
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new("memory");
    let mut config = conferencia_config(&server, &site, &scratch, "bm");
    config.min_free_memory = Some(u64::MAX / 2);
    let counters = std::sync::Arc::clone(&config.browser.counters);
    let pool = pool::builder(&config).unwrap().0.build().unwrap();
    push(&server, "fila:conferencia", orders(1..=4));
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the memory gate holding",
        || {
            let stats = pool.stats();
            stats.free_memory.is_some()
                && stats.queue("conferencia").unwrap().size_reason == threadtide::SizeReason::Memory
        },
        || pool.stats(),
    );
    let stats = pool.stats();
    assert!(stats.free_memory.unwrap() < stats.min_free_memory.unwrap());
    let q = stats.queue("conferencia").unwrap();
    assert_eq!((q.spawned, q.workers, q.backlog), (0, 0, 4), "{q:?}");
    assert_eq!(Counters::get(&counters.launches), 0);
    assert!(procs::with_profile_prefix(&scratch.profiles()).is_empty());

    pool.set_min_free_memory(Some(1 << 20));
    wait_orders(&server, 1..=4, "the 4 orders read once the gate opened");
    assert!(Counters::get(&counters.launches) >= 1);
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_no_leaks(&scratch.profiles());
}
