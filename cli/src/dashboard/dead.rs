//! Dead letters of a queue, through `threadtide::admin` (paged, never read whole), and the one
//! change the admin API has no call for: requeue or purge of one record by its exact bytes.

use serde_json::{Value, json};
use threadtide::SourceError;
use threadtide::admin::{Admin, DeadFilter, DeadLetter, MoveReport};

/// Removes one record (ARGV[1], exact bytes) from the dead list (KEYS[1]) and, when
/// `ARGV[3] == '1'`, appends its payload (ARGV[2]) to the queue (KEYS[2]). Checks the types
/// before the first write (a script is not a transaction) and pushes in the same script as it
/// removes, so the job is never in neither place nor in both. Returns 1 when the record was
/// there, 0 when it was gone already (removed or requeued meanwhile: nothing is done).
const ONE_SCRIPT: &str = r#"
if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return 0 end
if ARGV[3] == '1' then
  local q = redis.call('TYPE', KEYS[2]).ok
  if q ~= 'list' and q ~= 'none' then return redis.error_reply('queue ' .. KEYS[2] .. ' is a ' .. q) end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' then redis.call('RPUSH', KEYS[2], ARGV[2]) end
return 1
"#;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-1 of a record's bytes, in hex: how a change names one record (a big record's hex
/// would not fit a request body).
pub(crate) fn sha1(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}

/// How a request names the one record it changes.
pub(crate) enum RecordId {
    /// `record_sha1`: the SHA-1 of its bytes (what the page sends).
    Sha1(String),
    /// `record_hex`: its bytes in hex (kept for scripts written against it).
    Hex(String),
}

impl RecordId {
    fn is(&self, record: &[u8]) -> bool {
        match self {
            RecordId::Sha1(s) => s.eq_ignore_ascii_case(&sha1(record)),
            RecordId::Hex(h) => h.eq_ignore_ascii_case(&hex(record)),
        }
    }
}

/// The JSON of one record; `full` adds the whole payload (text and hex) and the record.
pub(crate) fn letter_json(d: &DeadLetter, full: bool) -> Value {
    let text = String::from_utf8_lossy(&d.payload);
    let shown: String = if full {
        text.to_string()
    } else {
        text.chars().take(200).collect()
    };
    let mut v = json!({
        "index": d.index, "reason": d.reason, "error": d.error, "attempts": d.attempts,
        "time_ms": d.time_ms, "worker": d.worker, "worker_id": d.worker_id,
        "payload_text": shown, "payload_bytes": d.payload.len(),
        "utf8": std::str::from_utf8(&d.payload).is_ok(), "unreadable": d.unreadable,
    });
    if full {
        v["payload_hex"] = Value::from(hex(&d.payload));
        v["record"] = Value::from(String::from_utf8_lossy(&d.record).into_owned());
        v["record_hex"] = Value::from(hex(&d.record));
        v["record_sha1"] = Value::from(sha1(&d.record));
    }
    v
}

/// A filter from the request's `reason` and `contains` parameters.
pub(crate) fn filter(reason: Option<String>, contains: Option<String>) -> DeadFilter {
    let mut f = DeadFilter::default();
    if let Some(r) = reason {
        f = f.reason(r);
    }
    if let Some(c) = contains {
        f = f.grep(c);
    }
    f
}

/// One page: `Admin::dead_page` (positions from 0, the oldest record).
pub(crate) fn page(
    admin: &Admin,
    queue: &str,
    f: &DeadFilter,
    offset: usize,
    limit: usize,
) -> Result<Value, SourceError> {
    let p = admin.dead_page(queue, f, offset, limit)?;
    let filtered = f.reason.is_some() || f.grep.is_some();
    Ok(json!({
        "queue": queue, "total": p.total, "offset": offset, "limit": limit,
        "filtered": filtered, "next_offset": p.next_offset,
        "items": p.letters.iter().map(|d| letter_json(d, false)).collect::<Vec<_>>(),
    }))
}

pub(crate) fn report_json(queue: &str, action: &str, r: &MoveReport) -> Value {
    json!({
        "queue": queue, "action": action, "dry_run": r.dry_run, "matched": r.matched,
        "moved": r.moved, "gone": r.gone, "unreadable": r.unreadable,
    })
}

/// Requeues (payload to the tail of the queue, byte for byte) or purges the record at
/// `index` if it still holds exactly the record `id` names; reports 0 moved when it does not.
pub(crate) fn one(
    admin: &Admin,
    conn: &mut redis::Connection,
    queue: &str,
    index: usize,
    id: &RecordId,
    requeue: bool,
) -> Result<Value, SourceError> {
    let current = admin.dead_show(queue, index)?;
    let Some(d) = current.filter(|d| id.is(&d.record)) else {
        return Ok(json!({"queue": queue, "matched": 0, "moved": 0, "gone": 1}));
    };
    if requeue && d.unreadable.is_some() {
        return Ok(json!({"queue": queue, "matched": 1, "moved": 0, "unreadable": 1}));
    }
    let moved: i64 = redis::cmd("EVAL")
        .arg(ONE_SCRIPT)
        .arg(2)
        .arg(format!("{queue}:dead"))
        .arg(queue)
        .arg(&d.record)
        .arg(&d.payload)
        .arg(if requeue { "1" } else { "0" })
        .query(conn)
        .map_err(|e| SourceError::with_source("cannot move the dead letter", e))?;
    Ok(json!({"queue": queue, "matched": 1, "moved": moved, "gone": 1 - moved}))
}
