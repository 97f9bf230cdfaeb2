//! What the dashboard tests share: the `threadtide dashboard` process, a real headless
//! Chromium driven over the DevTools protocol, the `rpa_worker` example, raw HTTP requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

pub const PATIENCE: Duration = Duration::from_secs(30);

/// Polls `cond` until it returns `Some`, or panics after `within` with the last state seen.
pub fn wait_until<T, S: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut cond: impl FnMut() -> Result<T, S>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match cond() {
            Ok(v) => return v,
            Err(seen) if Instant::now() >= deadline => {
                panic!("timed out after {within:?} waiting for {what}; last seen: {seen:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `rpa_worker` example of the root crate, built once per test binary by the same cargo.
pub use crate::redis_server::rpa_worker;

/// A child process killed (`kill -9`) and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A real `rpa_worker` on `queues` (`name=key`), results to `results`.
pub fn start_rpa_worker(url: &str, queues: &[&str], results: &str) -> Proc {
    let mut cmd = Command::new(rpa_worker());
    cmd.args(["--redis", url, "--results", results, "--init-ms", "10"])
        .args(["--heartbeat-ms", "200", "--worker-ttl-ms", "2000"])
        .args(["--jobs-per-thread", "20", "--max-threads-per-type", "4"])
        .args([
            "--rebalance-interval-ms",
            "200",
            "--shutdown-timeout-ms",
            "2000",
        ]);
    for q in queues {
        cmd.args(["--queue", q]);
    }
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rpa_worker"),
    )
}

/// `threadtide --redis URL dashboard --listen 127.0.0.1:0 ARGS`, with the URL it printed.
pub struct Dashboard {
    pub proc: Proc,
    pub base: String,
}

impl Dashboard {
    pub fn start(redis_url: &str, args: &[&str]) -> Dashboard {
        let mut child = Command::new(env!("CARGO_BIN_EXE_threadtide"))
            .args(["--redis", redis_url, "dashboard", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn threadtide dashboard");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("threadtide dashboard on ")
            .unwrap_or_else(|| panic!("first line: {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Dashboard {
            proc: Proc(child),
            base,
        }
    }

    /// One raw HTTP/1.0 request: (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let addr = self.base.strip_prefix("http://").unwrap();
        self.request_host(addr, method, path, headers, body)
    }

    /// As [`request`](Self::request) with the `Host` header given.
    pub fn request_host(
        &self,
        host: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let addr = self.base.strip_prefix("http://").unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
        (status, body)
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, &[], "");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// A real headless Chromium (Debian's /usr/bin/chromium) with its own port and profile.
pub struct Chrome {
    pub browser: Browser,
    pub tab: Arc<Tab>,
    profile: PathBuf,
}

impl Chrome {
    pub fn launch() -> Chrome {
        let profile = std::env::temp_dir().join(format!(
            "threadtide-chrome-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let options = LaunchOptions::default_builder()
            .path(Some(PathBuf::from("/usr/bin/chromium")))
            .headless(true)
            .sandbox(false)
            .port(Some(free_port()))
            .user_data_dir(Some(profile.clone()))
            .window_size(Some((1400, 1000)))
            .idle_browser_timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let browser =
            Browser::new(options).expect("chromium must be installed (bash .ci/test installs it)");
        let tab = browser.new_tab().unwrap();
        tab.set_default_timeout(PATIENCE);
        Chrome {
            browser,
            tab,
            profile,
        }
    }

    pub fn open(&self, url: &str) {
        self.tab.navigate_to(url).unwrap();
        self.tab.wait_until_navigated().unwrap();
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value as JSON.
    pub fn eval(&self, js: &str) -> Value {
        let r = self
            .tab
            .evaluate(js, true)
            .unwrap_or_else(|e| panic!("evaluate {js}: {e}"));
        r.value.unwrap_or(Value::Null)
    }

    /// The text of the first element matching `selector`, or "" when there is none.
    pub fn text(&self, selector: &str) -> String {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.textContent : ''; }})()",
            Value::from(selector)
        );
        self.eval(&js).as_str().unwrap_or_default().to_owned()
    }

    /// Clicks the element (a real mouse click at its centre, through the DevTools protocol).
    pub fn click(&self, selector: &str) {
        self.tab
            .wait_for_element(selector)
            .unwrap()
            .click()
            .unwrap();
    }

    pub fn screenshot(&self, path: &std::path::Path) {
        use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
        let png = self
            .tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Chrome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

pub fn now_ms(conn: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(conn).unwrap();
    s * 1000 + us / 1000
}

/// A dead-letter record in the library's layout (docs/RELIABILITY.md), with a payload that
/// `rpa_worker` runs successfully once requeued.
pub fn dead_record(queue: &str, id: &str, time_ms: u64) -> String {
    serde_json::json!({
        "queue": queue, "reason": "attempts_exhausted", "error": "downstream timed out",
        "attempts": 3, "worker": format!("rpa-{queue}-1"), "worker_id": "h:1:n:0:0",
        "time_ms": time_ms, "payload": serde_json::json!({"id": id, "ms": 5}).to_string(),
    })
    .to_string()
}
