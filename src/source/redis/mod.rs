//! The Redis list source: at-least-once delivery from the host's existing lists.
//!
//! The guarantee, the key layout and the job cycle are written up in `docs/RELIABILITY.md`.

mod acl;
mod builder;
mod conn;
mod consumer;
pub(crate) mod envelope;
mod fleet;
pub(crate) mod fleet_keys;
mod fleet_scripts;
mod fleet_wait;
pub(crate) mod json;
mod keeper;
mod lease;
pub(crate) use lease::SlotState;
mod scripts;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Client, Connection};

use crate::backoff::Backoff;
use crate::error::SourceError;
use crate::source::{JobSource, PoolInfo, SourceMetrics, WorkerInfo};

pub use builder::RedisSourceBuilder;
use conn::{Link, Role};
pub(crate) use conn::{redact_url, redis_error, scrub, secrets};
pub use consumer::RedisConsumer;
use keeper::Keeper;
use scripts::Scripts;
pub use stats::{QueueSummary, RedisStats};

type Decoder<J> = dyn Fn(&[u8]) -> Result<J, String> + Send + Sync;

/// The keys of one queue, all derived from the list key the producers push to.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) queue: String,
    pub(crate) workers: String,
    pub(crate) retired: String,
    pub(crate) delayed: String,
    pub(crate) dead: String,
    pub(crate) processing_prefix: String,
    pub(crate) results: Option<String>,
}

impl Keys {
    fn new(queue: &str, results: Option<String>) -> Self {
        Keys {
            queue: queue.to_owned(),
            workers: format!("{queue}:workers"),
            retired: format!("{queue}:retired"),
            delayed: format!("{queue}:delayed"),
            dead: format!("{queue}:dead"),
            processing_prefix: format!("{queue}:processing:"),
            results,
        }
    }
}

/// What this process knows of one of its workers; the keeper beats for it.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) wid: String,
    pub(crate) state: Arc<SlotState>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acks_refused: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) reaped_workers: AtomicU64,
    pub(crate) reaps: AtomicU64,
    pub(crate) reaps_skipped: AtomicU64,
    pub(crate) dead_malformed: AtomicU64,
    pub(crate) dead_exhausted: AtomicU64,
    pub(crate) dead_permanent: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) outcomes_dropped: AtomicU64,
}

/// The queue's length as the keeper last read it, and when (ms since the source's epoch,
/// plus one; 0: never). `backlog()` reads it without touching the network.
#[derive(Debug, Default)]
pub(crate) struct Backlog {
    count: AtomicU64,
    at_ms: AtomicU64,
}

impl Backlog {
    pub(crate) fn set(&self, count: u64, now_ms: u64) {
        self.count.store(count, Ordering::Relaxed);
        self.at_ms
            .store(now_ms.saturating_add(1), Ordering::Release);
    }

    /// The count and its age, if it was ever read.
    fn get(&self, now_ms: u64) -> Option<(usize, Duration)> {
        match self.at_ms.load(Ordering::Acquire) {
            0 => None,
            at => Some((
                usize::try_from(self.count.load(Ordering::Relaxed)).unwrap_or(usize::MAX),
                Duration::from_millis(now_ms.saturating_sub(at - 1)),
            )),
        }
    }
}

/// Server check states (`Shared::server_check`).
const UNCHECKED: u8 = 0;
const CHECKING: u8 = 1;
const CHECKED: u8 = 2;

pub(crate) struct Shared<J> {
    client: Client,
    /// The URL with its password shown as `***`, for messages.
    pub(crate) url: String,
    /// This machine's name, in worker ids and connection names.
    pub(crate) host: String,
    pub(crate) keys: Keys,
    pub(crate) fleet: fleet::FleetState,
    pub(crate) scripts: Scripts,
    pub(crate) fleet_scripts: fleet_scripts::FleetScripts,
    pub(crate) decoder: Box<Decoder<J>>,
    pub(crate) max_attempts: u32,
    pub(crate) retry_backoff: Backoff,
    pub(crate) retry_to_head: bool,
    pub(crate) heartbeat: Duration,
    pub(crate) worker_ttl: Duration,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) block: Duration,
    io_timeout: Duration,
    /// After each settle, wait for this many replicas to acknowledge it (`WAIT n timeout`).
    pub(crate) wait_replicas: Option<(u32, Duration)>,
    /// `host:pid:nonce`: worker ids start with it, so a restarted process never reuses one.
    pub(crate) identity: String,
    /// Time origin of `SlotState::busy_since`.
    pub(crate) epoch: Instant,
    pub(crate) slots: Mutex<HashMap<u64, Slot>>,
    next_slot: AtomicU64,
    /// `UNCHECKED`, `CHECKING` or `CHECKED`: the server's version and settings are checked
    /// (and warned about) once per source, by whichever connection comes first.
    server_check: AtomicU8,
    /// The connection of the host's calls (`summary`, `push`, `requeue_running`), kept across
    /// calls and rebuilt with back-off after an error. Workers and the keeper have their own.
    shared_conn: Mutex<Link>,
    keeper: Mutex<Option<Keeper>>,
    pub(crate) backlog: Backlog,
    pub(crate) counters: Counters,
}

impl<J> Shared<J> {
    /// A new connection for `role`, named with `CLIENT SETNAME`, with timeouts: connect and
    /// writes bounded by the I/O timeout, reads by the I/O timeout, plus the longest blocking
    /// fetch for a worker, so a dead server never hangs a thread. The first one also checks
    /// the server.
    pub(crate) fn connect(&self, role: Role<'_>) -> Result<Connection, SourceError> {
        conn::note_read_timeout(self.io_timeout);
        let started = Instant::now();
        let mut c = self
            .client
            .get_connection_with_timeout(self.io_timeout)
            .map_err(|e| redis_error(&format!("cannot connect to Redis at {}", self.url), e))?;
        let read = match role {
            Role::Worker(_) => self.block + self.io_timeout,
            _ => self.io_timeout,
        };
        // Connecting and naming share one I/O timeout, so a silent server holds a thread
        // for at most that long.
        let left = self
            .io_timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        c.set_read_timeout(Some(left))
            .and_then(|()| c.set_write_timeout(Some(self.io_timeout)))
            .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(conn::client_name(&self.host, &self.keys.queue, role))
            .query::<()>(&mut c)
            .map_err(|e| redis_error("cannot name the connection (CLIENT SETNAME)", e))?;
        c.set_read_timeout(Some(read))
            .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        conn::note_read_timeout(read);
        if self
            .server_check
            .compare_exchange(UNCHECKED, CHECKING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let checked = check_server(&mut c, &self.keys.queue);
            let state = if checked.is_ok() { CHECKED } else { UNCHECKED };
            self.server_check.store(state, Ordering::Release);
            checked?;
        }
        Ok(c)
    }

    /// The start-up check of `JobSource::open`: connects (password, database), checks the
    /// server and the ACL permissions, and reads the backlog once.
    fn probe(&self) -> Result<(), SourceError> {
        let mut c = self.connect(Role::Open)?;
        acl::check(
            &mut c,
            &self.keys,
            &self.fleet,
            self.wait_replicas.is_some(),
        )?;
        let n: u64 = redis::cmd("LLEN")
            .arg(&self.keys.queue)
            .query(&mut c)
            .map_err(|e| redis_error("cannot read the backlog", e))?;
        self.backlog.set(n, self.ms_since_epoch());
        Ok(())
    }

    pub(crate) fn ms_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Runs `f` on the shared connection, connecting first if needed and the back-off allows
    /// it; a broken connection is dropped, the next call (after the back-off) makes a new one.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut link = self.shared_conn.lock();
        if link.waiting() {
            return Err(link.wait_error());
        }
        let result = link.get(|| self.connect(Role::Shared)).and_then(f);
        match &result {
            Ok(_) => link.ok(),
            Err(e) => {
                link.failed(e);
            }
        }
        result
    }

    pub(crate) fn new_wid(&self, slot: u64, generation: u32) -> String {
        format!("{}:{slot}:{generation}", self.identity)
    }
}

/// Fails on a server older than 6.2 (no `BLMOVE`); warns, once, when its settings can lose
/// jobs silently. `CONFIG` may be refused (managed services); then only the version is checked.
fn check_server(conn: &mut Connection, queue: &str) -> Result<(), SourceError> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(conn)
        .map_err(|e| redis_error("cannot read the server version", e))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    if !version_at_least(&version, (6, 2)) {
        return Err(SourceError::new(format!(
            "redis-server {version} is too old: threadtide needs 6.2 or newer (BLMOVE)"
        ))
        .into_permanent());
    }
    let mut config = |name: &str| -> Option<String> {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(conn).ok()?;
        pair.into_iter().nth(1)
    };
    if config("appendonly").as_deref() == Some("no") {
        log::warn!(
            "redis for {queue}: appendonly is off, so a server crash loses queued and running \
             jobs; set `appendonly yes`"
        );
    }
    if let Some(policy) = config("maxmemory-policy")
        && policy != "noeviction"
    {
        log::warn!(
            "redis for {queue}: maxmemory-policy is {policy}, which can evict queue keys under \
             memory pressure; use `noeviction`"
        );
    }
    Ok(())
}

fn version_at_least(version: &str, (major, minor): (u32, u32)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned())
}

/// A [`JobSource`] on a Redis list that producers fill with `RPUSH`: at-least-once delivery,
/// retries with back-off, a dead-letter list, recovery of jobs from dead workers.
///
/// Each worker moves a job into a processing list of its own (`BLMOVE`) and settles it with
/// one script; while the queue is busy that script also moves the worker's next job, so a job
/// costs one round trip and a worker never holds more than one (the design and the fault
/// tests: `docs/RELIABILITY.md`).
///
/// Built with [`RedisSource::builder`]. Cloning gives another handle on the same source.
///
/// # Examples
///
/// ```no_run
/// use std::convert::Infallible;
/// use threadtide::{RedisSource, ThreadPoolManager};
///
/// let source = RedisSource::builder("redis://127.0.0.1:6379", "fila:conferencia")
///     .results("fila:resultados")
///     .decoder(|bytes: &[u8]| std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| e.to_string()))
///     .build()?;
/// let pool = ThreadPoolManager::builder()
///     .queue("conferencia", source, |_| Ok::<_, Infallible>(()), |_, order: &String| {
///         Ok(format!("{{\"done\":{order:?}}}").into_bytes())
///     })
///     .build()?;
/// pool.start()?;
/// pool.wait()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RedisSource<J = Vec<u8>> {
    shared: Arc<Shared<J>>,
}

impl<J> Clone for RedisSource<J> {
    fn clone(&self) -> Self {
        RedisSource {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<J> fmt::Debug for RedisSource<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSource")
            .field("url", &self.shared.url)
            .field("keys", &self.shared.keys)
            .field("identity", &self.shared.identity)
            .finish_non_exhaustive()
    }
}

impl RedisSource {
    /// Configures a source for the list `queue_key` on the server at `url`
    /// (`redis://host:port/db`, `redis+unix:///path`). Nothing connects until the pool starts;
    /// a server that is not up yet is waited for.
    pub fn builder(url: impl Into<String>, queue_key: impl Into<String>) -> RedisSourceBuilder {
        RedisSourceBuilder::new(url.into(), queue_key.into())
    }
}

impl<J: Send + 'static> RedisSource<J> {
    /// The list producers push to.
    pub fn queue_key(&self) -> &str {
        &self.shared.keys.queue
    }

    /// The dead-letter list (`{queue}:dead`): JSON records with `reason`, `error`, `attempts`,
    /// `worker` (the thread name), `worker_id` (its Redis id), `time_ms` and the payload
    /// (`payload`, or `payload_hex` when not UTF-8).
    pub fn dead_key(&self) -> &str {
        &self.shared.keys.dead
    }

    /// Counts of jobs ready, delayed, dead and running, and of registered workers (one
    /// round trip).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached.
    pub fn summary(&self) -> Result<QueueSummary, SourceError> {
        let k = &self.shared.keys;
        let v: Vec<usize> = self.shared.with_conn(|conn| {
            self.shared
                .scripts
                .summary
                .key(&k.queue)
                .key(&k.delayed)
                .key(&k.dead)
                .key(&k.workers)
                .key(&k.retired)
                .arg(&k.processing_prefix)
                .invoke(conn)
                .map_err(|e| redis_error("cannot read the queue summary", e))
        })?;
        Ok(QueueSummary {
            ready: v[0],
            delayed: v[1],
            dead: v[2],
            processing: v[3],
            workers: v[4],
        })
    }

    /// Appends raw payloads to the queue (`RPUSH`), as a producer would.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached.
    pub fn push<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(), SourceError> {
        if payloads.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("RPUSH");
        cmd.arg(&self.shared.keys.queue);
        for p in payloads {
            cmd.arg(p.as_ref());
        }
        self.shared.with_conn(|conn| {
            cmd.query::<()>(conn)
                .map_err(|e| redis_error("cannot push", e))
        })
    }

    /// This process's counters for the source.
    pub fn stats(&self) -> RedisStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RedisStats {
            acks_refused: get(&c.acks_refused),
            recovered: get(&c.recovered),
            retried: get(&c.retried),
            dead_malformed: get(&c.dead_malformed),
            dead_exhausted: get(&c.dead_exhausted),
            dead_permanent: get(&c.dead_permanent),
            reconnects: get(&c.reconnects),
            reaped_workers: get(&c.reaped_workers),
            reaps: get(&c.reaps),
            reaps_skipped: get(&c.reaps_skipped),
            outcomes_dropped: get(&c.outcomes_dropped),
            backlog_age: self
                .shared
                .backlog
                .get(self.shared.ms_since_epoch())
                .map(|(_, age)| age),
        }
    }
}

impl<J: Send + 'static> JobSource for RedisSource<J> {
    type Job = J;
    type Output = Vec<u8>;
    type Consumer = RedisConsumer<J>;

    /// Checks the server once on the caller's thread, then starts the keeper thread
    /// (heartbeats, reaper, retry promotion, backlog count). Idempotent: two queues may share
    /// one source (the keeper then reports errors under the first queue's name).
    ///
    /// # Errors
    ///
    /// Only what no retry fixes, marked [permanent](SourceError::is_permanent): a wrong
    /// password or user, a missing ACL permission (naming the command and key), a database
    /// number the server does not have, a server older than 6.2. A server that is down or does
    /// not answer is not an error: it is logged, and the source waits for it in the background.
    fn open(&self, pool: &PoolInfo) -> Result<(), SourceError> {
        let mut keeper = self.shared.keeper.lock();
        if keeper.is_some() {
            return Ok(());
        }
        match self.shared.probe() {
            Ok(()) => {}
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => log::warn!(
                "redis for {}: not reachable at start ({e}); waiting for it in the background",
                self.shared.keys.queue
            ),
        }
        let started = Keeper::start(Arc::clone(&self.shared), pool.clone())
            .map_err(|e| SourceError::with_source("cannot start the redis keeper thread", e))?;
        *keeper = Some(started);
        Ok(())
    }

    /// The queue's length as the keeper last read it: never touches the network, so a slow
    /// or silent server never stalls the monitor. While the keeper cannot reach Redis the
    /// count stays as last read (0 before the first read); its age is
    /// [`RedisStats::backlog_age`], and the keeper itself reports the outage (one log line and
    /// one event when it starts, at most one a minute after), so the monitor does not report
    /// it again on every tick.
    ///
    /// # Errors
    ///
    /// Only before [`open`](JobSource::open) (nothing keeps a count).
    fn coordinate(&self, view: &crate::QueueView) -> Option<crate::FleetShare> {
        fleet::coordinate(&self.shared, view)
    }

    fn backlog(&self) -> Result<usize, SourceError> {
        match self.shared.backlog.get(self.shared.ms_since_epoch()) {
            Some((n, _)) => Ok(n),
            None if self.shared.keeper.lock().is_none() => Err(SourceError::new(
                "the source is not open (JobSource::open starts its keeper)",
            )),
            None => Ok(0),
        }
    }

    fn consumer(&self, worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        let id = self.shared.next_slot.fetch_add(1, Ordering::Relaxed);
        Ok(RedisConsumer::new(
            Arc::clone(&self.shared),
            id,
            worker.name().to_owned(),
        ))
    }

    /// Stops the keeper thread after the pool's workers are gone (each deregistered itself).
    fn close(&self) {
        let keeper = self.shared.keeper.lock().take();
        if let Some(k) = keeper {
            k.stop();
        }
        self.shared.shared_conn.lock().conn.take();
    }

    /// Puts the jobs of this process's busy workers back at the head of the queue (one more
    /// run counted) and deregisters those workers, so their late completions are refused.
    fn requeue_running(&self) -> Result<usize, SourceError> {
        let busy: Vec<String> = {
            let mut slots = self.shared.slots.lock();
            slots
                .values_mut()
                .filter(|s| s.state.busy_since().is_some() && !s.state.is_fenced())
                .map(|s| {
                    s.state.fence();
                    s.wid.clone()
                })
                .collect()
        };
        if busy.is_empty() {
            return Ok(0);
        }
        self.shared.with_conn(|conn| {
            busy.iter()
                .map(|wid| consumer::release(&self.shared, conn, wid, None))
                .sum()
        })
    }

    /// The queue's jobs in each place (one round trip, [`summary`](RedisSource::summary)),
    /// this process's counters, and whether Redis answers. While the keeper's backlog count is
    /// more than 3 s old, Redis is reported unreachable without a round trip, so a scrape
    /// never waits on a server that is down.
    fn metrics(&self, out: &mut SourceMetrics) {
        stats::fill_metrics(self, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("6.2.0", (6, 2)));
        assert!(version_at_least("7.0.15", (6, 2)));
        assert!(version_at_least("10.0.0", (6, 2)));
        assert!(!version_at_least("6.0.16", (6, 2)));
        assert!(!version_at_least("5.0.7", (6, 2)));
        assert!(!version_at_least("garbage", (6, 2)));
    }
}
