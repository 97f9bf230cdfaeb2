//! Operators' view of a fleet in Redis: the processes serving it, its queues, their counts and
//! settings, the scaling history, and the runtime switches (pause, `jobs_per_thread`, fleet
//! caps). The `threadtide` command and its dashboard use this module and nothing else.
//!
//! Every call is one round trip (a pipeline or a script) on the one connection the [`Admin`]
//! holds; none of them touches a job. The key layout is in `docs/FLEET.md`.
//!
//! Dead letters and delayed retries ([`Admin::dead_page`], [`Admin::dead_requeue`],
//! [`Admin::retries`], ...) are read in bounded pages; a requeue or purge moves each job
//! atomically, in scripts of 200 jobs (see their docs).

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use redis::{Client, Connection};

use crate::error::SourceError;
use crate::reason::SizeReason;
use crate::source::redis::fleet_keys::{DEFAULT_FLEET, FleetKeys};
use crate::source::redis::{redis_error, scrub, secrets};

mod dead;
mod fleet;
mod letter;
mod retries;

pub use dead::{DeadPage, MoveReport};
pub use letter::{DeadFilter, DeadLetter};
pub use retries::DelayedRetry;

/// `url` with its password replaced by `***`: the user-info password
/// (`redis://user:***@host`) and a `pass=` / `password=` query parameter (the form
/// `redis+unix:///path?pass=P` takes). What every message of this crate shows of a URL.
///
/// # Examples
///
/// ```
/// use threadtide::admin::redact_url;
///
/// assert_eq!(redact_url("redis://app:s3cret@db:6379/0"), "redis://app:***@db:6379/0");
/// assert_eq!(redact_url("redis+unix:///run/r.sock?pass=s3cret"), "redis+unix:///run/r.sock?pass=***");
/// ```
pub fn redact_url(url: &str) -> String {
    crate::source::redis::redact_url(url)
}

/// `text` with every password `url` carries replaced by `***`, as written and
/// percent-decoded (a server's error message may quote either). For the text of errors that
/// do not come from this crate, whose own messages never hold a password.
///
/// # Examples
///
/// ```
/// use threadtide::admin::hide_secrets;
///
/// let url = "redis://:p%40ss@db";
/// assert_eq!(hide_secrets("auth p@ss refused", url), "auth *** refused");
/// ```
pub fn hide_secrets(text: &str, url: &str) -> String {
    scrub(text, &secrets(url))
}

/// How long a call waits for the server before it fails.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the Redis server of a fleet, for operators.
///
/// # Examples
///
/// ```no_run
/// use threadtide::admin::Admin;
///
/// let admin = Admin::connect("redis://127.0.0.1/")?.with_fleet("rpa");
/// for p in admin.processes()? {
///     println!("{} on {}: {} queue(s)", p.id, p.host, p.queues.len());
/// }
/// admin.pause("fila:conferencia")?;
/// # Ok::<(), threadtide::SourceError>(())
/// ```
pub struct Admin {
    conn: Mutex<Connection>,
    url: String,
    fleet: String,
    keys: FleetKeys,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("url", &self.url)
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Connects to `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://` with the
    /// `tls` feature), for the fleet `"threadtide"` (the default of
    /// [`RedisSourceBuilder::fleet`](crate::RedisSourceBuilder::fleet)). Each call waits at
    /// most 3 s for the server.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or the server cannot be reached or refuses the password; the
    /// message never shows the password.
    pub fn connect(url: &str) -> Result<Admin, SourceError> {
        let shown = crate::source::redis::redact_url(url);
        let secrets = secrets(url);
        // The driver's own words may quote the URL: never the password.
        let hide = |e: SourceError| {
            let hidden = SourceError::new(scrub(&e.to_string(), &secrets));
            if e.is_permanent() {
                hidden.into_permanent()
            } else {
                hidden
            }
        };
        let client = Client::open(url)
            .map_err(|e| hide(redis_error(&format!("invalid Redis URL {shown}"), e)))?;
        let conn = client
            .get_connection_with_timeout(IO_TIMEOUT)
            .map_err(|e| {
                hide(redis_error(
                    &format!("cannot connect to Redis at {shown}"),
                    e,
                ))
            })?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(IO_TIMEOUT)))
            .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        Ok(Admin {
            conn: Mutex::new(conn),
            url: shown,
            fleet: DEFAULT_FLEET.to_owned(),
            keys: FleetKeys::new(DEFAULT_FLEET),
        })
    }

    /// The same connection, for the fleet `name` (as given to
    /// [`RedisSourceBuilder::fleet`](crate::RedisSourceBuilder::fleet)).
    pub fn with_fleet(mut self, name: &str) -> Admin {
        self.fleet = name.to_owned();
        self.keys = FleetKeys::new(name);
        self
    }

    /// The fleet's name.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    fn with<T>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, SourceError> {
        let mut conn = self.conn.lock();
        f(&mut conn).map_err(|e| redis_error(what, e))
    }
}

/// One live process of the fleet, as its record in Redis says (refreshed with its heartbeat,
/// gone when it stops beating).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProcessRecord {
    /// `host:pid:nonce`, unique per process start.
    pub id: String,
    /// The host name.
    pub host: String,
    /// The operating system's process id.
    pub pid: u32,
    /// The threadtide version it runs.
    pub version: String,
    /// When it started (Unix ms).
    pub started_ms: u64,
    /// Its last heartbeat (Unix ms).
    pub heartbeat_ms: u64,
    /// Each queue it serves, sorted by queue key.
    pub queues: Vec<ProcessQueue>,
}

/// What one process runs for one queue.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ProcessQueue {
    /// The queue's name in the pool (`conferencia`).
    pub queue: String,
    /// The queue's list key (`fila:conferencia`).
    pub key: String,
    /// Workers alive.
    pub alive: usize,
    /// Workers running a job.
    pub busy: usize,
    /// The process's target for the queue.
    pub target: usize,
    /// Slots (leases to fetch) its workers hold.
    pub slots: usize,
    /// Its `max_threads_per_type` (per process).
    pub max_threads: usize,
    /// Its `max_total_threads` (per process).
    pub max_total_threads: usize,
    /// Jobs completed successfully by this process.
    pub jobs_ok: u64,
    /// Jobs whose executor returned an error.
    pub jobs_failed: u64,
    /// Jobs whose executor panicked.
    pub jobs_panicked: u64,
    /// Why the queue has its size in this process.
    pub reason: SizeReason,
    /// Whether the queue follows the fleet's rule in this process.
    pub coordinated: bool,
}

/// A queue's counts and runtime settings, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounts {
    /// Jobs waiting (`LLEN Q`).
    pub backlog: usize,
    /// Retries waiting for their time (`Q:delayed`).
    pub delayed: usize,
    /// Jobs in workers' processing lists.
    pub processing: usize,
    /// Dead letters (`Q:dead`).
    pub dead: usize,
    /// Registered workers of every process (`Q:workers`).
    pub workers: usize,
    /// Slots held (`Q:slots`; a lapsed one counts until a process removes it).
    pub slots: usize,
    /// Paused fleet-wide.
    pub paused: bool,
    /// The runtime `jobs_per_thread`, when one is set.
    pub jobs_per_thread: Option<usize>,
    /// The runtime `fleet_max_threads`, when one is set.
    pub fleet_max_threads: Option<usize>,
}

/// Which scaling decisions [`Admin::events`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventFilter {
    /// Only decisions at or after this time (Unix ms). Default: none.
    pub since_ms: Option<u64>,
    /// Only this queue key. Default: every queue.
    pub queue: Option<String>,
    /// At most this many, the newest. Default: 100; 0 means no limit.
    pub limit: usize,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter {
            since_ms: None,
            queue: None,
            limit: 100,
        }
    }
}

impl EventFilter {
    /// Only decisions at or after `ms` (Unix ms).
    pub fn since_ms(mut self, ms: u64) -> Self {
        self.since_ms = Some(ms);
        self
    }

    /// Only decisions for the queue key `key`.
    pub fn queue(mut self, key: impl Into<String>) -> Self {
        self.queue = Some(key.into());
        self
    }

    /// At most `n` (the newest); 0 means no limit.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n;
        self
    }
}

/// One scaling decision of one process, from the fleet's `F:fleet:events` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScaleRecord {
    /// The stream entry's id.
    pub id: String,
    /// When the decision was taken (Unix ms).
    pub time_ms: u64,
    /// The deciding process's id.
    pub process: String,
    /// The queue key.
    pub queue: String,
    /// Target before.
    pub from: usize,
    /// Target after.
    pub to: usize,
    /// Why the queue has its new size.
    pub reason: SizeReason,
    /// Which way it moved: `up`, `down` or `shared` (see [`ScaleReason`](crate::ScaleReason)).
    pub change: String,
    /// Jobs waiting when it was taken.
    pub backlog: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_show_the_password() {
        for url in [
            "redis://:s3cret-pw@127.0.0.1:1/",
            "redis://user:s3cret-pw@127.0.0.1:notaport/",
            "bogus://:s3cret-pw@host/",
        ] {
            let e = Admin::connect(url).expect_err(url).to_string();
            assert!(!e.contains("s3cret-pw"), "{url}: {e}");
        }
    }
}
