//! The Lua scripts: every state change of a job is one script. Times are the server's (`TIME`),
//! never a client clock. Keys of one queue derive from its list key, so one server holds them.
//!
//! A script is not a transaction: when a command in it fails, the writes before it stay. So
//! every script follows three rules (STYLE.md rule 25), and each is tested against a real
//! server in `tests/redis_wrong_type.rs`, `tests/redis_settle.rs` and `tests/redis_orphans.rs`:
//!
//! 1. **Check, then write.** Every key a script may write is checked first (`TYPE` is the
//!    expected one or `none`); on a wrong type it raises `WRONGTYPE key <k> holds a <t> ...`
//!    before its first write, so nothing changes and the job stays where it was.
//! 2. **Copy before remove.** A job is written to its next place (result, delayed set, dead
//!    letter, queue) before it leaves the last one, so a failure at any line leaves it
//!    somewhere (possibly twice, never nowhere).
//! 3. **Idempotent settles.** A worker numbers its settles (`seq`); a script records the last
//!    one it applied in `Q:settles` (wid -> `cap:seq`), and a retried call with the same number
//!    (the reply of the first was lost in a stall) changes nothing. Matching by number, not by
//!    payload, means a retry never touches another entry, even a byte-identical one.
//!
//! A settle of a worker that is no longer registered (reaped, or `Q:workers` deleted) is
//! refused, and in the same script the worker's processing list goes back to the queue: no
//! list is left for a sweep to find. The sweep exists anyway ([`sweep_orphans`]): a bounded
//! `SCAN` over `Q:processing:*` that requeues any list whose worker is not registered (a
//! `BLMOVE` left pending by a process frozen past the retired grace, for example).

use std::time::Duration;

use redis::{Connection, Script};

use super::{Shared, redis_error};
use crate::error::SourceError;

/// Shared Lua helpers, prepended to every script.
pub(crate) const PRELUDE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Rule 1: raise before the first write when a key holds another type.
local function check(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= want and t ~= 'none' then
    error({err = 'WRONGTYPE key ' .. key .. ' holds a ' .. t .. ' where threadtide keeps a '
      .. want .. '; nothing was changed'})
  end
end
-- The envelope of a stored job (see envelope.rs): ESC tt2:runs:cap:nonce:check:payload.
local function header(runs, cap, nonce)
  local h = runs .. ':' .. cap .. ':' .. nonce
  return '\31tt2:' .. h .. ':' .. string.sub(redis.sha1hex('tt2:' .. h), 1, 16) .. ':'
end
local function open(v)
  local s, e, runs, cap, nonce, chk = string.find(v, '^\31tt2:(%d+):(%d+):(%x+):(%x+):')
  -- At most 9 digits, as envelope.rs reads them: a longer number is a producer's raw payload.
  if s and #runs <= 9 and #cap <= 9
    and chk == string.sub(redis.sha1hex('tt2:' .. runs .. ':' .. cap .. ':' .. nonce), 1, 16) then
    return runs, cap, nonce, string.sub(v, e + 1)
  end
end
-- One more run for a stored job; a raw payload gets the cap `cap`.
local function bump(v, cap)
  local runs, c, nonce, payload = open(v)
  if runs then return header(tonumber(runs) + 1, c, nonce) .. payload end
  return header(1, cap, '0') .. v
end
-- Copies a list's entries to the head of `queue` (`f` may rewrite each), then deletes it.
local function requeue(pk, queue, f)
  local items = redis.call('LRANGE', pk, 0, -1)
  for i = #items, 1, -1 do redis.call('LPUSH', queue, f(items[i])) end
  if #items > 0 then redis.call('DEL', pk) end
  return #items
end
"#;

/// The common part of the settle scripts. KEYS: processing, workers, target, queue, settles,
/// slots, settings. ARGV: wid, entry, seq, cap, entry to requeue if refused, the script's own
/// two, coordinated ("1": the worker's slot lease must hold, or the settle is refused).
/// Returns `{code, entries left, next, requeued}`: code 1 done, 0 this call was already
/// applied, -2 the entry is not in the processing list (someone removed it), -1 refused (the
/// worker is not registered; its list went back to the queue, `requeued` entries).
const SETTLE: &str = r#"
local function refuse()
  local mine = false
  local n = requeue(KEYS[1], KEYS[4], function(v)
    if not mine and v == ARGV[2] then mine = true return ARGV[5] end
    return v
  end)
  redis.call('HDEL', KEYS[5], ARGV[1])
  return {-1, 0, false, n}
end
local function begin(target)
  check(KEYS[1], 'list') check(KEYS[2], 'zset') check(KEYS[3], target)
  check(KEYS[4], 'list') check(KEYS[5], 'hash')
  if ARGV[8] == '1' then check(KEYS[6], 'zset') check(KEYS[7], 'hash') end
  if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return refuse() end
  local state = redis.call('HGET', KEYS[5], ARGV[1])
  if state and string.match(state, ':(%d+)$') == ARGV[3] then
    return {0, redis.call('LLEN', KEYS[1]), false, 0}
  end
  -- A coordinated worker whose slot was removed (its lease lapsed) is treated as reaped
  -- (lease.rs): another worker may hold its room now, so its settle must not count.
  if ARGV[8] == '1' and not redis.call('ZSCORE', KEYS[6], ARGV[1]) then return refuse() end
  if not redis.call('LPOS', KEYS[1], ARGV[2]) then
    return {-2, redis.call('LLEN', KEYS[1]), false, 0}
  end
end
-- After the copy: the job leaves the processing list, and the call is recorded as applied.
local function finish()
  redis.call('LREM', KEYS[1], 1, ARGV[2])
  redis.call('HSET', KEYS[5], ARGV[1], ARGV[4] .. ':' .. ARGV[3])
  return redis.call('LLEN', KEYS[1])
end
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{body}"))
}

fn settle_script(body: &str) -> Script {
    Script::new(&format!("{PRELUDE}{SETTLE}{body}"))
}

/// The hash of applied settles: wid -> `cap:seq` (see the module docs).
pub(crate) fn settles_key(queue: &str) -> String {
    format!("{queue}:settles")
}

/// The scripts, built once per source (each is loaded by hash, `EVALSHA`, after first use).
pub(crate) struct Scripts {
    /// KEYS: workers, settles, retired. ARGV: wid, cap, ttl ms. Registers a worker with its
    /// deadline (the server's time plus this process's TTL) and removes the id from `retired`
    /// (an id re-registered after a reap must not be swept as retired while it lives).
    pub(crate) register: Script,
    /// KEYS: workers, and `Q:slots` for a coordinated queue. ARGV: ttl ms, n, then n wids,
    /// then the wids of workers past `job_timeout` (their slot only). Moves the live ones'
    /// deadline to the server's time plus the TTL, and renews their slots that are still
    /// there; renews the slots (not the registrations) of the timed-out ones, whose threads
    /// still run and use their room until they return and release it; returns `{server ms, wids no longer registered, wids that hold no
    /// live slot}` (the first were reaped: they are fenced; the others must take a slot
    /// before they fetch again).
    pub(crate) heartbeat: Script,
    /// Settle (see `SETTLE`); target: results (or dead when there is none); KEYS 6 and 7:
    /// `Q:slots`, `Q:settings`. Own ARGV: result, push ("1"/"0"), coordinated ("1"/"0"). Once acknowledged, when nothing else is left in the processing list,
    /// moves the queue's next job there and returns it (`next`): one round trip per job while
    /// the queue is busy, and the worker still holds one job at a time.
    pub(crate) ack: Script,
    /// Settle; target: delayed. Own ARGV: new entry, delay ms.
    pub(crate) retry: Script,
    /// Settle; target: dead. Own ARGV: record.
    pub(crate) dead: Script,
    /// Settle; target: queue. Puts a job the worker took but never started back at the head of
    /// the queue, untouched (no run counted).
    pub(crate) putback: Script,
    /// KEYS: delayed, queue. ARGV: limit, to head ("1"/"0"). Moves due retries back.
    pub(crate) promote: Script,
    /// KEYS: workers, queue, retired, settles. ARGV: ttl ms, processing key prefix, limit,
    /// grace ms, cap, server ms of the keeper's last beat. Skips everything and returns
    /// `{-1, 0}` when that beat is more than half a TTL old by the server's clock (the keeper
    /// stalled between its beat and this call, or the clock stepped). Otherwise requeues (one
    /// more run each) the jobs of workers whose deadline (the score, set by their own process
    /// from its own TTL) has passed, and moves them to `retired`; then sweeps the lists of up to
    /// `limit` retired workers picked at random (`ZRANDMEMBER`: a burst of retirements with
    /// equal scores cannot hide one), skipping ids that are registered again. Returns
    /// `{workers reaped, jobs requeued}`.
    pub(crate) reap: Script,
    /// KEYS: workers, queue, settles, then processing lists. ARGV: processing key prefix, cap.
    /// Requeues the lists whose worker is not registered. Returns the number of jobs.
    pub(crate) sweep: Script,
    /// KEYS: workers, processing, queue, retired, settles, slots. ARGV: wid, cap, and
    /// optionally an entry the worker took but never started. Puts the worker's jobs back at
    /// the head of the queue, one more run each except the unstarted one, deregisters the
    /// worker, frees its own slot and records it as retired. Returns the number of jobs.
    pub(crate) release: Script,
    /// KEYS: queue, delayed, dead, workers, retired. ARGV: processing key prefix.
    /// Returns {ready, delayed, dead, processing, workers}.
    pub(crate) summary: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            register: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'hash') check(KEYS[3], 'zset')
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':0')
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"#,
            ),
            heartbeat: script(
                r#"
check(KEYS[1], 'zset')
if KEYS[2] then check(KEYS[2], 'zset') end
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local fenced, lost = {}, {}
local n = tonumber(ARGV[2])
if KEYS[2] then
  for i = n + 3, #ARGV do redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i]) end
end
for i = 3, n + 2 do
  local live = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if live then
    redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  else
    table.insert(fenced, ARGV[i])
  end
  if KEYS[2] then
    -- A slot is renewed while it is there: a lapsed one counts until a grant removes it, and
    -- once removed its room may be someone else's (lease.rs).
    local lease = redis.call('ZSCORE', KEYS[2], ARGV[i])
    if live and lease then
      redis.call('ZADD', KEYS[2], 'XX', deadline, ARGV[i])
    else
      if lease then redis.call('ZREM', KEYS[2], ARGV[i]) end
      table.insert(lost, ARGV[i])
    end
  end
end
return {now, fenced, lost}
"#,
            ),
            ack: settle_script(
                r#"
local r = begin('list') if r then return r end
if ARGV[7] == '1' then redis.call('RPUSH', KEYS[3], ARGV[6]) end
local left = finish()
if left > 0 then return {1, left, false, 0} end
-- A coordinated worker takes the next job only while it holds its slot and the queue is not
-- paused (the fleet caps are checked when a slot is taken). A lapsed lease is no lease: the
-- slot may be removed by another process's grant at any moment.
local lease = ARGV[8] == '1' and tonumber(redis.call('ZSCORE', KEYS[6], ARGV[1]))
if ARGV[8] == '1' and (not lease or lease <= now_ms()
    or redis.call('HGET', KEYS[7], 'paused') == '1') then
  return {1, 0, false, 0}
end
return {1, 0, redis.call('LMOVE', KEYS[4], KEYS[1], 'LEFT', 'LEFT'), 0}
"#,
            ),
            retry: settle_script(
                r#"
local r = begin('zset') if r then return r end
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[7]), ARGV[6])
return {1, finish(), false, 0}
"#,
            ),
            dead: settle_script(
                r#"
local r = begin('list') if r then return r end
redis.call('RPUSH', KEYS[3], ARGV[6])
return {1, finish(), false, 0}
"#,
            ),
            putback: settle_script(
                r#"
local r = begin('list') if r then return r end
redis.call('LPUSH', KEYS[4], ARGV[2])
return {1, finish(), false, 0}
"#,
            ),
            promote: script(
                r#"
check(KEYS[1], 'zset')
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then check(KEYS[2], 'list') end
for _, m in ipairs(due) do
  if ARGV[2] == '1' then redis.call('LPUSH', KEYS[2], m) else redis.call('RPUSH', KEYS[2], m) end
  redis.call('ZREM', KEYS[1], m)
end
return #due
"#,
            ),
            reap: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'list') check(KEYS[3], 'zset') check(KEYS[4], 'hash')
local now = now_ms()
-- The keeper judged its view fresh by its own beats: act on it only if its last beat is recent
-- by this clock too.
if now - tonumber(ARGV[6]) > tonumber(ARGV[1]) / 2 then return {-1, 0} end
local limit = tonumber(ARGV[3])
-- The score is the worker's deadline, set by its own process from its own TTL.
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, limit)
local swept = {}
for _, wid in ipairs(redis.call('ZRANDMEMBER', KEYS[3], limit)) do
  -- An id registered again (a lost reply to its registration) is live: its list is its own.
  -- A key of another type holds no job of ours (as in the sweep): skipping it keeps one
  -- operator mistake from stopping every recovery.
  if not redis.call('ZSCORE', KEYS[1], wid)
    and redis.call('TYPE', ARGV[2] .. wid)['ok'] == 'list' then
    table.insert(swept, wid)
  end
end
for _, wid in ipairs(dead) do check(ARGV[2] .. wid, 'list') end
local jobs = 0
for _, wid in ipairs(dead) do
  local state = redis.call('HGET', KEYS[4], wid)
  local cap = state and string.match(state, '^(%d+):') or ARGV[5]
  jobs = jobs + requeue(ARGV[2] .. wid, KEYS[2], function(v) return bump(v, cap) end)
  redis.call('ZADD', KEYS[3], now, wid)
  redis.call('ZREM', KEYS[1], wid)
  redis.call('HDEL', KEYS[4], wid)
end
for _, wid in ipairs(swept) do
  jobs = jobs + requeue(ARGV[2] .. wid, KEYS[2], function(v) return bump(v, ARGV[5]) end)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[4]))
return {#dead, jobs}
"#,
            ),
            sweep: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'list') check(KEYS[3], 'hash')
local jobs = 0
for i = 4, #KEYS do
  local wid = string.sub(KEYS[i], #ARGV[1] + 1)
  -- A key of another type under the prefix holds no job of ours: the worker's own fetch
  -- reports it.
  if redis.call('TYPE', KEYS[i])['ok'] == 'list' and not redis.call('ZSCORE', KEYS[1], wid) then
    jobs = jobs + requeue(KEYS[i], KEYS[2], function(v) return bump(v, ARGV[2]) end)
    redis.call('HDEL', KEYS[3], wid)
  end
end
return jobs
"#,
            ),
            release: script(
                r#"
check(KEYS[1], 'zset') check(KEYS[2], 'list') check(KEYS[3], 'list') check(KEYS[4], 'zset')
check(KEYS[5], 'hash') check(KEYS[6], 'zset')
local spared = not ARGV[3]
local jobs = requeue(KEYS[2], KEYS[3], function(v)
  if not spared and v == ARGV[3] then spared = true return v end
  return bump(v, ARGV[2])
end)
redis.call('ZADD', KEYS[4], now_ms(), ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
-- Its own slot only: the id is never reused, so it can free no one else's.
redis.call('ZREM', KEYS[6], ARGV[1])
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

/// This process's `worker_ttl` in milliseconds, as the scripts take it.
pub(crate) fn ttl_ms<J>(shared: &Shared<J>) -> u64 {
    u64::try_from(shared.worker_ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Reaps dead workers and sweeps retired ones (the `reap` script), on the keeper's connection.
/// `beat_ms` is the server's time of the keeper's last heartbeat. Returns (workers reaped, jobs
/// requeued), or `None` when the script found that beat stale and did nothing.
pub(crate) fn reap<J>(
    shared: &Shared<J>,
    conn: &mut Connection,
    batch: usize,
    grace: Duration,
    beat_ms: u64,
) -> Result<Option<(u64, u64)>, SourceError> {
    let k = &shared.keys;
    let ttl_ms = ttl_ms(shared);
    shared
        .scripts
        .reap
        .key(&k.workers)
        .key(&k.queue)
        .key(&k.retired)
        .key(settles_key(&k.queue))
        .arg(ttl_ms)
        .arg(&k.processing_prefix)
        .arg(batch)
        .arg(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX))
        .arg(shared.max_attempts)
        .arg(beat_ms)
        .invoke::<(i64, u64)>(conn)
        .map(|(workers, jobs)| u64::try_from(workers).ok().map(|w| (w, jobs)))
        .map_err(|e| redis_error("reaping failed", e))
}

/// The backstop sweep: walks `Q:processing:*` with `SCAN` a page per call (`count` keys
/// examined), so a full pass over a keyspace of N keys takes N / `count` calls, and requeues
/// every list whose worker is not registered. Whatever left such a list (a process frozen past
/// the retired grace, `Q:workers` deleted, more retirements than one reap visits), no job stays
/// in it longer than one pass.
#[derive(Debug, Default)]
pub(crate) struct OrphanSweep {
    cursor: u64,
}

impl OrphanSweep {
    /// One `SCAN` page, and one script call when it found processing lists. Returns the jobs
    /// requeued.
    pub(crate) fn step<J>(
        &mut self,
        shared: &Shared<J>,
        conn: &mut Connection,
        count: usize,
    ) -> Result<u64, SourceError> {
        let k = &shared.keys;
        let (cursor, found): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(self.cursor)
            .arg("MATCH")
            .arg(format!("{}*", glob_escape(&k.processing_prefix)))
            .arg("COUNT")
            .arg(count)
            .query(conn)
            .map_err(|e| redis_error("sweeping processing lists failed", e))?;
        self.cursor = cursor;
        if found.is_empty() {
            return Ok(0);
        }
        let mut inv = shared.scripts.sweep.prepare_invoke();
        inv.key(&k.workers).key(&k.queue).key(settles_key(&k.queue));
        for key in &found {
            inv.key(key.as_slice());
        }
        inv.arg(&k.processing_prefix).arg(shared.max_attempts);
        inv.invoke(conn)
            .map_err(|e| redis_error("sweeping processing lists failed", e))
    }
}

/// Escapes the glob characters of `SCAN MATCH` (`*?[]\`), so a queue key is matched literally.
fn glob_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn glob_escape_matches_literally() {
        assert_eq!(super::glob_escape("{fila}:p:"), "{fila}:p:");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
