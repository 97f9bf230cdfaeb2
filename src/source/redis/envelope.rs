//! How a job is stored once it has been run: the producer's raw payload wrapped with its run
//! count, and the dead-letter record.
//!
//! A producer pushes raw payloads. A job that goes back to the queue (a retry, or recovery
//! from a dead worker) is wrapped as `ESC "tt1:" runs ":" nonce ":" payload`, where `runs` is
//! how many times it has started and `nonce` keeps byte-identical payloads apart in the delayed
//! set. Counting runs in the job itself, not in a hash keyed by payload, means identical
//! payloads never share a counter. The reaper's Lua script writes the same format.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The first bytes of a wrapped job. 0x1F (unit separator) never starts JSON or text payloads.
pub(crate) const PREFIX: &[u8] = b"\x1ftt1:";

/// A stored job: how many runs it has had and the producer's payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored<'a> {
    pub(crate) runs: u32,
    pub(crate) payload: &'a [u8],
}

/// Reads a stored entry. Anything not wrapped is a raw payload that has never run.
pub(crate) fn decode(entry: &[u8]) -> Stored<'_> {
    let raw = Stored {
        runs: 0,
        payload: entry,
    };
    let Some(rest) = entry.strip_prefix(PREFIX) else {
        return raw;
    };
    let mut parts = rest.splitn(3, |&b| b == b':');
    let (Some(runs), Some(nonce), Some(payload)) = (parts.next(), parts.next(), parts.next())
    else {
        return raw;
    };
    // The same shape the Lua side matches: `(%d+):(%x+):`.
    let digits = !runs.is_empty() && runs.iter().all(u8::is_ascii_digit);
    let hex = !nonce.is_empty() && nonce.iter().all(u8::is_ascii_hexdigit);
    let runs = std::str::from_utf8(runs).ok().and_then(|r| r.parse().ok());
    match runs {
        Some(runs) if digits && hex => Stored { runs, payload },
        _ => raw,
    }
}

/// Wraps `payload` for a retry after `runs` runs.
pub(crate) fn encode(runs: u32, nonce: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX.len() + 32 + payload.len());
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(format!("{runs}:{nonce:x}:").as_bytes());
    out.extend_from_slice(payload);
    out
}

/// Why a job went to the dead-letter list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The decoder refused the payload; it never reached the executor.
    Malformed,
    /// It started `max_attempts` times (crashes included) without succeeding.
    AttemptsExhausted,
    /// The executor returned a permanent error.
    Permanent,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::AttemptsExhausted => "attempts_exhausted",
            Reason::Permanent => "permanent",
        }
    }
}

/// A dead-letter record, as JSON: `{"queue", "reason", "error", "attempts", "worker",
/// "time_ms", "payload"}`; a payload that is not UTF-8 is given as `"payload_hex"` instead, so
/// no byte is lost.
pub(crate) fn dead_record(
    queue: &str,
    reason: Reason,
    error: &str,
    attempts: u32,
    worker: &str,
    payload: &[u8],
) -> Vec<u8> {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut s = String::with_capacity(128 + payload.len());
    s.push_str("{\"queue\":");
    json_string(&mut s, queue);
    s.push_str(",\"reason\":\"");
    s.push_str(reason.as_str());
    s.push_str("\",\"error\":");
    json_string(&mut s, error);
    let _ = write!(s, ",\"attempts\":{attempts},\"worker\":");
    json_string(&mut s, worker);
    let _ = write!(s, ",\"time_ms\":{time_ms},");
    match std::str::from_utf8(payload) {
        Ok(text) => {
            s.push_str("\"payload\":");
            json_string(&mut s, text);
        }
        Err(_) => {
            s.push_str("\"payload_hex\":\"");
            for b in payload {
                let _ = write!(s, "{b:02x}");
            }
            s.push('"');
        }
    }
    s.push('}');
    s.into_bytes()
}

fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payloads_have_no_runs() {
        for raw in [
            &b"{\"id\":1}"[..],
            b"",
            b"\x1ftt1:",
            b"\x1ftt1:x:1:p",
            b"\x1ftt1:1::p",
            b"\x1ftt1:+1:a:p",
            b"\xff",
        ] {
            assert_eq!(
                decode(raw),
                Stored {
                    runs: 0,
                    payload: raw
                }
            );
        }
    }

    #[test]
    fn wrapped_payloads_round_trip_byte_for_byte() {
        for payload in [&b"{\"id\":1}"[..], b"", b"a:b:c", b"\x00\xff\x1ftt1:9:9:"] {
            let entry = encode(3, 0xdead_beef, payload);
            assert_eq!(decode(&entry), Stored { runs: 3, payload });
        }
    }

    #[test]
    fn dead_records_are_json_and_keep_every_byte() {
        let rec = dead_record(
            "fila",
            Reason::Malformed,
            "bad \"x\"\n",
            1,
            "w",
            b"\xff\x00a",
        );
        let text = String::from_utf8(rec).unwrap();
        assert!(text.contains("\"payload_hex\":\"ff0061\""), "{text}");
        assert!(text.contains("\"error\":\"bad \\\"x\\\"\\n\""), "{text}");
        let rec = dead_record(
            "fila",
            Reason::Permanent,
            "e",
            2,
            "w",
            "{\"é\":1}".as_bytes(),
        );
        let text = String::from_utf8(rec).unwrap();
        assert!(text.contains("\"payload\":\"{\\\"é\\\":1}\""), "{text}");
        assert!(text.contains("\"reason\":\"permanent\""), "{text}");
    }
}
