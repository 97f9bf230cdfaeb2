//! How a job is stored once it has been run: the producer's raw payload wrapped with its run
//! count and attempt cap, and the dead-letter record.
//!
//! A producer pushes raw payloads. A job that goes back to the queue (a retry, a recovery from
//! a dead worker, a refused settle) is wrapped as
//! `ESC "tt2:" runs ":" cap ":" nonce ":" check ":" payload`, where `runs` is how many times it
//! has started, `cap` the `max_attempts` of the process that first ran it (item 14: the cap
//! travels with the job, so processes with different caps agree), `nonce` keeps byte-identical
//! payloads apart in the delayed set, and `check` is the first 16 hex digits of
//! `SHA-1("tt2:" runs ":" cap ":" nonce)`. The check is what makes the format unambiguous: a
//! producer's payload that merely starts with the marker (`ESC "tt2:"`, or anything else) fails
//! it and is read as a raw payload, byte for byte. Only the exact bytes of an envelope this
//! crate wrote (copied back into the queue) would be taken for one. Counting runs in the job
//! itself, not in a hash keyed by payload, means identical payloads never share a counter. The
//! Lua scripts (scripts.rs, `seal` and `open`) read and write the same format.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// The first bytes of a wrapped job. 0x1F (unit separator) never starts JSON or text payloads.
pub(crate) const PREFIX: &[u8] = b"\x1ftt2:";

/// A stored job: how many runs it has had, the cap it carries, and the producer's payload.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stored<'a> {
    pub(crate) runs: u32,
    /// The `max_attempts` it carries; `None` for a raw payload (the claiming process's applies).
    pub(crate) cap: Option<u32>,
    pub(crate) payload: &'a [u8],
}

/// The check of a header: 16 hex digits of SHA-1 over `tt2:runs:cap:nonce`, exactly as the
/// fields are written (the Lua side hashes the same text with `redis.sha1hex`).
fn check(runs: &[u8], cap: &[u8], nonce: &[u8]) -> [u8; 16] {
    let mut h = sha1_smol::Sha1::new();
    h.update(b"tt2:");
    h.update(runs);
    h.update(b":");
    h.update(cap);
    h.update(b":");
    h.update(nonce);
    let hex = h.digest().to_string();
    let mut out = [0u8; 16];
    out.copy_from_slice(&hex.as_bytes()[..16]);
    out
}

/// Reads a stored entry. Anything that is not an intact envelope is a raw payload that has
/// never run, whatever its bytes.
/// The longest run count or cap an envelope carries, in digits (scripts.rs checks the same).
const MAX_DIGITS: usize = 9;

pub(crate) fn decode(entry: &[u8]) -> Stored<'_> {
    let raw = Stored {
        runs: 0,
        cap: None,
        payload: entry,
    };
    let Some(rest) = entry.strip_prefix(PREFIX) else {
        return raw;
    };
    let mut parts = rest.splitn(5, |&b| b == b':');
    let (Some(runs), Some(cap), Some(nonce), Some(chk), Some(payload)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return raw;
    };
    // The same shape the Lua side matches: `(%d+):(%d+):(%x+):(%x+):`, with at most 9 digits
    // per number on both sides (so every number fits a u32 here and stays exact in Lua, which
    // would write a larger one back as `1e+17`).
    let digits =
        |f: &[u8]| !f.is_empty() && f.len() <= MAX_DIGITS && f.iter().all(u8::is_ascii_digit);
    let hex = |f: &[u8]| !f.is_empty() && f.iter().all(u8::is_ascii_hexdigit);
    if !(digits(runs) && digits(cap) && hex(nonce) && chk == check(runs, cap, nonce)) {
        return raw;
    }
    let num = |f: &[u8]| {
        std::str::from_utf8(f)
            .ok()
            .and_then(|t| t.parse::<u32>().ok())
    };
    match (num(runs), num(cap)) {
        (Some(runs), Some(cap)) => Stored {
            runs,
            cap: Some(cap),
            payload,
        },
        _ => raw,
    }
}

/// Wraps `payload` after `runs` runs, carrying `cap`.
/// Counts above 999,999,999 (nine digits) are written as that: a cap that high never binds.
pub(crate) fn encode(runs: u32, cap: u32, nonce: u64, payload: &[u8]) -> Vec<u8> {
    const MAX: u32 = 999_999_999;
    let (runs, cap) = (runs.min(MAX).to_string(), cap.min(MAX).to_string());
    let nonce = format!("{nonce:x}");
    let chk = check(runs.as_bytes(), cap.as_bytes(), nonce.as_bytes());
    let mut out = Vec::with_capacity(PREFIX.len() + 64 + payload.len());
    out.extend_from_slice(PREFIX);
    for field in [runs.as_bytes(), cap.as_bytes(), nonce.as_bytes(), &chk[..]] {
        out.extend_from_slice(field);
        out.push(b':');
    }
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
/// "worker_id", "time_ms", "payload"}`; `worker` is the thread name the logs and events use
/// (`rpa-conferencia-6`), `worker_id` the id in `Q:workers`; a payload that is not UTF-8 is
/// given as `"payload_hex"` instead, so no byte is lost.
pub(crate) struct Who<'a> {
    /// The worker's thread name.
    pub(crate) thread: &'a str,
    /// The worker's Redis id.
    pub(crate) wid: &'a str,
}

pub(crate) fn dead_record(
    queue: &str,
    reason: Reason,
    error: &str,
    attempts: u32,
    worker: Who<'_>,
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
    json_string(&mut s, worker.thread);
    s.push_str(",\"worker_id\":");
    json_string(&mut s, worker.wid);
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

    const W: Who<'static> = Who {
        thread: "rpa-fila-1",
        wid: "h:1:ab:0:0",
    };

    #[test]
    fn numbers_longer_than_nine_digits_are_raw_and_large_caps_are_written_as_nine() {
        // A producer's payload shaped like an envelope, with a valid check but a 10-digit run
        // count: the Lua side would read it and write `1e+10` back, so both sides treat it as
        // raw bytes.
        let (runs, cap, nonce) = (&b"1234567890"[..], &b"5"[..], &b"ab"[..]);
        let mut forged = PREFIX.to_vec();
        for field in [runs, cap, nonce, &check(runs, cap, nonce)[..]] {
            forged.extend_from_slice(field);
            forged.push(b':');
        }
        forged.extend_from_slice(b"p");
        assert_eq!(decode(&forged).runs, 0);
        assert_eq!(decode(&forged).payload, &forged[..]);
        let big = encode(3, u32::MAX, 0xab, b"p");
        let read = decode(&big);
        assert_eq!(
            (read.runs, read.cap, read.payload),
            (3, Some(999_999_999), &b"p"[..])
        );
    }

    #[test]
    fn raw_payloads_have_no_runs() {
        let forged_check = {
            let mut e = encode(3, 5, 0xab, b"p");
            let n = e.len();
            e[n - 3] ^= 1; // one bit of the check
            e
        };
        for raw in [
            &b"{\"id\":1}"[..],
            b"",
            b"\x1ftt2:",
            b"\x1ftt2:x:1:1:1:p",
            b"\x1ftt2:1:5::0123456789abcdef:p",
            b"\x1ftt2:+1:5:a:0123456789abcdef:p",
            b"\x1ftt2:3:5:ab:0000000000000000:p",
            b"\x1ftt1:3:ab:p",
            &forged_check[..],
            b"\xff",
        ] {
            assert_eq!(
                decode(raw),
                Stored {
                    runs: 0,
                    cap: None,
                    payload: raw
                }
            );
        }
    }

    #[test]
    fn wrapped_payloads_round_trip_byte_for_byte() {
        for payload in [
            &b"{\"id\":1}"[..],
            b"",
            b"a:b:c",
            b"\x00\xff\x1ftt2:9:9:",
            &encode(7, 2, 1, b"nested")[..],
        ] {
            let entry = encode(3, 4, 0xdead_beef, payload);
            assert_eq!(
                decode(&entry),
                Stored {
                    runs: 3,
                    cap: Some(4),
                    payload
                }
            );
        }
    }

    /// The check the Lua side computes with `redis.sha1hex`: pinned, so a change on one side
    /// only is caught here (the integration tests check both against a real server).
    #[test]
    fn the_check_is_sha1_of_the_header() {
        assert_eq!(
            encode(1, 5, 0, b"p"),
            b"\x1ftt2:1:5:0:04263884e0a4b0e0:p".to_vec()
        );
    }

    #[test]
    fn dead_records_are_json_and_keep_every_byte() {
        let rec = dead_record("fila", Reason::Malformed, "bad \"x\"\n", 1, W, b"\xff\x00a");
        let text = String::from_utf8(rec).unwrap();
        assert!(text.contains("\"payload_hex\":\"ff0061\""), "{text}");
        assert!(text.contains("\"error\":\"bad \\\"x\\\"\\n\""), "{text}");
        assert!(
            text.contains("\"worker\":\"rpa-fila-1\",\"worker_id\":\"h:1:ab:0:0\""),
            "{text}"
        );
        let rec = dead_record("fila", Reason::Permanent, "e", 2, W, "{\"é\":1}".as_bytes());
        let text = String::from_utf8(rec).unwrap();
        assert!(text.contains("\"payload\":\"{\\\"é\\\":1}\""), "{text}");
        assert!(text.contains("\"reason\":\"permanent\""), "{text}");
    }
}
