//! What the dashboard knows about the fleet: one snapshot per refresh, read from Redis in two
//! pipelined round trips, plus the history the page draws (samples this process took, and the
//! fleet's scaling-event stream mirrored in memory).
//!
//! Redis commands per refresh (written down in docs/DASHBOARD.md): round 1 is `TIME`,
//! `ZRANGE F:fleet:procs 0 -1 WITHSCORES`, `SMEMBERS F:fleet:queues`, `HGETALL F:fleet:settings`
//! and one `XRANGE F:fleet:events (last + COUNT 1000`; round 2 is one `HGETALL` per process in
//! the zset (P) and, per queue (Q), `HGETALL Q:settings` and one `EVAL` that counts backlog,
//! delayed, dead, processing and workers. So 5 + P + 2Q calls from the client; inside the
//! script the server runs 4 + (registered and retired workers of the queue) more.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{Value, json};

/// How many history samples a queue keeps: one an interval, one hour at 1 s.
pub(crate) const SAMPLES: usize = 3600;
/// How many scaling events are kept in memory (the stream itself is capped near 10,000).
pub(crate) const EVENTS: usize = 10_000;
/// How long a process that left the zset stays on the page, marked gone.
const GONE_KEPT_MS: u64 = 15 * 60 * 1000;

/// Counts one queue the same way the library's own `summary` script does (every registered
/// and retired worker's processing list), in one call.
pub(crate) const COUNT_SCRIPT: &str = r#"
local processing = 0
for _, set in ipairs({KEYS[4], KEYS[5]}) do
  if redis.call('TYPE', set).ok == 'zset' then
    for _, wid in ipairs(redis.call('ZRANGE', set, 0, -1)) do
      local k = ARGV[1] .. wid
      if redis.call('TYPE', k).ok == 'list' then processing = processing + redis.call('LLEN', k) end
    end
  end
end
local function len(k, t, f)
  if redis.call('TYPE', k).ok == t then return redis.call(f, k) end
  return 0
end
return {len(KEYS[1], 'list', 'LLEN'), len(KEYS[2], 'zset', 'ZCARD'), len(KEYS[3], 'list', 'LLEN'),
  processing, len(KEYS[4], 'zset', 'ZCARD')}
"#;

/// One process as last seen.
#[derive(Debug, Clone)]
struct Proc {
    id: String,
    /// The `process` field of its hash, as stored (JSON object), or null when the hash expired.
    record: Value,
    /// The per-queue JSON objects of its hash, by queue key.
    queues: BTreeMap<String, Value>,
    /// Its zset score: last heartbeat + ttl (server ms).
    deadline_ms: u64,
    /// When it was last in the zset (server ms).
    seen_ms: u64,
}

/// Everything the refresher keeps between refreshes.
#[derive(Debug, Default)]
pub(crate) struct Fleet {
    procs: BTreeMap<String, Proc>,
    /// Per queue key: `[time_ms, backlog, alive, busy, target]`, oldest first.
    history: HashMap<String, VecDeque<[u64; 5]>>,
    /// The event stream's entries, oldest first, as JSON objects (with `id`).
    events: VecDeque<Value>,
    last_event_id: Option<String>,
    /// Queue names seen in process records, by key.
    names: HashMap<String, String>,
}

/// Keys of the fleet `F`.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) fleet: String,
    /// Queue keys given with `--queue`, shown even when no process has registered them.
    pub(crate) extra_queues: Vec<String>,
}

impl Keys {
    fn k(&self, suffix: &str) -> String {
        format!("{}:fleet:{suffix}", self.fleet)
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

fn opt_num(s: Option<&String>) -> Value {
    s.and_then(|s| s.parse::<u64>().ok())
        .map_or(Value::Null, Value::from)
}

impl Fleet {
    /// One refresh: reads Redis (two round trips), updates the history, returns the snapshot
    /// JSON the page and `/api/snapshot` serve.
    pub(crate) fn refresh(
        &mut self,
        conn: &mut redis::Connection,
        keys: &Keys,
    ) -> redis::RedisResult<Value> {
        let first = self.last_event_id.is_none();
        let mut p1 = redis::pipe();
        p1.cmd("TIME")
            .cmd("ZRANGE")
            .arg(keys.k("procs"))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .cmd("SMEMBERS")
            .arg(keys.k("queues"))
            .cmd("HGETALL")
            .arg(keys.k("settings"));
        match &self.last_event_id {
            // First refresh: the newest events the stream holds, mirrored once.
            None => p1
                .cmd("XREVRANGE")
                .arg(keys.k("events"))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(EVENTS),
            Some(id) => p1
                .cmd("XRANGE")
                .arg(keys.k("events"))
                .arg(format!("({id}"))
                .arg("+")
                .arg("COUNT")
                .arg(1000),
        };
        type Entries = Vec<(String, HashMap<String, String>)>;
        #[allow(clippy::type_complexity)]
        let (time, procs, queue_set, fleet_settings, mut entries): (
            (u64, u64),
            Vec<(String, f64)>,
            BTreeSet<String>,
            HashMap<String, String>,
            Entries,
        ) = p1.query(conn)?;
        let now_ms = time.0 * 1000 + time.1 / 1000;
        if first {
            entries.reverse();
        }
        for (id, fields) in entries {
            let mut ev = json!({ "id": id });
            for (k, v) in fields {
                ev[k.as_str()] = v
                    .parse::<u64>()
                    .map_or_else(|_| Value::String(v.clone()), Value::from);
            }
            self.last_event_id = Some(id);
            self.events.push_back(ev);
            if self.events.len() > EVENTS {
                self.events.pop_front();
            }
        }
        if self.last_event_id.is_none() {
            // Empty stream: start from "now" so the next read is incremental.
            self.last_event_id = Some("0-0".into());
        }

        let mut queues: BTreeSet<String> = queue_set;
        queues.extend(keys.extra_queues.iter().cloned());
        let mut p2 = redis::pipe();
        for (id, _) in &procs {
            p2.cmd("HGETALL").arg(keys.k(&format!("proc:{id}")));
        }
        // Queues named in process records are only known after round 2; the queue set lists
        // them all when the fleet writes it, and the records' keys are added below for the
        // next refresh.
        let qlist: Vec<String> = queues
            .iter()
            .cloned()
            .chain(self.names.keys().filter(|k| !queues.contains(*k)).cloned())
            .collect();
        for q in &qlist {
            p2.cmd("HGETALL").arg(format!("{q}:settings"));
            p2.cmd("EVAL")
                .arg(COUNT_SCRIPT)
                .arg(5)
                .arg(q)
                .arg(format!("{q}:delayed"))
                .arg(format!("{q}:dead"))
                .arg(format!("{q}:workers"))
                .arg(format!("{q}:retired"))
                .arg(format!("{q}:processing:"));
        }
        let replies: Vec<redis::Value> = p2.query(conn)?;
        let mut it = replies.into_iter();
        let mut present = BTreeSet::new();
        for (id, score) in &procs {
            let hash: HashMap<String, String> =
                redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            present.insert(id.clone());
            let entry = self.procs.entry(id.clone()).or_insert_with(|| Proc {
                id: id.clone(),
                record: Value::Null,
                queues: BTreeMap::new(),
                deadline_ms: 0,
                seen_ms: now_ms,
            });
            entry.deadline_ms = *score as u64;
            entry.seen_ms = now_ms;
            if !hash.is_empty() {
                entry.queues.clear();
                for (field, text) in hash {
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    if field == "process" {
                        entry.record = v;
                    } else {
                        if let Some(name) = v.get("queue").and_then(Value::as_str) {
                            self.names.insert(field.clone(), name.to_owned());
                        }
                        entry.queues.insert(field, v);
                    }
                }
            }
        }
        self.procs.retain(|id, p| {
            present.contains(id) || now_ms.saturating_sub(p.seen_ms) < GONE_KEPT_MS
        });

        let live = |p: &Proc| present.contains(&p.id) && p.deadline_ms >= now_ms;
        let mut qjson = Vec::new();
        for q in &qlist {
            let settings: HashMap<String, String> =
                redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            let counts: Vec<u64> = redis::from_redis_value(it.next().unwrap_or(redis::Value::Nil))?;
            let c = |i: usize| counts.get(i).copied().unwrap_or(0);
            let (mut alive, mut busy, mut target, mut procs_n) = (0, 0, 0, 0);
            let mut reasons = BTreeSet::new();
            for p in self.procs.values().filter(|p| live(p)) {
                if let Some(v) = p.queues.get(q) {
                    alive += num(&v["alive"]);
                    busy += num(&v["busy"]);
                    target += num(&v["target"]);
                    procs_n += 1;
                    if let Some(r) = v["reason"].as_str() {
                        reasons.insert(r.to_owned());
                    }
                }
            }
            let h = self.history.entry(q.clone()).or_default();
            h.push_back([now_ms, c(0), alive, busy, target]);
            if h.len() > SAMPLES {
                h.pop_front();
            }
            qjson.push(json!({
                "key": q,
                "name": self.names.get(q).cloned().unwrap_or_else(|| q.clone()),
                "backlog": c(0), "delayed": c(1), "dead": c(2), "processing": c(3),
                "workers": c(4),
                "paused": settings.get("paused").is_some_and(|v| v == "1"),
                "jobs_per_thread": opt_num(settings.get("jobs_per_thread")),
                "fleet_max_threads": opt_num(settings.get("fleet_max_threads")),
                "alive": alive, "busy": busy, "target": target, "processes": procs_n,
                "reasons": reasons.into_iter().collect::<Vec<_>>(),
            }));
        }

        let pjson: Vec<Value> = self
            .procs
            .values()
            .map(|p| {
                let r = &p.record;
                // A process whose hash expired still has its id: `host:pid:nonce`.
                let mut parts = p.id.rsplitn(3, ':');
                let (_, id_pid, id_host) = (parts.next(), parts.next(), parts.next());
                let or = |v: &Value, alt: Option<&str>| match (v, alt) {
                    (Value::Null, Some(a)) => Value::from(a),
                    (v, _) => v.clone(),
                };
                let started = num(&r["started_ms"]);
                let gone = !live(p);
                json!({
                    "id": p.id,
                    "host": or(&r["host"], id_host),
                    "pid": or(&r["pid"], id_pid.filter(|_| id_host.is_some())),
                    "version": r["version"],
                    "started_ms": started,
                    "heartbeat_ms": r["heartbeat_ms"],
                    "uptime_ms": if started > 0 { now_ms.saturating_sub(started) } else { 0 },
                    "deadline_ms": p.deadline_ms,
                    "gone": gone,
                    "gone_since_ms": if gone { Value::from(p.deadline_ms.min(p.seen_ms)) } else { Value::Null },
                    "queues": p.queues.values().cloned().collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(json!({
            "time_ms": now_ms,
            "fleet": keys.fleet,
            "settings": { "max_total_threads": opt_num(fleet_settings.get("max_total_threads")) },
            "queues": qjson,
            "processes": pjson,
            "commands": 5 + procs.len() + 2 * qlist.len(),
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
                (q == key || q == name) && num(&e["time_ms"]) > events_since_ms
            })
            .collect();
        json!({ "queue": key, "since_ms": since_ms, "samples": samples, "events": events })
    }
}
