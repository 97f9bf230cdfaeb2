//! What the examples' command lines share: the message of an error, and the drained stop.

use std::error::Error;
use std::time::Duration;

use threadtide::{ThreadPoolManager, WaitError};

/// `e`'s message followed by each cause's, skipping a cause whose text is already there.
/// Display, not Debug: the message says what to fix, and never shows a password.
pub fn message(e: &dyn Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
}

/// Stops the pool and waits up to `timeout` for running jobs; past it, logs what still runs
/// (those jobs stay with the source) and returns.
pub fn drain(pool: &ThreadPoolManager, timeout: Duration) -> Result<(), WaitError> {
    match pool.shutdown_timeout(timeout) {
        Ok(()) => Ok(()),
        Err(WaitError::TimedOut { running, requeued }) => {
            log::warn!(
                "{} job(s) still running at the deadline, {requeued} put back",
                running.len()
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}
