//! Prometheus metrics (feature `metrics`): what the pool, its sources and its events say,
//! rendered in the text exposition format, and the small HTTP server that serves them
//! ([`Builder::metrics_addr`](crate::Builder::metrics_addr)).
//!
//! Names follow the Prometheus conventions: `threadtide_` prefix, base units (seconds),
//! `_total` for counters, labels `queue` (the pool's queue name), `outcome`, `reason`,
//! `direction`, `le`, `version`: never a job id, a worker id or a payload. The list, and the
//! queries to use, are in `docs/OPERATIONS.md`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::counters::Accumulator;
use crate::event::{EventHandler, ExitReason, ScaleEvent, ScaleReason, WorkerEvent};
use crate::source::SourceMetrics;
use crate::state::PoolShared;
use crate::worker::Runner;

mod server;
mod text;

pub(crate) use server::{Pages, Server};
use text::Text;

/// Upper bounds, in seconds, of the job-duration histogram: browser and PDF jobs last from a
/// fraction of a second to tens of minutes (the client libraries' defaults stop at 10 s).
pub(crate) const JOB_BOUNDS: [f64; 14] = [
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Counts of the events the pool reports that the stats do not keep: worker exits by reason
/// and scaling decisions by direction and reason.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    queues: Mutex<BTreeMap<String, QueueEvents>>,
}

#[derive(Debug, Default, Clone)]
struct QueueEvents {
    exits_retired: u64,
    exits_shutdown: u64,
    /// `(direction, reason) -> count`.
    scale: BTreeMap<(&'static str, &'static str), u64>,
}

impl Recorder {
    fn with(&self, queue: &str, f: impl FnOnce(&mut QueueEvents)) {
        let mut q = self.queues.lock();
        if let Some(e) = q.get_mut(queue) {
            f(e);
        } else {
            f(q.entry(queue.to_owned()).or_default());
        }
    }

    fn snapshot(&self, queue: &str) -> QueueEvents {
        self.queues.lock().get(queue).cloned().unwrap_or_default()
    }
}

/// The host's event handler with the recorder in front of it.
pub(crate) struct Tee {
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) inner: Box<dyn EventHandler>,
}

impl EventHandler for Tee {
    fn on_scale(&self, event: &ScaleEvent) {
        let direction = if event.to > event.from { "up" } else { "down" };
        let reason = match event.reason {
            ScaleReason::Up => "backlog_grew",
            ScaleReason::Down => "demand_fell",
            ScaleReason::Shared => "total_cap",
        };
        self.recorder.with(&event.queue, |q| {
            *q.scale.entry((direction, reason)).or_default() += 1;
        });
        self.inner.on_scale(event);
    }
    fn on_worker_start(&self, event: &WorkerEvent) {
        self.inner.on_worker_start(event);
    }
    fn on_worker_exit(&self, event: &WorkerEvent) {
        self.recorder.with(&event.queue, |q| match event.exit {
            Some(ExitReason::Shutdown) => q.exits_shutdown += 1,
            _ => q.exits_retired += 1,
        });
        self.inner.on_worker_exit(event);
    }
    fn on_error(&self, event: &crate::ErrorEvent) {
        self.inner.on_error(event);
    }
}

/// One queue's numbers, gathered before any text is written (the format wants every sample
/// of a family together).
struct Row<'a> {
    name: &'a str,
    alive: usize,
    busy: usize,
    target: usize,
    min_threads: usize,
    backlog: usize,
    acc: Accumulator,
    spawned: u64,
    init_failures: u64,
    source_errors: u64,
    spawn_failures: u64,
    recycles: u64,
    health_check_failures: u64,
    starting: usize,
    init: crate::histogram::Cumulative,
    events: QueueEvents,
    source: SourceMetrics,
    reason: crate::SizeReason,
    target_wait: Option<std::time::Duration>,
    estimate: crate::estimate::View,
}

/// The whole exposition document for the pool.
pub(crate) fn render(
    pool: &PoolShared,
    runners: &[Arc<dyn Runner>],
    recorder: &Recorder,
) -> String {
    let rows: Vec<Row<'_>> = pool
        .queues
        .iter()
        .zip(runners)
        .map(|(q, runner)| {
            let mut acc = Accumulator::default();
            let mut busy = 0;
            let (spawned, spawn_failures, alive) = {
                let roster = q.roster();
                roster.exited.add_to(&mut acc);
                for (_, c) in &roster.workers {
                    c.add_to(&mut acc);
                    busy += usize::from(c.busy.load(Ordering::Relaxed));
                }
                (
                    roster.spawned,
                    roster.refused,
                    q.alive.load(Ordering::Acquire),
                )
            };
            let mut source = SourceMetrics::default();
            runner.metrics(&mut source);
            Row {
                name: q.name(),
                alive,
                busy,
                target: q.target.load(Ordering::Relaxed),
                min_threads: q.config.min_threads,
                backlog: q.backlog.load(Ordering::Relaxed),
                acc,
                spawned,
                init_failures: q.init_failures.load(Ordering::Relaxed),
                source_errors: q.source_errors.load(Ordering::Relaxed),
                spawn_failures,
                recycles: q.recycles.load(Ordering::Relaxed),
                health_check_failures: q.health_check_failures.load(Ordering::Relaxed),
                starting: q.starting.load(Ordering::Acquire),
                init: q.init_times.cumulative(),
                events: recorder.snapshot(q.name()),
                source,
                reason: crate::SizeReason::ALL
                    .get(usize::from(q.size_reason.load(Ordering::Relaxed)))
                    .copied()
                    .unwrap_or_default(),
                target_wait: q.config.target_wait,
                estimate: *q.estimate.lock(),
            }
        })
        .collect();
    let mut t = Text::default();
    t.family(
        "threadtide_info",
        "gauge",
        "Always 1; the crate version in the label.",
    );
    t.sample(
        "threadtide_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    t.family(
        "threadtide_max_total_threads",
        "gauge",
        "The pool's cap on the threads of all its queues together (max_total_threads).",
    );
    t.sample(
        "threadtide_max_total_threads",
        &[],
        pool.config.max_total_threads as f64,
    );
    // The memory gate, while it is on.
    let gate = [
        (
            "threadtide_free_memory_bytes",
            "Free memory the memory gate read at the monitor's last tick (absent: gate off or unreadable).",
            pool.memory.free(),
        ),
        (
            "threadtide_min_free_memory_bytes",
            "The memory gate's minimum (min_free_memory; absent: gate off).",
            pool.memory.min(),
        ),
    ];
    for (name, help, value) in gate {
        if let Some(v) = value {
            t.family(name, "gauge", help);
            t.sample(name, &[], v as f64);
        }
    }
    let cap = pool.config.max_threads_per_type as f64;
    type Gauge<'a> = (&'a str, &'a str, fn(&Row<'_>) -> Option<f64>);
    let per_queue: [Gauge<'_>; 18] = [
        (
            "threadtide_queue_fleet_max_threads",
            "The fleet's cap on the queue's threads over every process (queue-level; absent: no cap).",
            |r| r.source.fleet_max_threads.map(|v| v as f64),
        ),
        (
            "threadtide_fleet_max_total_threads",
            "The fleet's cap on the threads of all its queues together (absent: no cap).",
            |r| r.source.fleet_max_total_threads.map(|v| v as f64),
        ),
        (
            "threadtide_queue_paused",
            "1 while the queue is paused fleet-wide (queue-level).",
            |r| r.source.paused.map(|v| if v { 1.0 } else { 0.0 }),
        ),
        (
            "threadtide_workers",
            "Worker threads serving the queue in this process, idle or busy.",
            |r| Some(r.alive as f64),
        ),
        (
            "threadtide_workers_busy",
            "Worker threads of this process running a job.",
            |r| Some(r.busy as f64),
        ),
        (
            "threadtide_workers_starting",
            "Worker threads waiting for an init turn or the memory gate, or running init.",
            |r| Some(r.starting as f64),
        ),
        (
            "threadtide_workers_target",
            "Threads the scaling policy wants for the queue in this process.",
            |r| Some(r.target as f64),
        ),
        (
            "threadtide_queue_min_threads",
            "Threads this process keeps for the queue even when it is empty.",
            |r| Some(r.min_threads as f64),
        ),
        (
            "threadtide_queue_backlog",
            "Jobs waiting in the queue (queue-level: every process sharing the queue reports it; aggregate with max by (queue)).",
            |r| Some(r.backlog as f64),
        ),
        (
            "threadtide_queue_delayed",
            "Jobs waiting for a retry (queue-level; max by (queue)).",
            |r| r.source.delayed.map(|v| v as f64),
        ),
        (
            "threadtide_queue_processing",
            "Jobs being run by a registered worker of any process (queue-level; max by (queue)).",
            |r| r.source.processing.map(|v| v as f64),
        ),
        (
            "threadtide_queue_dead",
            "Jobs in the dead-letter list (queue-level; max by (queue)).",
            |r| r.source.dead.map(|v| v as f64),
        ),
        (
            "threadtide_queue_registered_workers",
            "Workers of all processes registered on the queue's server (queue-level; max by (queue)).",
            |r| r.source.registered_workers.map(|v| v as f64),
        ),
        (
            "threadtide_queue_target_wait_seconds",
            "The queue's wait target (absent: it scales by jobs_per_thread).",
            |r| r.target_wait.map(|t| t.as_secs_f64()),
        ),
        (
            "threadtide_queue_job_duration_estimate_seconds",
            "The job duration the scaling policy uses (fleet-wide for a coordinated queue with a wait target; absent before a job is timed).",
            |r| r.estimate.duration.map(|d| d.as_secs_f64()),
        ),
        (
            "threadtide_queue_estimated_wait_seconds",
            "The longest wait among the jobs waiting now at the current threads (fleet-wide for a coordinated queue with a wait target; absent without a duration estimate).",
            |r| r.estimate.estimated_wait.map(|d| d.as_secs_f64()),
        ),
        (
            "threadtide_queue_learned_jobs_per_thread",
            "The divisor the wait rule learned: target_wait / job duration estimate (absent without a wait target or a duration).",
            |r| r.estimate.learned_jobs_per_thread,
        ),
        (
            "threadtide_source_up",
            "1 when the queue's source (Redis) answers, 0 when it cannot be reached.",
            |r| r.source.reachable.map(|v| if v { 1.0 } else { 0.0 }),
        ),
    ];
    for (name, help, get) in per_queue {
        let values: Vec<(&str, f64)> = rows
            .iter()
            .filter_map(|r| get(r).map(|v| (r.name, v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        t.family(name, "gauge", help);
        for (queue, v) in values {
            t.sample(name, &[("queue", queue)], v);
        }
    }
    t.family(
        "threadtide_queue_size_reason",
        "gauge",
        "1 for the reason the queue has its size in this process now (no_backlog, at_demand, queue_cap, total_cap, fleet_cap, fleet_total_cap, paused, stabilising, memory, source_unreachable), 0 for the others.",
    );
    for r in &rows {
        for reason in crate::SizeReason::ALL {
            let on = if reason == r.reason { 1.0 } else { 0.0 };
            t.sample(
                "threadtide_queue_size_reason",
                &[("queue", r.name), ("reason", reason.as_str())],
                on,
            );
        }
    }
    t.family(
        "threadtide_queue_max_threads",
        "gauge",
        "This process's cap on the queue's threads (max_threads_per_type).",
    );
    for r in &rows {
        t.sample("threadtide_queue_max_threads", &[("queue", r.name)], cap);
    }
    t.family(
        "threadtide_jobs_total",
        "counter",
        "Jobs this process's executors finished, by outcome (ok, failed, panicked).",
    );
    for r in &rows {
        for (outcome, n) in [
            ("ok", r.acc.ok),
            ("failed", r.acc.failed),
            ("panicked", r.acc.panicked),
        ] {
            t.sample(
                "threadtide_jobs_total",
                &[("queue", r.name), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    type Counter<'a> = (&'a str, &'a str, fn(&Row<'_>) -> Option<u64>);
    let counters: [Counter<'_>; 10] = [
        (
            "threadtide_jobs_retried_total",
            "Jobs this process scheduled for a retry after a failure.",
            |r| r.source.retried,
        ),
        (
            "threadtide_jobs_recovered_total",
            "Jobs this process's reaper put back from workers that died (any process).",
            |r| r.source.recovered,
        ),
        (
            "threadtide_acks_refused_total",
            "Completions refused because the worker had been fenced (the job ran again elsewhere).",
            |r| r.source.acks_refused,
        ),
        (
            "threadtide_worker_starts_total",
            "Worker threads started.",
            |r| Some(r.spawned),
        ),
        (
            "threadtide_worker_init_failures_total",
            "Failed attempts to build a worker's state (init returned an error or panicked).",
            |r| Some(r.init_failures),
        ),
        (
            "threadtide_worker_recycles_total",
            "Worker states rebuilt after recycle_after jobs or recycle_after_age.",
            |r| Some(r.recycles),
        ),
        (
            "threadtide_worker_health_check_failures_total",
            "Health checks of a worker's state that failed (the state was rebuilt).",
            |r| Some(r.health_check_failures),
        ),
        (
            "threadtide_worker_spawn_failures_total",
            "Times the operating system refused to start a worker thread.",
            |r| Some(r.spawn_failures),
        ),
        (
            "threadtide_source_errors_total",
            "Errors of the queue's source (fetch, acknowledgement, backlog).",
            |r| Some(r.source_errors),
        ),
        (
            "threadtide_source_reconnects_total",
            "Connections to the source's server re-established after an error.",
            |r| r.source.reconnects,
        ),
    ];
    for (name, help, get) in counters {
        let values: Vec<(&str, u64)> = rows
            .iter()
            .filter_map(|r| get(r).map(|v| (r.name, v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        t.family(name, "counter", help);
        for (queue, v) in values {
            t.sample(name, &[("queue", queue)], v as f64);
        }
    }
    if rows.iter().any(|r| !r.source.dead_lettered.is_empty()) {
        t.family(
            "threadtide_jobs_dead_lettered_total",
            "counter",
            "Jobs this process moved to the dead-letter list, by reason.",
        );
        for r in &rows {
            for &(reason, n) in &r.source.dead_lettered {
                t.sample(
                    "threadtide_jobs_dead_lettered_total",
                    &[("queue", r.name), ("reason", reason)],
                    n as f64,
                );
            }
        }
    }
    t.family(
        "threadtide_worker_exits_total",
        "counter",
        "Worker threads that exited, by reason (retired: scaled down; shutdown).",
    );
    for r in &rows {
        for (reason, n) in [
            ("retired", r.events.exits_retired),
            ("shutdown", r.events.exits_shutdown),
        ] {
            t.sample(
                "threadtide_worker_exits_total",
                &[("queue", r.name), ("reason", reason)],
                n as f64,
            );
        }
    }
    t.family(
        "threadtide_scale_events_total",
        "counter",
        "Scaling decisions, by direction (up, down) and reason (backlog_grew, demand_fell, total_cap).",
    );
    for r in &rows {
        for (direction, reason) in [
            ("up", "backlog_grew"),
            ("down", "demand_fell"),
            ("down", "total_cap"),
        ] {
            let n = r
                .events
                .scale
                .get(&(direction, reason))
                .copied()
                .unwrap_or(0);
            t.sample(
                "threadtide_scale_events_total",
                &[
                    ("queue", r.name),
                    ("direction", direction),
                    ("reason", reason),
                ],
                n as f64,
            );
        }
    }
    t.family(
        "threadtide_job_duration_seconds",
        "histogram",
        "Executor time per job. Jobs under 50 us are sampled one in 64; bounds are exact to within 6%.",
    );
    for r in &rows {
        t.histogram(
            "threadtide_job_duration_seconds",
            &[("queue", r.name)],
            &r.acc.cumulative(&JOB_BOUNDS),
        );
    }
    t.family(
        "threadtide_worker_init_duration_seconds",
        "histogram",
        "Time a worker's init took to build its state (successful starts).",
    );
    for r in &rows {
        t.histogram(
            "threadtide_worker_init_duration_seconds",
            &[("queue", r.name)],
            &r.init,
        );
    }
    t.family(
        "threadtide_event_handler_panics_total",
        "counter",
        "Calls of the host's event handler that panicked (caught).",
    );
    t.sample(
        "threadtide_event_handler_panics_total",
        &[],
        pool.events.panics() as f64,
    );
    t.finish()
}
