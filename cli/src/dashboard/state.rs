//! What the dashboard knows about the fleet: one snapshot per refresh, read through
//! `threadtide::admin`, plus the history the page draws (samples this process took, and the
//! fleet's scaling-event stream mirrored in memory).
//!
//! Redis calls per refresh (written down in docs/DASHBOARD.md): `Admin::processes` (one script
//! for every live process and its record), `Admin::queues` (one `SMEMBERS`), `Admin::events`
//! (one `XRANGE` from the newest event already held) and one `Admin::queue_counts` script per
//! queue: 3 + Q calls, whatever the number of processes.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use threadtide::SourceError;
use threadtide::admin::{Admin, EventFilter, ProcessQueue, ProcessRecord, ScaleRecord};

/// How many history samples a queue keeps: one a refresh, one hour at 1 s.
pub(crate) const SAMPLES: usize = 3600;
/// How many scaling events are kept in memory (the stream itself is capped near 10,000).
pub(crate) const EVENTS: usize = 10_000;
/// How long a process that left the fleet stays on the page, marked gone.
const GONE_KEPT_MS: u64 = 15 * 60 * 1000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One process as last seen.
#[derive(Debug, Clone)]
struct Seen {
    record: ProcessRecord,
    /// When this dashboard last saw it live (its clock, Unix ms).
    seen_ms: u64,
    live: bool,
}

/// Everything the refresher keeps between refreshes.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    procs: BTreeMap<String, Seen>,
    /// Per queue key: `[time_ms, backlog, alive, busy, target]`, oldest first.
    history: HashMap<String, VecDeque<[u64; 5]>>,
    /// The event stream's entries, oldest first.
    events: VecDeque<Value>,
    event_ids: BTreeSet<String>,
    last_event_ms: Option<u64>,
    /// Queue names seen in process records, by key.
    names: HashMap<String, String>,
}

fn queue_json(q: &ProcessQueue) -> Value {
    json!({
        "queue": q.queue, "key": q.key, "alive": q.alive, "busy": q.busy, "target": q.target,
        "slots": q.slots, "max_threads": q.max_threads, "max_total_threads": q.max_total_threads,
        "jobs_ok": q.jobs_ok, "jobs_failed": q.jobs_failed, "jobs_panicked": q.jobs_panicked,
        "reason": q.reason.as_str(), "reason_text": q.reason.describe(),
        "coordinated": q.coordinated,
    })
}

fn event_json(e: &ScaleRecord) -> Value {
    json!({
        "id": e.id, "time_ms": e.time_ms, "process": e.process, "queue": e.queue,
        "from": e.from, "to": e.to, "reason": e.reason.as_str(), "change": e.change,
        "backlog": e.backlog,
    })
}

impl Fleet {
    /// One refresh: reads the fleet through `admin`, updates the history, returns the snapshot
    /// JSON that `/api/snapshot` serves.
    pub(crate) fn refresh(
        &mut self,
        admin: &Admin,
        extra: &[String],
    ) -> Result<Value, SourceError> {
        let procs = admin.processes()?;
        let mut queues: BTreeSet<String> = admin.queues()?.into_iter().collect();
        queues.extend(extra.iter().cloned());
        // The first read mirrors the whole stream (about 10,000 entries at most); later ones
        // start at the newest event held (inclusive: duplicates are dropped by id).
        // No count limit (the default keeps only the newest 100, too few for the 24 h view):
        // the stream's MAXLEN bounds what is read.
        let mut filter = EventFilter::default().limit(0);
        if let Some(ms) = self.last_event_ms {
            // A few seconds back: an event's time is its process's clock, the stream's ids the
            // server's.
            filter = filter.since_ms(ms.saturating_sub(5000));
        }
        let events = admin.events(&filter)?;
        let mut counts = Vec::with_capacity(queues.len());
        for q in &queues {
            counts.push(admin.queue_counts(q)?);
        }
        let now = now_ms();

        for e in &events {
            if self.event_ids.insert(e.id.clone()) {
                self.events.push_back(event_json(e));
                self.last_event_ms = Some(self.last_event_ms.unwrap_or(0).max(e.time_ms));
            }
        }
        while self.events.len() > EVENTS {
            if let Some(old) = self.events.pop_front()
                && let Some(id) = old["id"].as_str()
            {
                self.event_ids.remove(id);
            }
        }
        if self.last_event_ms.is_none() {
            self.last_event_ms = Some(0);
        }

        let live: BTreeSet<String> = procs.iter().map(|p| p.id.clone()).collect();
        for p in procs {
            for q in &p.queues {
                self.names.insert(q.key.clone(), q.queue.clone());
            }
            self.procs.insert(
                p.id.clone(),
                Seen {
                    record: p,
                    seen_ms: now,
                    live: true,
                },
            );
        }
        for (id, s) in self.procs.iter_mut() {
            if !live.contains(id) {
                s.live = false;
            }
        }
        self.procs
            .retain(|_, s| s.live || now.saturating_sub(s.seen_ms) < GONE_KEPT_MS);

        let mut qjson = Vec::new();
        for (q, c) in queues.iter().zip(&counts) {
            let (mut alive, mut busy, mut target, mut n) = (0, 0, 0, 0);
            let mut reasons = BTreeSet::new();
            for s in self.procs.values().filter(|s| s.live) {
                for pq in s.record.queues.iter().filter(|pq| &pq.key == q) {
                    alive += pq.alive;
                    busy += pq.busy;
                    target += pq.target;
                    n += 1;
                    reasons.insert(pq.reason.as_str());
                }
            }
            let h = self.history.entry(q.clone()).or_default();
            h.push_back([
                now,
                c.backlog as u64,
                alive as u64,
                busy as u64,
                target as u64,
            ]);
            if h.len() > SAMPLES {
                h.pop_front();
            }
            qjson.push(json!({
                "key": q,
                "name": self.names.get(q).cloned().unwrap_or_else(|| q.clone()),
                "backlog": c.backlog, "delayed": c.delayed, "processing": c.processing,
                "dead": c.dead, "workers": c.workers, "slots": c.slots, "paused": c.paused,
                "jobs_per_thread": c.jobs_per_thread, "fleet_max_threads": c.fleet_max_threads,
                "alive": alive, "busy": busy, "target": target, "processes": n,
                "reasons": reasons.into_iter().collect::<Vec<_>>(),
            }));
        }

        let pjson: Vec<Value> = self
            .procs
            .values()
            .map(|s| {
                let r = &s.record;
                json!({
                    "id": r.id, "host": r.host, "pid": r.pid, "version": r.version,
                    "started_ms": r.started_ms, "heartbeat_ms": r.heartbeat_ms,
                    "uptime_ms": r.heartbeat_ms.saturating_sub(r.started_ms),
                    "gone": !s.live,
                    "gone_since_ms": if s.live { Value::Null } else { Value::from(r.heartbeat_ms) },
                    "queues": r.queues.iter().map(queue_json).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "time_ms": now,
            "fleet": admin.fleet(),
            "queues": qjson,
            "processes": pjson,
            "redis_calls": 3 + queues.len(),
        }))
    }

    /// The history of queue `key`: samples newer than `since_ms`, scaling events newer than
    /// `events_since_ms`.
    pub(crate) fn history(&self, key: &str, since_ms: u64, events_since_ms: u64) -> Value {
        let name = self.names.get(key).map(String::as_str).unwrap_or(key);
        let samples: Vec<&[u64; 5]> = self
            .history
            .get(key)
            .map(|h| h.iter().filter(|s| s[0] > since_ms).collect())
            .unwrap_or_default();
        let events: Vec<&Value> = self
            .events
            .iter()
            .filter(|e| {
                let q = e["queue"].as_str().unwrap_or("");
                (q == key || q == name) && e["time_ms"].as_u64().unwrap_or(0) > events_since_ms
            })
            .collect();
        json!({ "queue": key, "since_ms": since_ms, "samples": samples, "events": events })
    }
}

/// Which fleet, and which queues beyond those it lists.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) fleet: String,
    /// Queue keys given with `--queue`, shown even when no process has registered them.
    pub(crate) extra_queues: Vec<String>,
}
