//! The least privilege a worker process needs, and the start-up check that it has it.
//!
//! `docs/RELIABILITY.md` ("A minimal ACL") shows the `ACL SETUSER` line these make. On Redis
//! 7.0 or newer the check asks the server (`redis.acl_check_cmd`, from a script) about every
//! command on the keys it will touch, so a missing permission fails `start()` naming the
//! command and key instead of failing on the first job; on 6.2 the check is skipped.

use redis::{Connection, Script};

use super::Keys;
use super::conn::redis_error;
use super::fleet::FleetState;
use crate::error::SourceError;

/// Every command the source sends, directly or from its scripts, in ACL spelling (the tests
/// hold the scripts, the probes and the documentation to it).
#[cfg(test)]
const COMMANDS: &[&str] = &[
    // Directly, on the worker's and the keeper's connections.
    "blmove",
    "lindex",
    "llen",
    "rpush",
    "type",
    "scan",
    "info",
    "client|setname",
    "evalsha",
    "script|load",
    // Inside the scripts.
    "zadd",
    "zscore",
    "zrem",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
    "zcard",
    "lrem",
    "lpush",
    "lmove",
    "lpos",
    "lrange",
    "del",
    "hget",
    "hset",
    "hdel",
    "zrandmember",
    "time",
    // The fleet's scripts (fleet_scripts.rs), for a coordinated queue.
    "zcount",
    "hmget",
    "sadd",
    "smembers",
    "pexpire",
    "xadd",
    // The fleet's wait measurements (a coordinated queue with a wait target).
    "hincrby",
    "hgetall",
    "rename",
];

/// The probes of a coordinated queue's fleet keys (fleet_scripts.rs and the lease calls).
fn fleet_probes(fleet: &FleetState) -> Vec<Vec<String>> {
    let v = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (q, f) = (&fleet.queue, &fleet.keys);
    let record = f.process(fleet.process);
    let mut out = Vec::new();
    for set in [&q.slots, &q.members, &q.history, &f.procs] {
        out.push(v(&["type", set]));
        out.push(v(&["zadd", set, "0", "x"]));
        out.push(v(&["zrem", set, "x"]));
        out.push(v(&["zscore", set, "x"]));
        out.push(v(&["zcard", set]));
        out.push(v(&["zcount", set, "0", "1"]));
        out.push(v(&["zrange", set, "0", "1"]));
        out.push(v(&["zrangebyscore", set, "0", "1"]));
        out.push(v(&["zremrangebyscore", set, "0", "1"]));
    }
    for hash in [&q.settings, &q.state, &q.room, &f.settings, &record] {
        out.push(v(&["type", hash]));
        out.push(v(&["hset", hash, "x", "1"]));
        out.push(v(&["hget", hash, "x"]));
        out.push(v(&["hmget", hash, "x"]));
        out.push(v(&["hdel", hash, "x"]));
    }
    for hash in [&q.wait, &q.durations, &q.durations_prev] {
        out.push(v(&["type", hash]));
        out.push(v(&["hset", hash, "x", "1"]));
        out.push(v(&["hget", hash, "x"]));
        out.push(v(&["hdel", hash, "x"]));
        out.push(v(&["hincrby", hash, "x", "1"]));
        out.push(v(&["hgetall", hash]));
    }
    out.push(v(&["rename", &q.durations, &q.durations_prev]));
    out.push(v(&["pexpire", &record, "1"]));
    out.push(v(&["type", &f.queues]));
    out.push(v(&["sadd", &f.queues, "x"]));
    out.push(v(&["smembers", &f.queues]));
    out.push(v(&["type", &f.events]));
    out.push(v(&["xadd", &f.events, "MAXLEN", "~", "1", "*", "x", "1"]));
    out
}

/// The probes: each command with arguments in the positions the server reads keys from.
fn probes(keys: &Keys) -> Vec<Vec<String>> {
    let q = keys.queue.as_str();
    let p = format!("{}acl-probe", keys.processing_prefix);
    let (w, r, d, x) = (&keys.workers, &keys.retired, &keys.delayed, &keys.dead);
    let mut lists: Vec<&str> = vec![q, &p, x];
    if let Some(results) = &keys.results {
        lists.push(results);
    }
    let settles = super::scripts::settles_key(q);
    let match_processing = format!("{}*", keys.processing_prefix);
    let v = |parts: &[&str]| parts.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        v(&["blmove", q, &p, "LEFT", "LEFT", "1"]),
        v(&["lmove", q, &p, "LEFT", "LEFT"]),
        v(&["lindex", &p, "0"]),
        v(&["llen", q]),
        v(&["llen", &p]),
        v(&["lrem", &p, "1", "x"]),
        v(&["lpos", &p, "x"]),
        v(&["lrange", &p, "0", "0"]),
        v(&["del", &p]),
        v(&["lpush", q, "x"]),
        v(&["hget", &settles, "x"]),
        v(&["hset", &settles, "x", "1"]),
        v(&["hdel", &settles, "x"]),
        v(&["zrandmember", r, "1"]),
        v(&["scan", "0", "MATCH", &match_processing, "COUNT", "1"]),
        v(&["info", "server"]),
        v(&["client", "setname", "x"]),
        v(&["evalsha", "0000000000000000000000000000000000000000", "0"]),
        v(&["script", "load", "return 1"]),
        v(&["time"]),
    ];
    for list in lists {
        out.push(v(&["rpush", list, "x"]));
        out.push(v(&["type", list]));
    }
    for key in [w, r, d, &settles] {
        out.push(v(&["type", key]));
    }
    for set in [w, r, d] {
        out.push(v(&["zadd", set, "0", "x"]));
        out.push(v(&["zrem", set, "x"]));
        out.push(v(&["zrange", set, "0", "1"]));
        out.push(v(&["zrangebyscore", set, "0", "1"]));
        out.push(v(&["zremrangebyscore", set, "0", "1"]));
    }
    out.push(v(&["zscore", w, "x"]));
    out.push(v(&["zcard", w]));
    out.push(v(&["zcard", d]));
    out.push(v(&["llen", x]));
    out
}

const CHECK: &str = r#"
if not redis.acl_check_cmd then return {} end
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local cmd = {}
  for j = 1, n do cmd[j] = ARGV[i + j] end
  if not redis.acl_check_cmd(unpack(cmd)) then return cmd end
  i = i + n + 1
end
return {}
"#;

/// Fails, permanently, naming the first command (and key) the connection's user may not run.
/// `waits`: the source waits for replicas after each settle, so it needs `WAIT` too.
pub(crate) fn check(
    conn: &mut Connection,
    keys: &Keys,
    fleet: &FleetState,
    waits: bool,
) -> Result<(), SourceError> {
    let script = Script::new(CHECK);
    let mut inv = script.prepare_invoke();
    let mut all = probes(keys);
    if fleet.coordinated() {
        all.extend(fleet_probes(fleet));
    }
    if waits {
        all.push(vec!["wait".to_owned(), "1".to_owned(), "0".to_owned()]);
    }
    for probe in all {
        inv.arg(probe.len());
        for part in &probe {
            inv.arg(part);
        }
    }
    let refused: Vec<String> = inv
        .invoke(conn)
        .map_err(|e| redis_error("cannot check the ACL permissions", e))?;
    if refused.is_empty() {
        return Ok(());
    }
    Err(SourceError::new(format!(
        "the Redis user may not run `{}` (ACL): grant the commands and key patterns listed \
         in docs/RELIABILITY.md, \"A minimal ACL\"",
        refused.join(" ")
    ))
    .into_permanent())
}

#[cfg(test)]
mod tests {
    use super::super::fleet::FleetSettings;
    use super::*;

    /// A command added to a script without adding it here would fail on the first job of a
    /// least-privilege user instead of at start.
    #[test]
    fn every_command_of_the_scripts_is_listed_and_probed() {
        let keys = Keys::new("q", Some("r".into()));
        let fleet = FleetState::new(FleetSettings::default(), "q", "h");
        let mut all = probes(&keys);
        all.extend(fleet_probes(&fleet));
        let probed: Vec<String> = all
            .iter()
            .map(|p| match p[0].as_str() {
                "client" | "script" => format!("{}|{}", p[0], p[1]),
                other => other.to_owned(),
            })
            .collect();
        for c in COMMANDS {
            assert!(probed.iter().any(|p| p == c), "{c} is not probed");
        }
        let scripts = [include_str!("scripts.rs"), include_str!("fleet_scripts.rs")].concat();
        for call in scripts.split("redis.call('").skip(1) {
            let name = call.split('\'').next().unwrap().to_ascii_lowercase();
            assert!(
                COMMANDS.contains(&name.as_str()),
                "{name} is not in COMMANDS"
            );
        }
        let docs = include_str!("../../../docs/RELIABILITY.md");
        let acl = &docs[docs.find("## A minimal ACL").expect("the ACL section")..];
        for c in COMMANDS {
            assert!(
                acl.contains(&format!("+{c}")),
                "{c} is not in the documented ACL"
            );
        }
    }
}
