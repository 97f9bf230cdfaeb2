//! The host's two job kinds with real headless Chromium, on threadtide: Redis lists in, results
//! list out, a browser per worker.
//!
//! ```text
//! cargo run --example browser_worker -- --redis-url redis://127.0.0.1:6379 --pdf-dir /tmp/nf \
//!     [--site-url URL] [--queue conferencia=fila:conferencia] [--queue emissao=fila:emissao] \
//!     [--results fila:resultados] [--max-threads-per-type N] [--exit-when-idle] ...
//! ```
//!
//! - `conferencia` (list `fila:conferencia`): each worker owns a headless Chromium logged in to
//!   the site once, in `init`; a job `{"id": 17}` opens `/order/17`, waits for its values (a
//!   selector, not a navigation event) and returns `{"id","queue","worker","customer","total",
//!   "items"}`.
//! - `emissao` (list `fila:emissao`): prints `/invoice/<id>` to PDF (`Page.printToPDF`), checks
//!   it with lopdf (the invoice's page count, its number in the text), writes it under `--pdf-dir`
//!   and returns `{"id","queue","worker","path","bytes","pages"}`.
//!
//! Without `--site-url` the example serves the test site itself on a free loopback port
//! (login form, order and invoice pages; see `browser_worker/site.rs`) and logs its address.
//! Each browser has its own debugging port (chosen by Chromium: `--remote-debugging-port=0`)
//! and its own profile `threadtide-browser-<pid>-<worker>-<n>` under `--profile-root`
//! (default: the temp dir); dropping a worker's state closes the browser, reaps its process
//! and removes the profile, whatever the reason (recycle, failed health check, panicked job,
//! scale-down, stop, a browser killed from outside). `CHROME` names another browser binary.
//!
//! Options as in `rpa_worker` where they mean the same: `--redis-url URL` (or `--redis`),
//! `--queue NAME=KEY` (repeatable; default both kinds), `--results KEY`, `--jobs-per-thread N`,
//! `--max-threads-per-type N`, `--max-total-threads N`, `--min-threads N`,
//! `--rebalance-interval-ms N`, `--scale-down-delay-ms N`, `--block-ms N`, `--max-attempts N`,
//! `--retry-backoff-ms N`, `--heartbeat-ms N`, `--worker-ttl-ms N`, `--job-timeout-ms N` (a
//! browser hung mid-job holds the job for headless_chrome's call timeout, 10 min here; this
//! runs it again elsewhere sooner), `--recycle-after N`,
//! `--shutdown-timeout-ms N` (default 30000), `--exit-when-idle` (every queue empty
//! fleet-wide), `--no-fleet`, `--fleet NAME`. The worker-state lifecycle:
//! `--recycle-after-age-ms N`, `--recycle-jitter F`, `--carry-over` (a recycled browser's
//! session cookie goes to the next one: no new login), `--no-health-check`,
//! `--health-check-every-ms N`, `--health-timeout-ms N` (default 5000: a tab that does not
//! answer the check by then is a hung browser, killed and rebuilt), `--min-free-memory BYTES`,
//! `--init-concurrency K`. A test hook: `--launch-delay-ms N` (each launch waits N ms after
//! making its profile directory).
//!
//! At startup the profiles (and browsers) that a killed `browser_worker` left under
//! `--profile-root` are removed; at exit no new browser starts, the launches in flight are
//! waited for, and any browser still open is killed.
//!
//! Exit status: 0 after a drained stop (SIGTERM / SIGINT or `--exit-when-idle`); 2 for a bad
//! option, a `--profile-root` with whitespace or a setting `build()` refuses
//! (`browser_worker: <what>` on stderr). The last log
//! line says `browser_worker <pid> done: ...` with the jobs and the browsers' counts.
//! A payload that is not `{"id": N}` is dead-lettered as `malformed`.

#[path = "browser_worker/browser.rs"]
mod browser;
#[path = "browser_worker/jobs.rs"]
mod jobs;
#[path = "browser_worker/pool.rs"]
mod pool;
#[path = "browser_worker/procs.rs"]
mod procs;
#[path = "browser_worker/site.rs"]
mod site;

#[path = "common/cli.rs"]
mod cli;

use std::error::Error;
use std::path::PathBuf;
use std::time::Duration;

use browser::Counters;

const EXIT_CANNOT_START: i32 = 2;
/// How long the exit waits for browser launches in flight (headless_chrome's own bound is 30 s).
const LAUNCH_WAIT: Duration = Duration::from_secs(35);

struct Args {
    config: pool::Config,
    site_url: Option<String>,
    exit_when_idle: bool,
    shutdown_timeout: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut config = pool::Config::new(String::new(), String::new(), PathBuf::new());
    config.queues.clear();
    let (mut site_url, mut exit_when_idle, mut pdf_dir) = (None, false, None);
    let mut shutdown_timeout = Duration::from_secs(30);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--exit-when-idle" => exit_when_idle = true,
            "--no-fleet" => config.no_fleet = true,
            "--carry-over" => config.carry_over = true,
            "--no-health-check" => config.health_check = false,
            _ => {
                let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
                let num = |v: &str| {
                    v.parse::<u64>()
                        .map_err(|_| format!("{flag}: not a number: {v}"))
                };
                let ms = |v: &str| num(v).map(Duration::from_millis);
                match flag.as_str() {
                    "--redis-url" | "--redis" => config.redis_url = value,
                    "--site-url" => site_url = Some(value.trim_end_matches('/').to_owned()),
                    "--pdf-dir" => pdf_dir = Some(PathBuf::from(value)),
                    "--profile-root" => config.browser.profile_root = PathBuf::from(value),
                    "--results" => config.results = value,
                    "--queue" => {
                        let (name, key) = value
                            .split_once('=')
                            .filter(|(n, _)| pool::KINDS.iter().any(|(k, _)| k == n))
                            .ok_or_else(|| {
                                format!("--queue wants conferencia=KEY or emissao=KEY, got {value}")
                            })?;
                        config.queues.push((name.to_owned(), key.to_owned()));
                    }
                    "--jobs-per-thread" => config.jobs_per_thread = Some(num(&value)? as usize),
                    "--max-threads-per-type" => {
                        config.max_threads_per_type = Some(num(&value)? as usize)
                    }
                    "--max-total-threads" => config.max_total_threads = Some(num(&value)? as usize),
                    "--min-threads" => config.min_threads = Some(num(&value)? as usize),
                    "--rebalance-interval-ms" => config.rebalance_interval = Some(ms(&value)?),
                    "--scale-down-delay-ms" => config.scale_down_delay = Some(ms(&value)?),
                    "--block-ms" => config.block = Some(ms(&value)?),
                    "--max-attempts" => config.max_attempts = Some(num(&value)? as u32),
                    "--retry-backoff-ms" => config.retry_backoff = Some(ms(&value)?),
                    "--heartbeat-ms" => config.heartbeat = Some(ms(&value)?),
                    "--worker-ttl-ms" => config.worker_ttl = Some(ms(&value)?),
                    "--job-timeout-ms" => config.job_timeout = Some(ms(&value)?),
                    "--fleet" => config.fleet = Some(value),
                    "--recycle-after" => config.recycle_after = Some(num(&value)?),
                    "--recycle-after-age-ms" => config.recycle_after_age = Some(ms(&value)?),
                    "--recycle-jitter" => {
                        let jitter = value
                            .parse::<f64>()
                            .map_err(|_| format!("{flag}: not a number: {value}"))?;
                        config.recycle_jitter = Some(jitter);
                    }
                    "--health-check-every-ms" => config.health_check_every = Some(ms(&value)?),
                    "--health-timeout-ms" => config.browser.health_timeout = ms(&value)?,
                    "--launch-delay-ms" => config.browser.launch_delay = ms(&value)?,
                    "--min-free-memory" => config.min_free_memory = Some(num(&value)?),
                    "--init-concurrency" => config.init_concurrency = Some(num(&value)? as usize),
                    "--shutdown-timeout-ms" => shutdown_timeout = ms(&value)?,
                    other => return Err(format!("unknown option {other}")),
                }
            }
        }
    }
    if config.redis_url.is_empty() {
        return Err("--redis-url is required".to_owned());
    }
    if config.queues.is_empty() {
        config.queues = pool::KINDS
            .iter()
            .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
            .collect();
    }
    match pdf_dir {
        Some(dir) => config.pdf_dir = dir,
        None if config.queues.iter().any(|(n, _)| n == "emissao") => {
            return Err("--pdf-dir is required for the emissao queue".to_owned());
        }
        None => config.pdf_dir = std::env::temp_dir(),
    }
    Ok(Args {
        config,
        site_url,
        exit_when_idle,
        shutdown_timeout,
    })
}

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,headless_chrome=warn"),
    )
    .init();
    if let Err(e) = run() {
        eprintln!("browser_worker: {}", cli::message(&*e));
        std::process::exit(EXIT_CANNOT_START);
    }
}

fn run() -> Result<(), Box<dyn Error + Send + Sync>> {
    let mut args = parse_args().inspect_err(|_| {
        eprintln!("usage: browser_worker --redis-url URL --pdf-dir DIR [options]");
    })?;
    // Declared before the pool: dropped after it, so no browser outlives the site it uses.
    let _site = match &args.site_url {
        Some(url) => {
            args.config.browser.site = url.clone();
            None
        }
        None => {
            let site = site::Site::start()?;
            log::info!("test site at {}", site.url());
            args.config.browser.site = site.url();
            Some(site)
        }
    };
    let counters = std::sync::Arc::clone(&args.config.browser.counters);
    let (builder, sources) = pool::builder(&args.config)?;
    let stale = browser::sweep_stale(&args.config.browser);
    if stale > 0 {
        log::warn!(
            "removed {stale} stale profile(s) of dead browser_worker processes under {}",
            args.config.browser.profile_root.display()
        );
    }
    let pool = builder.build()?;
    pool.shutdown_on_signals()?;
    pool.start()?;
    log::info!("browser_worker {} started", std::process::id());
    while !pool.is_shutdown() {
        std::thread::sleep(Duration::from_millis(50));
        if args.exit_when_idle
            && sources
                .iter()
                .all(|s| s.summary().is_ok_and(|sum| sum.is_idle()))
            && pool.stats().total.busy == 0
        {
            log::info!("every queue is idle: exiting");
            pool.shutdown();
        }
    }
    let drained = cli::drain(&pool, args.shutdown_timeout);
    // Only a worker still running at the deadline leaves a browser (its state never dropped),
    // or starts one (inside init): no launch starts past this, those in flight are waited for
    // (headless_chrome gives a launch 30 s), then every browser left is killed.
    let swept = browser::close_all(&args.config.browser, LAUNCH_WAIT);
    if swept > 0 {
        log::warn!("{swept} browser(s) still open at exit: killed, profiles removed");
    }
    drained?;
    let total = pool.stats().total;
    log::info!(
        "browser_worker {} done: {} ok, {} failed, {} panicked; browsers: {} launched, \
         {} logins, {} carried, {} closed",
        std::process::id(),
        total.jobs_ok,
        total.jobs_failed,
        total.jobs_panicked,
        Counters::get(&counters.launches),
        Counters::get(&counters.logins),
        Counters::get(&counters.carried),
        Counters::get(&counters.closed),
    );
    Ok(())
}
