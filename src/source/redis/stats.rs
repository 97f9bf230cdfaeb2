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

/// The backlog count older than this means the keeper cannot reach Redis (it reads every
/// 50 ms while Redis answers).
const STALE_BACKLOG: Duration = Duration::from_secs(3);

/// [`JobSource::metrics`](crate::JobSource::metrics) of the Redis source.
pub(super) fn fill_metrics<J: Send + 'static>(
    source: &super::RedisSource<J>,
    out: &mut crate::SourceMetrics,
) {
    let s = source.stats();
    out.retried = Some(s.retried);
    out.reconnects = Some(s.reconnects);
    out.recovered = Some(s.recovered);
    out.acks_refused = Some(s.acks_refused);
    out.dead_lettered = vec![
        ("malformed", s.dead_malformed),
        ("attempts_exhausted", s.dead_exhausted),
        ("permanent", s.dead_permanent),
    ];
    let stale = s.backlog_age.is_some_and(|age| age > STALE_BACKLOG);
    if stale {
        out.reachable = Some(false);
        return;
    }
    match source.summary() {
        Ok(q) => {
            fill_fleet(source, out);
            out.reachable = Some(true);
            out.delayed = Some(q.delayed as u64);
            out.processing = Some(q.processing as u64);
            out.dead = Some(q.dead as u64);
            out.registered_workers = Some(q.workers as u64);
        }
        Err(_) => out.reachable = Some(false),
    }
}

/// The fleet's caps and pause as set now: the runtime settings in Redis (`Q:settings`,
/// `F:fleet:settings`) over the builder's. One pipelined round trip; left out on an error.
fn fill_fleet<J: Send + 'static>(source: &super::RedisSource<J>, out: &mut crate::SourceMetrics) {
    let shared = &source.shared;
    let fleet = &shared.fleet;
    let read = shared.with_conn(|conn| {
        redis::pipe()
            .cmd("HMGET")
            .arg(&fleet.queue.settings)
            .arg("fleet_max_threads")
            .arg("paused")
            .cmd("HGET")
            .arg(&fleet.keys.settings)
            .arg("max_total_threads")
            .query::<(Vec<Option<u64>>, Option<u64>)>(conn)
            .map_err(|e| super::redis_error("cannot read the fleet settings", e))
    });
    if let Ok((q, total)) = read {
        let as_u64 = |n: Option<usize>| n.map(|n| n as u64);
        out.fleet_max_threads = q
            .first()
            .copied()
            .flatten()
            .or(as_u64(fleet.settings.max_threads));
        out.paused = Some(q.get(1).copied().flatten() == Some(1));
        out.fleet_max_total_threads = total.or(as_u64(fleet.settings.max_total_threads));
    }
}
