//! The pool: one `RedisSource` per job kind, each worker's state a logged-in [`Session`], with
//! the lifecycle knobs (recycle, health check, carry-over, memory gate, start ramp). The
//! example's `main` and the tests build the same pool from a [`Config`].
#![allow(dead_code)] // the example and each test use a different part

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use threadtide::{Builder, Queue, RedisSource, ThreadPoolManager, WorkerInfo};

use super::browser::{BrowserConfig, Session, SessionCookie};
use super::jobs;

/// The job kinds, with the host's list keys.
pub const KINDS: [(&str, &str); 2] = [
    ("conferencia", "fila:conferencia"),
    ("emissao", "fila:emissao"),
];

/// Everything the pool is built from; `main` fills it from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    pub redis_url: String,
    /// (queue name, list key) of each kind served.
    pub queues: Vec<(String, String)>,
    pub results: String,
    pub pdf_dir: PathBuf,
    pub browser: BrowserConfig,
    pub thread_prefix: String,
    pub jobs_per_thread: Option<usize>,
    pub max_threads_per_type: Option<usize>,
    pub max_total_threads: Option<usize>,
    pub min_threads: Option<usize>,
    pub rebalance_interval: Option<Duration>,
    pub scale_down_delay: Option<Duration>,
    pub block: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub retry_backoff: Option<Duration>,
    pub heartbeat: Option<Duration>,
    pub worker_ttl: Option<Duration>,
    /// A job running longer (a browser hung mid-job) runs again elsewhere.
    pub job_timeout: Option<Duration>,
    pub no_fleet: bool,
    pub fleet: Option<String>,
    pub recycle_after: Option<u64>,
    pub recycle_after_age: Option<Duration>,
    pub recycle_jitter: Option<f64>,
    /// Hand the session cookie of a dropped browser to the next `init`.
    pub carry_over: bool,
    /// Check each browser before a job (process alive, tab answers). Default on.
    pub health_check: bool,
    pub health_check_every: Option<Duration>,
    pub min_free_memory: Option<u64>,
    pub init_concurrency: Option<usize>,
}

impl Config {
    /// Both kinds on the host's lists, results on `fila:resultados`, every knob at the
    /// library's default, health check on, carry-over off.
    pub fn new(redis_url: String, site: String, pdf_dir: PathBuf) -> Config {
        Config {
            redis_url,
            queues: KINDS
                .iter()
                .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
                .collect(),
            results: "fila:resultados".to_owned(),
            pdf_dir,
            browser: BrowserConfig::new(site, std::env::temp_dir()),
            thread_prefix: "brw".to_owned(),
            jobs_per_thread: None,
            max_threads_per_type: None,
            max_total_threads: None,
            min_threads: None,
            rebalance_interval: None,
            scale_down_delay: None,
            block: None,
            max_attempts: None,
            retry_backoff: None,
            heartbeat: None,
            worker_ttl: None,
            job_timeout: None,
            no_fleet: false,
            fleet: None,
            recycle_after: None,
            recycle_after_age: None,
            recycle_jitter: None,
            carry_over: false,
            health_check: true,
            health_check_every: None,
            min_free_memory: None,
            init_concurrency: None,
        }
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

fn source(config: &Config, key: &str) -> Result<RedisSource<jobs::Job>, BoxError> {
    let mut source = RedisSource::builder(config.redis_url.as_str(), key)
        .results(config.results.as_str())
        .decoder(jobs::decode)
        .coordinate(!config.no_fleet);
    if let Some(n) = config.max_attempts {
        source = source.max_attempts(n);
    }
    if let Some(d) = config.retry_backoff {
        source = source.retry_backoff(d, d * 16);
    }
    if let Some(d) = config.heartbeat {
        source = source.heartbeat_interval(d);
    }
    if let Some(d) = config.worker_ttl {
        source = source.worker_ttl(d);
    }
    if let Some(d) = config.job_timeout {
        source = source.job_timeout(d);
    }
    if let Some(d) = config.block {
        source = source.block_timeout(d);
    }
    if let Some(name) = &config.fleet {
        source = source.fleet(name.as_str());
    }
    Ok(source.build()?)
}

fn queue(config: &Config, name: &str, source: RedisSource<jobs::Job>) -> Queue {
    let browser = Arc::new(config.browser.clone());
    // A carried session cookie (a recycled browser's) spares the new browser the login form.
    let init = move |worker: &WorkerInfo| {
        Session::open(
            &browser,
            worker.name(),
            worker.take_carry::<SessionCookie>(),
        )
    };
    let mut queue = if name == "emissao" {
        let dir = config.pdf_dir.clone();
        Queue::new(
            name,
            source,
            init,
            move |s: &mut Session, job: &jobs::Job| jobs::emissao(s, job, &dir),
        )
    } else {
        Queue::new(name, source, init, jobs::conferencia)
    };
    if let Some(n) = config.min_threads {
        queue = queue.min_threads(n);
    }
    if let Some(n) = config.recycle_after {
        queue = queue.recycle_after(n);
    }
    if let Some(age) = config.recycle_after_age {
        queue = queue.recycle_after_age(age);
    }
    if let Some(jitter) = config.recycle_jitter {
        queue = queue.recycle_jitter(jitter);
    }
    if config.health_check {
        // Before the worker fetches a job: a dead browser is rebuilt while the job waits in
        // Redis, instead of failing on it.
        queue = queue.health_check(|s: &mut Session, _: &WorkerInfo| s.health());
    }
    if let Some(every) = config.health_check_every {
        queue = queue.health_check_every(every);
    }
    if config.carry_over {
        // Takes the session's cookie, then drops the session (the browser closes).
        queue = queue.carry_over(|s: Session, _: &WorkerInfo| Some(s.cookie()));
    }
    if let Some(k) = config.init_concurrency {
        queue = queue.init_concurrency(k);
    }
    queue
}

/// The builder for `config` (callers may add an event handler, then `build()`), and the
/// sources (for `--exit-when-idle`'s fleet-wide idle check).
///
/// # Errors
///
/// A profile root [`BrowserConfig::check`] refuses, a PDF directory that cannot be made, a
/// source's settings that `RedisSource`'s `build()` refuses.
pub fn builder(config: &Config) -> Result<(Builder, Vec<RedisSource<jobs::Job>>), BoxError> {
    config.browser.check()?;
    std::fs::create_dir_all(&config.pdf_dir)?;
    let mut builder =
        ThreadPoolManager::builder().thread_name_prefix(config.thread_prefix.as_str());
    if let Some(n) = config.jobs_per_thread {
        builder = builder.jobs_per_thread(n);
    }
    if let Some(n) = config.max_threads_per_type {
        builder = builder.max_threads_per_type(n);
    }
    if let Some(n) = config.max_total_threads {
        builder = builder.max_total_threads(n);
    }
    if let Some(d) = config.rebalance_interval {
        builder = builder.rebalance_interval(d);
    }
    if let Some(d) = config.scale_down_delay {
        builder = builder.scale_down_delay(d);
    }
    if let Some(d) = config.block {
        builder = builder.fetch_timeout(d);
    }
    if let Some(bytes) = config.min_free_memory {
        builder = builder.min_free_memory(bytes);
    }
    let mut sources = Vec::new();
    for (name, key) in &config.queues {
        let source = source(config, key)?;
        sources.push(source.clone());
        builder = builder.add_queue(queue(config, name, source));
    }
    Ok((builder, sources))
}
