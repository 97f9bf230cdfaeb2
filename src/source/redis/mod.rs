//! The Redis list source: at-least-once delivery from the host's existing lists.
//!
//! The guarantee, the key layout and the job cycle are written up in `docs/RELIABILITY.md`.

mod consumer;
mod envelope;
mod keeper;
mod scripts;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Client, Connection, RedisError};

use crate::backoff::{self, Backoff};
use crate::error::{BuildError, SourceError};
use crate::source::{JobSource, WorkerInfo};

pub use consumer::RedisConsumer;
use keeper::Keeper;
use scripts::Scripts;

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

/// The parts of a slot its worker updates on every job: atomics, so the worker never takes the
/// shared slots lock on its hot path (the keeper reads them once a beat).
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// When the job in hand started, in ms since the source's epoch, plus one; 0 when idle.
    busy_since_ms: AtomicU64,
    /// Set when the server no longer knows this worker (it was reaped).
    fenced: AtomicBool,
}

impl SlotState {
    pub(crate) fn set_busy(&self, since: Option<u64>) {
        self.busy_since_ms
            .store(since.map_or(0, |ms| ms + 1), Ordering::Release);
    }

    /// Milliseconds since the source's epoch when the job in hand started.
    pub(crate) fn busy_since(&self) -> Option<u64> {
        match self.busy_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms - 1),
        }
    }

    pub(crate) fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
    }

    pub(crate) fn unfence(&self) {
        self.fenced.store(false, Ordering::Release);
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) acks_refused: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) dead_malformed: AtomicU64,
    pub(crate) dead_exhausted: AtomicU64,
    pub(crate) dead_permanent: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

pub(crate) struct Shared<J> {
    client: Client,
    pub(crate) keys: Keys,
    pub(crate) scripts: Scripts,
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
    #[allow(dead_code)] // read by the settle path once it waits for replicas
    pub(crate) wait_replicas: Option<(u32, Duration)>,
    /// `host:pid:nonce`: worker ids start with it, so a restarted process never reuses one.
    pub(crate) identity: String,
    /// Time origin of `SlotState::busy_since`.
    pub(crate) epoch: Instant,
    pub(crate) slots: Mutex<HashMap<u64, Slot>>,
    next_slot: AtomicU64,
    server_checked: AtomicBool,
    /// The connection of the monitor's backlog reads and of the host's calls (`summary`,
    /// `push`), kept across calls and rebuilt after an error. Workers and the keeper have
    /// their own.
    shared_conn: Mutex<Option<Connection>>,
    keeper: Mutex<Option<Keeper>>,
    pub(crate) counters: Counters,
}

impl<J> Shared<J> {
    /// A new connection with timeouts: connect and writes bounded by the I/O timeout, reads by
    /// the longest blocking fetch plus the I/O timeout, so a dead server never hangs a thread.
    /// The first one also checks the server.
    pub(crate) fn connect(&self) -> Result<Connection, SourceError> {
        let mut conn = self
            .client
            .get_connection_with_timeout(self.io_timeout)
            .map_err(|e| redis_error("cannot connect to redis", e))?;
        let read = self.block + self.io_timeout;
        conn.set_read_timeout(Some(read))
            .and_then(|()| conn.set_write_timeout(Some(self.io_timeout)))
            .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        if !self.server_checked.load(Ordering::Acquire) {
            check_server(&mut conn, &self.keys.queue)?;
            self.server_checked.store(true, Ordering::Release);
        }
        Ok(conn)
    }

    pub(crate) fn ms_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Runs `f` on the shared connection, connecting first if needed; after an error the
    /// connection is dropped so the next call makes a new one.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        let mut guard = self.shared_conn.lock();
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let result = f(guard.as_mut().expect("connected above"));
        if result.is_err() {
            *guard = None;
        }
        result
    }

    pub(crate) fn new_wid(&self, slot: u64, generation: u32) -> String {
        format!("{}:{slot}:{generation}", self.identity)
    }
}

pub(crate) fn redis_error(context: &str, e: RedisError) -> SourceError {
    SourceError::with_source(format!("{context}: {e}"), e)
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
        )));
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

/// Counts of a queue's jobs in each place, from [`RedisSource::summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueSummary {
    /// Waiting in the list (`LLEN`).
    pub ready: usize,
    /// Waiting for a retry.
    pub delayed: usize,
    /// In the dead-letter list.
    pub dead: usize,
    /// Being run by a registered worker of any process.
    pub processing: usize,
    /// Registered workers of all processes.
    pub workers: usize,
}

impl QueueSummary {
    /// No job is waiting, delayed or running: all work is done (dead letters aside).
    pub fn is_idle(&self) -> bool {
        self.ready == 0 && self.delayed == 0 && self.processing == 0
    }
}

/// What this process's side of a Redis source has seen, from [`RedisSource::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Completions refused because the worker had been reaped (fenced); the job was recovered
    /// and runs again elsewhere, so its result is not pushed twice.
    pub acks_refused: u64,
    /// Jobs this process's reaper put back from dead workers (of any process).
    pub recovered: u64,
    /// Jobs scheduled for a retry.
    pub retried: u64,
    /// Dead-lettered because the decoder refused them.
    pub dead_malformed: u64,
    /// Dead-lettered after `max_attempts` runs.
    pub dead_exhausted: u64,
    /// Dead-lettered because the executor returned a permanent error.
    pub dead_permanent: u64,
    /// Connections re-established after an error.
    pub reconnects: u64,
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
        RedisSourceBuilder {
            url: url.into(),
            queue_key: queue_key.into(),
            results: None,
            decoder: Box::new(|b: &[u8]| Ok(b.to_vec())),
            max_attempts: 5,
            retry_backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            retry_to_head: false,
            heartbeat: Duration::from_secs(1),
            worker_ttl: Duration::from_secs(5),
            job_timeout: None,
            block: Duration::from_secs(1),
            io_timeout: Duration::from_secs(2),
            wait_replicas: None,
        }
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
        }
    }

    fn ensure_keeper(&self) {
        let mut keeper = self.shared.keeper.lock();
        if keeper.is_none() {
            match Keeper::start(Arc::clone(&self.shared)) {
                Ok(k) => *keeper = Some(k),
                Err(e) => log::error!("cannot start the redis keeper thread: {e}"),
            }
        }
    }
}

impl<J: Send + 'static> JobSource for RedisSource<J> {
    type Job = J;
    type Output = Vec<u8>;
    type Consumer = RedisConsumer<J>;

    /// `LLEN` of the queue, one round trip on a connection kept for it (workers have their
    /// own). Also makes sure the keeper thread (heartbeats, reaper, retry promotion) runs.
    fn backlog(&self) -> Result<usize, SourceError> {
        self.ensure_keeper();
        self.shared.with_conn(|conn| {
            redis::cmd("LLEN")
                .arg(&self.shared.keys.queue)
                .query(conn)
                .map_err(|e| redis_error("cannot read the backlog", e))
        })
    }

    fn consumer(&self, worker: &WorkerInfo) -> Result<Self::Consumer, SourceError> {
        self.ensure_keeper();
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
        self.shared.shared_conn.lock().take();
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
}

/// Settings of a [`RedisSource`]. Setters never panic; [`build`](Self::build) validates.
pub struct RedisSourceBuilder<J = Vec<u8>> {
    url: String,
    queue_key: String,
    results: Option<String>,
    decoder: Box<Decoder<J>>,
    max_attempts: u32,
    retry_backoff: Backoff,
    retry_to_head: bool,
    heartbeat: Duration,
    worker_ttl: Duration,
    job_timeout: Option<Duration>,
    block: Duration,
    io_timeout: Duration,
    wait_replicas: Option<(u32, Duration)>,
}

impl<J> fmt::Debug for RedisSourceBuilder<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSourceBuilder")
            .field("url", &self.url)
            .field("queue_key", &self.queue_key)
            .field("results", &self.results)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<J: Send + 'static> RedisSourceBuilder<J> {
    /// The list each success's output is pushed to (`RPUSH`), atomically with the job leaving
    /// its processing list. Defaults to none: outputs are dropped.
    pub fn results(mut self, key: impl Into<String>) -> Self {
        self.results = Some(key.into());
        self
    }

    /// Turns a payload's bytes into the job the executor receives. A payload it refuses (an
    /// `Err` with the reason) is dead-lettered as `malformed` at once and never reaches the
    /// executor. Defaults to the bytes themselves (`Vec<u8>`).
    pub fn decoder<K, F>(self, decoder: F) -> RedisSourceBuilder<K>
    where
        F: Fn(&[u8]) -> Result<K, String> + Send + Sync + 'static,
    {
        RedisSourceBuilder {
            url: self.url,
            queue_key: self.queue_key,
            results: self.results,
            decoder: Box::new(decoder),
            max_attempts: self.max_attempts,
            retry_backoff: self.retry_backoff,
            retry_to_head: self.retry_to_head,
            heartbeat: self.heartbeat,
            worker_ttl: self.worker_ttl,
            job_timeout: self.job_timeout,
            block: self.block,
            io_timeout: self.io_timeout,
            wait_replicas: self.wait_replicas,
        }
    }

    /// Runs of a job before it is dead-lettered, crashes of its worker included. Defaults to 5;
    /// 1 means no retry; 0 is refused.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Delay before retry `n`: `initial * 2^(n-1)` capped at `max`, jittered to 50-100%.
    /// Defaults to 1 s and 5 min. `max < initial` is refused.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_backoff = Backoff { initial, max };
        self
    }

    /// Where a due retry goes back: the head of the queue (`true`, next to run) or the tail
    /// (`false`, behind waiting jobs). Defaults to the tail.
    pub fn retry_to_head(mut self, head: bool) -> Self {
        self.retry_to_head = head;
        self
    }

    /// How often this process refreshes its workers' heartbeats and reaps dead workers of any
    /// process. Defaults to 1 s; zero is refused.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// A worker whose heartbeat is older than this is dead: its jobs go back to the queue and
    /// its late completions are refused. Defaults to 5 s (five beats); must be at least three
    /// heartbeat intervals.
    pub fn worker_ttl(mut self, ttl: Duration) -> Self {
        self.worker_ttl = ttl;
        self
    }

    /// Stop vouching for a worker whose job has run longer than this: it is reaped like a
    /// dead one, the job runs again elsewhere and the late result is refused. Defaults to no
    /// limit (long jobs are never re-run while their process is alive). Zero is refused.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// The longest one `BLMOVE` blocks (also bounded by the pool's `fetch_timeout`): how long
    /// an idle worker takes to notice it should retire. Defaults to 1 s; below 10 ms refused.
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block = timeout;
        self
    }

    /// Connect and write timeout; reads wait for the block timeout plus this. Defaults to 2 s;
    /// zero is refused.
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// After each settle (acknowledgement, retry, dead letter), wait until `replicas` replicas
    /// have the write (`WAIT replicas timeout`), so that a failover to a replica does not lose
    /// an acknowledged job. Defaults to off (asynchronous replication). `replicas` 0 is refused.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some((replicas, timeout));
        self
    }

    /// Checks the settings. Does not connect.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the field: an unparsable `url`, an empty `queue_key` or
    /// `results`, a zero `max_attempts`, `heartbeat_interval`, `job_timeout` or `io_timeout`,
    /// `worker_ttl` under three heartbeats, `block_timeout` under 10 ms, or
    /// `retry_backoff` with `max < initial`.
    pub fn build(self) -> Result<RedisSource<J>, BuildError> {
        let client = Client::open(self.url.as_str())
            .map_err(|e| BuildError::new("url", &self.url, e.to_string()))?;
        if self.queue_key.is_empty() {
            return Err(BuildError::new("queue_key", "\"\"", "must not be empty"));
        }
        if self.results.as_deref() == Some("") {
            return Err(BuildError::new("results", "\"\"", "must not be empty"));
        }
        if self.max_attempts == 0 {
            return Err(BuildError::new("max_attempts", 0, "must be at least 1"));
        }
        for (field, d) in [
            ("heartbeat_interval", Some(self.heartbeat)),
            ("io_timeout", Some(self.io_timeout)),
            ("job_timeout", self.job_timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(BuildError::new(field, "0s", "must be longer than zero"));
            }
        }
        if self.worker_ttl < self.heartbeat * 3 {
            return Err(BuildError::new(
                "worker_ttl",
                format!("{:?}", self.worker_ttl),
                format!(
                    "must be at least three heartbeat intervals ({:?})",
                    self.heartbeat * 3
                ),
            ));
        }
        if self.block < Duration::from_millis(10) {
            return Err(BuildError::new(
                "block_timeout",
                format!("{:?}", self.block),
                "must be at least 10ms",
            ));
        }
        if let Some((0, _)) = self.wait_replicas {
            return Err(BuildError::new(
                "wait_for_replicas",
                0,
                "must be at least 1 replica (leave unset to not wait)",
            ));
        }
        if self.retry_backoff.max < self.retry_backoff.initial {
            return Err(BuildError::new(
                "retry_backoff",
                format!(
                    "{:?}..{:?}",
                    self.retry_backoff.initial, self.retry_backoff.max
                ),
                "max must not be shorter than initial",
            ));
        }
        let identity = format!(
            "{}:{}:{:016x}",
            host_name(),
            std::process::id(),
            backoff::random()
        );
        Ok(RedisSource {
            shared: Arc::new(Shared {
                client,
                keys: Keys::new(&self.queue_key, self.results),
                scripts: Scripts::new(),
                decoder: self.decoder,
                max_attempts: self.max_attempts,
                retry_backoff: self.retry_backoff,
                retry_to_head: self.retry_to_head,
                heartbeat: self.heartbeat,
                worker_ttl: self.worker_ttl,
                job_timeout: self.job_timeout,
                block: self.block,
                io_timeout: self.io_timeout,
                wait_replicas: self.wait_replicas,
                identity,
                epoch: Instant::now(),
                slots: Mutex::new(HashMap::new()),
                next_slot: AtomicU64::new(0),
                server_checked: AtomicBool::new(false),
                shared_conn: Mutex::new(None),
                keeper: Mutex::new(None),
                counters: Counters::default(),
            }),
        })
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
