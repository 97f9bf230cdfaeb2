//! What a source adds to the pool's metrics: [`SourceMetrics`], filled by
//! [`JobSource::metrics`](crate::JobSource::metrics).

/// Numbers a [`JobSource`](crate::JobSource) knows and the pool does not: the queue's jobs in
/// each place on the server, the source's own counters, whether its server answers. Filled by
/// [`JobSource::metrics`](crate::JobSource::metrics) when the metrics are rendered (feature
/// `metrics`); every field left `None` (or empty) is simply not exported.
///
/// Queue-level fields (`delayed`, `processing`, `dead`, `registered_workers`) describe the
/// queue as every process sharing it sees it: summed over processes they multiply, so
/// dashboards take `max by (queue)` of them. Counters are this process's own and add up.
///
/// # Examples
///
/// ```
/// use threadtide::SourceMetrics;
///
/// let mut m = SourceMetrics::default();
/// m.reachable = Some(true);
/// m.delayed = Some(3);
/// m.dead_lettered.push(("permanent", 2));
/// assert_eq!(m.dead, None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SourceMetrics {
    /// Whether the source's server answers (`None`: the source has no server).
    pub reachable: Option<bool>,
    /// Jobs waiting for a retry (queue-level).
    pub delayed: Option<u64>,
    /// Jobs being run by a registered worker of any process (queue-level).
    pub processing: Option<u64>,
    /// Jobs in the dead-letter list (queue-level).
    pub dead: Option<u64>,
    /// Workers of all processes registered on the server (queue-level).
    pub registered_workers: Option<u64>,
    /// Jobs this process scheduled for a retry.
    pub retried: Option<u64>,
    /// Jobs this process dead-lettered, by reason (`malformed`, `attempts_exhausted`,
    /// `permanent`, ...).
    pub dead_lettered: Vec<(&'static str, u64)>,
    /// Connections this process re-established after an error.
    pub reconnects: Option<u64>,
    /// Jobs this process's reaper recovered from dead workers.
    pub recovered: Option<u64>,
    /// Completions refused because the worker had been fenced.
    pub acks_refused: Option<u64>,
    /// The fleet's cap on the queue's threads over every process (`None`: no cap, or the
    /// source has no fleet).
    pub fleet_max_threads: Option<u64>,
    /// The fleet's cap on the threads of all its queues together.
    pub fleet_max_total_threads: Option<u64>,
    /// Paused fleet-wide (queue-level).
    pub paused: Option<bool>,
}
