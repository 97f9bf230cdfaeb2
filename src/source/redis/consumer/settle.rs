//! Settling a job: the call of one settle script, numbered so that a retry after a lost reply
//! changes nothing (see scripts.rs), then `WAIT` for replicas when configured.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::RedisError;

use super::RedisConsumer;
use crate::error::SourceError;
use crate::source::redis::conn::is_broken;
use crate::source::redis::envelope::{self, Reason, Who};
use crate::source::redis::redis_error;

/// A script's error: for an error reply raised by a key check, the check's own words
/// (`WRONGTYPE key <k> holds a <t> where threadtide keeps a <t>; nothing was changed`)
/// without the script's hash and line that Redis appends.
pub(super) fn script_error(context: &str, e: RedisError) -> SourceError {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => {
            let detail = detail
                .split(" script: ")
                .next()
                .unwrap_or(detail)
                .to_owned();
            SourceError::with_source(format!("{context}: {code} {detail}"), e)
        }
        _ => redis_error(context, e),
    }
}

impl<J> RedisConsumer<J> {
    /// Runs a settle script for `entry` as call number `seq` (see scripts.rs): returns its
    /// code (1 done, 0 already applied by an earlier try of this call, -2 no longer in the
    /// processing list, -1 refused: reaped, its list requeued) and the entries it requeued.
    /// `requeue_as` is what the job goes back to the queue as if refused. `arg` and `extra`
    /// are the script's own arguments. Then waits for replicas when configured.
    pub(super) fn settle(
        &mut self,
        which: Settle,
        call: Call<'_>,
    ) -> Result<(i64, u64), SourceError> {
        self.connection()?;
        let RedisConsumer {
            conn,
            shared,
            wid,
            processing,
            settles,
            ..
        } = self;
        let conn = conn.as_mut().expect("connected above");
        let k = &shared.keys;
        let (script, target) = match which {
            Settle::Ack => (&shared.scripts.ack, k.results.as_deref().unwrap_or(&k.dead)),
            Settle::Retry => (&shared.scripts.retry, k.delayed.as_str()),
            Settle::Dead => (&shared.scripts.dead, k.dead.as_str()),
            Settle::Putback => (&shared.scripts.putback, k.queue.as_str()),
        };
        let mut inv = script.prepare_invoke();
        inv.key(&*processing)
            .key(&k.workers)
            .key(target)
            .key(&k.queue)
            .key(&*settles)
            .key(&shared.fleet.queue.slots)
            .key(&shared.fleet.queue.settings)
            .arg(&*wid)
            .arg(call.entry)
            .arg(call.seq)
            .arg(shared.max_attempts)
            .arg(call.requeue_as)
            .arg(call.arg)
            .arg(call.extra)
            .arg(if shared.fleet.coordinated() { "1" } else { "0" });
        let result: redis::RedisResult<(i64, u64, Option<Vec<u8>>, u64)> = inv.invoke(conn);
        let (code, left, next, requeued) = match result {
            Ok(reply) => reply,
            Err(e) => {
                if is_broken(&e) {
                    self.drop_conn();
                }
                self.check_own = true;
                return Err(script_error("cannot settle a job", e));
            }
        };
        if code != -2 {
            // A failure here fails the settle: the worker retries the same call, which the
            // script recognises (code 0), and waits again.
            if let Err(e) = self.wait_for_replicas() {
                // An error reply (`WAIT` refused by an ACL, say) leaves the connection in step.
                if crate::source::redis::conn::breaks(&e) {
                    self.drop_conn();
                }
                self.check_own = true;
                return Err(e);
            }
        }
        if left > 0 {
            self.check_own = true;
        }
        self.taken_next = next;
        Ok((code, requeued))
    }

    /// `WAIT replicas timeout` after a settle, when configured. Fewer replicas than asked is a
    /// warning (at most one a minute per worker): the settle is done on the primary either way.
    pub(super) fn wait_for_replicas(&mut self) -> Result<(), SourceError> {
        let Some((replicas, timeout)) = self.shared.wait_replicas else {
            return Ok(());
        };
        let conn = self.conn.as_mut().expect("settled on it");
        // WAIT 0 would block forever; reads must outlast WAIT's own timeout.
        let timeout = timeout.max(Duration::from_millis(1));
        let normal = self.shared.block + self.shared.io_timeout;
        let longer = timeout + self.shared.io_timeout;
        if longer > normal {
            conn.set_read_timeout(Some(longer))
                .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        }
        let acked: redis::RedisResult<u32> = redis::cmd("WAIT")
            .arg(replicas)
            .arg(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .query(conn);
        if longer > normal {
            conn.set_read_timeout(Some(normal))
                .map_err(|e| redis_error("cannot set socket timeouts", e))?;
        }
        let acked = acked.map_err(|e| redis_error("cannot wait for replicas", e))?;
        if acked < replicas
            && self
                .replicas_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.replicas_warned = Some(Instant::now());
            log::warn!(
                "{}: only {acked} of {replicas} replica(s) acknowledged a settle within \
                 {timeout:?}; a failover now could lose it",
                self.thread
            );
        }
        Ok(())
    }

    pub(super) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub(super) fn note_settled(&self, code: i64, requeued: u64, what: &str) {
        match code {
            -1 => {
                self.shared
                    .counters
                    .acks_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.state.fence();
                log::warn!(
                    "{}: {what} refused: this worker was reaped, its job runs again elsewhere \
                     ({requeued} job(s) put back from its list)",
                    self.thread
                );
            }
            -2 => {
                let n = self
                    .shared
                    .counters
                    .outcomes_dropped
                    .fetch_add(1, Ordering::Relaxed)
                    + 1;
                log::warn!(
                    "{}: {what}: the job was no longer in the worker's processing list (removed \
                     from outside); nothing was written for it ({n} outcome(s) dropped so far \
                     on this source)",
                    self.thread
                );
            }
            0 => log::debug!("{}: {what}: already applied by a retried call", self.thread),
            _ => {}
        }
    }

    /// Dead-letters an entry found while fetching (malformed, or out of attempts).
    pub(super) fn bury(
        &mut self,
        entry: &[u8],
        reason: Reason,
        error: &str,
        runs: u32,
    ) -> Result<(), SourceError> {
        let payload = envelope::decode(entry).payload;
        let record = envelope::dead_record(
            &self.shared.keys.queue,
            reason,
            error,
            runs,
            Who {
                thread: &self.thread,
                wid: &self.wid,
            },
            payload,
        );
        // A fresh call each time: if it fails, the entry is read again from the processing
        // list (only if this call did not apply) and buried anew.
        let seq = self.next_seq();
        let call = Call {
            entry,
            seq,
            requeue_as: entry, // never started: back untouched if refused
            arg: &record,
            extra: b"",
        };
        let (code, requeued) = self.settle(Settle::Dead, call)?;
        if code == 1 {
            let c = &self.shared.counters;
            match reason {
                Reason::Malformed => &c.dead_malformed,
                Reason::AttemptsExhausted => &c.dead_exhausted,
                Reason::Permanent => &c.dead_permanent,
            }
            .fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}: job dead-lettered ({}): {error}",
                self.thread,
                reason.as_str()
            );
        }
        self.note_settled(code, requeued, "dead-lettering");
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Retry,
    Dead,
    Putback,
}

/// The arguments of one settle call (see `RedisConsumer::settle`).
pub(super) struct Call<'a> {
    pub(super) entry: &'a [u8],
    pub(super) seq: u64,
    pub(super) requeue_as: &'a [u8],
    pub(super) arg: &'a [u8],
    pub(super) extra: &'a [u8],
}
