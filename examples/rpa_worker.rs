//! The host program's worker, on threadtide: Redis lists in, results list out.
//!
//! ```text
//! cargo run --release --example rpa_worker -- --redis redis://127.0.0.1:6379 \
//!     --queue conferencia=fila:conferencia --queue emissao=fila:emissao \
//!     --results fila:resultados [--jobs-per-thread N] [--max-threads-per-type N] \
//!     [--max-total-threads N] [--rebalance-interval-ms N] [--exit-when-idle]
//! ```
//!
//! A payload is JSON `{"id": "...", "ms": 40}`: the simulated work time. An optional `"fail"`
//! exercises failures: `"error"` (a retryable error), `"panic"`, and for fault tests `"abort"`
//! (kills the whole process) and `"hang"` (never returns). Anything that is not such JSON is
//! dead-lettered as `malformed`. Each success pushes JSON with `id`, `queue`, `ok`, `worker`,
//! `started_ms` and `finished_ms` (Unix ms) to the results list. SIGTERM / SIGINT drain
//! gracefully and exit 0. A bad option, a bad setting, or a Redis error that no retry fixes
//! (wrong password, missing ACL permission, database out of range) prints
//! `rpa_worker: <what>` on stderr and exits 2; a Redis server that is down is waited for.
//!
//! Extra options, for tests and tuning: `--max-attempts N`, `--retry-backoff-ms N`,
//! `--heartbeat-ms N`, `--worker-ttl-ms N`, `--job-timeout-ms N`, `--scale-down-delay-ms N`,
//! `--shutdown-timeout-ms N` (default 30000), `--init-ms N` (simulated login, default 50),
//! `--exec-log PATH` (appends `queue id worker started_ms pid` for every execution; with
//! `--exec-log-finish`, also the same line with `finished_ms` appended when it finishes,
//! failed or not, kept or not),
//! `--tls-ca PEM` (the CA of a `rediss://` server; needs `--features tls`).
//! `--block-ms N` (longest `BLMOVE` and fetch), `--recycle-after N` (rebuild a session after N jobs),
//! `--min-threads N` (threads each queue keeps when idle).
//! `--target-wait SECS` sizes every queue by a wait target instead of `--jobs-per-thread`
//! (`Queue::target_wait`; fractions allowed); `--target-wait NAME=SECS` only queue `NAME`.
//! Coordinated copies measure together (docs/SCALING.md, "A fleet").
//! `--metrics-addr HOST:PORT` serves Prometheus `/metrics` and `/healthz` there (needs
//! `--features metrics`).
//!
//! Fleet (several copies on the same queues; see `docs/FLEET.md`): coordination is on by
//! default, so all copies together follow one `--jobs-per-thread` rule; `--no-fleet` turns it
//! off (each copy scales on the whole backlog); `--fleet-max-threads-per-type N` caps each
//! queue's threads over every copy, `--fleet-max-total-threads N` all queues' threads over
//! every copy (`--max-threads-per-type` / `--max-total-threads` stay per copy: one host's
//! memory); `--fleet NAME` (default `threadtide`). `--exit-when-idle` exits when every queue
//! is empty fleet-wide (no job waiting, delayed or in any copy's processing list).

#[path = "common/cli.rs"]
mod cli;

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use threadtide::{JobError, Queue, RedisSource, ThreadPoolManager, WorkerInfo};

#[derive(Debug, Default)]
struct Args {
    redis: String,
    queues: Vec<(String, String)>,
    results: String,
    jobs_per_thread: Option<usize>,
    max_threads_per_type: Option<usize>,
    max_total_threads: Option<usize>,
    rebalance_interval_ms: Option<u64>,
    scale_down_delay_ms: Option<u64>,
    exit_when_idle: bool,
    max_attempts: Option<u32>,
    retry_backoff_ms: Option<u64>,
    heartbeat_ms: Option<u64>,
    worker_ttl_ms: Option<u64>,
    job_timeout_ms: Option<u64>,
    shutdown_timeout_ms: u64,
    init_ms: u64,
    exec_log: Option<String>,
    tls_ca: Option<String>,
    block_ms: Option<u64>,
    recycle_after: Option<u64>,
    min_threads: Option<usize>,
    metrics_addr: Option<String>,
    no_fleet: bool,
    exec_log_finish: bool,
    fleet: Option<String>,
    fleet_max_threads_per_type: Option<usize>,
    fleet_max_total_threads: Option<usize>,
    /// `--target-wait`: (queue name, or `None` for every queue; seconds).
    target_wait: Vec<(Option<String>, f64)>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        shutdown_timeout_ms: 30_000,
        init_ms: 50,
        ..Args::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--exit-when-idle" {
            args.exit_when_idle = true;
            continue;
        }
        if flag == "--no-fleet" {
            args.no_fleet = true;
            continue;
        }
        if flag == "--exec-log-finish" {
            args.exec_log_finish = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number: {v}"))
        };
        match flag.as_str() {
            "--redis" => args.redis = value,
            "--results" => args.results = value,
            "--queue" => {
                let (name, key) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--queue wants NAME=KEY, got {value}"))?;
                args.queues.push((name.to_owned(), key.to_owned()));
            }
            "--jobs-per-thread" => args.jobs_per_thread = Some(num(&value)? as usize),
            "--max-threads-per-type" => args.max_threads_per_type = Some(num(&value)? as usize),
            "--max-total-threads" => args.max_total_threads = Some(num(&value)? as usize),
            "--rebalance-interval-ms" => args.rebalance_interval_ms = Some(num(&value)?),
            "--scale-down-delay-ms" => args.scale_down_delay_ms = Some(num(&value)?),
            "--max-attempts" => args.max_attempts = Some(num(&value)? as u32),
            "--retry-backoff-ms" => args.retry_backoff_ms = Some(num(&value)?),
            "--heartbeat-ms" => args.heartbeat_ms = Some(num(&value)?),
            "--worker-ttl-ms" => args.worker_ttl_ms = Some(num(&value)?),
            "--job-timeout-ms" => args.job_timeout_ms = Some(num(&value)?),
            "--shutdown-timeout-ms" => args.shutdown_timeout_ms = num(&value)?,
            "--init-ms" => args.init_ms = num(&value)?,
            "--exec-log" => args.exec_log = Some(value),
            "--tls-ca" => args.tls_ca = Some(value),
            "--block-ms" => args.block_ms = Some(num(&value)?),
            "--recycle-after" => args.recycle_after = Some(num(&value)?),
            "--min-threads" => args.min_threads = Some(num(&value)? as usize),
            "--metrics-addr" => args.metrics_addr = Some(value),
            "--fleet" => args.fleet = Some(value),
            "--target-wait" => {
                let (name, secs) = match value.split_once('=') {
                    Some((n, v)) => (Some(n.to_owned()), v),
                    None => (None, value.as_str()),
                };
                let secs: f64 = secs
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        format!("--target-wait: not a positive number of seconds: {value}")
                    })?;
                args.target_wait.push((name, secs));
            }
            "--fleet-max-threads-per-type" => {
                args.fleet_max_threads_per_type = Some(num(&value)? as usize)
            }
            "--fleet-max-total-threads" => {
                args.fleet_max_total_threads = Some(num(&value)? as usize)
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    if args.redis.is_empty() || args.queues.is_empty() || args.results.is_empty() {
        return Err("--redis, --results and at least one --queue are required".to_owned());
    }
    Ok(args)
}

/// A job as the host's poller writes it.
#[derive(Debug)]
struct Job {
    id: String,
    ms: u64,
    fail: Option<String>,
}

fn decode(bytes: &[u8]) -> Result<Job, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let id = match value.get("id") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err("missing \"id\"".to_owned()),
    };
    let ms = value
        .get("ms")
        .and_then(serde_json::Value::as_u64)
        .ok_or("missing or invalid \"ms\"")?;
    let fail = value
        .get("fail")
        .and_then(|f| f.as_str())
        .map(str::to_owned);
    Ok(Job { id, ms, fail })
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Stands in for a logged-in browser session.
struct Session {
    worker: String,
}

/// Exit status on an error: a bad option or setting, or a Redis error at start that
/// no retry fixes (wrong password, missing ACL permission, database out of range).
const EXIT_CANNOT_START: i32 = 2;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = run() {
        eprintln!("rpa_worker: {}", cli::message(&*e));
        std::process::exit(EXIT_CANNOT_START);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let args = parse_args().inspect_err(|_| {
        eprintln!("usage: rpa_worker --redis URL --queue NAME=KEY... --results KEY [options]");
    })?;
    let exec_log: Option<Arc<Mutex<File>>> = match &args.exec_log {
        Some(path) => Some(Arc::new(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path)?,
        ))),
        None => None,
    };

    let mut builder = ThreadPoolManager::builder().thread_name_prefix("rpa");
    if let Some(n) = args.jobs_per_thread {
        builder = builder.jobs_per_thread(n);
    }
    if let Some(n) = args.max_threads_per_type {
        builder = builder.max_threads_per_type(n);
    }
    if let Some(n) = args.max_total_threads {
        builder = builder.max_total_threads(n);
    }
    if let Some(ms) = args.rebalance_interval_ms {
        builder = builder.rebalance_interval(Duration::from_millis(ms));
    }
    if let Some(ms) = args.scale_down_delay_ms {
        builder = builder.scale_down_delay(Duration::from_millis(ms));
    }
    if let Some(ms) = args.block_ms {
        builder = builder.fetch_timeout(Duration::from_millis(ms));
    }
    if let Some(addr) = &args.metrics_addr {
        #[cfg(feature = "metrics")]
        {
            builder = builder.metrics_addr(addr.as_str());
        }
        #[cfg(not(feature = "metrics"))]
        return Err(format!("--metrics-addr {addr}: built without the `metrics` feature").into());
    }
    let mut sources = Vec::new();
    for (name, key) in &args.queues {
        let mut source = RedisSource::builder(args.redis.as_str(), key.as_str())
            .results(args.results.as_str())
            .decoder(decode);
        if let Some(n) = args.max_attempts {
            source = source.max_attempts(n);
        }
        if let Some(ms) = args.retry_backoff_ms {
            let d = Duration::from_millis(ms);
            source = source.retry_backoff(d, d * 16);
        }
        if let Some(ms) = args.heartbeat_ms {
            source = source.heartbeat_interval(Duration::from_millis(ms));
        }
        if let Some(ms) = args.worker_ttl_ms {
            source = source.worker_ttl(Duration::from_millis(ms));
        }
        if let Some(ms) = args.job_timeout_ms {
            source = source.job_timeout(Duration::from_millis(ms));
        }
        if let Some(path) = &args.tls_ca {
            #[cfg(feature = "tls")]
            {
                source = source.tls_root_certificate(std::fs::read(path)?);
            }
            #[cfg(not(feature = "tls"))]
            return Err(format!("--tls-ca {path}: built without the `tls` feature").into());
        }
        if let Some(ms) = args.block_ms {
            source = source.block_timeout(Duration::from_millis(ms));
        }
        source = source.coordinate(!args.no_fleet);
        if let Some(name) = &args.fleet {
            source = source.fleet(name.as_str());
        }
        if let Some(n) = args.fleet_max_threads_per_type {
            source = source.fleet_max_threads(n);
        }
        if let Some(n) = args.fleet_max_total_threads {
            source = source.fleet_max_total_threads(n);
        }
        let source = source.build()?;
        sources.push(source.clone());
        let (queue, log, init_ms) = (name.clone(), exec_log.clone(), args.init_ms);
        let log_finish = args.exec_log_finish;
        let def = Queue::new(
            name.as_str(),
            source,
            move |worker: &WorkerInfo| {
                std::thread::sleep(Duration::from_millis(init_ms)); // the "login"
                Ok::<_, std::convert::Infallible>(Session {
                    worker: worker.name().to_owned(),
                })
            },
            move |session: &mut Session, job: &Job| {
                let started_ms = now_ms();
                if let Some(log) = &log {
                    let line = format!(
                        "{queue} {} {} {started_ms} {}\n",
                        job.id,
                        session.worker,
                        std::process::id()
                    );
                    let _ = log.lock().write_all(line.as_bytes());
                }
                match job.fail.as_deref() {
                    Some("panic") => panic!("job {} asked to panic", job.id),
                    Some("abort") => std::process::abort(),
                    Some("hang") => loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    },
                    _ => {}
                }
                std::thread::sleep(Duration::from_millis(job.ms));
                if let Some(log) = log.as_ref().filter(|_| log_finish) {
                    // The same run again, its finish appended: a run's start and finish are
                    // both on record, whether or not its result is kept.
                    let line = format!(
                        "{queue} {} {} {started_ms} {} {}\n",
                        job.id,
                        session.worker,
                        std::process::id(),
                        now_ms()
                    );
                    let _ = log.lock().write_all(line.as_bytes());
                }
                if job.fail.as_deref() == Some("error") {
                    return Err(JobError::retryable(format!("job {} asked to fail", job.id)));
                }
                let result = serde_json::json!({
                    "id": job.id,
                    "queue": queue,
                    "ok": true,
                    "worker": session.worker,
                    "started_ms": started_ms as u64,
                    "finished_ms": now_ms() as u64,
                });
                Ok(result.to_string().into_bytes())
            },
        );
        // The last `--target-wait` for this queue (or for every queue) wins.
        let target = args
            .target_wait
            .iter()
            .rev()
            .find(|(n, _)| n.as_deref().is_none_or(|n| n == name))
            .map(|(_, secs)| Duration::from_secs_f64(*secs));
        let def = match target {
            Some(t) => def.target_wait(t),
            None => def,
        };
        let def = match args.min_threads {
            Some(n) => def.min_threads(n),
            None => def,
        };
        builder = builder.add_queue(match args.recycle_after {
            Some(n) => def.recycle_after(n),
            None => def,
        });
    }
    let pool = builder.build()?;
    pool.shutdown_on_signals()?;
    pool.start()?;
    log::info!("rpa_worker {} started", std::process::id());

    if args.exit_when_idle {
        while !pool.is_shutdown() {
            std::thread::sleep(Duration::from_millis(100));
            let idle = sources
                .iter()
                .all(|s| s.summary().is_ok_and(|sum| sum.is_idle()));
            if idle && pool.stats().total.busy == 0 {
                log::info!("every queue is idle: exiting");
                pool.shutdown();
            }
        }
    } else {
        // Block until a signal asks us to stop.
        while !pool.is_shutdown() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    cli::drain(&pool, Duration::from_millis(args.shutdown_timeout_ms))?;
    let total = pool.stats().total;
    log::info!(
        "rpa_worker {} done: {} ok, {} failed, {} panicked",
        std::process::id(),
        total.jobs_ok,
        total.jobs_failed,
        total.jobs_panicked
    );
    Ok(())
}
