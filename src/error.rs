//! One error type per failure domain: configuration, start-up, waiting, sources, jobs.

use std::error::Error;
use std::fmt;
use std::io;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// A configuration value that [`Builder::build`](crate::Builder::build) refused.
///
/// Names the field and the value, so a configuration read from a file or the environment can be
/// corrected without reading the source.
///
/// # Examples
///
/// ```
/// use threadtide::ThreadPoolManager;
///
/// let err = ThreadPoolManager::builder().jobs_per_thread(0).build().unwrap_err();
/// assert_eq!(err.field(), "jobs_per_thread");
/// assert_eq!(err.value(), "0");
/// assert_eq!(err.to_string(), "invalid jobs_per_thread = 0: must be at least 1");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    field: String,
    value: String,
    reason: String,
}

impl BuildError {
    pub(crate) fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        BuildError {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }

    /// The setting at fault, as the builder method is named (`queue[emissao].weight` for a
    /// per-queue setting).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The refused value, formatted.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Why the value was refused.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {} = {}: {}",
            self.field, self.value, self.reason
        )
    }
}

impl Error for BuildError {}

/// Why [`ThreadPoolManager::start`](crate::ThreadPoolManager::start) failed. Nothing is left
/// running when it does.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// `start` was already called on this pool.
    AlreadyStarted,
    /// The pool was shut down before it was started.
    ShutDown,
    /// The operating system refused to spawn a thread.
    Spawn(io::Error),
    /// A queue's source refused to open (see [`JobSource::open`](crate::JobSource::open)):
    /// an error that retrying cannot fix, such as a wrong password or a missing permission.
    Source {
        /// The queue whose source failed.
        queue: String,
        /// What the source said.
        error: SourceError,
    },
    /// The metrics server could not listen on
    /// [`metrics_addr`](crate::Builder::metrics_addr) (the port is taken, or the address is
    /// not this machine's). Feature `metrics`.
    Metrics {
        /// The address it tried.
        addr: std::net::SocketAddr,
        /// Why the bind failed.
        error: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AlreadyStarted => f.write_str("pool already started"),
            StartError::ShutDown => f.write_str("pool was shut down before it started"),
            StartError::Spawn(_) => f.write_str("failed to spawn a pool thread"),
            StartError::Source { queue, error } => {
                write!(f, "queue {queue}: the job source cannot start: {error}")
            }
            StartError::Metrics { addr, error } => {
                write!(f, "metrics_addr {addr}: cannot listen: {error}")
            }
        }
    }
}

impl Error for StartError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            StartError::Spawn(e) => Some(e),
            StartError::Source { error, .. } => Some(error),
            StartError::Metrics { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// A job that was still running when a bounded wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunningJob {
    /// The queue the job came from.
    pub queue: String,
    /// The worker running it (`{prefix}-{queue}-{n}`, see [`WorkerInfo::name`](crate::WorkerInfo::name)).
    pub worker: String,
    /// How long it had been running when the wait ended (to within one `rebalance_interval`
    /// for a job that followed a run of jobs shorter than 50 µs, which are not all timed).
    pub elapsed: std::time::Duration,
}

/// Why waiting for the pool to finish did not succeed.
#[derive(Debug)]
#[non_exhaustive]
pub enum WaitError {
    /// The wait was called from one of this pool's own threads, where it would deadlock.
    InsideWorker,
    /// The deadline passed with jobs still running. Their workers were told to stop and exit
    /// once their job ends; a later [`wait`](crate::ThreadPoolManager::wait) joins them.
    TimedOut {
        /// Jobs still running at the deadline.
        running: Vec<RunningJob>,
        /// Of those, how many their sources put back for other processes (a crash-safe source
        /// such as Redis does, once the pool is shutting down; the in-memory source cannot).
        requeued: usize,
    },
    /// The monitor thread died of a panic (a bug of the pool: every callback it makes is
    /// guarded). The pool stopped, and its workers were joined before this was returned.
    MonitorPanicked,
}

impl fmt::Display for WaitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitError::InsideWorker => {
                f.write_str("cannot wait for the pool from one of its own threads")
            }
            WaitError::TimedOut { running, requeued } => write!(
                f,
                "timed out with {} job(s) still running, {requeued} put back in their source",
                running.len()
            ),
            WaitError::MonitorPanicked => {
                f.write_str("the pool's monitor thread panicked; the pool stopped")
            }
        }
    }
}

impl Error for WaitError {}

/// A failure of a [`JobSource`](crate::JobSource): a lost connection, a refused command.
///
/// The pool never panics on one: it reports it (log, event, stats) and retries with back-off.
#[derive(Debug)]
pub struct SourceError {
    message: String,
    source: Option<BoxError>,
    permanent: bool,
}

impl SourceError {
    /// A source error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            source: None,
            permanent: false,
        }
    }

    /// A source error that wraps its cause, kept as [`Error::source`].
    pub fn with_source(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        SourceError {
            message: message.into(),
            source: Some(source.into()),
            permanent: false,
        }
    }

    /// Marks the error as one that retrying cannot fix (a wrong password, a missing
    /// permission, a database that does not exist). Returned from
    /// [`JobSource::open`](crate::JobSource::open) it fails
    /// [`start`](crate::ThreadPoolManager::start); elsewhere it is reported like any other
    /// source error, and still retried with back-off (an operator may fix it).
    pub fn into_permanent(mut self) -> Self {
        self.permanent = true;
        self
    }

    /// Whether retrying cannot fix it (see [`into_permanent`](Self::into_permanent)).
    /// Defaults to false.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for SourceError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// How a job failed, which decides what its source does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The executor returned [`JobError::retryable`]: the source may run it again later.
    Retryable,
    /// The executor returned [`JobError::permanent`]: retrying cannot help; dead-letter it.
    Permanent,
    /// The executor panicked. Treated as retryable; the redelivery cap stops a job that always
    /// panics.
    Panicked,
}

/// The error an executor returns for a job it could not complete.
///
/// # Examples
///
/// ```
/// use threadtide::{FailureKind, JobError};
///
/// let e = JobError::retryable("portal timed out");
/// assert_eq!(e.kind(), FailureKind::Retryable);
/// let e = JobError::permanent(std::io::Error::other("order 17 does not exist"));
/// assert_eq!(e.kind(), FailureKind::Permanent);
/// ```
#[derive(Debug)]
pub struct JobError {
    kind: FailureKind,
    error: BoxError,
}

impl JobError {
    /// A failure worth retrying (a timeout, a flaky page). The source decides when and how often.
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        JobError {
            kind: FailureKind::Retryable,
            error: error.into(),
        }
    }

    /// A failure that retrying cannot fix (bad input): the source dead-letters the job.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        JobError {
            kind: FailureKind::Permanent,
            error: error.into(),
        }
    }

    pub(crate) fn panicked(message: String) -> Self {
        JobError {
            kind: FailureKind::Panicked,
            error: message.into(),
        }
    }

    /// Whether the job may be retried, and why it failed.
    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    /// Whether a retry could help (`Retryable` or `Panicked`).
    pub fn is_retryable(&self) -> bool {
        self.kind != FailureKind::Permanent
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FailureKind::Panicked => write!(f, "job panicked: {}", self.error),
            _ => self.error.fmt(f),
        }
    }
}

impl Error for JobError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.error)
    }
}
