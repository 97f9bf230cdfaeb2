//! What a Redis source reports: [`QueueSummary`] (from the server) and [`RedisStats`] (this
//! process's counters).

use std::time::Duration;

/// Counts of a queue's jobs in each place, from [`RedisSource::summary`](crate::RedisSource::summary).
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

/// What this process's side of a Redis source has seen, from [`RedisSource::stats`](crate::RedisSource::stats).
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
    /// Dead workers (of any process) this process's reaper removed.
    pub reaped_workers: u64,
    /// Reaper passes this process's keeper ran.
    pub reaps: u64,
    /// Reaper passes skipped because this keeper's view was stale: its own heartbeat landed
    /// late (Redis or this process stalled), so other processes' beats may not have landed
    /// either. Reaping resumes after one `worker_ttl` of steady beats.
    pub reaps_skipped: u64,
    /// Outcomes (a result, a retry, a dead letter) not written because the job had been removed
    /// from its worker's processing list from outside (an operator's `DEL`, say): each is also a
    /// warning in the log, with this count.
    pub outcomes_dropped: u64,
    /// Age of the backlog count that [`JobSource::backlog`](crate::JobSource::backlog) returns (the keeper refreshes it
    /// every 50 ms while Redis answers); `None` before the first read.
    pub backlog_age: Option<Duration>,
}
