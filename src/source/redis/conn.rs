//! Connections: making one (timeouts, a `CLIENT SETNAME` name, the server check), telling a
//! broken connection from an error reply, saying what went wrong in words an operator can act
//! on, keeping the password out of every message, and reconnecting with back-off.

use std::cell::Cell;
use std::time::{Duration, Instant};

use redis::{Connection, ErrorKind, RedisError, ServerErrorKind};

use crate::backoff::Backoff;
use crate::error::SourceError;

/// Reconnection delays of the source's own connections (keeper, shared): 500 ms doubling to
/// 30 s, jittered to 50-100%. The keeper caps it lower (see `keeper.rs`).
pub(crate) const RECONNECT: Backoff = Backoff {
    initial: Duration::from_millis(500),
    max: Duration::from_secs(30),
};

/// While a component stays cut off from Redis, it says so again at most this often.
pub(crate) const REMIND_EVERY: Duration = Duration::from_secs(60);

/// Who holds a connection; part of its `CLIENT SETNAME` name.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role<'a> {
    /// The start-up check in `JobSource::open`.
    Open,
    /// The host's calls (`summary`, `push`, `requeue_running`).
    Shared,
    /// The keeper thread.
    Keeper,
    /// A worker thread, by its name.
    Worker(&'a str),
}

/// The `CLIENT SETNAME` name of a connection: `tt:<host>:<pid>:<role>[:<thread>]`, so that
/// `CLIENT LIST` shows which process and thread holds it. Redis refuses spaces and newlines in
/// names: any byte outside printable ASCII becomes `_`.
pub(crate) fn client_name(host: &str, queue: &str, role: Role<'_>) -> String {
    let pid = std::process::id();
    let name = match role {
        Role::Open => format!("tt:{host}:{pid}:open:{queue}"),
        Role::Shared => format!("tt:{host}:{pid}:shared:{queue}"),
        Role::Keeper => format!("tt:{host}:{pid}:keeper:{queue}"),
        Role::Worker(thread) => format!("tt:{host}:{pid}:worker:{thread}"),
    };
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

thread_local! {
    /// The read timeout of the connection this thread made last: lets [`describe`] say "did not
    /// answer within 3 s" where the caller only has the error (one source's connections all
    /// share one read timeout per role, and a thread makes connections of one role).
    static READ_TIMEOUT: Cell<Option<Duration>> = const { Cell::new(None) };
}

pub(crate) fn note_read_timeout(timeout: Duration) {
    READ_TIMEOUT.with(|t| t.set(Some(timeout)));
}

/// A duration as an operator reads it: `3 s`, `250 ms`, `1.5 s`.
pub(crate) fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// What went wrong, in words: "Redis did not answer within 3 s", "the connection was closed
/// by the server or the network", "authentication failed", never a bare "os error 11".
pub(crate) fn describe(e: &RedisError) -> String {
    let text = e.to_string();
    if e.is_timeout() {
        return match READ_TIMEOUT.with(Cell::get) {
            Some(t) => format!("Redis did not answer within {}", human(t)),
            None => "Redis did not answer in time".to_owned(),
        };
    }
    if e.is_connection_refusal() {
        return "connection refused: no Redis server is listening there".to_owned();
    }
    if text.contains("os error 4") {
        return "interrupted by a signal while talking to Redis".to_owned();
    }
    if e.is_connection_dropped() {
        return "the connection was closed by the server (or the network)".to_owned();
    }
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            format!("authentication failed: wrong user name or password ({text})")
        }
        ErrorKind::Server(ServerErrorKind::NoPerm) => format!("permission denied (ACL): {text}"),
        ErrorKind::Server(ServerErrorKind::BusyLoading) => {
            "Redis is loading its data set into memory".to_owned()
        }
        ErrorKind::Io => format!("network error: {text}"),
        _ if is_auth_reply(&text) => {
            format!("authentication failed: wrong user name or password ({text})")
        }
        _ => text,
    }
}

fn is_auth_reply(text: &str) -> bool {
    [
        "WRONGPASS",
        "NOAUTH",
        "invalid password",
        "invalid username-password",
    ]
    .iter()
    .any(|p| text.contains(p))
}

/// An error of a Redis command, in words, keeping the `RedisError` as its source (so
/// [`breaks`] can look at it) and marked permanent when no retry can fix it.
pub(crate) fn redis_error(context: &str, e: RedisError) -> SourceError {
    let permanent = is_permanent(&e);
    let error = SourceError::with_source(format!("{context}: {}", describe(&e)), e);
    if permanent {
        error.into_permanent()
    } else {
        error
    }
}

/// Errors no retry fixes: a wrong password, a missing ACL permission, a database number the
/// server does not have, a client configuration it refuses, a TLS certificate refused. Timeouts, refused connections and
/// `LOADING` are transient.
pub(crate) fn is_permanent(e: &RedisError) -> bool {
    let text = e.to_string();
    matches!(
        e.kind(),
        ErrorKind::AuthenticationFailed
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(ServerErrorKind::NoPerm)
    ) || is_auth_reply(&text)
        || text.contains("DB index is out of range")
        // TLS: an untrusted or refused certificate (rustls "invalid peer certificate", a
        // server's alert asking for a client certificate).
        || text.to_ascii_lowercase().contains("certificate")
}

/// Whether the connection an error came from must be dropped: after an I/O error or a timeout
/// (a late reply would be read as the answer to the next command). A server's error reply
/// (`WRONGTYPE`, `NOSCRIPT`, a script error) leaves the connection in step: keep it.
pub(crate) fn is_broken(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(e.kind(), ErrorKind::Parse | ErrorKind::Client)
}

/// [`is_broken`] for a `SourceError`: one that does not come from a Redis command (a refused
/// server version, say) counts as broken.
pub(crate) fn breaks(e: &SourceError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<RedisError>())
        .is_none_or(is_broken)
}

/// The password of a Redis URL replaced by `***`, in the user-info part
/// (`redis://user:***@host`) and in a `pass=`/`password=` query parameter (unix sockets).
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let start = scheme_end + 3;
        if let Some(at) = user_info_end(&out[start..]) {
            let at = start + at;
            if let Some(colon) = out[start..at].find(':') {
                out.replace_range(start + colon + 1..at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _))
                    if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out = format!("{head}{}", params.join("&"));
    }
    out
}

/// Where the user-info of a URL's part after `://` ends: its last `@` before the path (a raw
/// `?` or `#` in a password must not end it early, or the password would print whole).
fn user_info_end(rest: &str) -> Option<usize> {
    let path = rest.find('/').unwrap_or(rest.len());
    rest[..path].rfind('@')
}

/// The secrets of a URL (its password, as written and percent-decoded), for [`scrub`].
pub(crate) fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        if let Some(at) = user_info_end(rest)
            && let Some((_, pass)) = rest[..at].split_once(':')
        {
            found.push(pass.to_owned());
        }
        let query = rest.find('?').unwrap_or(rest.len());
        for p in rest[query..].trim_start_matches('?').split('&') {
            if let Some((k, v)) = p.split_once('=')
                && (k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password"))
            {
                found.push(v.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    // Longest first, so that a secret containing another is replaced whole by `scrub`.
    found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    found.dedup();
    found
}

/// `text` with every secret replaced by `***`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        out = out.replace(s.as_str(), "***");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(s.get(i + 1..i + 3).unwrap_or(""), 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection of the source's own (keeper, shared) that reconnects with back-off and says
/// once when it loses Redis and once when it is back, with the outage's length.
pub(crate) struct Link {
    what: String,
    pub(crate) conn: Option<Connection>,
    backoff: Backoff,
    failures: u32,
    retry_at: Option<Instant>,
    down_since: Option<Instant>,
    last_line: Option<Instant>,
    last_error: Option<String>,
    last_reply_line: Option<Instant>,
}

/// What a failure on a [`Link`] should tell the host: the line that was logged (if one was:
/// at the start of an outage and at most once a minute after) and when the next try is.
pub(crate) struct Reported {
    pub(crate) line: Option<String>,
    pub(crate) retry_in: Duration,
}

impl Link {
    pub(crate) fn new(what: String, backoff: Backoff) -> Self {
        Link {
            what,
            conn: None,
            backoff,
            failures: 0,
            retry_at: None,
            down_since: None,
            last_line: None,
            last_error: None,
            last_reply_line: None,
        }
    }

    /// The connection, made with `connect` if there is none and the back-off allows a try
    /// now; otherwise an error saying when the next try is (without touching the network).
    pub(crate) fn get(
        &mut self,
        connect: impl FnOnce() -> Result<Connection, SourceError>,
    ) -> Result<&mut Connection, SourceError> {
        if self.conn.is_none() {
            if self.waiting() {
                return Err(self.wait_error());
            }
            self.conn = Some(connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The error of a call made while backing off: the last error, and when the next try is.
    pub(crate) fn wait_error(&self) -> SourceError {
        let left = self.retry_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(Instant::now())
        });
        SourceError::new(format!(
            "Redis is unreachable ({}); next connection attempt in {}",
            self.last_error.as_deref().unwrap_or("no connection yet"),
            human(left)
        ))
    }

    /// Whether the back-off currently forbids a connection attempt.
    pub(crate) fn waiting(&self) -> bool {
        self.conn.is_none() && self.retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// Records a failure. An error reply (the connection is in step) is logged at most once a
    /// minute and changes nothing else. Any other error drops the connection, schedules the
    /// next attempt, and is logged at the outage's start, then at most once a minute.
    pub(crate) fn failed(&mut self, e: &SourceError) -> Reported {
        let now = Instant::now();
        if self.conn.is_some() && !breaks(e) {
            let line = if self.last_reply_line.is_none_or(|t| now - t >= REMIND_EVERY) {
                self.last_reply_line = Some(now);
                let line = format!("{}: {e}; retrying", self.what);
                log::warn!("{line}");
                Some(line)
            } else {
                None
            };
            return Reported {
                line,
                retry_in: Duration::ZERO,
            };
        }
        self.conn = None;
        self.failures = self.failures.saturating_add(1);
        let retry_in = self.backoff.delay(self.failures);
        self.retry_at = Some(now + retry_in);
        self.last_error = Some(e.to_string());
        let line = if self.down_since.is_none() {
            self.down_since = Some(now);
            self.last_line = Some(now);
            Some(format!(
                "{}: lost Redis: {e}; retrying in {}",
                self.what,
                human(retry_in)
            ))
        } else if self.last_line.is_none_or(|t| now - t >= REMIND_EVERY) {
            self.last_line = Some(now);
            let down = now - self.down_since.unwrap_or(now);
            Some(format!(
                "{}: still no Redis after {}: {e}; retrying in {}",
                self.what,
                human(Duration::from_secs(down.as_secs())),
                human(retry_in)
            ))
        } else {
            None
        };
        if let Some(line) = &line {
            log::warn!("{line}");
        }
        Reported { line, retry_in }
    }

    /// Records a success: logs the end of an outage, with its length.
    pub(crate) fn ok(&mut self) {
        self.failures = 0;
        self.retry_at = None;
        self.last_error = None;
        if let Some(since) = self.down_since.take() {
            log::warn!(
                "{}: Redis is back after {}",
                self.what,
                human(since.elapsed())
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn urls_are_redacted() {
        for (url, shown) in [
            ("redis://:hunter2@h:6379/0", "redis://:***@h:6379/0"),
            ("redis://u:hunter2@h/1", "redis://u:***@h/1"),
            ("rediss://u:p%40ss@h", "rediss://u:***@h"),
            ("redis://:a@b@h:99999/", "redis://:***@h:99999/"),
            ("redis://u@h", "redis://u@h"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=hunter2",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            ("redis://h:6379", "redis://h:6379"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(secrets("rediss://u:p%40ss@h"), vec!["p%40ss", "p@ss"]);
        assert_eq!(scrub("x p@ss y", &secrets("redis://:p%40ss@h")), "x *** y");
        assert_eq!(
            redact_url("redis://h:1/0?password=s%33cret"),
            "redis://h:1/0?password=***"
        );
        // A secret that holds another is replaced whole, not around the shorter one.
        let both = secrets("redis://:ab@h/0?pass=xaby");
        assert_eq!(both, vec!["xaby", "ab"]);
        assert_eq!(scrub("got xaby", &both), "got ***");
    }

    #[test]
    fn errors_are_described_in_words() {
        note_read_timeout(Duration::from_secs(3));
        let e = RedisError::from(io::Error::from(io::ErrorKind::WouldBlock));
        assert_eq!(describe(&e), "Redis did not answer within 3 s");
        assert!(is_broken(&e) && !is_permanent(&e));
        let e = RedisError::from(io::Error::from(io::ErrorKind::UnexpectedEof));
        assert!(
            describe(&e).contains("closed by the server"),
            "{}",
            describe(&e)
        );
        let e = RedisError::from(io::Error::from_raw_os_error(4));
        assert!(
            describe(&e).contains("interrupted by a signal"),
            "{}",
            describe(&e)
        );
        let e = RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(describe(&e).contains("connection refused"));
        assert!(!is_permanent(&e));
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(human(Duration::from_millis(250)), "250 ms");
    }

    #[test]
    fn a_link_logs_once_per_outage_and_backs_off() {
        let mut link = Link::new("keeper".into(), RECONNECT);
        let lost = link.failed(&SourceError::new("refused"));
        assert!(
            lost.line
                .unwrap()
                .starts_with("keeper: lost Redis: refused; retrying in")
        );
        assert!(lost.retry_in >= Duration::from_millis(250));
        assert!(link.waiting(), "no new attempt before the back-off is over");
        let Err(e) = link.get(|| panic!("must not connect while backing off")) else {
            panic!("connected while backing off");
        };
        assert!(e.to_string().contains("next connection attempt in"), "{e}");
        for _ in 0..5 {
            assert!(link.failed(&SourceError::new("refused")).line.is_none());
        }
        link.ok();
        assert!(!link.waiting());
        assert!(
            link.failed(&SourceError::new("refused")).line.is_some(),
            "a new outage"
        );
    }

    #[test]
    fn names_have_no_spaces() {
        let n = client_name("my host", "q", Role::Worker("rpa-q-1"));
        assert!(
            n.ends_with(":worker:rpa-q-1") && n.starts_with("tt:my_host:"),
            "{n}"
        );
    }
}
