//! The fleet's Lua scripts: the grant (one per queue per keeper tick), taking a slot (once per
//! worker lease), and publishing the process's record and scaling decisions (one per
//! heartbeat). They follow the rules of `scripts.rs` (check every key's type before the first
//! write; server time only). The invariants are written up in `docs/FLEET.md`.

use redis::Script;

use super::scripts::PRELUDE;

/// The fleet scripts, built once per source.
pub(crate) struct FleetScripts {
    /// KEYS: queue, Q:settings, F:fleet:settings, Q:slots, Q:fleet:members, Q:fleet:room,
    /// Q:fleet:history, Q:fleet, F:fleet:queues, Q:fleet:wait. ARGV: process id, member ttl
    /// ms, room, min, default jobs_per_thread, default fleet_max_threads ("" none), window
    /// ms, weight, default fleet total ("" none), fresh ("1": the keeper's view is fresh),
    /// server ms of the keeper's last beat, this process's wait-rule demand ("" none), the
    /// half-life of a hold's excess in ms ("" none: the hold is the window's largest demand;
    /// a wait-target queue scales down gradually).
    ///
    /// A queue with a wait target: each process computes the fleet's demand with the wait
    /// rule (in Rust, `fleet_estimate.rs`) and proposes it; the proposal is kept in
    /// `Q:fleet:wait` (`<process id>` -> `demand:server ms`) and the fleet's demand is the
    /// largest proposal of a live member made within the TTL, so processes that computed
    /// from slightly different readings agree on one figure. Without a proposal the divisor
    /// rule applies.
    ///
    /// Registers this process as a member of the queue with its room and builder caps
    /// (`room:min:cap:total`), drops members whose
    /// grant lapsed and (only on a fresh view, like the reaper) slots whose lease lapsed,
    /// computes the fleet's demand
    /// (`ceil(LLEN / jobs_per_thread)`, at least the members' minimums, 0 when paused, at most
    /// `fleet_max_threads`: Redis's setting, else the strictest builder cap of the live
    /// members), records it in the history and reads the hold (the largest demand
    /// within the window), and stores the target (`max(demand, min(hold, live slots))`, at
    /// most the cap) where the slot script reads it. Returns {now, llen, paused, jpt, fleet
    /// max or -1, fleet total or -1, demand, hold, slots, target, members (id, room, min, ...),
    /// queues when a total applies (key, demand, hold, slots, weight, ...)}.
    pub(crate) grant: Script,
    /// KEYS: Q:slots, Q:fleet, Q:settings, F:fleet:queues, F:fleet:settings. ARGV: wid, ttl
    /// ms, this process's fleet total ("" none), its fleet_max_threads ("" none). Takes (or
    /// renews, while it is still there) a slot for the worker when the queue is not paused,
    /// its slots are below the stored target and below the cap (Redis's setting, else this
    /// process's own), and the fleet's slots over all its queues are below the total cap
    /// (Redis's setting, else the smaller of this process's and the one the last grant
    /// stored: the strictest of the members'). A lapsed slot counts until a grant removes
    /// it; another queue's slots key of the wrong type is skipped. Returns 1 taken, 0
    /// refused.
    pub(crate) take: Script,
    /// KEYS: F:fleet:procs, F:fleet:proc:<id>, F:fleet:events, F:fleet:queues, Q:fleet:wait,
    /// Q:fleet:durations, Q:fleet:durations:prev, queue. ARGV: process id, ttl ms, process
    /// JSON, queue key, queue JSON, window jobs ("": the queue has no wait target, the wait
    /// part is skipped), jobs started since the last beat, K, then K pairs (bucket, jobs
    /// timed since the last beat), then 8 fields per scaling decision (time_ms, process,
    /// queue, from, to, reason, backlog, change). Refreshes the record (expiring with the
    /// TTL) and appends the decisions to the capped stream. With a wait target it also adds
    /// the jobs started to `Q:fleet:wait started`, the durations to the current histogram
    /// (renamed over the previous one once it holds `window jobs`: `fleet_estimate.rs`), and
    /// returns {1, server ms, LLEN, fleet jobs started, current histogram, previous
    /// histogram} (the histograms as `HGETALL` pairs); else {0, server ms, 0, 0, {}, {}}.
    pub(crate) publish: Script,
}

/// A count read from a setting: a whole number (`"2.5"` is 2), or `nil` when not a number.
const WHOLE: &str = r#"
local function whole(v)
  local n = tonumber(v)
  return n and math.floor(n)
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{WHOLE}{body}"))
}

impl FleetScripts {
    pub(crate) fn new() -> Self {
        FleetScripts {
            grant: script(
                r#"
check(KEYS[2], 'hash') check(KEYS[3], 'hash') check(KEYS[4], 'zset') check(KEYS[5], 'zset')
check(KEYS[6], 'hash') check(KEYS[7], 'zset') check(KEYS[8], 'hash') check(KEYS[9], 'set')
check(KEYS[10], 'hash')
local now = now_ms()
local llen = redis.call('LLEN', KEYS[1])
local s = redis.call('HMGET', KEYS[2], 'paused', 'jobs_per_thread', 'fleet_max_threads')
local paused = s[1] == '1'
local jpt = whole(s[2])
if not jpt or jpt < 1 then jpt = tonumber(ARGV[5]) end
-- A cap set in Redis wins; without one, the strictest builder cap of the queue's live members.
local fset = whole(s[3])
local tset = whole(redis.call('HGET', KEYS[3], 'max_total_threads'))
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[5], now + ttl, ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[3] .. ':' .. ARGV[4] .. ':' .. ARGV[6] .. ':' .. ARGV[9])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. now)) do
  redis.call('ZREM', KEYS[5], gone)
  redis.call('HDEL', KEYS[6], gone)
  redis.call('HDEL', KEYS[10], gone)
end
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[10], ARGV[1], ARGV[12] .. ':' .. now)
else
  redis.call('HDEL', KEYS[10], ARGV[1])
end
-- A lapsed slot still counts until a keeper that can vouch for its view removes it (lease.rs):
-- after a stall of the server, every lease lapsed at once and nobody may take their room.
local fresh = ARGV[10] == '1' and now - tonumber(ARGV[11]) <= ttl / 2
if fresh then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. now) end
local slots = redis.call('ZCARD', KEYS[4])
local members = {}
local mins = 0
local mcap, mtot
-- The wait rule's demand: the largest fresh proposal of a live member.
local proposed
for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  local p = redis.call('HGET', KEYS[10], id)
  if p then
    local d, at = string.match(p, '^(%d+):(%d+)$')
    d, at = tonumber(d), tonumber(at)
    if d and at and at >= now - ttl and (not proposed or d > proposed) then proposed = d end
  end
  local r = redis.call('HGET', KEYS[6], id) or '0:0'
  local room, min, cap, tot = string.match(r, '^(%d+):(%d+):?(%d*):?(%d*)$')
  table.insert(members, id) table.insert(members, room or '0') table.insert(members, min or '0')
  mins = mins + (tonumber(min) or 0)
  cap, tot = tonumber(cap), tonumber(tot)
  if cap and (not mcap or cap < mcap) then mcap = cap end
  if tot and (not mtot or tot < mtot) then mtot = tot end
end
local fmax = fset or mcap
local ftotal = tset or mtot
local demand = 0
if not paused then
  demand = proposed or math.ceil(llen / jpt)
  if demand < mins then demand = mins end
end
if fmax and demand > fmax then demand = fmax end
local hold = 0
local window = tonumber(ARGV[7])
-- A wait-target queue's gradual scale-down (scaling/stabilizer.rs, `decayed`): a demand seen
-- `age` ago holds its excess over today's demand halved every `half` ms, rounded down, and
-- at least one thread for the whole window. The newest time of each demand holds the most.
local half = tonumber(ARGV[13])
if window > 0 then
  redis.call('ZADD', KEYS[7], now, tostring(demand))
  redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', '(' .. (now - window))
  local h = redis.call('ZRANGE', KEYS[7], 0, -1, 'WITHSCORES')
  for i = 1, #h, 2 do
    local d, at = tonumber(h[i]), tonumber(h[i + 1])
    if half and d > demand then
      if half > 0 then
        d = math.max(demand + math.floor((d - demand) * 0.5 ^ ((now - at) / half)), 1)
      else
        d = demand
      end
    end
    if d > hold then hold = d end
  end
end
local target = math.min(hold, slots)
if demand > target then target = demand end
if fmax and target > fmax then target = fmax end
redis.call('HSET', KEYS[8], 'demand', demand, 'hold', hold, 'target', target, 'slots', slots,
  'weight', ARGV[8], 'at', now, 'total', ftotal or '')
redis.call('SADD', KEYS[9], KEYS[1])
local queues = {}
if ftotal then
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[9])) do
    -- Another queue's key of the wrong type is that queue's own error (its processes name
    -- it): skipped here, so it does not stop this queue.
    local st = redis.call('TYPE', q .. ':slots')['ok']
    local ft = redis.call('TYPE', q .. ':fleet')['ok']
    if (st == 'zset' or st == 'none') and (ft == 'hash' or ft == 'none') then
      if fresh then redis.call('ZREMRANGEBYSCORE', q .. ':slots', '-inf', '(' .. now) end
      local f = redis.call('HMGET', q .. ':fleet', 'demand', 'hold', 'weight', 'at')
      if f[4] and tonumber(f[4]) >= now - 2 * ttl then
        table.insert(queues, q) table.insert(queues, f[1]) table.insert(queues, f[2])
        table.insert(queues, tostring(redis.call('ZCARD', q .. ':slots')))
        table.insert(queues, f[3])
      end
    end
  end
end
return {now, llen, paused and 1 or 0, jpt, fmax or -1, ftotal or -1, demand, hold, slots,
  target, members, queues}
"#,
            ),
            take: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'hash') check(KEYS[3], 'hash') check(KEYS[4], 'set')
check(KEYS[5], 'hash')
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
if redis.call('HGET', KEYS[3], 'paused') == '1' then return 0 end
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[1])
  return 1
end
-- The stored target (at most the strictest cap the members ask for), and this process's own
-- cap too: a grant of a member without one may have stored a higher target just now.
local target = tonumber(redis.call('HGET', KEYS[2], 'target'))
local cap = whole(redis.call('HGET', KEYS[3], 'fleet_max_threads')) or tonumber(ARGV[4])
if target and cap and cap < target then target = cap end
if not target or redis.call('ZCARD', KEYS[1]) >= target then return 0 end
local ftotal = whole(redis.call('HGET', KEYS[5], 'max_total_threads'))
if not ftotal then
  ftotal = tonumber(ARGV[3])
  local stored = tonumber(redis.call('HGET', KEYS[2], 'total'))
  if stored and (not ftotal or stored < ftotal) then ftotal = stored end
end
if ftotal then
  local live = 0
  for _, q in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    -- Another queue's key of the wrong type holds no slot of ours (that queue reports it).
    if redis.call('TYPE', q .. ':slots')['ok'] == 'zset' then
      live = live + redis.call('ZCARD', q .. ':slots')
    end
  end
  if live >= ftotal then return 0 end
end
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
return 1
"#,
            ),
            publish: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'hash') check(KEYS[3], 'stream') check(KEYS[4], 'set')
local wait = ARGV[6] ~= ''
if wait then check(KEYS[5], 'hash') check(KEYS[6], 'hash') check(KEYS[7], 'hash') end
local now = now_ms()
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
-- Ids of processes gone for a minute: their records expired long ago.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - 60000))
redis.call('HSET', KEYS[2], 'process', ARGV[3], ARGV[4], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('SADD', KEYS[4], ARGV[4])
local k = tonumber(ARGV[8]) or 0
local out = {0, now, 0, 0, {}, {}}
if wait then
  local started = redis.call('HINCRBY', KEYS[5], 'started', tonumber(ARGV[7]))
  local added = 0
  for i = 9, 8 + 2 * k, 2 do
    redis.call('HINCRBY', KEYS[6], ARGV[i], tonumber(ARGV[i + 1]))
    added = added + tonumber(ARGV[i + 1])
  end
  if added > 0 and redis.call('HINCRBY', KEYS[6], 'jobs', added) >= tonumber(ARGV[6]) then
    redis.call('RENAME', KEYS[6], KEYS[7])
  end
  local llen = 0
  if redis.call('TYPE', KEYS[8])['ok'] == 'list' then llen = redis.call('LLEN', KEYS[8]) end
  out = {1, now, llen, started, redis.call('HGETALL', KEYS[6]), redis.call('HGETALL', KEYS[7])}
end
for i = 9 + 2 * k, #ARGV - 7, 8 do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'time_ms', ARGV[i],
    'process', ARGV[i + 1], 'queue', ARGV[i + 2], 'from', ARGV[i + 3], 'to', ARGV[i + 4],
    'reason', ARGV[i + 5], 'backlog', ARGV[i + 6], 'change', ARGV[i + 7])
end
return out
"#,
            ),
        }
    }
}
