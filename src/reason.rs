//! Why a queue has the number of threads it has now: [`SizeReason`].

use std::fmt;

/// Why a queue's target is what it is *now* (a state, not a transition; for why it changed,
/// see [`ScaleReason`](crate::ScaleReason)).
///
/// The monitor computes it for every queue on every tick; it is in
/// [`QueueStats::size_reason`](crate::QueueStats::size_reason) and, for a coordinated Redis
/// queue, in the process's record in Redis (`reason`, as [`as_str`](SizeReason::as_str)).
///
/// When several apply, the first in this order wins: `Paused`, `SourceUnreachable`,
/// `Memory`, `FleetTotalCap`, `FleetCap`, `TotalCap`, `QueueCap`, `Stabilising`,
/// `NoBacklog`, `AtDemand`.
///
/// # Examples
///
/// ```
/// use threadtide::SizeReason;
///
/// assert_eq!(SizeReason::FleetCap.as_str(), "fleet_cap");
/// assert_eq!(SizeReason::parse("fleet_cap"), Some(SizeReason::FleetCap));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum SizeReason {
    /// Nothing waits and nothing is held: the queue runs its `min_threads`.
    #[default]
    NoBacklog,
    /// The queue runs what its backlog asks for (`ceil(backlog / jobs_per_thread)`, or this
    /// process's share of the fleet's demand).
    AtDemand,
    /// Held down by this process's `max_threads_per_type` (a per-process cap: one host's
    /// memory).
    QueueCap,
    /// Held down by this process's `max_total_threads` (per process), shared with its other
    /// queues.
    TotalCap,
    /// Held down by the queue's fleet-wide `fleet_max_threads`.
    FleetCap,
    /// Held down by the fleet-wide `fleet_max_total_threads`, shared with the fleet's other
    /// queues.
    FleetTotalCap,
    /// The queue is paused fleet-wide: no new job starts; idle workers retire after the
    /// stabilisation delay.
    Paused,
    /// More threads than the backlog asks for, kept by scale-down stabilisation
    /// (`scale_down_delay`).
    Stabilising,
    /// The memory gate lets no worker start: it holds and the queue has fewer workers past
    /// their `init` than its target (workers spawned before the gate closed and waiting for
    /// it count as missing; so, while the gate holds, does a worker rebuilding its state).
    Memory,
    /// The source cannot be reached: the queue keeps its last known size.
    SourceUnreachable,
}

impl SizeReason {
    /// Every reason, in the order of the list above.
    pub const ALL: [SizeReason; 10] = [
        SizeReason::NoBacklog,
        SizeReason::AtDemand,
        SizeReason::QueueCap,
        SizeReason::TotalCap,
        SizeReason::FleetCap,
        SizeReason::FleetTotalCap,
        SizeReason::Paused,
        SizeReason::Stabilising,
        SizeReason::Memory,
        SizeReason::SourceUnreachable,
    ];

    /// The reason as snake_case text (`at_demand`, `fleet_cap`), as stored in Redis.
    pub fn as_str(self) -> &'static str {
        match self {
            SizeReason::NoBacklog => "no_backlog",
            SizeReason::AtDemand => "at_demand",
            SizeReason::QueueCap => "queue_cap",
            SizeReason::TotalCap => "total_cap",
            SizeReason::FleetCap => "fleet_cap",
            SizeReason::FleetTotalCap => "fleet_total_cap",
            SizeReason::Paused => "paused",
            SizeReason::Stabilising => "stabilising",
            SizeReason::Memory => "memory",
            SizeReason::SourceUnreachable => "source_unreachable",
        }
    }

    /// The reason in words, for log lines and dashboards.
    pub fn describe(self) -> &'static str {
        match self {
            SizeReason::NoBacklog => "no backlog",
            SizeReason::AtDemand => "at demand",
            SizeReason::QueueCap => "at this process's per-queue cap",
            SizeReason::TotalCap => "at this process's total cap",
            SizeReason::FleetCap => "at the queue's fleet cap",
            SizeReason::FleetTotalCap => "at the fleet's total cap",
            SizeReason::Paused => "paused",
            SizeReason::Stabilising => "held by scale-down stabilisation",
            SizeReason::Memory => "held by the memory gate",
            SizeReason::SourceUnreachable => "source unreachable",
        }
    }

    /// Reads [`as_str`](SizeReason::as_str)'s text back; `None` for anything else.
    pub fn parse(text: &str) -> Option<SizeReason> {
        SizeReason::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl fmt::Display for SizeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trips() {
        for r in SizeReason::ALL {
            assert_eq!(SizeReason::parse(r.as_str()), Some(r));
            assert!(!r.describe().is_empty());
        }
        assert_eq!(SizeReason::parse("nonsense"), None);
    }
}
