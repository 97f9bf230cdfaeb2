//! The fleet half of [`Admin`]: processes, queues, counts, scaling history, runtime settings.

use std::collections::HashMap;

use redis::Script;

use super::{Admin, EventFilter, ProcessQueue, ProcessRecord, QueueCounts, ScaleRecord};
use crate::error::SourceError;
use crate::reason::SizeReason;
use crate::source::redis::fleet_keys::QueueFleetKeys;
use crate::source::redis::json::{self, Fields};

/// KEYS: queue, delayed, dead, workers, retired, slots, settings. ARGV: processing prefix.
/// Returns {backlog, delayed, dead, processing, workers, live slots, paused, jpt, fleet max}.
const COUNTS: &str = r#"
local function card(key, kind, f)
  if redis.call('TYPE', key)['ok'] ~= kind then return 0 end
  return f(key)
end
local processing = 0
for _, set in ipairs({KEYS[4], KEYS[5]}) do
  if redis.call('TYPE', set)['ok'] == 'zset' then
    for _, wid in ipairs(redis.call('ZRANGE', set, 0, -1)) do
      processing = processing + card(ARGV[1] .. wid, 'list', function(k) return redis.call('LLEN', k) end)
    end
  end
end
local s = {false, false, false}
if redis.call('TYPE', KEYS[7])['ok'] == 'hash' then
  s = redis.call('HMGET', KEYS[7], 'paused', 'jobs_per_thread', 'fleet_max_threads')
end
return {
  card(KEYS[1], 'list', function(k) return redis.call('LLEN', k) end),
  card(KEYS[2], 'zset', function(k) return redis.call('ZCARD', k) end),
  card(KEYS[3], 'list', function(k) return redis.call('LLEN', k) end),
  processing,
  card(KEYS[4], 'zset', function(k) return redis.call('ZCARD', k) end),
  card(KEYS[6], 'zset', function(k) return redis.call('ZCARD', k) end),
  s[1] == '1' and 1 or 0, tonumber(s[2]) or -1, tonumber(s[3]) or -1}
"#;

/// KEYS: procs. ARGV: proc key prefix. Live process ids and their records, in one call.
const PROCESSES: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  table.insert(out, id)
  table.insert(out, redis.call('HGETALL', ARGV[1] .. id))
end
return out
"#;

fn optional(n: i64) -> Option<usize> {
    usize::try_from(n).ok()
}

impl Admin {
    /// The live processes of the fleet (records whose heartbeat has not expired), sorted by
    /// id. One script call.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn processes(&self) -> Result<Vec<ProcessRecord>, SourceError> {
        let flat: Vec<redis::Value> = self.with("cannot read the fleet's processes", |c| {
            Script::new(PROCESSES)
                .key(&self.keys.procs)
                .arg(&self.keys.proc_prefix)
                .invoke(c)
        })?;
        let mut out = Vec::new();
        for pair in flat.chunks(2) {
            let [id, fields] = pair else { continue };
            let id: String = redis::from_redis_value(id.clone()).map_err(|e| {
                SourceError::new(format!("a process id in the fleet is not text: {e}"))
            })?;
            let fields: HashMap<String, String> = redis::from_redis_value(fields.clone())
                .map_err(|e| SourceError::new(format!("a process record is not a hash: {e}")))?;
            if let Some(record) = parse_record(&id, &fields) {
                out.push(record);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Every queue key of the fleet (`F:fleet:queues`), sorted.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn queues(&self) -> Result<Vec<String>, SourceError> {
        let mut q: Vec<String> = self.with("cannot read the fleet's queues", |c| {
            redis::cmd("SMEMBERS").arg(&self.keys.queues).query(c)
        })?;
        q.sort();
        Ok(q)
    }

    /// A queue's counts and runtime settings, in one script call (its cost grows with the
    /// number of registered and recently retired workers, one `LLEN` each).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn queue_counts(&self, key: &str) -> Result<QueueCounts, SourceError> {
        let fk = QueueFleetKeys::new(key);
        let v: Vec<i64> = self.with("cannot read the queue's counts", |c| {
            Script::new(COUNTS)
                .key(key)
                .key(format!("{key}:delayed"))
                .key(format!("{key}:dead"))
                .key(format!("{key}:workers"))
                .key(format!("{key}:retired"))
                .key(&fk.slots)
                .key(&fk.settings)
                .arg(format!("{key}:processing:"))
                .invoke(c)
        })?;
        let n = |i: usize| usize::try_from(v.get(i).copied().unwrap_or(0)).unwrap_or(0);
        Ok(QueueCounts {
            backlog: n(0),
            delayed: n(1),
            dead: n(2),
            processing: n(3),
            workers: n(4),
            slots: n(5),
            paused: n(6) == 1,
            jobs_per_thread: optional(v.get(7).copied().unwrap_or(-1)),
            fleet_max_threads: optional(v.get(8).copied().unwrap_or(-1)),
        })
    }

    /// Scaling decisions of every process, oldest first, filtered by `filter` (the newest
    /// `limit` of those that match). The stream keeps about the last 10,000.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<ScaleRecord>, SourceError> {
        let start = filter
            .since_ms
            .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
        type Entry = (String, HashMap<String, String>);
        let entries: Vec<Entry> = self.with("cannot read the scaling history", |c| {
            redis::cmd("XRANGE")
                .arg(&self.keys.events)
                .arg(&start)
                .arg("+")
                .query(c)
        })?;
        let num = |m: &HashMap<String, String>, k: &str| -> u64 {
            m.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let mut out: Vec<ScaleRecord> = entries
            .into_iter()
            .filter(|(_, m)| {
                filter
                    .queue
                    .as_deref()
                    .is_none_or(|q| m.get("queue").map(String::as_str) == Some(q))
            })
            .map(|(id, m)| ScaleRecord {
                time_ms: num(&m, "time_ms"),
                from: num(&m, "from") as usize,
                to: num(&m, "to") as usize,
                backlog: num(&m, "backlog") as usize,
                process: m.get("process").cloned().unwrap_or_default(),
                queue: m.get("queue").cloned().unwrap_or_default(),
                reason: m
                    .get("reason")
                    .and_then(|r| SizeReason::parse(r))
                    .unwrap_or_default(),
                change: m.get("change").cloned().unwrap_or_default(),
                id,
            })
            .collect();
        if filter.limit > 0 && out.len() > filter.limit {
            out.drain(..out.len() - filter.limit);
        }
        Ok(out)
    }

    /// Pauses the queue fleet-wide (`Q:settings paused=1`): within one heartbeat no worker of
    /// any process starts a new job; running jobs finish; idle workers retire after the
    /// stabilisation delay; every job stays in Redis. Survives restarts.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn pause(&self, key: &str) -> Result<(), SourceError> {
        self.set_setting(key, "paused", Some(1))
    }

    /// Undoes [`pause`](Admin::pause).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached or answers with an error.
    pub fn resume(&self, key: &str) -> Result<(), SourceError> {
        self.set_setting(key, "paused", None)
    }

    /// Sets the queue's `jobs_per_thread` fleet-wide, over the builders' value; every
    /// coordinated process uses it from its next grant (within one heartbeat).
    ///
    /// # Errors
    ///
    /// `n` is 0, or Redis cannot be reached.
    pub fn set_jobs_per_thread(&self, key: &str, n: usize) -> Result<(), SourceError> {
        if n == 0 {
            return Err(SourceError::new(
                "jobs_per_thread must be at least 1, got 0",
            ));
        }
        self.set_setting(key, "jobs_per_thread", Some(n))
    }

    /// Sets (`Some`) or removes (`None`: the builders' value, if any, applies) the queue's
    /// fleet-wide thread cap. A lower cap takes effect as workers finish their current job.
    ///
    /// # Errors
    ///
    /// `Some(0)` (a cap of 0 runs nothing: pause the queue instead, `Admin::pause`), or Redis
    /// cannot be reached or answers with an error.
    pub fn set_fleet_max_threads(&self, key: &str, n: Option<usize>) -> Result<(), SourceError> {
        if n == Some(0) {
            return Err(SourceError::new(
                "fleet_max_threads must be at least 1, got 0 (to stop the queue, pause it)",
            ));
        }
        self.set_setting(key, "fleet_max_threads", n)
    }

    /// Sets (`Some`) or removes (`None`) the cap on the threads of all the fleet's queues
    /// together (`F:fleet:settings max_total_threads`).
    ///
    /// # Errors
    ///
    /// `Some(0)`, or Redis cannot be reached or answers with an error.
    pub fn set_fleet_max_total_threads(&self, n: Option<usize>) -> Result<(), SourceError> {
        if n == Some(0) {
            return Err(SourceError::new(
                "fleet_max_total_threads must be at least 1, got 0",
            ));
        }
        self.with("cannot change the fleet's settings", |c| match n {
            Some(n) => redis::cmd("HSET")
                .arg(&self.keys.settings)
                .arg("max_total_threads")
                .arg(n)
                .query::<()>(c),
            None => redis::cmd("HDEL")
                .arg(&self.keys.settings)
                .arg("max_total_threads")
                .query::<()>(c),
        })
    }

    fn set_setting(&self, key: &str, field: &str, n: Option<usize>) -> Result<(), SourceError> {
        let settings = QueueFleetKeys::new(key).settings;
        self.with("cannot change the queue's settings", |c| {
            let mut p = redis::pipe();
            match n {
                Some(n) => p.cmd("HSET").arg(&settings).arg(field).arg(n),
                None => p.cmd("HDEL").arg(&settings).arg(field),
            };
            p.ignore()
                .cmd("SADD")
                .arg(&self.keys.queues)
                .arg(key)
                .ignore()
                .query::<()>(c)
        })
    }
}

/// A duration in microseconds, `None` when the field is absent.
fn micros(
    q: &std::collections::BTreeMap<String, json::Value>,
    key: &str,
) -> Option<std::time::Duration> {
    q.contains_key(key)
        .then(|| std::time::Duration::from_micros(q.number(key)))
}

fn parse_record(id: &str, fields: &HashMap<String, String>) -> Option<ProcessRecord> {
    let p = json::parse(fields.get("process")?)?;
    let mut queues: Vec<ProcessQueue> = fields
        .iter()
        .filter(|(k, _)| k.as_str() != "process")
        .filter_map(|(key, v)| {
            let q = json::parse(v)?;
            Some(ProcessQueue {
                queue: q.text("queue"),
                key: key.clone(),
                alive: q.number("alive") as usize,
                busy: q.number("busy") as usize,
                target: q.number("target") as usize,
                slots: q.number("slots") as usize,
                max_threads: q.number("max_threads") as usize,
                max_total_threads: q.number("max_total_threads") as usize,
                jobs_ok: q.number("jobs_ok"),
                jobs_failed: q.number("jobs_failed"),
                jobs_panicked: q.number("jobs_panicked"),
                reason: SizeReason::parse(&q.text("reason")).unwrap_or_default(),
                coordinated: q.flag("coordinated"),
                target_wait: micros(&q, "target_wait_us"),
                job_duration_estimate: micros(&q, "job_duration_us"),
                estimated_wait: micros(&q, "estimated_wait_us"),
            })
        })
        .collect();
    queues.sort_by(|a, b| a.key.cmp(&b.key));
    Some(ProcessRecord {
        id: id.to_owned(),
        host: p.text("host"),
        pid: u32::try_from(p.number("pid")).unwrap_or(0),
        version: p.text("version"),
        started_ms: p.number("started_ms"),
        heartbeat_ms: p.number("heartbeat_ms"),
        queues,
    })
}
