//! Delayed retries: the queue's `{key}:delayed` set, scored by due time (the Redis server's
//! clock, Unix ms), each entry the job's envelope with its run count (docs/RELIABILITY.md).

use super::Admin;
use super::dead::check_queue;
use crate::error::SourceError;
use crate::source::redis::envelope;
use crate::source::redis::redis_error;

/// One job waiting for a retry, from [`Admin::retries`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DelayedRetry {
    /// When it goes back to the queue, Unix ms by the Redis server's clock.
    pub due_ms: u64,
    /// Runs it has had (the next run is `runs + 1`).
    pub runs: u32,
    /// The `max_attempts` it carries (`None`: the claiming process's applies).
    pub max_attempts: Option<u32>,
    /// The producer's payload, byte for byte.
    pub payload: Vec<u8>,
}

impl Admin {
    /// Up to `limit` delayed retries of queue `key`, soonest first, starting at position
    /// `offset` (one `ZRANGE`).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached, or `key` is not a queue.
    pub fn retries(
        &self,
        key: &str,
        offset: usize,
        limit: usize,
    ) -> Result<Vec<DelayedRetry>, SourceError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.with_conn(|conn| {
            check_queue(conn, key, &self.keys.queues)?;
            let entries: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                .arg(format!("{key}:delayed"))
                .arg(offset)
                .arg(offset + limit - 1)
                .arg("WITHSCORES")
                .query(conn)
                .map_err(|e| redis_error("cannot read the delayed retries", e))?;
            Ok(entries
                .iter()
                .map(|(entry, score)| {
                    let stored = envelope::decode(entry);
                    DelayedRetry {
                        due_ms: *score as u64,
                        runs: stored.runs,
                        max_attempts: stored.cap,
                        payload: stored.payload.to_vec(),
                    }
                })
                .collect())
        })
    }

    /// How many retries queue `key` has waiting (`ZCARD`).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached, or `key` is not a queue.
    pub fn retries_len(&self, key: &str) -> Result<usize, SourceError> {
        self.with_conn(|conn| {
            check_queue(conn, key, &self.keys.queues)?;
            redis::cmd("ZCARD")
                .arg(format!("{key}:delayed"))
                .query(conn)
                .map_err(|e| redis_error("cannot count the delayed retries", e))
        })
    }
}
