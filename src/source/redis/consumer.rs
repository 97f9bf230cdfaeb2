//! One worker's side of the Redis source: its own connection, its own processing list.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::Connection;

use super::conn::{Role, is_broken}; // redis-conn: named connections, error replies keep them
use super::envelope::{self, Reason};
use super::{Shared, Slot, SlotState, redis_error};
use crate::backoff;
use crate::error::{JobError, SourceError};
use crate::source::{Consumer, FetchContext, Unacked};

/// The job a worker holds: the stored entry exactly as it sits in the processing list.
struct InHand {
    entry: Vec<u8>,
    /// Runs before this one.
    runs: u32,
}

/// A worker's handle on a [`RedisSource`](super::RedisSource): fetches with `BLMOVE` into its
/// own processing list and settles each job with one atomic script.
pub struct RedisConsumer<J> {
    shared: Arc<Shared<J>>,
    slot: u64,
    generation: u32,
    wid: String,
    processing: String,
    thread: String,
    /// Busy and fenced flags, shared with the keeper through `Shared::slots`.
    state: Arc<SlotState>,
    conn: Option<Connection>,
    registered: bool,
    /// After an error, or at start: a job may already be in our processing list (a `BLMOVE`
    /// whose reply was lost). Look there before fetching anew.
    check_own: bool,
    in_hand: Option<InHand>,
    /// The next job, moved into our processing list by the last acknowledgement.
    taken_next: Option<Vec<u8>>,
}

impl<J> fmt::Debug for RedisConsumer<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConsumer")
            .field("wid", &self.wid)
            .field("connected", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

/// Puts a worker's jobs back at the head of the queue and deregisters it (atomically).
/// `unstarted` is a job the worker took but never ran: it goes back without a run counted.
pub(crate) fn release<J>(
    shared: &Shared<J>,
    conn: &mut Connection,
    wid: &str,
    unstarted: Option<&[u8]>,
) -> Result<usize, SourceError> {
    let k = &shared.keys;
    let mut inv = shared.scripts.release.prepare_invoke();
    inv.key(&k.workers)
        .key(format!("{}{wid}", k.processing_prefix))
        .key(&k.queue)
        .key(&k.retired)
        .arg(wid);
    if let Some(entry) = unstarted {
        inv.arg(entry);
    }
    inv.invoke(conn)
        .map_err(|e| redis_error("cannot release a worker's jobs", e))
}

impl<J> RedisConsumer<J> {
    pub(crate) fn new(shared: Arc<Shared<J>>, slot: u64, thread: String) -> Self {
        let wid = shared.new_wid(slot, 0);
        let processing = format!("{}{wid}", shared.keys.processing_prefix);
        RedisConsumer {
            shared,
            slot,
            generation: 0,
            wid,
            processing,
            thread,
            state: Arc::default(),
            conn: None,
            registered: false,
            check_own: true,
            in_hand: None,
            taken_next: None,
        }
    }

    /// The worker's connection, made anew after an error.
    fn connection(&mut self) -> Result<&mut Connection, SourceError> {
        if self.conn.is_none() {
            let conn = self.shared.connect(Role::Worker(&self.thread))?;
            if self.registered {
                self.shared
                    .counters
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Connects and registers if needed; takes a new id if the keeper found this one fenced.
    /// Only called between jobs: a worker never changes identity while it holds a job.
    fn ready(&mut self) -> Result<&mut Connection, SourceError> {
        debug_assert!(self.in_hand.is_none());
        if self.state.is_fenced() {
            self.generation += 1;
            self.wid = self.shared.new_wid(self.slot, self.generation);
            self.processing = format!("{}{}", self.shared.keys.processing_prefix, self.wid);
            log::warn!(
                "{}: was reaped (heartbeat lost); registering again as {}",
                self.thread,
                self.wid
            );
            self.registered = false;
        }
        if !self.registered {
            let shared = Arc::clone(&self.shared);
            let wid = self.wid.clone();
            let conn = self.connection()?;
            let registered: redis::RedisResult<i64> = shared
                .scripts
                .register
                .key(&shared.keys.workers)
                .arg(&wid)
                .invoke(conn);
            if let Err(e) = registered {
                if is_broken(&e) {
                    self.conn = None; // redis-conn: an error reply leaves the connection usable
                }
                return Err(redis_error("cannot register the worker", e));
            }
            // Published to the keeper only once the server knows the id: a heartbeat before
            // that would find it missing and wrongly fence it.
            self.state.unfence();
            self.state.set_busy(None);
            shared.slots.lock().insert(
                self.slot,
                Slot {
                    wid,
                    state: Arc::clone(&self.state),
                },
            );
            self.registered = true;
            self.check_own = true;
        }
        self.connection()
    }

    fn set_busy(&self, busy: bool) {
        self.state
            .set_busy(busy.then(|| self.shared.ms_since_epoch()));
    }

    /// Takes the next stored entry: our own processing list first when it may hold one, else
    /// `BLMOVE` from the queue, blocking up to `block`. Also says whether it was the own list
    /// that was read.
    fn take_entry(&mut self, block: Duration) -> Result<(bool, Option<Vec<u8>>), SourceError> {
        // Identity first: `ready` may move a fenced worker to a new id and processing list.
        self.ready()?;
        let check_own = self.check_own;
        let RedisConsumer {
            conn,
            shared,
            processing,
            ..
        } = self;
        let conn = conn.as_mut().expect("ready connects");
        let result = if check_own {
            redis::cmd("LINDEX").arg(&*processing).arg(0).query(conn)
        } else {
            redis::cmd("BLMOVE")
                .arg(&shared.keys.queue)
                .arg(&*processing)
                .arg("LEFT")
                .arg("LEFT")
                .arg(block.as_secs_f64())
                .query(conn)
        };
        match result {
            Ok(entry) => {
                self.check_own = false;
                Ok((check_own, entry))
            }
            Err(e) => {
                if is_broken(&e) {
                    self.conn = None; // redis-conn: an error reply leaves the connection usable
                }
                self.check_own = true;
                Err(redis_error("cannot fetch", e))
            }
        }
    }

    /// Runs a settle script (`ack`, `retry`, `dead`) for `entry`: 1 done, 0 already gone,
    /// -1 fenced.
    fn settle(
        &mut self,
        which: Settle,
        entry: &[u8],
        arg: &[u8],
        delay_ms: u64,
    ) -> Result<i64, SourceError> {
        self.connection()?;
        let RedisConsumer {
            conn,
            shared,
            wid,
            processing,
            ..
        } = self;
        let conn = conn.as_mut().expect("connected above");
        let k = &shared.keys;
        let mut inv = match which {
            Settle::Ack => shared.scripts.ack.prepare_invoke(),
            Settle::Retry => shared.scripts.retry.prepare_invoke(),
            Settle::Dead => shared.scripts.dead.prepare_invoke(),
        };
        inv.key(&*processing).key(&k.workers);
        match which {
            Settle::Ack => inv
                .key(k.results.as_deref().unwrap_or(&k.dead))
                .key(&k.queue),
            Settle::Retry => inv.key(&k.delayed),
            Settle::Dead => inv.key(&k.dead),
        };
        inv.arg(&*wid).arg(entry).arg(arg);
        match which {
            Settle::Ack => inv.arg(if k.results.is_some() { "1" } else { "0" }),
            Settle::Retry => inv.arg(delay_ms),
            Settle::Dead => &mut inv,
        };
        let result: redis::RedisResult<(i64, u64, Option<Vec<u8>>)> = inv.invoke(conn);
        match result {
            Ok((code, left, next)) => {
                if left > 0 {
                    self.check_own = true;
                }
                self.taken_next = next;
                Ok(code)
            }
            Err(e) => {
                if is_broken(&e) {
                    self.conn = None; // redis-conn: an error reply leaves the connection usable
                }
                Err(redis_error("cannot settle a job", e))
            }
        }
    }

    fn note_settled(&self, code: i64, what: &str) {
        match code {
            -1 => {
                self.shared
                    .counters
                    .acks_refused
                    .fetch_add(1, Ordering::Relaxed);
                self.state.fence();
                log::warn!(
                    "{}: {what} refused: this worker was reaped, its job runs again elsewhere",
                    self.thread
                );
            }
            0 => log::debug!("{}: {what}: job already settled", self.thread),
            _ => {}
        }
    }

    /// Dead-letters an entry found while fetching (malformed, or out of attempts).
    fn bury(
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
            &self.wid,
            payload,
        );
        let code = self.settle(Settle::Dead, entry, &record, 0)?;
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
        self.note_settled(code, "dead-lettering");
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Retry,
    Dead,
}

impl<J: 'static> Consumer for RedisConsumer<J> {
    type Job = J;
    type Output = Vec<u8>;

    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<J>, SourceError> {
        loop {
            let remaining = cx.remaining();
            if cx.is_interrupted() || remaining < Duration::from_millis(5) {
                return Ok(None);
            }
            let block = remaining.min(self.shared.block);
            // A job the last acknowledgement took is ours unless the keeper found us reaped
            // since: the reaper then put it back in the queue.
            let taken = self.taken_next.take().filter(|_| !self.state.is_fenced());
            let (checked_own, entry) = match taken {
                Some(entry) => (false, Some(entry)),
                None => self.take_entry(block)?,
            };
            let Some(entry) = entry else {
                if checked_own {
                    continue; // nothing left behind: now fetch from the queue
                }
                // Idle: before blocking again, look at our own list once, in case a stale
                // BLMOVE from a connection given up on moved a job there meanwhile.
                self.check_own = true;
                return Ok(None);
            };
            let stored = envelope::decode(&entry);
            let runs = stored.runs;
            if runs >= self.shared.max_attempts {
                let error = format!("started {runs} times without success");
                self.bury(&entry, Reason::AttemptsExhausted, &error, runs)?;
                continue;
            }
            match (self.shared.decoder)(stored.payload) {
                Ok(job) => {
                    self.in_hand = Some(InHand { entry, runs });
                    self.set_busy(true);
                    return Ok(Some(job));
                }
                Err(reason) => self.bury(&entry, Reason::Malformed, &reason, runs)?,
            }
        }
    }

    fn complete(
        &mut self,
        job: J,
        outcome: Result<Vec<u8>, JobError>,
    ) -> Result<(), Unacked<J, Vec<u8>>> {
        let Some(held) = self.in_hand.take() else {
            return Ok(());
        };
        let runs = held.runs + 1;
        let result = match &outcome {
            Ok(output) => self
                .settle(Settle::Ack, &held.entry, output, 0)
                .map(|c| (c, "ack")),
            Err(e) if e.is_retryable() && runs < self.shared.max_attempts => {
                let payload = envelope::decode(&held.entry).payload;
                let next = envelope::encode(runs, backoff::random(), payload);
                let delay = self.shared.retry_backoff.delay(runs);
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                self.settle(Settle::Retry, &held.entry, &next, delay_ms)
                    .inspect(|&c| {
                        if c == 1 {
                            self.shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .map(|c| (c, "retry"))
            }
            Err(e) => {
                let reason = if e.is_retryable() {
                    Reason::AttemptsExhausted
                } else {
                    Reason::Permanent
                };
                let payload = envelope::decode(&held.entry).payload;
                let record = envelope::dead_record(
                    &self.shared.keys.queue,
                    reason,
                    &e.to_string(),
                    runs,
                    &self.wid,
                    payload,
                );
                self.settle(Settle::Dead, &held.entry, &record, 0)
                    .inspect(|&c| {
                        if c == 1 {
                            let counters = &self.shared.counters;
                            match reason {
                                Reason::Permanent => &counters.dead_permanent,
                                _ => &counters.dead_exhausted,
                            }
                            .fetch_add(1, Ordering::Relaxed);
                        }
                    })
                    .map(|c| (c, "dead-lettering"))
            }
        };
        match result {
            Ok((code, what)) => {
                self.set_busy(false);
                self.note_settled(code, what);
                Ok(())
            }
            Err(error) => {
                self.in_hand = Some(held);
                Err(Unacked::new(error, job, outcome))
            }
        }
    }
}

impl<J> Drop for RedisConsumer<J> {
    /// Deregisters the worker. A job still held (its completion failed while stopping) goes
    /// back to the queue, and so does one taken by the last acknowledgement but not started
    /// (without a run counted); if Redis cannot be reached the reaper recovers them after the
    /// TTL.
    fn drop(&mut self) {
        self.shared.slots.lock().remove(&self.slot);
        if !self.registered {
            return;
        }
        let conn = match self.conn.take() {
            Some(c) => Ok(c),
            None => self.shared.connect(Role::Worker(&self.thread)),
        };
        let unstarted = self.taken_next.take();
        let released =
            conn.and_then(|mut c| release(&self.shared, &mut c, &self.wid, unstarted.as_deref()));
        match released {
            Ok(0) => {}
            Ok(1) if unstarted.is_some() => {
                log::debug!("{}: put its next job back on exit", self.thread)
            }
            Ok(n) => log::warn!("{}: put {n} unfinished job(s) back on exit", self.thread),
            Err(e) => log::warn!(
                "{}: could not deregister ({e}); the reaper will recover its jobs",
                self.thread
            ),
        }
    }
}
