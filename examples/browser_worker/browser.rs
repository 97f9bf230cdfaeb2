//! One worker's headless Chromium: its own profile directory and debugging port, logged in to
//! the site once. Dropping a [`Session`] closes the browser, reaps its process (no
//! `<defunct>` left), waits until no process of its profile is left, and removes the profile
//! directory, on every path (recycle, failed health check, panicked job, worker exit, pool
//! stop, a browser killed from outside).
#![allow(dead_code)] // the example and each test use a different part

use std::error::Error;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::{Network, Runtime};
use headless_chrome::{Browser, LaunchOptions, Tab};
use parking_lot::{Condvar, Mutex};

use super::procs;
use super::site;

/// Where the browsers are and what they log in to; shared by every worker of the process.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// The browser binary: `CHROME`, else `/usr/bin/chromium`.
    pub chrome: PathBuf,
    /// The site's base URL, `http://127.0.0.1:PORT`.
    pub site: String,
    /// Profiles are made here, as `threadtide-browser-<pid>-<worker>-<n>`.
    pub profile_root: PathBuf,
    /// How long the connection to a browser may stay silent before headless_chrome closes it
    /// (a health check then sees it closed).
    pub idle_timeout: Duration,
    /// How long the health check waits for the tab's answer; past it the browser counts as
    /// hung (killed when its state drops).
    pub health_timeout: Duration,
    /// A test hook: each launch waits this long between making its profile directory and
    /// starting the browser (`--launch-delay-ms`; default 0), so a test can act while a launch
    /// is surely in flight.
    pub launch_delay: Duration,
    pub counters: Arc<Counters>,
}

impl BrowserConfig {
    pub fn new(site: String, profile_root: PathBuf) -> BrowserConfig {
        BrowserConfig {
            chrome: std::env::var_os("CHROME")
                .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from),
            site,
            profile_root,
            idle_timeout: Duration::from_secs(600),
            health_timeout: Duration::from_secs(5),
            launch_delay: Duration::ZERO,
            counters: Arc::default(),
        }
    }

    /// Refuses a `profile_root` holding whitespace: Chromium's helpers show their arguments
    /// joined by spaces in /proc/<pid>/cmdline, so the processes of such a profile could not be
    /// found (to wait for them, or to kill them at exit). The error names the option and the
    /// value.
    pub fn check(&self) -> Result<(), String> {
        let root = self.profile_root.display().to_string();
        if root.chars().any(char::is_whitespace) {
            return Err(format!(
                "--profile-root (or the temp dir) must hold no whitespace: {root:?}"
            ));
        }
        Ok(())
    }

    /// The prefix of every profile directory this process makes under `profile_root`.
    pub fn profile_prefix(&self) -> String {
        format!("threadtide-browser-{}-", std::process::id())
    }
}

/// Launches in flight (inside [`Session::open`], from its profile directory's creation to
/// `Browser::new`'s return), and whether the process is exiting (no launch may start).
static LAUNCHES: Mutex<(usize, bool)> = Mutex::new((0, false));
static LAUNCHED: Condvar = Condvar::new();

/// Counts one launch in flight; refused once the process is exiting.
struct Launching;

impl Launching {
    fn start() -> Result<Launching, BoxError> {
        let mut launches = LAUNCHES.lock();
        if launches.1 {
            return Err("the process is exiting: no new browser".into());
        }
        launches.0 += 1;
        Ok(Launching)
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        LAUNCHES.lock().0 -= 1;
        LAUNCHED.notify_all();
    }
}

/// Whether [`close_all`] has run: a browser launched after it closes itself at once.
fn exiting() -> bool {
    LAUNCHES.lock().1
}

/// For the end of `main`, once the pool is drained: stops every later launch, waits (up to
/// `within`) for the launches in flight, then [`sweep`]s. A worker thread still running at the
/// shutdown deadline keeps its state (never dropped) and may be inside `init`: past this call
/// it can make no browser that outlives the process, since every process launched before it
/// is running when the sweep looks (`Browser::new` returned), and none starts after.
/// Returns how many profiles the sweep removed.
pub fn close_all(config: &BrowserConfig, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut launches = LAUNCHES.lock();
    launches.1 = true;
    if launches.0 > 0 {
        log::info!(
            "exit: waiting for {} browser launch(es) in flight",
            launches.0
        );
    }
    while launches.0 > 0 {
        if LAUNCHED.wait_until(&mut launches, deadline).timed_out() {
            log::warn!("{} browser launch(es) still in flight at exit", launches.0);
            break;
        }
    }
    drop(launches);
    sweep(config)
}

/// Kills the browsers of this process still running under `config.profile_root` and removes
/// their profiles (see [`close_all`]). Returns how many profiles it removed.
pub fn sweep(config: &BrowserConfig) -> usize {
    let prefix = config.profile_root.join(config.profile_prefix());
    procs::kill(&procs::with_profile_prefix(&prefix));
    let Ok(entries) = std::fs::read_dir(&config.profile_root) else {
        return 0;
    };
    let mine = config.profile_prefix();
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&mine))
        .map(|e| drop(ProfileDir(e.path())))
        .count()
}

/// For the start of `main`: kills the browsers and removes the profiles that a process killed
/// before its exit sweep (`kill -9`, an OOM kill) left under `config.profile_root`, those named
/// `threadtide-browser-<pid>-...` whose pid runs no more (a Chromium outlives its parent).
/// A profile whose pid runs (this process, another host, a reused pid) is left alone. The
/// pids are this pid namespace's: a profile root shared with hosts in other containers would
/// see theirs as dead, so give each its own (the default, the temp dir, usually is).
/// Returns how many profiles it removed.
pub fn sweep_stale(config: &BrowserConfig) -> usize {
    let Ok(entries) = std::fs::read_dir(&config.profile_root) else {
        return 0;
    };
    let dead_pid = |name: &str| -> Option<u32> {
        let (pid, _) = name.strip_prefix("threadtide-browser-")?.split_once('-')?;
        let pid: u32 = pid.parse().ok()?;
        (pid != std::process::id() && !procs::running(pid)).then_some(pid)
    };
    let stale: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((dead_pid(&e.file_name().to_string_lossy())?, e.path())))
        .collect();
    for (pid, _) in &stale {
        let prefix = config
            .profile_root
            .join(format!("threadtide-browser-{pid}-"));
        procs::kill(&procs::with_profile_prefix(&prefix));
    }
    stale
        .into_iter()
        .map(|(_, dir)| drop(ProfileDir(dir)))
        .count()
}

/// What the workers' browsers did, for tests and logs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Browsers launched (an `init`).
    pub launches: AtomicU64,
    /// Logins through the form.
    pub logins: AtomicU64,
    /// Inits that started from a carried session cookie instead of the form.
    pub carried: AtomicU64,
    /// Sessions dropped (browser closed, reaped, profile removed).
    pub closed: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// The session cookie a recycled browser hands to the next `init` (`Queue::carry_over`).
#[derive(Debug, Clone)]
pub struct SessionCookie {
    pub value: String,
}

/// Holds a profile directory; removes it on drop (after the browser is gone).
struct ProfileDir(PathBuf);

impl Drop for ProfileDir {
    fn drop(&mut self) {
        // Chromium's helpers (zygote, renderers, GPU) outlive the main process by a moment
        // and may still write here; remove only once none of them runs.
        let gone = procs::wait_gone(&self.0, Duration::from_secs(10));
        log::debug!("profile {}: processes gone: {gone}", self.0.display());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.exists() {
            match std::fs::remove_dir_all(&self.0) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => {
                    log::warn!("profile {} not removed: {e}", self.0.display());
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        log::debug!("profile {} removed: {}", self.0.display(), !self.0.exists());
    }
}

/// A logged-in headless Chromium, one per worker.
pub struct Session {
    // Drop order matters: the tab and the browser go first (closing and reaping the process),
    // then the profile directory. Both are `Option`s so `Drop` can take them in that order.
    tab: Option<Arc<Tab>>,
    browser: Option<Browser>,
    profile: Option<ProfileDir>,
    pid: u32,
    cookie: SessionCookie,
    site: String,
    counters: Arc<Counters>,
    /// Page loads so far (a nonce in each URL tells a fresh page from the previous one).
    loads: u64,
    pub worker: String,
    /// How long the launch took (process start to a usable tab), and the login (the form, or
    /// setting a carried cookie).
    pub launch_time: Duration,
    pub login_time: Duration,
    health_timeout: Duration,
    /// A health check's call that did not answer in time (joined once the browser is killed).
    hung: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("worker", &self.worker)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

static PROFILES: AtomicU64 = AtomicU64::new(0);

/// A path a kernel may not like in a file name (thread names hold only these, but be safe).
fn file_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Session {
    /// Launches a browser for `worker` and logs in: with `carried`, by setting that cookie
    /// (no form); otherwise through the login form.
    pub fn open(
        config: &BrowserConfig,
        worker: &str,
        carried: Option<SessionCookie>,
    ) -> Result<Session, BoxError> {
        let dir = config.profile_root.join(format!(
            "{}{}-{}",
            config.profile_prefix(),
            file_safe(worker),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let launching = Launching::start()?;
        std::fs::create_dir_all(&dir)?;
        let profile = ProfileDir(dir.clone());
        std::thread::sleep(config.launch_delay);
        let agent = format!("--user-agent=threadtide-browser/{worker}");
        let options = LaunchOptions::default_builder()
            .path(Some(config.chrome.clone()))
            .headless(true)
            .sandbox(false)
            // 0: Chromium binds a free port itself and prints it; no race between workers.
            .port(Some(0))
            .user_data_dir(Some(dir))
            .window_size(Some((1024, 768)))
            .idle_browser_timeout(config.idle_timeout)
            .args(vec![
                OsStr::new(&agent),
                OsStr::new("--disable-crash-reporter"),
            ])
            .build()?;
        config.counters.launches.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        // On an error here, `Browser::new` has killed and reaped the process; `profile` drops.
        let browser = Browser::new(options)?;
        drop(launching);
        let pid = browser.get_process_id().unwrap_or(0);
        let tab = browser.new_tab()?;
        tab.set_default_timeout(Duration::from_secs(20));
        let mut session = Session {
            tab: Some(tab),
            browser: Some(browser),
            profile: Some(profile),
            pid,
            cookie: SessionCookie {
                value: String::new(),
            },
            site: config.site.clone(),
            counters: Arc::clone(&config.counters),
            loads: 0,
            worker: worker.to_owned(),
            launch_time: started.elapsed(),
            login_time: Duration::ZERO,
            health_timeout: config.health_timeout,
            hung: None,
        };
        if exiting() {
            // Launched while `close_all` waited: this drop closes it (its sweep kills it too).
            return Err("the process is exiting: browser closed".into());
        }
        let login_started = Instant::now();
        match carried {
            Some(cookie) => {
                session.set_cookie(&cookie)?;
                session.cookie = cookie;
                config.counters.carried.fetch_add(1, Ordering::SeqCst);
            }
            None => session.login()?,
        }
        session.login_time = login_started.elapsed();
        Ok(session)
    }

    fn tab(&self) -> &Tab {
        self.tab.as_ref().expect("a live session has its tab")
    }

    /// The browser's main process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The profile directory.
    pub fn profile(&self) -> &Path {
        &self
            .profile
            .as_ref()
            .expect("a live session has its profile")
            .0
    }

    /// The session cookie, to carry to the next browser.
    pub fn cookie(&self) -> SessionCookie {
        self.cookie.clone()
    }

    fn set_cookie(&self, cookie: &SessionCookie) -> Result<(), BoxError> {
        self.tab().call_method(Network::SetCookie {
            name: site::COOKIE.to_owned(),
            value: cookie.value.clone(),
            url: Some(self.site.clone()),
            domain: None,
            path: Some("/".to_owned()),
            secure: None,
            http_only: Some(true),
            same_site: None,
            expires: None,
            priority: None,
            same_party: None,
            source_scheme: None,
            source_port: None,
            partition_key: None,
        })?;
        Ok(())
    }

    /// Logs in through the form (a real POST from the page) and keeps the cookie it set.
    pub fn login(&mut self) -> Result<(), BoxError> {
        self.goto("/login")?;
        self.wait_for("document.querySelector('#login-form') ? 'ready' : null")?;
        let submit = format!(
            "document.querySelector('#user').value = {}; \
             document.querySelector('#password').value = {}; \
             document.querySelector('#login-form').submit(); 'sent'",
            serde_json::Value::from(site::USER),
            serde_json::Value::from(site::PASSWORD)
        );
        self.eval(&submit)?;
        let outcome = self.wait_for(
            "document.querySelector('#welcome') ? 'ok' \
             : document.querySelector('#login-failed') ? 'refused' : null",
        )?;
        if outcome != "ok" {
            return Err(format!("login refused for {}", self.worker).into());
        }
        let cookies = self.tab().get_cookies()?;
        let value = cookies
            .into_iter()
            .find(|c| c.name == site::COOKIE)
            .ok_or("logged in, but no session cookie")?
            .value;
        self.cookie = SessionCookie { value };
        self.counters.logins.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Is the browser usable: its process runs (not a zombie) and the tab answers a cheap
    /// protocol call.
    pub fn health(&mut self) -> Result<(), String> {
        if !procs::running(self.pid) {
            return Err(format!(
                "browser {} (pid {}) is not running",
                self.worker, self.pid
            ));
        }
        // headless_chrome waits for an answer up to the idle timeout (minutes): ask from a
        // thread, wait `health_timeout` for it. A browser that does not answer (stopped, hung)
        // is killed when its state drops, which ends that call too.
        let tab = Arc::clone(self.tab.as_ref().expect("a live session has its tab"));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let call = std::thread::Builder::new()
            .name(format!("health-{}", self.worker))
            .spawn(move || {
                let _ = tx.send(evaluate(&tab, "1 + 1").map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("no thread for the health check: {e}"))?;
        match rx.recv_timeout(self.health_timeout) {
            Ok(answer) => {
                let _ = call.join();
                match answer {
                    Ok(v) if v == "2" => Ok(()),
                    Ok(v) => Err(format!("tab of {} answered {v}", self.worker)),
                    Err(e) => Err(format!("tab of {} does not answer: {e}", self.worker)),
                }
            }
            Err(_) => {
                self.hung = Some(call);
                Err(format!(
                    "tab of {} gave no answer within {:?}",
                    self.worker, self.health_timeout
                ))
            }
        }
    }

    /// Starts loading `path` (under the site) with a fresh nonce; returns the full URL.
    pub fn goto(&mut self, path: &str) -> Result<String, BoxError> {
        self.loads += 1;
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{}{path}{sep}v={}", self.site, self.loads);
        self.tab().navigate_to(&url)?;
        Ok(url)
    }

    /// Evaluates `js` in the page; its value as a string (`""` for null or undefined).
    pub fn eval(&self, js: &str) -> Result<String, BoxError> {
        evaluate(self.tab(), js)
    }

    /// Polls `js` (every 5 ms, up to 20 s) until it returns a non-empty string: waiting for a
    /// selector, not for headless_chrome's navigation events (which cost 1-2 s each here). A
    /// page being replaced makes an evaluation fail; that is a retry, unless the browser died.
    pub fn wait_for(&self, js: &str) -> Result<String, BoxError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.eval(js) {
                Ok(v) if !v.is_empty() => return Ok(v),
                Ok(_) => {}
                Err(e) if !procs::running(self.pid) || Instant::now() > deadline => {
                    return Err(format!("browser {} failed: {e}", self.worker).into());
                }
                Err(_) => {}
            }
            if Instant::now() > deadline {
                return Err(format!("timed out waiting for {js}").into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Prints the current page to PDF (A4, 1 cm margins).
    pub fn print_pdf(&self) -> Result<Vec<u8>, BoxError> {
        let options = headless_chrome::types::PrintToPdfOptions {
            paper_width: Some(8.27),
            paper_height: Some(11.69),
            margin_top: Some(0.4),
            margin_bottom: Some(0.4),
            margin_left: Some(0.4),
            margin_right: Some(0.4),
            ..Default::default()
        };
        Ok(self.tab().print_to_pdf(Some(options))?)
    }
}

/// Evaluates `js` in `tab`'s page; its value as a string (`""` for null or undefined).
fn evaluate(tab: &Tab, js: &str) -> Result<String, BoxError> {
    let result = tab.call_method(Runtime::Evaluate {
        expression: js.to_owned(),
        object_group: None,
        include_command_line_api: None,
        silent: Some(true),
        context_id: None,
        return_by_value: Some(true),
        generate_preview: None,
        user_gesture: None,
        await_promise: None,
        throw_on_side_effect: None,
        timeout: None,
        disable_breaks: None,
        repl_mode: None,
        allow_unsafe_eval_blocked_by_csp: None,
        unique_context_id: None,
        serialization_options: None,
    })?;
    if let Some(exception) = result.exception_details {
        return Err(format!("page script failed: {}", exception.text).into());
    }
    Ok(match result.result.value {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    })
}

impl Drop for Session {
    fn drop(&mut self) {
        let hung = self.hung.take();
        if hung.is_some() {
            // Its close would wait minutes for an answer too: kill it first (headless_chrome
            // still reaps it below).
            procs::kill(&[self.pid]);
        }
        drop(self.tab.take());
        // headless_chrome's Drop asks the browser to close, then kills and waits for the
        // process (reaped: no zombie), also when it was killed from outside.
        drop(self.browser.take());
        // And if something kept it alive: kill and reap it ourselves is not possible without
        // the Child (headless_chrome owns it), so at least say so.
        if procs::running(self.pid) {
            log::warn!(
                "browser of {} (pid {}) still running",
                self.worker,
                self.pid
            );
        }
        if let Some(call) = hung {
            let _ = call.join(); // the connection closed: the call returned
        }
        drop(self.profile.take());
        self.counters.closed.fetch_add(1, Ordering::SeqCst);
    }
}
