//! The fleet's side of a queue with a wait target (`Queue::target_wait`): what this process
//! sends with its heartbeat, what it reads back, and the fleet-wide numbers its grant sizes
//! the queue by (design in `docs/SCALING.md`, "A fleet"; keys in `docs/FLEET.md`).
//!
//! * With each heartbeat (the `publish` script, already one round trip per beat) the process
//!   adds the jobs it timed since the last beat to the fleet's duration histogram in Redis
//!   (`Q:fleet:durations`, two windows of [`FLEET_WINDOW_JOBS`] jobs: `fleet_estimate.rs`) and
//!   the jobs it took to the fleet's counter (`Q:fleet:wait started`); the reply carries the
//!   merged histogram, the counter and `LLEN`, read together by the server's clock.
//! * From those it keeps the fleet's median duration and, in an [`Estimator`] fed at each beat
//!   with the fleet's backlog and jobs taken, the fleet's arrival rate and the ages of the
//!   oldest and newest waiting jobs.
//! * At each grant (every keeper tick) it computes the fleet's demand with the single-process
//!   wait rule on those numbers and the last grant's backlog and slots, and proposes it; the
//!   script takes the largest fresh proposal of the live members (`fleet_scripts.rs`).

use std::time::Duration;

use crate::coordination::QueueView;
use crate::estimate::Estimator;
use crate::fleet_estimate::{Durations, FleetNumbers};

/// What one heartbeat sends for the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    /// Jobs taken since the last beat that was sent.
    pub(crate) started: u64,
    /// Jobs timed since then, per bucket.
    pub(crate) buckets: Vec<(usize, u64)>,
    /// The cumulative counts this beat brings Redis to (kept once the beat landed).
    durations: Vec<u64>,
    jobs_started: u64,
}

/// The publish script's reply for a queue with a wait target.
pub(crate) type Reply = (i64, u64, u64, u64, Vec<String>, Vec<String>);

/// The last grant's fleet figures the wait rule needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Granted {
    pub(crate) backlog: usize,
    pub(crate) slots: usize,
    pub(crate) mins: usize,
    pub(crate) cap: usize,
}

/// One queue's fleet wait state, in the source's [`FleetState`](super::fleet::FleetState).
#[derive(Debug, Default)]
pub(crate) struct WaitState {
    sent: Vec<u64>,
    sent_started: u64,
    /// The fleet's arrivals and ages (created with the target as its horizon).
    estimator: Option<Estimator>,
    /// The server's time of the last beat's reply.
    at: Duration,
    duration_s: Option<f64>,
    granted: Option<Granted>,
}

impl WaitState {
    /// What the next heartbeat sends (`None`: the queue has no wait target).
    pub(crate) fn outgoing(&self, view: &QueueView) -> Option<Outgoing> {
        view.target_wait?;
        let mut sent = self.sent.clone();
        sent.resize(view.durations.len(), 0);
        Some(Outgoing {
            started: view.jobs_started.saturating_sub(self.sent_started),
            buckets: Durations::delta(&mut sent, &view.durations),
            durations: view.durations.clone(),
            jobs_started: view.jobs_started,
        })
    }

    /// The heartbeat landed: its counts are in Redis (not sent again), and the reply says
    /// what the fleet measured.
    pub(crate) fn landed(&mut self, target: Duration, out: Outgoing, reply: Reply) {
        self.sent = out.durations;
        self.sent_started = out.jobs_started;
        let (on, now_ms, llen, started, current, previous) = reply;
        if on != 1 {
            return;
        }
        let mut d = Durations::from_pairs(&current);
        d.merge(&Durations::from_pairs(&previous));
        self.duration_s = d.median_s();
        self.at = Duration::from_millis(now_ms);
        let backlog = usize::try_from(llen).unwrap_or(usize::MAX);
        self.estimator
            .get_or_insert_with(|| Estimator::new(target))
            .observe(self.at, backlog, started, 0);
    }

    /// Notes the figures of a grant.
    pub(crate) fn granted(&mut self, granted: Granted) {
        self.granted = Some(granted);
    }

    /// The fleet-wide numbers (after a first grant), with the fleet cap `cap` in place of
    /// the grant's when given.
    pub(crate) fn numbers(&self, target: Duration, cap: Option<usize>) -> Option<FleetNumbers> {
        let g = self.granted?;
        let e = self.estimator.as_ref();
        Some(FleetNumbers {
            target,
            backlog: g.backlog,
            slots: g.slots,
            mins: g.mins,
            cap: cap.unwrap_or(g.cap),
            duration_s: self.duration_s,
            arrival_per_s: e.map_or(0.0, Estimator::arrival_per_s),
            oldest_age_s: e.map_or(0.0, |e| e.oldest_age_s(self.at)),
            newest_age_s: e.map_or(0.0, |e| e.newest_age_s(self.at)),
        })
    }
}
