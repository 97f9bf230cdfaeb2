//! One dead-letter record as the admin API shows it ([`DeadLetter`], read from the bytes the
//! Redis source writes, byte-exact), and the filter that picks records ([`DeadFilter`]).

use std::time::Duration;

use crate::source::redis::json::{Value, parse_flat};

/// Which dead letters a command applies to. Every condition set must hold; the default
/// matches every record.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use threadtide::admin::DeadFilter;
///
/// let f = DeadFilter::default()
///     .reason("permanent")
///     .grep("timeout")
///     .older_than(Duration::from_secs(3600))
///     .limit(100);
/// # let _ = f;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadFilter {
    /// The record's `reason` is exactly this (`malformed`, `attempts_exhausted`, `permanent`).
    pub reason: Option<String>,
    /// This text occurs in the record's error, worker or payload (case-sensitive).
    pub grep: Option<String>,
    /// The record was written at least this long ago (by the Redis server's clock).
    pub older_than: Option<Duration>,
    /// At most this many records (the first ones in the list). `None`: all.
    pub limit: Option<usize>,
}

impl DeadFilter {
    /// Only records with this reason.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Only records whose error, worker or payload contains `text`.
    pub fn grep(mut self, text: impl Into<String>) -> Self {
        self.grep = Some(text.into());
        self
    }
    /// Only records written at least `age` ago.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }
    /// At most `n` records.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    pub(super) fn matches(&self, d: &DeadLetter, now_ms: u64) -> bool {
        let filtered = self.reason.is_some() || self.grep.is_some() || self.older_than.is_some();
        if d.unreadable.is_some() {
            // An unreadable record matches only "everything".
            return !filtered;
        }
        if self.reason.as_ref().is_some_and(|r| *r != d.reason) {
            return false;
        }
        if let Some(age) = self.older_than {
            let cutoff = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
            if d.time_ms > cutoff {
                return false;
            }
        }
        if let Some(text) = &self.grep {
            let payload = String::from_utf8_lossy(&d.payload);
            if !(d.error.contains(text.as_str())
                || d.worker.contains(text.as_str())
                || payload.contains(text.as_str()))
            {
                return false;
            }
        }
        true
    }
}

/// One dead-letter record, read from the queue's `{key}:dead` list.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// Its position in the list when it was read (0 is the oldest). Positions shift when
    /// records before it are removed.
    pub index: usize,
    /// The queue key it came from.
    pub queue: String,
    /// `malformed`, `attempts_exhausted` or `permanent`.
    pub reason: String,
    /// The error that ended it.
    pub error: String,
    /// Runs it had.
    pub attempts: u64,
    /// The worker's thread name (`rpa-conferencia-6`).
    pub worker: String,
    /// The worker's id in Redis.
    pub worker_id: String,
    /// When it was dead-lettered, Unix ms.
    pub time_ms: u64,
    /// The producer's payload, byte for byte (from `payload`, or `payload_hex`).
    pub payload: Vec<u8>,
    /// The stored record, exactly (what a requeue removes).
    pub record: Vec<u8>,
    /// Set when the record cannot be read (not this crate's format): why. Such a record is
    /// never requeued (its payload is unknown) and is purged only by a filter that matches
    /// everything.
    pub unreadable: Option<String>,
}

impl DeadLetter {
    pub(super) fn read(index: usize, record: Vec<u8>) -> DeadLetter {
        let mut d = DeadLetter {
            index,
            queue: String::new(),
            reason: String::new(),
            error: String::new(),
            attempts: 0,
            worker: String::new(),
            worker_id: String::new(),
            time_ms: 0,
            payload: Vec::new(),
            record: Vec::new(),
            unreadable: None,
        };
        match parse_flat(&record).and_then(|m| {
            let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            d.queue = text("queue");
            d.reason = text("reason");
            d.error = text("error");
            d.worker = text("worker");
            d.worker_id = text("worker_id");
            d.attempts = m.get("attempts").and_then(Value::as_u64).unwrap_or(0);
            d.time_ms = m.get("time_ms").and_then(Value::as_u64).unwrap_or(0);
            d.payload = match (m.get("payload"), m.get("payload_hex")) {
                (Some(Value::Str(p)), _) => p.clone().into_bytes(),
                (_, Some(Value::Str(hex))) => from_hex(hex)?,
                _ => return Err("no payload".to_owned()),
            };
            Ok(())
        }) {
            Ok(()) => {}
            Err(e) => d.unreadable = Some(e),
        }
        d.record = record;
        d
    }
}

fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err("payload_hex of odd length".into());
    }
    // Over bytes, not `&str` slices: a non-ASCII character would put a slice boundary
    // inside it and panic; here any non-hex byte is simply "bad payload_hex".
    fn nibble(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    hex.as_bytes()
        .chunks_exact(2)
        .map(|p| match (nibble(p[0]), nibble(p[1])) {
            (Some(h), Some(l)) => Ok(h << 4 | l),
            _ => Err("bad payload_hex".to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::redis::envelope::{Reason, Who, dead_record};

    #[test]
    fn records_the_source_writes_read_back_byte_for_byte() {
        let who = Who {
            thread: "rpa-q-1",
            wid: "h:1:n:0:0",
        };
        for payload in [
            b"\xff\x00a\x1ftt2:".to_vec(),
            "{\"é\":\"\\\"\n\t\u{1}\"} 😀".as_bytes().to_vec(),
            Vec::new(),
        ] {
            let rec = dead_record(
                "fila",
                Reason::Permanent,
                "bad \"x\"\n",
                3,
                who_copy(&who),
                &payload,
            );
            let d = DeadLetter::read(7, rec.clone());
            assert_eq!(d.unreadable, None);
            assert_eq!(d.payload, payload);
            assert_eq!(d.record, rec);
            assert_eq!(
                (d.reason.as_str(), d.attempts, d.index),
                ("permanent", 3, 7)
            );
            assert_eq!(d.error, "bad \"x\"\n");
            assert_eq!(d.worker, "rpa-q-1");
        }
        // Non-ASCII "hex" whose pairs cut a character is unreadable, not a panic.
        for hex in ["0\u{e9}0", "00\u{20ac}0"] {
            let rec = format!(r#"{{"queue":"q","reason":"permanent","payload_hex":"{hex}"}}"#);
            let d = DeadLetter::read(0, rec.into_bytes());
            assert_eq!(d.unreadable.as_deref(), Some("bad payload_hex"), "{hex}");
        }
        let bad = DeadLetter::read(0, b"not json".to_vec());
        assert!(bad.unreadable.is_some());
        assert!(DeadFilter::default().matches(&bad, 0));
        assert!(!DeadFilter::default().reason("permanent").matches(&bad, 0));
    }

    fn who_copy<'a>(w: &Who<'a>) -> Who<'a> {
        Who {
            thread: w.thread,
            wid: w.wid,
        }
    }

    #[test]
    fn filters() {
        let rec = br#"{"queue":"q","reason":"permanent","error":"site down","attempts":1,"worker":"w","worker_id":"i","time_ms":1000,"payload":"abc"}"#;
        let d = DeadLetter::read(0, rec.to_vec());
        let hour = Duration::from_secs(3600);
        assert!(
            DeadFilter::default()
                .reason("permanent")
                .grep("down")
                .matches(&d, 2000)
        );
        assert!(!DeadFilter::default().reason("malformed").matches(&d, 2000));
        assert!(DeadFilter::default().grep("bc").matches(&d, 2000));
        assert!(!DeadFilter::default().grep("zzz").matches(&d, 2000));
        assert!(!DeadFilter::default().older_than(hour).matches(&d, 2000));
        assert!(
            DeadFilter::default()
                .older_than(hour)
                .matches(&d, 1000 + 3_600_000)
        );
    }
}
