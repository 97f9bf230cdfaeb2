//! What every command shares: the Redis connection, its errors and their exit codes, and the
//! URL with its password hidden.

use std::fmt;
use std::time::Duration;

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
        self.redis.as_deref().map(redact).unwrap_or_default()
    }

    /// One connection with a 5 s connect and I/O timeout.
    pub(crate) fn connect(&self) -> Result<redis::Connection, CliError> {
        let url = self.url()?;
        let client = redis::Client::open(url)
            .map_err(|e| CliError::Usage(format!("--redis {}: {}", redact(url), e.category())))?;
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
        let password = self.redis.as_deref().and_then(password_of);
        let mut text = e.to_string();
        if let Some(p) = password.filter(|p| !p.is_empty()) {
            text = text.replace(p, "***");
        }
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

/// The password part of a `redis://user:password@host` URL.
fn password_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let auth = rest.rsplit_once('@')?.0;
    Some(auth.split_once(':').map_or(auth, |(_, p)| p))
}

/// `url` with its password (if any) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.split_once("://"), password_of(url)) {
        (Some((scheme, rest)), Some(_)) => {
            let (auth, host) = rest.rsplit_once('@').unwrap_or(("", rest));
            let user = auth.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(password_of("redis://u:p@ss@h:1"), Some("p@ss"));
    }
}
