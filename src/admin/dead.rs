//! Dead letters: list, show, requeue and purge, by filter.
//!
//! The list is read in pages (`LRANGE`, [`PAGE`] records at a time), so a dead-letter list of
//! any length is never held in memory at once. Each job moves on its own and atomically, in a
//! Lua script that handles a batch of them: for each record it pushes the payload (decoded
//! here, passed as bytes) to the queue's tail, then removes that exact record (`LREM` count 1)
//! and takes the push back if the record was already gone (another operator moved it). So a
//! command killed at any point leaves every job in exactly one place, and a rerun requeues only
//! what is still dead: nothing is lost, nothing is duplicated. Both scripts check the key
//! types before their first write (a script is not a transaction).

use redis::{Connection, Script};

use super::Admin;
use super::letter::{DeadFilter, DeadLetter};
use crate::error::SourceError;
use crate::source::redis::redis_error;

/// Records read per `LRANGE`.
const PAGE: usize = 500;
/// Jobs moved per script call.
const BATCH: usize = 200;

const TYPES_OK: &str = r"
for _, k in ipairs(KEYS) do
  local t = redis.call('TYPE', k).ok
  if t ~= 'list' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. k .. ' is a ' .. t .. ', not a list')
  end
end
";

/// KEYS: dead, queue. ARGV: record, payload, record, payload, ... Returns jobs moved.
fn requeue_script() -> Script {
    Script::new(&format!(
        "{TYPES_OK}
local moved = 0
for i = 1, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2], ARGV[i + 1])
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    moved = moved + 1
  else
    redis.call('RPOP', KEYS[2])
  end
end
return moved"
    ))
}

/// KEYS: dead. ARGV: records. Returns records removed.
fn purge_script() -> Script {
    Script::new(&format!(
        "{TYPES_OK}
local removed = 0
for i = 1, #ARGV do
  removed = removed + redis.call('LREM', KEYS[1], 1, ARGV[i])
end
return removed"
    ))
}

/// A page of matching dead letters, from [`Admin::dead_page`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadPage {
    /// Records in the dead-letter list now (`LLEN`), matching or not.
    pub total: usize,
    /// The matching records found, in list order.
    pub letters: Vec<DeadLetter>,
    /// Where to resume scanning for more (pass it as the next `offset`); `None` at the end.
    pub next_offset: Option<usize>,
}

/// What a requeue or purge did, from [`Admin::dead_requeue`] and [`Admin::dead_purge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MoveReport {
    /// Records that matched the filter.
    pub matched: usize,
    /// Records moved (requeued or purged): 0 on a dry run.
    pub moved: usize,
    /// Matching records gone before they could be moved (another command took them).
    pub gone: usize,
    /// Matching records that cannot be requeued because they are unreadable.
    pub unreadable: usize,
    /// Nothing was changed.
    pub dry_run: bool,
}

/// The server's clock, Unix ms.
fn server_ms(conn: &mut Connection) -> Result<u64, SourceError> {
    let (s, us): (u64, u64) = redis::cmd("TIME")
        .query(conn)
        .map_err(|e| redis_error("cannot read the server time", e))?;
    Ok(s * 1000 + us / 1000)
}

/// Fails unless `key` is a queue: a list (or absent) whose dead-letter list is a list (or
/// absent), and either one of the queue's keys exists or the fleet lists it (`fleet_queues`,
/// the fleet's set of queue keys).
pub(crate) fn check_queue(
    conn: &mut Connection,
    key: &str,
    fleet_queues: &str,
) -> Result<(), SourceError> {
    let (t_queue, t_dead, has_any, listed): (String, String, u64, bool) = redis::pipe()
        .cmd("TYPE")
        .arg(key)
        .cmd("TYPE")
        .arg(format!("{key}:dead"))
        .cmd("EXISTS")
        .arg(key)
        .arg(format!("{key}:dead"))
        .arg(format!("{key}:delayed"))
        .arg(format!("{key}:workers"))
        .arg(format!("{key}:retired"))
        .arg(format!("{key}:settings"))
        .cmd("SISMEMBER")
        .arg(fleet_queues)
        .arg(key)
        .query(conn)
        .map_err(|e| redis_error("cannot read the queue's keys", e))?;
    for (k, t) in [(key.to_owned(), &t_queue), (format!("{key}:dead"), &t_dead)] {
        if t != "list" && t != "none" {
            return Err(SourceError::new(format!(
                "{k} is a {t}, not a list: {key} is not a threadtide queue"
            )));
        }
    }
    if has_any == 0 && !listed {
        return Err(SourceError::new(format!(
            "no queue at {key}: no process of the fleet serves it, and neither it nor its \
             :dead, :delayed or :workers keys exist"
        )));
    }
    Ok(())
}

/// Reads records `from..from + PAGE`.
fn read_page(conn: &mut Connection, dead: &str, from: usize) -> Result<Vec<Vec<u8>>, SourceError> {
    redis::cmd("LRANGE")
        .arg(dead)
        .arg(from)
        .arg(from + PAGE - 1)
        .query(conn)
        .map_err(|e| redis_error("cannot read the dead-letter list", e))
}

#[derive(Clone, Copy, PartialEq)]
enum Action {
    Requeue,
    Purge,
}

impl Admin {
    /// Runs `f` on the admin's connection (dead letters and retries report their own errors).
    pub(super) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        f(&mut self.conn.lock())
    }

    /// Checks that `key` is a threadtide queue: a list (or absent while empty) whose
    /// `:dead` list is a list (or absent), and that a process of the fleet serves it or one
    /// of its keys exists (the list, `:dead`, `:delayed`, `:workers`, `:retired`,
    /// `:settings`). One pipelined round trip.
    ///
    /// # Errors
    ///
    /// An error naming the key and what it holds instead, or that nothing of a queue exists
    /// there; or Redis cannot be reached.
    pub fn check_queue(&self, key: &str) -> Result<(), SourceError> {
        self.with_conn(|conn| check_queue(conn, key, &self.keys.queues))
    }

    /// Up to `limit` dead letters of queue `key` that match `filter`, scanning the list from
    /// position `offset` (0 is the oldest record). Reads the list in pages of 500 records.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached, or `key` is not a queue (a key of another type, or no
    /// key of the queue exists).
    pub fn dead_page(
        &self,
        key: &str,
        filter: &DeadFilter,
        offset: usize,
        limit: usize,
    ) -> Result<DeadPage, SourceError> {
        let dead = format!("{key}:dead");
        let limit = limit.min(filter.limit.unwrap_or(usize::MAX));
        self.with_conn(|conn| {
            check_queue(conn, key, &self.keys.queues)?;
            let now = server_ms(conn)?;
            let total: usize = redis::cmd("LLEN")
                .arg(&dead)
                .query(conn)
                .map_err(|e| redis_error("cannot count dead letters", e))?;
            let mut letters = Vec::new();
            let mut at = offset;
            loop {
                let page = read_page(conn, &dead, at)?;
                let len = page.len();
                for (i, record) in page.into_iter().enumerate() {
                    if letters.len() == limit {
                        return Ok(DeadPage {
                            total,
                            letters,
                            next_offset: Some(at + i),
                        });
                    }
                    let d = DeadLetter::read(at + i, record);
                    if filter.matches(&d, now) {
                        letters.push(d);
                    }
                }
                at += len;
                if len < PAGE {
                    return Ok(DeadPage {
                        total,
                        letters,
                        next_offset: None,
                    });
                }
            }
        })
    }

    /// The dead letter at position `index` of queue `key`'s list (0 is the oldest), or
    /// `None` past the end.
    ///
    /// # Errors
    ///
    /// As [`dead_page`](Self::dead_page).
    pub fn dead_show(&self, key: &str, index: usize) -> Result<Option<DeadLetter>, SourceError> {
        self.with_conn(|conn| {
            check_queue(conn, key, &self.keys.queues)?;
            let record: Option<Vec<u8>> = redis::cmd("LINDEX")
                .arg(format!("{key}:dead"))
                .arg(index)
                .query(conn)
                .map_err(|e| redis_error("cannot read the dead letter", e))?;
            Ok(record.map(|r| DeadLetter::read(index, r)))
        })
    }

    /// Puts the dead letters of queue `key` that match `filter` back at the tail of the
    /// queue, as the producer's payload byte for byte (a fresh job: its run count starts
    /// again). With `dry_run`, only counts them. Each job moves atomically (see the module's
    /// design note): an interrupted call loses and duplicates nothing, and calling it again
    /// moves what is left. Unreadable records stay.
    ///
    /// Cost: one `LRANGE` per 500 records scanned, one script per 200 jobs moved. A scan that
    /// moved something is followed by another (until one moves nothing), so records removed
    /// by someone else meanwhile, which shift the list, cannot make it skip a match.
    ///
    /// # Errors
    ///
    /// As [`dead_page`](Self::dead_page); jobs moved before the error stay moved.
    pub fn dead_requeue(
        &self,
        key: &str,
        filter: &DeadFilter,
        dry_run: bool,
    ) -> Result<MoveReport, SourceError> {
        self.apply(key, filter, dry_run, Action::Requeue)
    }

    /// Deletes the dead letters of queue `key` that match `filter`; with `dry_run`, only
    /// counts them. Each record is removed by its exact bytes, so a record written meanwhile
    /// is never removed in its place.
    ///
    /// # Errors
    ///
    /// As [`dead_page`](Self::dead_page); records removed before the error stay removed.
    pub fn dead_purge(
        &self,
        key: &str,
        filter: &DeadFilter,
        dry_run: bool,
    ) -> Result<MoveReport, SourceError> {
        self.apply(key, filter, dry_run, Action::Purge)
    }

    fn apply(
        &self,
        key: &str,
        filter: &DeadFilter,
        dry_run: bool,
        action: Action,
    ) -> Result<MoveReport, SourceError> {
        let dead = format!("{key}:dead");
        let script = match action {
            Action::Requeue => requeue_script(),
            Action::Purge => purge_script(),
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        self.with_conn(|conn| {
            check_queue(conn, key, &self.keys.queues)?;
            let now = server_ms(conn)?;
            // A pass scans by offset; a record someone else removes meanwhile shifts the
            // rest down, so a pass can skip matches. Passes repeat until one moves nothing
            // and finds nothing gone: what is still there and matches is then moved.
            let mut total = MoveReport {
                dry_run,
                ..MoveReport::default()
            };
            loop {
                let done = total.moved + total.gone;
                let pass = scan_pass(
                    conn,
                    &script,
                    &dead,
                    key,
                    filter,
                    now,
                    limit - done,
                    dry_run,
                    action,
                )?;
                total.moved += pass.moved;
                total.gone += pass.gone;
                if dry_run || pass.moved + pass.gone == 0 || total.moved + total.gone >= limit {
                    total.matched = done + pass.matched;
                    total.unreadable = pass.unreadable;
                    return Ok(total);
                }
            }
        })
    }
}

/// One scan of the dead list from index 0 (see [`Admin::dead_requeue`]).
#[allow(clippy::too_many_arguments)]
fn scan_pass(
    conn: &mut Connection,
    script: &redis::Script,
    dead: &str,
    key: &str,
    filter: &DeadFilter,
    now: u64,
    limit: usize,
    dry_run: bool,
    action: Action,
) -> Result<MoveReport, SourceError> {
    let mut report = MoveReport {
        dry_run,
        ..MoveReport::default()
    };
    let mut at = 0;
    loop {
        let page = read_page(conn, dead, at)?;
        let len = page.len();
        let mut chosen = Vec::new();
        for (i, record) in page.into_iter().enumerate() {
            if report.matched == limit {
                break;
            }
            let d = DeadLetter::read(at + i, record);
            if !filter.matches(&d, now) {
                continue;
            }
            report.matched += 1;
            if action == Action::Requeue && d.unreadable.is_some() {
                report.unreadable += 1;
                continue;
            }
            chosen.push(d);
        }
        let (mut moved_here, mut gone_here) = (0, 0);
        if !dry_run {
            for batch in chosen.chunks(BATCH) {
                let mut inv = script.key(dead);
                if action == Action::Requeue {
                    inv.key(key);
                }
                for d in batch {
                    inv.arg(&d.record[..]);
                    if action == Action::Requeue {
                        inv.arg(&d.payload[..]);
                    }
                }
                let n: usize = inv
                    .invoke(conn)
                    .map_err(|e| redis_error("cannot move dead letters", e))?;
                moved_here += n;
                gone_here += batch.len() - n;
            }
        }
        report.moved += moved_here;
        report.gone += gone_here;
        // Records removed from this page (by us, or gone: by someone else) shift the rest of
        // the list down.
        at += len.saturating_sub(moved_here + gone_here);
        if len < PAGE || report.matched == limit {
            return Ok(report);
        }
    }
}
