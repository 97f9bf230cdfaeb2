//! [`RedisSourceBuilder`]: every setting of a Redis source, its default and its limits, checked
//! in one place.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::{Client, IntoConnectionInfo};

use super::conn::{self, Link};
use super::fleet::{FleetSettings, FleetState};
use super::scripts::Scripts;
use super::{Backlog, Counters, Decoder, Keys, RedisSource, Shared, host_name};
use crate::backoff::{self, Backoff};
use crate::error::BuildError;

/// Upper limit of `heartbeat_interval`, `block_timeout`, `io_timeout` and the
/// `wait_for_replicas` timeout: longer is a configuration mistake (a unit confused), and it
/// keeps every sum of durations and every millisecond count far from overflowing.
const MAX_SHORT: Duration = Duration::from_secs(3600);
/// Lower limits: shorter would make every reply late (I/O), every worker look dead (TTL), or
/// beat faster than the keeper ticks (heartbeat).
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
const MIN_IO: Duration = Duration::from_millis(50);
const MIN_TTL: Duration = Duration::from_millis(100);
/// Upper limit of `worker_ttl`.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Upper limit of `job_timeout` and of the `retry_backoff` delays.
const MAX_LONG: Duration = Duration::from_secs(365 * 24 * 3600);

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
    fleet: FleetSettings,
    #[cfg(feature = "tls")]
    tls: TlsFiles,
}

/// Certificates for a `rediss://` server that the system's trust store does not vouch for.
#[cfg(feature = "tls")]
#[derive(Default)]
struct TlsFiles {
    root: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisSourceBuilder {
    pub(super) fn new(url: String, queue_key: String) -> Self {
        RedisSourceBuilder {
            url,
            queue_key,
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
            fleet: FleetSettings::default(),
            #[cfg(feature = "tls")]
            tls: TlsFiles::default(),
        }
    }
}

/// Shows the URL with its password replaced by `***`.
impl<J> fmt::Debug for RedisSourceBuilder<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSourceBuilder")
            .field("url", &conn::redact_url(&self.url))
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
            fleet: self.fleet,
            #[cfg(feature = "tls")]
            tls: self.tls,
        }
    }

    /// The fleet this queue belongs to: processes that use the same name on the same server
    /// scale its queues by one rule and share the fleet caps (see `docs/FLEET.md`). Defaults
    /// to `"threadtide"`; an empty name or one with spaces is a `build()` error.
    pub fn fleet(mut self, name: impl Into<String>) -> Self {
        self.fleet.name = name.into();
        self
    }

    /// Whether this queue's workers follow the fleet's rule (`true`, the default): all
    /// processes serving the queue together run `ceil(backlog / jobs_per_thread)` threads,
    /// within the fleet caps, and each process its share, within its own
    /// `max_threads_per_type` / `max_total_threads`, and workers fetch only while they hold
    /// a slot (see `docs/FLEET.md`). `false`: this process scales on the backlog alone (each
    /// process reads the whole `LLEN`) and ignores pause and the fleet caps; it still
    /// publishes its record (`coordinated: false`).
    pub fn coordinate(mut self, on: bool) -> Self {
        self.fleet.coordinate = on;
        self
    }

    /// A cap on this queue's threads over the whole fleet (every process together): a worker
    /// starts a job only while it holds one of the queue's slots (the exceptions for jobs
    /// already running are in `docs/FLEET.md`). Processes whose values differ follow the
    /// strictest of the live ones. Unlike
    /// [`Builder::max_threads_per_type`](crate::Builder::max_threads_per_type) (per process:
    /// one host's memory) this is a limit of the service (a target site's). Defaults to none;
    /// 0 is a `build()` error. A value set at runtime in Redis
    /// ([`Admin::set_fleet_max_threads`](crate::admin::Admin::set_fleet_max_threads)) wins.
    pub fn fleet_max_threads(mut self, n: usize) -> Self {
        self.fleet.max_threads = Some(n);
        self
    }

    /// A cap on the threads of all the fleet's queues together, over every process (held
    /// like [`fleet_max_threads`](Self::fleet_max_threads)); shared between the queues by
    /// weight; processes whose values differ follow the strictest of the queue's live ones.
    /// Defaults to none; 0 is a `build()` error. The value in Redis (`F:fleet:settings max_total_threads`, set with
    /// [`Admin::set_fleet_max_total_threads`](crate::admin::Admin::set_fleet_max_total_threads))
    /// wins over this one.
    pub fn fleet_max_total_threads(mut self, n: usize) -> Self {
        self.fleet.max_total_threads = Some(n);
        self
    }

    /// Runs of a job before it is dead-lettered, crashes of its worker included. Defaults to 5;
    /// 1 means no retry; 0 is refused.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Delay before retry `n`: `initial * 2^(n-1)` capped at `max`, jittered to 50-100%.
    /// Defaults to 1 s and 5 min. `max < initial` and `max` over 365 days are refused.
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
    /// process. Defaults to 1 s; under 10 ms and over an hour are refused.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// A worker whose heartbeat is older than this is dead: its jobs go back to the queue and
    /// its late completions are refused. Defaults to 5 s (five beats); must be at least three
    /// heartbeat intervals, at least 100 ms and at most 24 h.
    pub fn worker_ttl(mut self, ttl: Duration) -> Self {
        self.worker_ttl = ttl;
        self
    }

    /// Stop vouching for a worker whose job has run longer than this: it is reaped like a
    /// dead one, the job runs again elsewhere and the late result is refused. Defaults to no
    /// limit (long jobs are never re-run while their process is alive). Zero and over 365 days
    /// are refused.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// The longest one `BLMOVE` blocks (also bounded by the pool's `fetch_timeout`): how long
    /// an idle worker takes to notice it should retire. Defaults to 1 s; below 10 ms or over an hour
    /// is refused.
    pub fn block_timeout(mut self, timeout: Duration) -> Self {
        self.block = timeout;
        self
    }

    /// Connect and write timeout; reads wait for the block timeout plus this. Defaults to 2 s;
    /// under 50 ms and over an hour are refused. The keeper's and the host calls' connections read
    /// with this timeout alone (they never block on the server).
    pub fn io_timeout(mut self, timeout: Duration) -> Self {
        self.io_timeout = timeout;
        self
    }

    /// After each settle (acknowledgement, retry, dead letter), wait until `replicas` replicas
    /// have the write (`WAIT replicas timeout`), so that a failover to a replica does not lose
    /// an acknowledged job. Defaults to off (asynchronous replication). `replicas` 0, and a `timeout` of zero or
    /// over an hour, are refused.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = Some((replicas, timeout));
        self
    }

    /// The certificate authority (PEM) that signed a `rediss://` server's certificate, when
    /// the system's trust store does not hold it (a private CA). Defaults to the system's
    /// trust store. Feature `tls`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let source = threadtide::RedisSource::builder("rediss://redis.internal:6380", "fila:q")
    ///     .tls_root_certificate(std::fs::read("/etc/redis/ca.pem")?)
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.root = Some(pem.into());
        self
    }

    /// A client certificate and its private key (both PEM), for a server that asks clients
    /// to authenticate with one (`tls-auth-clients yes`). Defaults to none. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Checks the settings. Does not connect.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the field and the value (a URL with its password shown as
    /// `***`): an unparsable `url` (bad scheme, port or database number), an empty
    /// `queue_key` or `results`, a zero `max_attempts`, a `heartbeat_interval` under 10 ms or
    /// over an hour, an `io_timeout` under 50 ms or over an hour, a `block_timeout` under
    /// 10 ms or over an hour, a `worker_ttl` under 100 ms, under three heartbeats or over a day, a zero or over-a-year `job_timeout`,
    /// a `retry_backoff` with `max < initial` or over a year, a `wait_for_replicas` with 0
    /// replicas or a timeout of zero or over an hour.
    pub fn build(self) -> Result<RedisSource<J>, BuildError> {
        let secrets = conn::secrets(&self.url);
        let shown_url = conn::redact_url(&self.url);
        let bad_url = |e: redis::RedisError| {
            if cfg!(not(feature = "tls")) && self.url.starts_with("rediss://") {
                return BuildError::new(
                    "url",
                    &shown_url,
                    "a rediss:// (TLS) URL needs threadtide's `tls` feature",
                );
            }
            BuildError::new("url", &shown_url, conn::scrub(&e.to_string(), &secrets))
        };
        let info = self.url.as_str().into_connection_info().map_err(bad_url)?;
        // No `CLIENT SETINFO` at connect: each of its replies would wait up to the whole I/O
        // timeout on a silent server (the connection names itself with `CLIENT SETNAME`).
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        #[cfg(feature = "tls")]
        let client = if self.tls.root.is_some() || self.tls.client.is_some() {
            let certs = redis::TlsCertificates {
                client_tls: self.tls.client.map(|(client_cert, client_key)| {
                    redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }
                }),
                root_cert: self.tls.root,
            };
            Client::build_with_tls(info, certs).map_err(|e| {
                BuildError::new(
                    "tls",
                    "(certificates)",
                    conn::scrub(&e.to_string(), &secrets),
                )
            })?
        } else {
            Client::open(info).map_err(bad_url)?
        };
        #[cfg(not(feature = "tls"))]
        let client = Client::open(info).map_err(bad_url)?;
        if self.queue_key.is_empty() {
            return Err(BuildError::new("queue_key", "\"\"", "must not be empty"));
        }
        if self.results.as_deref() == Some("") {
            return Err(BuildError::new("results", "\"\"", "must not be empty"));
        }
        if self.max_attempts == 0 {
            return Err(BuildError::new("max_attempts", 0, "must be at least 1"));
        }
        let over = |field: &str, d: Duration, max: Duration, what: &str| {
            BuildError::new(field, format!("{d:?}"), format!("must be at most {what}"))
                .into_if(d > max)
        };
        for (field, d, max, what) in [
            ("heartbeat_interval", Some(self.heartbeat), MAX_SHORT, "1h"),
            ("io_timeout", Some(self.io_timeout), MAX_SHORT, "1h"),
            ("job_timeout", self.job_timeout, MAX_LONG, "365 days"),
            (
                "wait_for_replicas",
                self.wait_replicas.map(|(_, t)| t),
                MAX_SHORT,
                "1h",
            ),
        ] {
            let Some(d) = d else { continue };
            if d.is_zero() {
                return Err(BuildError::new(field, "0ns", "must be longer than zero"));
            }
            over(field, d, max, what)?;
        }
        for (field, d, min, what) in [
            ("heartbeat_interval", self.heartbeat, MIN_HEARTBEAT, "10ms"),
            ("io_timeout", self.io_timeout, MIN_IO, "50ms"),
            ("worker_ttl", self.worker_ttl, MIN_TTL, "100ms"),
        ] {
            if d < min {
                return Err(BuildError::new(
                    field,
                    format!("{d:?}"),
                    format!("must be at least {what}"),
                ));
            }
        }
        over("block_timeout", self.block, MAX_SHORT, "1h")?;
        over("worker_ttl", self.worker_ttl, MAX_TTL, "24h")?;
        over(
            "retry_backoff",
            self.retry_backoff.max,
            MAX_LONG,
            "365 days",
        )?;
        // Both bounded above, so no product below overflows.
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
        self.fleet.validate()?;
        let host = host_name();
        let identity = format!("{host}:{}:{:016x}", std::process::id(), backoff::random());
        let link = Link::new(format!("redis for {}", self.queue_key), conn::RECONNECT);
        let fleet = FleetState::new(self.fleet, &self.queue_key, &host);
        Ok(RedisSource {
            shared: Arc::new(Shared {
                client,
                url: shown_url,
                host,
                fleet,
                keys: Keys::new(&self.queue_key, self.results),
                scripts: Scripts::new(),
                fleet_scripts: super::fleet_scripts::FleetScripts::new(),
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
                server_check: AtomicU8::new(0),
                shared_conn: Mutex::new(link),
                keeper: Mutex::new(None),
                backlog: Backlog::default(),
                counters: Counters::default(),
            }),
        })
    }
}

/// `Err(self)` when `cond`: keeps the table of limits above short.
trait IntoIf: Sized {
    fn into_if(self, cond: bool) -> Result<(), Self>;
}

impl IntoIf for BuildError {
    fn into_if(self, cond: bool) -> Result<(), Self> {
        if cond { Err(self) } else { Ok(()) }
    }
}
