//! The Lua scripts: every state change of a job is one script, so it happens entirely or not at
//! all (and the AOF holds all of it or none). Times are the server's (`TIME`), never a client
//! clock. Keys of one queue derive from its list key, so one server holds them together.

use redis::Script;

/// Shared Lua helpers, prepended to every script that needs them.
const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- One more run for a stored job (see envelope.rs for the format).
local function bump(v)
  local runs, nonce, payload = string.match(v, '^\31tt1:(%d+):(%x+):(.*)$')
  if runs then
    return '\31tt1:' .. (tonumber(runs) + 1) .. ':' .. nonce .. ':' .. payload
  end
  return '\31tt1:1:0:' .. v
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

/// The scripts, built once per source (each is loaded by hash, `EVALSHA`, after first use).
pub(crate) struct Scripts {
    /// KEYS: workers. ARGV: wid. Registers a worker with the server's time.
    pub(crate) register: Script,
    /// KEYS: workers. ARGV: wids. Refreshes the live ones; returns those no longer registered
    /// (reaped: they are fenced).
    pub(crate) heartbeat: Script,
    /// KEYS: processing, workers, results, queue. ARGV: wid, entry, result, push ("1"/"0").
    /// Returns {code, entries left in processing, next}: code -1 fenced (refused), 0 not in
    /// processing (already done), 1 acknowledged. Entries left over mean a stale `BLMOVE`
    /// (from a connection given up on) put a job there: the worker takes it next. Otherwise,
    /// once acknowledged, the script moves the queue's next job into the processing list and
    /// returns it (`next`, else nil): one round trip per job while the queue is busy, and the
    /// worker still holds one job at a time.
    pub(crate) ack: Script,
    /// KEYS: processing, workers, delayed. ARGV: wid, entry, new entry, delay ms. Returns as
    /// `ack`, `next` always nil.
    pub(crate) retry: Script,
    /// KEYS: processing, workers, dead. ARGV: wid, entry, record. Returns as `ack`, `next`
    /// always nil.
    pub(crate) dead: Script,
    /// KEYS: delayed, queue. ARGV: limit, to head ("1"/"0"). Moves due retries back.
    pub(crate) promote: Script,
    /// KEYS: workers, queue, retired. ARGV: ttl ms, processing key prefix, limit, grace ms.
    /// Requeues the jobs of workers whose heartbeat is older than the TTL (checked inside the
    /// script) and moves them to `retired`. Then sweeps the processing lists of every retired
    /// worker: a `BLMOVE` it left pending on the server (a stopped or partitioned process) can
    /// still move a job there after it was reaped; such jobs are requeued too. Retired workers
    /// are forgotten after the grace period. Returns {workers reaped, jobs requeued}.
    pub(crate) reap: Script,
    /// KEYS: workers, processing, queue, retired. ARGV: wid, and optionally an entry the worker
    /// took but never started (taken by `ack`). Puts the worker's jobs back at the head of the
    /// queue, one more run each except the unstarted one, deregisters the worker and records
    /// it as retired. Returns the number of jobs.
    pub(crate) release: Script,
    /// KEYS: queue, delayed, dead, workers, retired. ARGV: processing key prefix.
    /// Returns {ready, delayed, dead, processing, workers}.
    pub(crate) summary: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            register: script("redis.call('ZADD', KEYS[1], now_ms(), ARGV[1]) return 1"),
            heartbeat: script(
                r#"
local now = now_ms()
local fenced = {}
for i = 1, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now, ARGV[i])
  else
    table.insert(fenced, ARGV[i])
  end
end
return fenced
"#,
            ),
            ack: script(
                r#"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {-1, 0, false} end
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return {0, redis.call('LLEN', KEYS[1]), false} end
if ARGV[4] == '1' then redis.call('RPUSH', KEYS[3], ARGV[3]) end
local left = redis.call('LLEN', KEYS[1])
if left > 0 then return {1, left, false} end
return {1, 0, redis.call('LMOVE', KEYS[4], KEYS[1], 'LEFT', 'LEFT')}
"#,
            ),
            retry: script(
                r#"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {-1, 0, false} end
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return {0, redis.call('LLEN', KEYS[1]), false} end
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[4]), ARGV[3])
return {1, redis.call('LLEN', KEYS[1]), false}
"#,
            ),
            dead: script(
                r#"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {-1, 0, false} end
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return {0, redis.call('LLEN', KEYS[1]), false} end
redis.call('RPUSH', KEYS[3], ARGV[3])
return {1, redis.call('LLEN', KEYS[1]), false}
"#,
            ),
            promote: script(
                r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('ZREM', KEYS[1], m)
  if ARGV[2] == '1' then redis.call('LPUSH', KEYS[2], m) else redis.call('RPUSH', KEYS[2], m) end
end
return #due
"#,
            ),
            reap: script(
                r#"
local now = now_ms()
local limit = tonumber(ARGV[3])
local function requeue(wid)
  local pk, n = ARGV[2] .. wid, 0
  while true do
    local v = redis.call('RPOP', pk)
    if not v then return n end
    redis.call('LPUSH', KEYS[2], bump(v))
    n = n + 1
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, limit)
local jobs = 0
for _, wid in ipairs(dead) do
  jobs = jobs + requeue(wid)
  redis.call('ZREM', KEYS[1], wid)
  redis.call('ZADD', KEYS[3], now, wid)
end
for _, wid in ipairs(redis.call('ZRANGE', KEYS[3], 0, limit - 1)) do
  jobs = jobs + requeue(wid)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))
return {#dead, jobs}
"#,
            ),
            release: script(
                r#"
local jobs = 0
if ARGV[2] and redis.call('LREM', KEYS[2], 1, ARGV[2]) == 1 then
  redis.call('LPUSH', KEYS[3], ARGV[2])
  jobs = 1
end
while true do
  local v = redis.call('RPOP', KEYS[2])
  if not v then break end
  redis.call('LPUSH', KEYS[3], bump(v))
  jobs = jobs + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[4], now_ms(), ARGV[1])
return jobs
"#,
            ),
            summary: script(
                r#"
local processing = 0
for _, set in ipairs({KEYS[4], KEYS[5]}) do
  for _, wid in ipairs(redis.call('ZRANGE', set, 0, -1)) do
    processing = processing + redis.call('LLEN', ARGV[1] .. wid)
  end
end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), redis.call('LLEN', KEYS[3]),
  processing, redis.call('ZCARD', KEYS[4])}
"#,
            ),
        }
    }
}
