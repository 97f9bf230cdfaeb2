//! The names of the fleet's keys (the layout is in `docs/FLEET.md`), shared by the source and
//! by [`Admin`](crate::admin::Admin).

/// The fleet name used when none is given.
pub(crate) const DEFAULT_FLEET: &str = "threadtide";

/// The fleet-wide keys of fleet `F`.
#[derive(Debug, Clone)]
pub(crate) struct FleetKeys {
    /// `F:fleet:procs`: zset, process id -> deadline (server ms) of its record.
    pub(crate) procs: String,
    /// `F:fleet:proc:` + process id: hash, the process's record.
    pub(crate) proc_prefix: String,
    /// `F:fleet:events`: stream, one entry per scaling decision.
    pub(crate) events: String,
    /// `F:fleet:settings`: hash, `max_total_threads`.
    pub(crate) settings: String,
    /// `F:fleet:queues`: set, every queue key of the fleet.
    pub(crate) queues: String,
}

impl FleetKeys {
    pub(crate) fn new(fleet: &str) -> Self {
        FleetKeys {
            procs: format!("{fleet}:fleet:procs"),
            proc_prefix: format!("{fleet}:fleet:proc:"),
            events: format!("{fleet}:fleet:events"),
            settings: format!("{fleet}:fleet:settings"),
            queues: format!("{fleet}:fleet:queues"),
        }
    }

    pub(crate) fn process(&self, id: &str) -> String {
        format!("{}{id}", self.proc_prefix)
    }
}

/// The fleet keys of one queue `Q`.
#[derive(Debug, Clone)]
pub(crate) struct QueueFleetKeys {
    /// `Q:settings`: hash, `paused`, `jobs_per_thread`, `fleet_max_threads`.
    pub(crate) settings: String,
    /// `Q:slots`: zset, worker id -> lease expiry (server ms).
    pub(crate) slots: String,
    /// `Q:fleet`: hash, the fleet's figures for the queue (`demand`, `hold`, `target`,
    /// `slots`, `weight`, `at`), written by every grant.
    pub(crate) state: String,
    /// `Q:fleet:members`: zset, process id -> deadline of its last grant.
    pub(crate) members: String,
    /// `Q:fleet:room`: hash, process id -> `room:min`.
    pub(crate) room: String,
    /// `Q:fleet:history`: zset, demand -> last time (server ms) the fleet saw it.
    pub(crate) history: String,
    /// `Q:fleet:wait`: hash, `started` (jobs the fleet took) and per process id its
    /// wait-rule demand `demand:server ms`.
    pub(crate) wait: String,
    /// `Q:fleet:durations`: hash, the fleet's current duration window: bucket -> jobs, `jobs`.
    pub(crate) durations: String,
    /// `Q:fleet:durations:prev`: hash, the previous window (same fields).
    pub(crate) durations_prev: String,
}

impl QueueFleetKeys {
    pub(crate) fn new(queue: &str) -> Self {
        QueueFleetKeys {
            settings: format!("{queue}:settings"),
            slots: format!("{queue}:slots"),
            state: format!("{queue}:fleet"),
            members: format!("{queue}:fleet:members"),
            room: format!("{queue}:fleet:room"),
            history: format!("{queue}:fleet:history"),
            wait: format!("{queue}:fleet:wait"),
            durations: format!("{queue}:fleet:durations"),
            durations_prev: format!("{queue}:fleet:durations:prev"),
        }
    }
}
