//! The fleet: the Redis source's side of scaling across processes (design and key layout in
//! `docs/FLEET.md`).
//!
//! The keeper runs one grant script per tick (it replaces the plain `LLEN`, so coordination
//! adds no round trip to the backlog read): it registers this process as a member of the
//! queue with its room, reads the runtime settings, computes the fleet's demand and its
//! stabilised target (the history is in Redis, so every process applies the same window) and
//! stores them where the slot script checks them. This file turns the script's answer into
//! this process's [`FleetShare`] (the split over processes and the fleet total cap are the
//! pure functions of `coordination.rs`). With its heartbeat the keeper publishes the
//! process's record and the scaling decisions the monitor took.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::Connection;

use super::fleet_keys::{DEFAULT_FLEET, FleetKeys, QueueFleetKeys};
use super::fleet_wait::{self, Granted, WaitState};
use super::json::Object;
use super::{Shared, redis_error, scripts};
use crate::coordination::{FleetQueue, FleetShare, Member, QueueView, share_total, split};
use crate::error::{BuildError, SourceError};
use crate::reason::SizeReason;

/// The fleet settings of a source, as its builder got them.
#[derive(Debug, Clone)]
pub(crate) struct FleetSettings {
    pub(crate) name: String,
    pub(crate) coordinate: bool,
    pub(crate) max_threads: Option<usize>,
    pub(crate) max_total_threads: Option<usize>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            name: DEFAULT_FLEET.to_owned(),
            coordinate: true,
            max_threads: None,
            max_total_threads: None,
        }
    }
}

impl FleetSettings {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.name.is_empty() || self.name.chars().any(|c| c.is_whitespace()) {
            return Err(BuildError::new(
                "fleet",
                format!("{:?}", self.name),
                "must be a non-empty name without spaces",
            ));
        }
        for (field, v) in [
            ("fleet_max_threads", self.max_threads),
            ("fleet_max_total_threads", self.max_total_threads),
        ] {
            if v == Some(0) {
                return Err(BuildError::new(
                    field,
                    0,
                    "must be at least 1 (leave unset for no fleet cap)",
                ));
            }
            if let Some(n) = v
                && n > crate::config::MAX_THREADS
            {
                return Err(BuildError::new(
                    field,
                    n,
                    format!("must be at most {}", crate::config::MAX_THREADS),
                ));
            }
        }
        Ok(())
    }
}

/// This process's id in every fleet: `host:pid:nonce`, one nonce per process start.
pub(crate) fn process_id(host: &str) -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        format!(
            "{host}:{}:{:016x}",
            std::process::id(),
            crate::backoff::random()
        )
    })
}

/// Unix time in ms (for the published records only; leases use the server's clock).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the last grant said, for the monitor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grant {
    pub(crate) share: FleetShare,
    /// When the keeper computed it (the source's ms clock).
    pub(crate) at_ms: u64,
}

/// The fleet state of one source, shared by the monitor (through `coordinate`), the keeper
/// and the workers.
#[derive(Debug)]
pub(crate) struct FleetState {
    pub(crate) settings: FleetSettings,
    pub(crate) keys: FleetKeys,
    pub(crate) queue: QueueFleetKeys,
    pub(crate) process: &'static str,
    pub(crate) started_ms: u64,
    /// The queue is paused fleet-wide (from the last grant): workers fetch nothing.
    pub(crate) paused: AtomicBool,
    /// Slots this process's workers hold (counted by the keeper at each beat).
    pub(crate) slots_held: AtomicU64,
    /// The monitor's last view (room, minimum, counts), for the grant and the record.
    pub(crate) view: Mutex<Option<QueueView>>,
    /// Scaling decisions not yet written to the stream.
    pub(crate) pending: Mutex<Vec<(u64, QueueView)>>,
    pub(crate) grant: Mutex<Option<Grant>>,
    /// The fleet's measurements of a queue with a wait target (`fleet_wait.rs`).
    pub(crate) wait: Mutex<WaitState>,
}

impl FleetState {
    pub(crate) fn new(settings: FleetSettings, queue: &str, host: &str) -> Self {
        FleetState {
            keys: FleetKeys::new(&settings.name),
            queue: QueueFleetKeys::new(queue),
            settings,
            process: process_id(host),
            started_ms: unix_ms(),
            paused: AtomicBool::new(false),
            slots_held: AtomicU64::new(0),
            view: Mutex::new(None),
            pending: Mutex::new(Vec::new()),
            grant: Mutex::new(None),
            wait: Mutex::new(WaitState::default()),
        }
    }

    pub(crate) fn coordinated(&self) -> bool {
        self.settings.coordinate
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
}

/// The monitor's call ([`JobSource::coordinate`](crate::JobSource::coordinate)): keeps the
/// view for the keeper and answers with the last grant, without touching the network.
pub(crate) fn coordinate<J>(shared: &Shared<J>, view: &QueueView) -> Option<FleetShare> {
    let fleet = &shared.fleet;
    if view.scaled.is_some() {
        let mut pending = fleet.pending.lock();
        // Bounded: a keeper cut off from Redis keeps the newest 1000 decisions.
        if pending.len() >= 1000 {
            pending.remove(0);
        }
        // The histogram is not needed for the stream: not kept 1000 times over.
        let mut event = view.clone();
        event.durations = Vec::new();
        pending.push((unix_ms(), event));
    }
    *fleet.view.lock() = Some(view.clone());
    if !fleet.coordinated() {
        return None;
    }
    let now = shared.ms_since_epoch();
    let ttl = u64::try_from(shared.worker_ttl.as_millis()).unwrap_or(u64::MAX);
    Some(match *fleet.grant.lock() {
        // No grant yet: nothing to run until the first one (one keeper tick, 50 ms).
        None => FleetShare::new(0, 0),
        Some(g) if now.saturating_sub(g.at_ms) > ttl => g
            .share
            .with_reason(Some(crate::SizeReason::SourceUnreachable)),
        Some(g) => g.share,
    })
}

/// The keeper's grant for this tick: one script; sets the backlog and the share. Returns
/// `false` (nothing done) before the monitor's first view, when the keeper reads `LLEN`.
/// `fresh`: the keeper's beats have landed steadily for a TTL (it may remove lapsed slots);
/// `beat_ms`: the server's time of its last beat (the script checks it is recent).
pub(crate) fn grant<J>(
    shared: &Shared<J>,
    conn: &mut Connection,
    fresh: bool,
    beat_ms: u64,
) -> Result<bool, SourceError> {
    let fleet = &shared.fleet;
    let Some(view) = fleet.view.lock().clone() else {
        return Ok(false);
    };
    let q = &fleet.queue;
    let opt = |v: Option<usize>| v.map_or_else(String::new, |n| n.to_string());
    let room = view.max_threads.min(view.max_total_threads);
    // The wait rule on the fleet's numbers as of the last grant and beat (one tick old).
    let proposal = view
        .target_wait
        .and_then(|t| fleet.wait.lock().numbers(t, None))
        .and_then(|n| n.demand());
    let window = crate::scaling::window(
        std::time::Duration::from_millis(view.scale_down_delay_ms),
        view.target_wait,
    );
    // The wait rule's gradual scale-down, the same as one process's (`scaling::stabilizer`).
    let half_ms = view.target_wait.map(|_| {
        usize::try_from((window / crate::scaling::HALVINGS).as_millis()).unwrap_or(usize::MAX)
    });
    type Reply = (
        i64,
        u64,
        i64,
        u64,
        i64,
        i64,
        u64,
        u64,
        u64,
        u64,
        Vec<String>,
        Vec<String>,
    );
    let (_, llen, paused, jpt, fmax, ftotal, demand, hold, slots, target, members, queues): Reply =
        shared
            .fleet_scripts
            .grant
            .key(&shared.keys.queue)
            .key(&q.settings)
            .key(&fleet.keys.settings)
            .key(&q.slots)
            .key(&q.members)
            .key(&q.room)
            .key(&q.history)
            .key(&q.state)
            .key(&fleet.keys.queues)
            .key(&q.wait)
            .arg(fleet.process)
            .arg(scripts::ttl_ms(shared))
            .arg(room)
            .arg(view.min_threads.min(room))
            .arg(view.jobs_per_thread)
            .arg(opt(fleet.settings.max_threads))
            .arg(u64::try_from(window.as_millis()).unwrap_or(u64::MAX))
            .arg(view.weight)
            .arg(opt(fleet.settings.max_total_threads))
            .arg(if fresh { "1" } else { "0" })
            .arg(beat_ms)
            .arg(opt(proposal))
            .arg(opt(half_ms))
            .invoke(conn)
            .map_err(|e| redis_error("cannot compute the fleet's grant", e))?;
    shared.backlog.set(llen, shared.ms_since_epoch());
    let to = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let num = |s: &str| s.parse::<usize>().unwrap_or(0);
    let mut ms: Vec<(&str, Member)> = members
        .chunks(3)
        .filter_map(|c| match c {
            [id, room, min] => Some((
                id.as_str(),
                Member {
                    room: num(room),
                    min: num(min),
                },
            )),
            _ => None,
        })
        .collect();
    ms.sort_by(|a, b| a.0.cmp(b.0));
    let me = ms.iter().position(|(id, _)| *id == fleet.process);
    let (mut fleet_demand, mut fleet_target) = (to(demand), to(target));
    let fmax_n = usize::try_from(fmax).ok();
    let mut figures = None;
    let mut wanted = to(llen.div_ceil(jpt.max(1)));
    if let Some(t) = view.target_wait {
        let mut wait = fleet.wait.lock();
        wait.granted(Granted {
            backlog: to(llen),
            slots: to(slots),
            mins: ms.iter().map(|(_, m)| m.min).sum(),
            cap: fmax_n.unwrap_or_else(|| ms.iter().map(|(_, m)| m.room).sum()),
        });
        if let Some(n) = wait.numbers(t, None) {
            figures = Some(n.view());
            // The demand before the fleet cap, for the reason.
            if let Some(w) = wait.numbers(t, Some(usize::MAX)).and_then(|n| n.demand()) {
                wanted = w;
            }
        }
    }
    let mut reason = None;
    if paused == 1 {
        reason = Some(SizeReason::Paused);
    } else if fmax_n.is_some_and(|cap| wanted > cap) {
        reason = Some(SizeReason::FleetCap);
    }
    if ftotal >= 0 {
        let mut all = Vec::new();
        let mut mine = None;
        for c in queues.chunks(5) {
            if let [key, d, h, s, w] = c {
                if *key == shared.keys.queue {
                    mine = Some(all.len());
                }
                all.push(FleetQueue {
                    demand: num(d),
                    hold: num(h),
                    slots: num(s),
                    weight: w.parse().unwrap_or(1),
                });
            }
        }
        if let Some(i) = mine {
            let cap = usize::try_from(ftotal).unwrap_or(usize::MAX);
            let (d, t) = share_total(&all, cap)[i];
            if d < fleet_demand && reason.is_none() {
                reason = Some(SizeReason::FleetTotalCap);
            }
            (fleet_demand, fleet_target) = (d, t.max(d));
        }
    }
    let rooms: Vec<Member> = ms.iter().map(|(_, m)| *m).collect();
    let share = match me {
        Some(i) => {
            let mine = split(fleet_demand, &rooms)[i];
            // The fleet wants more than every process's room and this one is full: its own
            // caps bind (the per-queue cap, or the total cap when that is the smaller).
            let all_room: usize = rooms.iter().map(|m| m.room).sum();
            if reason.is_none() && fleet_demand > all_room && mine >= rooms[i].room {
                reason = Some(if view.max_threads <= view.max_total_threads {
                    SizeReason::QueueCap
                } else {
                    SizeReason::TotalCap
                });
            }
            FleetShare::new(mine, split(fleet_target, &rooms)[i])
        }
        None => FleetShare::new(0, 0),
    }
    .with_reason(reason)
    .with_figures(figures);
    // Holding more of the fleet's room than the share: no local hold on top, so that the room
    // goes to the processes (or queues) the rule gives it to.
    let held = usize::try_from(fleet.slots_held.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
    let share = share.with_local_hold(held <= share.hold);
    let _ = (hold, slots);
    fleet.paused.store(paused == 1, Ordering::Release);
    *fleet.grant.lock() = Some(Grant {
        share,
        at_ms: shared.ms_since_epoch(),
    });
    Ok(true)
}

/// Publishes the process's record for this queue and the scaling decisions not yet written:
/// one script, with the heartbeat.
pub(crate) fn publish<J>(shared: &Shared<J>, conn: &mut Connection) -> Result<(), SourceError> {
    let fleet = &shared.fleet;
    let Some(view) = fleet.view.lock().clone() else {
        return Ok(());
    };
    let process = Object::new()
        .text("id", fleet.process)
        .text("host", &shared.host)
        .number("pid", u64::from(std::process::id()))
        .text("version", env!("CARGO_PKG_VERSION"))
        .number("started_ms", fleet.started_ms)
        .number("heartbeat_ms", unix_ms())
        .finish();
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let us = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let outgoing = fleet.wait.lock().outgoing(&view);
    // The fleet's figures for a coordinated queue with a wait target (explain reads them).
    let figures = view.target_wait.and_then(|t| {
        let wait = fleet.wait.lock();
        wait.numbers(t, None).map(|n| n.view())
    });
    let mut queue = Object::new()
        .text("queue", &view.queue)
        .text("key", &shared.keys.queue)
        .number("alive", n(view.alive))
        .number("busy", n(view.busy))
        .number("target", n(view.target))
        .number("slots", fleet.slots_held.load(Ordering::Relaxed))
        .number("max_threads", n(view.max_threads))
        .number("max_total_threads", n(view.max_total_threads))
        .number("jobs_ok", view.jobs_ok)
        .number("jobs_failed", view.jobs_failed)
        .number("jobs_panicked", view.jobs_panicked)
        .text("reason", view.reason.as_str())
        .bool("coordinated", fleet.coordinated());
    if let Some(t) = view.target_wait {
        queue = queue.number("target_wait_us", us(t));
    }
    if let Some(v) = figures.filter(|_| fleet.coordinated()) {
        if let Some(d) = v.duration {
            queue = queue.number("job_duration_us", us(d));
        }
        if let Some(w) = v.estimated_wait {
            queue = queue.number("estimated_wait_us", us(w));
        }
    }
    let queue = queue.finish();
    let pending: Vec<(u64, QueueView)> = std::mem::take(&mut *fleet.pending.lock());
    let mut inv = shared.fleet_scripts.publish.prepare_invoke();
    inv.key(&fleet.keys.procs)
        .key(fleet.keys.process(fleet.process))
        .key(&fleet.keys.events)
        .key(&fleet.keys.queues)
        .arg(fleet.process)
        .arg(scripts::ttl_ms(shared))
        .arg(process)
        .key(&fleet.queue.wait)
        .key(&fleet.queue.durations)
        .key(&fleet.queue.durations_prev)
        .key(&shared.keys.queue)
        .arg(&shared.keys.queue)
        .arg(queue);
    // Only a coordinated queue measures with the fleet.
    let outgoing = outgoing.filter(|_| fleet.coordinated());
    match &outgoing {
        Some(out) => {
            inv.arg(crate::fleet_estimate::FLEET_WINDOW_JOBS)
                .arg(out.started)
                .arg(out.buckets.len());
            for (i, jobs) in &out.buckets {
                inv.arg(i).arg(jobs);
            }
        }
        None => {
            inv.arg("").arg(0).arg(0);
        }
    }
    for (at, v) in &pending {
        let Some(e) = &v.scaled else { continue };
        let change = match e.reason {
            crate::ScaleReason::Up => "up",
            crate::ScaleReason::Shared => "shared",
            _ => "down",
        };
        inv.arg(at)
            .arg(fleet.process)
            .arg(&shared.keys.queue)
            .arg(e.from)
            .arg(e.to)
            .arg(v.reason.as_str())
            .arg(e.backlog)
            .arg(change);
    }
    let published: redis::RedisResult<fleet_wait::Reply> = inv.invoke(conn);
    match published {
        Err(e) => {
            // Not lost: the decisions (and the jobs timed) go out with the next beat.
            let mut back = fleet.pending.lock();
            let newer = std::mem::take(&mut *back);
            *back = pending;
            back.extend(newer);
            Err(redis_error("cannot publish the process's record", e))
        }
        Ok(reply) => {
            if let (Some(t), Some(out)) = (view.target_wait, outgoing) {
                fleet.wait.lock().landed(t, out, reply);
            }
            Ok(())
        }
    }
}
