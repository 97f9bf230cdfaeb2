//! Operating a fleet from outside its processes (feature `redis`): dead letters and delayed
//! retries (this part), and the fleet's processes, events and settings (the fleet half).
//!
//! [`Admin`] holds one connection. Every method is one round trip or a bounded number of
//! them (pipelined, paged); none loads an unbounded list into memory.

use std::fmt;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Connection;

use crate::error::SourceError;
use crate::source::redis::redis_error;

mod dead;
mod record;
mod retries;

pub use dead::{DeadFilter, DeadLetter, DeadPage, MoveReport};
pub use retries::DelayedRetry;

/// The default fleet name.
const DEFAULT_FLEET: &str = "threadtide";
/// Connect, read and write timeout of the admin connection.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a fleet's Redis for operators: see the [module docs](self).
///
/// # Examples
///
/// ```no_run
/// use threadtide::admin::{Admin, DeadFilter};
///
/// let admin = Admin::connect("redis://127.0.0.1:6379")?;
/// let filter = DeadFilter::default().reason("permanent");
/// let report = admin.dead_requeue("fila:conferencia", &filter, true)?; // dry run
/// println!("{} dead letters would go back to the queue", report.matched);
/// # Ok::<(), threadtide::SourceError>(())
/// ```
pub struct Admin {
    conn: Mutex<Connection>,
    fleet: String,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("fleet", &self.fleet)
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Connects to `url` (`redis://[user:password@]host:port[/db]`), fleet `"threadtide"`,
    /// with a 10 s connect, read and write timeout.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached, or refuses the credentials (a
    /// [permanent](SourceError::is_permanent) error). The underlying `redis::RedisError` is
    /// the error's [`source`](std::error::Error::source). The password never appears in it.
    pub fn connect(url: &str) -> Result<Admin, SourceError> {
        let client = redis::Client::open(url).map_err(|e| redis_error("invalid Redis URL", e))?;
        let conn = client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| redis_error("cannot connect to Redis", e))?;
        conn.set_read_timeout(Some(TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
            .map_err(|e| redis_error("cannot set timeouts", e))?;
        Ok(Admin {
            conn: Mutex::new(conn),
            fleet: DEFAULT_FLEET.to_owned(),
        })
    }

    /// The same connection, for the fleet called `name` (see
    /// `RedisSourceBuilder::fleet`).
    pub fn with_fleet(mut self, name: &str) -> Admin {
        self.fleet = name.to_owned();
        self
    }

    /// The fleet name in use.
    pub fn fleet(&self) -> &str {
        &self.fleet
    }

    /// Runs `f` on the connection.
    pub(crate) fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        f(&mut self.conn.lock())
    }
}
