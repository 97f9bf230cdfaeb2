//! What every command shares: the Redis connection, its errors and their exit codes, and the
//! URL with its password hidden.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use threadtide::SourceError;
use threadtide::admin::Admin;

/// The global flags.
#[derive(Debug)]
pub(crate) struct Global {
    pub(crate) redis: Option<String>,
    pub(crate) json: bool,
}

/// A failed command: what to print (never a password) and the exit code.
#[derive(Debug)]
pub(crate) enum CliError {
    /// The command ran and found a problem (exit 1).
    Failed(String),
    /// Bad usage the argument parser could not see (exit 2).
    Usage(String),
    /// Redis cannot be reached (exit 3).
    Unreachable(String),
    /// Redis refused the credentials or a permission (exit 4).
    Refused(String),
}

impl CliError {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
            CliError::Refused(_) => 4,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Failed(m) | CliError::Usage(m) => f.write_str(m),
            CliError::Unreachable(m) => write!(f, "Redis unreachable: {m}"),
            CliError::Refused(m) => write!(f, "Redis refused: {m}"),
        }
    }
}

impl Global {
    /// The `--redis` URL, or a usage error naming the flag.
    pub(crate) fn url(&self) -> Result<&str, CliError> {
        self.redis
            .as_deref()
            .ok_or_else(|| CliError::Usage("--redis URL (or THREADTIDE_REDIS) is required".into()))
    }

    /// The URL as it may be printed: any password replaced by `***`.
    pub(crate) fn redacted_url(&self) -> String {
        self.redis
            .as_deref()
            .map(threadtide::admin::redact_url)
            .unwrap_or_default()
    }

    /// One connection with a 5 s connect and I/O timeout.
    pub(crate) fn connect(&self) -> Result<redis::Connection, CliError> {
        let url = self.url()?;
        let client = redis::Client::open(url).map_err(|e| {
            CliError::Usage(format!(
                "--redis {}: {}",
                threadtide::admin::redact_url(url),
                e.category()
            ))
        })?;
        let timeout = Duration::from_secs(5);
        let conn = client
            .get_connection_with_timeout(timeout)
            .map_err(|e| self.redis_error(e))?;
        conn.set_read_timeout(Some(timeout))
            .and_then(|()| conn.set_write_timeout(Some(timeout)))
            .map_err(|e| self.redis_error(e))?;
        Ok(conn)
    }

    /// Sorts a Redis error into unreachable / refused / failed, with the password hidden.
    pub(crate) fn redis_error(&self, e: redis::RedisError) -> CliError {
        let url = self.redacted_url();
        let text = self.hide(&e.to_string());
        let code = e.code().unwrap_or("");
        if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
            || e.kind() == redis::ErrorKind::AuthenticationFailed
        {
            CliError::Refused(format!("{url}: {text}"))
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
            CliError::Unreachable(format!("{url}: {text}"))
        } else {
            CliError::Failed(format!("{url}: {text}"))
        }
    }
}

impl Global {
    /// The admin connection of the library (`threadtide::admin`), fleet `"threadtide"`.
    pub(crate) fn admin(&self) -> Result<Admin, CliError> {
        let url = self.url()?;
        // A URL that does not parse is bad usage, not a refusal.
        redis::Client::open(url).map_err(|e| {
            CliError::Usage(format!(
                "--redis {}: {}",
                threadtide::admin::redact_url(url),
                e.category()
            ))
        })?;
        // Connecting fails either on credentials the server refuses (permanent) or because
        // it cannot be reached.
        Admin::connect(url).map_err(|e| {
            let text = self.hide(&e.to_string());
            if e.is_permanent() {
                CliError::Refused(text)
            } else {
                CliError::Unreachable(text)
            }
        })
    }

    /// Sorts an admin error like [`redis_error`](Self::redis_error): by the Redis error
    /// inside it when there is one; a refusal the library marks permanent is exit 4; anything
    /// else (a key that is not a queue, a bad value) is exit 1. The password is hidden.
    pub(crate) fn source_error(&self, e: SourceError) -> CliError {
        let inner =
            std::error::Error::source(&e).and_then(|s| s.downcast_ref::<redis::RedisError>());
        let text = self.hide(&e.to_string());
        match inner.map(|r| self.redis_error_kind(r)) {
            Some(Kind::Refused) => CliError::Refused(text),
            Some(Kind::Unreachable) => CliError::Unreachable(text),
            _ if e.is_permanent() => CliError::Refused(text),
            _ => CliError::Failed(text),
        }
    }

    fn hide(&self, text: &str) -> String {
        match self.redis.as_deref() {
            Some(url) => threadtide::admin::hide_secrets(text, url),
            None => text.to_owned(),
        }
    }

    fn redis_error_kind(&self, e: &redis::RedisError) -> Kind {
        let code = e.code().unwrap_or("");
        if matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
            || e.kind() == redis::ErrorKind::AuthenticationFailed
        {
            Kind::Refused
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() {
            Kind::Unreachable
        } else {
            Kind::Other
        }
    }
}

enum Kind {
    Refused,
    Unreachable,
    Other,
}

/// Parses `500ms`, `30s`, `10m`, `2h`, `7d` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (like 30s, 10m, 2h, 7d)"))?;
    let ms = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    n.checked_mul(ms)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// `3d4h`, `5m12s`, `800ms`: a short human duration.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (days, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{sec}s")
    } else {
        format!("{sec}s")
    }
}

/// Unix ms now, by this machine's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-12-02 00:15:03Z` (UTC) for Unix ms.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Left-aligned columns, two spaces apart; the header first.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `text` cut to `max` characters, with `...` when cut; control characters shown as spaces.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= max {
        clean
    } else {
        let cut: String = clean.chars().take(max.saturating_sub(3)).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_dates() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("abc").is_err());
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h2m");
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_796_170_503_000), "2026-12-02 00:15:03Z");
        assert_eq!(clip("abcdef\n", 5), "ab...");
    }
}
