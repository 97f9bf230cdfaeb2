//! Dead letters of a queue (`Q:dead`, a list of JSON records the library appends with `RPUSH`):
//! read in pages (`LRANGE`, newest first), never whole; requeued or purged one record at a time
//! by a script that checks before it writes, so every job is moved atomically and byte-exact.

use serde_json::{Value, json};

/// Records read per `LRANGE` while a filter scans the list.
const CHUNK: i64 = 1000;
/// Most records one filtered page request scans before it answers (it says where it stopped).
const SCAN_LIMIT: i64 = 20_000;

/// Removes one record (ARGV[1]) from the dead list (KEYS[1]) and, when `ARGV[3] == '1'`,
/// appends its payload (ARGV[2]) to the queue (KEYS[2]). Checks the types first (a script is
/// not a transaction); the payload is pushed in the same script as the removal, so the job is
/// never in neither place. Returns 1 when the record was there, 0 when it was gone already.
pub(crate) const MOVE_SCRIPT: &str = r#"
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'list' then return 0 end
if ARGV[3] == '1' then
  local q = redis.call('TYPE', KEYS[2]).ok
  if q ~= 'list' and q ~= 'none' then return redis.error_reply('queue ' .. KEYS[2] .. ' is a ' .. q) end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"#;

/// Which records an operation covers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Filter {
    /// Exact `reason` (`malformed`, `attempts_exhausted`, `permanent`), or any.
    pub(crate) reason: Option<String>,
    /// A substring of the error text or the payload, or any.
    pub(crate) contains: Option<String>,
}

impl Filter {
    pub(crate) fn is_empty(&self) -> bool {
        self.reason.is_none() && self.contains.is_none()
    }

    fn matches(&self, rec: &Value, raw: &[u8]) -> bool {
        if let Some(r) = &self.reason
            && rec["reason"].as_str() != Some(r.as_str())
        {
            return false;
        }
        if let Some(c) = &self.contains {
            let err = rec["error"].as_str().unwrap_or("");
            let payload = rec["payload"].as_str().unwrap_or("");
            return err.contains(c.as_str())
                || payload.contains(c.as_str())
                || (rec.is_null() && String::from_utf8_lossy(raw).contains(c.as_str()));
        }
        true
    }
}

fn parse(raw: &[u8]) -> Value {
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

/// The payload bytes a record holds (`payload`, or `payload_hex` decoded).
pub(crate) fn payload(rec: &Value) -> Option<Vec<u8>> {
    if let Some(p) = rec["payload"].as_str() {
        return Some(p.as_bytes().to_vec());
    }
    let hex = rec["payload_hex"].as_str()?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The JSON the page shows for one record at position `index` (0 = newest).
fn item(index: i64, raw: &[u8], full: bool) -> Value {
    let rec = parse(raw);
    let bytes = payload(&rec).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let short: String = if full {
        text.to_string()
    } else {
        text.chars().take(200).collect()
    };
    let mut v = json!({
        "index": index,
        "reason": rec["reason"], "error": rec["error"], "attempts": rec["attempts"],
        "time_ms": rec["time_ms"], "worker": rec["worker"], "worker_id": rec["worker_id"],
        "payload_text": short,
        "payload_bytes": bytes.len(),
        "utf8": std::str::from_utf8(&bytes).is_ok(),
        "valid_record": !rec.is_null(),
    });
    if full {
        v["payload_hex"] = Value::from(hex(&bytes));
        v["record"] = Value::from(String::from_utf8_lossy(raw).to_string());
    }
    v
}

/// One page of the dead list of `queue`, newest first: `offset` records skipped (counted among
/// those matching `filter`), at most `limit` returned. Unfiltered: one `LLEN` and one `LRANGE`.
/// Filtered: `LRANGE` chunks of 1000 from position `scan_from` (0 = newest), at most 20,000
/// records a request; the answer says where it stopped (`next_scan`) so the page can go on.
pub(crate) fn page(
    conn: &mut redis::Connection,
    queue: &str,
    filter: &Filter,
    offset: i64,
    limit: i64,
) -> redis::RedisResult<Value> {
    let key = format!("{queue}:dead");
    let total: i64 = redis::cmd("LLEN").arg(&key).query(conn)?;
    let mut items = Vec::new();
    if filter.is_empty() {
        if offset < total && limit > 0 {
            let rows: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(&key)
                .arg(-(offset + limit))
                .arg(-(offset + 1))
                .query(conn)?;
            for (i, raw) in rows.iter().rev().enumerate() {
                items.push(item(offset + i as i64, raw, false));
            }
        }
        return Ok(json!({
            "queue": queue, "total": total, "offset": offset, "limit": limit,
            "filtered": false, "items": items,
        }));
    }
    // Filtered: `offset` is a position in the list (0 = newest) to scan from.
    let mut pos = offset.max(0);
    let stop = (offset + SCAN_LIMIT).min(total);
    while pos < stop && (items.len() as i64) < limit {
        let n = CHUNK.min(stop - pos);
        let rows: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(-(pos + n))
            .arg(-(pos + 1))
            .query(conn)?;
        for (i, raw) in rows.iter().rev().enumerate() {
            let at = pos + i as i64;
            if (items.len() as i64) < limit && filter.matches(&parse(raw), raw) {
                items.push(item(at, raw, false));
                if items.len() as i64 == limit {
                    pos = at;
                    break;
                }
            }
        }
        if items.len() as i64 == limit {
            pos += 1;
            break;
        }
        pos += n;
    }
    Ok(json!({
        "queue": queue, "total": total, "offset": offset, "limit": limit, "filtered": true,
        "items": items, "next_scan": if pos < total { Value::from(pos) } else { Value::Null },
    }))
}

/// The record at position `index` (0 = newest), in full (payload as text and hex).
pub(crate) fn show(
    conn: &mut redis::Connection,
    queue: &str,
    index: i64,
) -> redis::RedisResult<Option<Value>> {
    let raw: Option<Vec<u8>> = redis::cmd("LINDEX")
        .arg(format!("{queue}:dead"))
        .arg(-(index + 1))
        .query(conn)?;
    Ok(raw.map(|r| item(index, &r, true)))
}

/// What a requeue or purge did (or, with `dry_run`, would do).
#[derive(Debug, Default)]
pub(crate) struct Moved {
    pub(crate) matched: u64,
    pub(crate) moved: u64,
    /// Records whose payload could not be recovered (not JSON, no payload): never requeued.
    pub(crate) skipped: u64,
}

/// Requeues (`requeue = true`: payload back to the tail of the queue) or purges the records of
/// `queue` that match `filter`, or only the one at `index` (0 = newest) when given, whose text
/// must then equal `expect` (so a record that moved is not mistaken for another). Scans the
/// list from the newest end (the tail) towards the head in chunks of 1000, so a removal shifts
/// only records already scanned; one script call per record.
pub(crate) fn apply(
    conn: &mut redis::Connection,
    queue: &str,
    filter: &Filter,
    one: Option<(i64, &str)>,
    requeue: bool,
    dry_run: bool,
) -> redis::RedisResult<Moved> {
    let key = format!("{queue}:dead");
    let mut out = Moved::default();
    let act = |conn: &mut redis::Connection, raw: &[u8], out: &mut Moved| {
        let rec = parse(raw);
        let body = payload(&rec);
        out.matched += 1;
        if requeue && body.is_none() {
            out.skipped += 1;
            return Ok(());
        }
        if dry_run {
            return Ok(());
        }
        let done: i64 = redis::cmd("EVAL")
            .arg(MOVE_SCRIPT)
            .arg(2)
            .arg(&key)
            .arg(queue)
            .arg(raw)
            .arg(body.unwrap_or_default())
            .arg(if requeue { "1" } else { "0" })
            .query(conn)?;
        out.moved += done as u64;
        Ok::<(), redis::RedisError>(())
    };
    if let Some((index, expect)) = one {
        let raw: Option<Vec<u8>> = redis::cmd("LINDEX")
            .arg(&key)
            .arg(-(index + 1))
            .query(conn)?;
        if let Some(raw) = raw.filter(|r| r.as_slice() == expect.as_bytes()) {
            act(conn, &raw, &mut out)?;
        }
        return Ok(out);
    }
    let total: i64 = redis::cmd("LLEN").arg(&key).query(conn)?;
    let mut end = total - 1;
    while end >= 0 {
        let start = (end - CHUNK + 1).max(0);
        let rows: Vec<Vec<u8>> = redis::cmd("LRANGE")
            .arg(&key)
            .arg(start)
            .arg(end)
            .query(conn)?;
        for raw in rows.iter().rev() {
            if filter.matches(&parse(raw), raw) {
                act(conn, raw, &mut out)?;
            }
        }
        end = start - 1;
    }
    Ok(out)
}
