//! One worker's side of the Redis source: its own connection, its own processing list.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Connection;

use super::conn::{Role, is_broken}; // named connections; an error reply keeps the connection
use super::envelope::{self, Reason, Who};
use super::lease;
use super::scripts::{self, settles_key};
use settle::{Call, Settle, script_error};

mod settle;
use super::{Shared, Slot, SlotState, redis_error};
use crate::backoff;
use crate::error::{JobError, SourceError};
use crate::source::{Consumer, FetchContext, Unacked};

/// The job a worker holds: the stored entry exactly as it sits in the processing list.
struct InHand {
    entry: Vec<u8>,
    /// Runs before this one.
    runs: u32,
    /// The `max_attempts` it is judged by: the one it carries, else this process's.
    cap: u32,
    /// The number of its settle, fixed at the first attempt so that a retried call after a
    /// lost reply is recognised by the script and changes nothing.
    seq: Option<u64>,
}

/// A worker's handle on a [`RedisSource`](super::RedisSource): fetches with `BLMOVE` into its
/// own processing list and settles each job with one atomic script.
pub struct RedisConsumer<J> {
    shared: Arc<Shared<J>>,
    slot: u64,
    generation: u32,
    wid: String,
    processing: String,
    /// `Q:settles`: the last settle applied per worker (scripts.rs).
    settles: String,
    /// The number of this consumer's last settle call (not counting retries of one call).
    seq: u64,
    thread: String,
    /// When fewer replicas than asked acknowledged a settle was last logged.
    replicas_warned: Option<Instant>,
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
        .key(settles_key(&k.queue))
        .key(&shared.fleet.queue.slots)
        .arg(wid)
        .arg(shared.max_attempts);
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
        let settles = settles_key(&shared.keys.queue);
        RedisConsumer {
            shared,
            slot,
            generation: 0,
            wid,
            processing,
            settles,
            seq: 0,
            thread,
            replicas_warned: None,
            state: Arc::default(),
            conn: None,
            registered: false,
            check_own: true,
            in_hand: None,
            taken_next: None,
        }
    }

    /// Gives up the connection after an error that may have broken it. The local lease goes
    /// too: Redis may have restarted having lost the slot's latest renewal (or the slot), so
    /// the worker takes its slot again (`take`, by the server's state) before it fetches.
    fn drop_conn(&mut self) {
        self.conn = None;
        self.state.lease_until_ms.store(0, Ordering::Release);
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
            // The old id's list may still hold jobs (a `BLMOVE` that landed after the fencing,
            // or `Q:workers` deleted, so nothing requeued it): back to the queue before this
            // worker takes a new id, not left to the retired sweep or the SCAN backstop.
            let shared = Arc::clone(&self.shared);
            let old = self.wid.clone();
            let released = release(&shared, self.connection()?, &old, None);
            if let Err(e) = released {
                if super::conn::breaks(&e) {
                    self.drop_conn();
                }
                return Err(e);
            }
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
            let settles = self.settles.clone();
            let conn = self.connection()?;
            let registered: redis::RedisResult<i64> = shared
                .scripts
                .register
                .key(&shared.keys.workers)
                .key(&settles)
                .key(&shared.keys.retired)
                .arg(&wid)
                .arg(shared.max_attempts)
                .arg(scripts::ttl_ms(&shared))
                .invoke(conn);
            if let Err(e) = registered {
                if is_broken(&e) {
                    self.drop_conn();
                }
                return Err(script_error("cannot register the worker", e));
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
            Err(e) if e.code() == Some("WRONGTYPE") => {
                // Redis's own message names no key: say which one an operator must fix.
                self.check_own = true;
                let queue = self.shared.keys.queue.clone();
                let processing = self.processing.clone();
                let conn = self.conn.as_mut().expect("kept after an error reply");
                let wrong = [queue, processing].into_iter().find_map(|key| {
                    let t: String = redis::cmd("TYPE").arg(&key).query(conn).ok()?;
                    (t != "list" && t != "none").then_some((key, t))
                });
                Err(match wrong {
                    Some((key, t)) => SourceError::with_source(
                        format!(
                            "cannot fetch: WRONGTYPE key {key} holds a {t} where threadtide \
                             keeps a list; nothing was changed"
                        ),
                        e,
                    ),
                    None => redis_error("cannot fetch", e),
                })
            }
            Err(e) => {
                if is_broken(&e) {
                    self.drop_conn();
                }
                self.check_own = true;
                Err(redis_error("cannot fetch", e))
            }
        }
    }
}

/// How often a worker without a slot asks for one.
const SLOT_POLL: Duration = Duration::from_millis(50);

impl<J> RedisConsumer<J> {
    /// Whether this worker may fetch: always when the queue is not coordinated; otherwise
    /// when the queue is not paused and the worker holds a slot, taking one if it has none
    /// (see lease.rs).
    fn may_fetch(&mut self) -> Result<bool, SourceError> {
        if !self.shared.fleet.coordinated() {
            return Ok(true);
        }
        self.ready()?;
        if self.shared.fleet.is_paused() {
            return Ok(false);
        }
        if self.state.lease_holds(self.shared.ms_since_epoch()) {
            return Ok(true);
        }
        let shared = Arc::clone(&self.shared);
        let conn = self.conn.as_mut().expect("ready connects");
        let taken = lease::take(&shared, conn, &self.wid, &self.state);
        if let Err(e) = &taken
            && super::conn::breaks(e)
        {
            self.drop_conn();
        }
        taken
    }

    /// Whether a job fetched now may start (coordinated: not paused, the lease holds).
    fn lease_holds(&self) -> bool {
        let fleet = &self.shared.fleet;
        !fleet.coordinated()
            || (!fleet.is_paused() && self.state.lease_holds(self.shared.ms_since_epoch()))
    }
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
            // A job the last acknowledgement took is ours unless the keeper found us fenced
            // since: then it goes back untouched (the putback is refused, and its refusal
            // requeues our list with the entry as it was) before we take a new id.
            if self.state.is_fenced() && self.taken_next.is_some() {
                self.suspend()?;
            }
            let taken = self.taken_next.take();
            let (checked_own, entry) = match taken {
                // Handed over by the ack, which checked the slot by the server's clock then;
                // the worker may have frozen since (SIGSTOP past the TTL): the local lease
                // decides as after a `BLMOVE`, else it goes back untouched.
                Some(entry) if !self.lease_holds() => {
                    self.taken_next = Some(entry);
                    self.suspend()?;
                    continue;
                }
                Some(entry) => (false, Some(entry)),
                None if !self.check_own && !self.may_fetch()? => {
                    // No slot (the fleet is at its target or a cap) or paused: look again
                    // soon, waking at once if asked to retire.
                    let _ = cx.wait_timeout(SLOT_POLL.min(remaining));
                    continue;
                }
                None => {
                    let fetched = self.take_entry(block)?;
                    if let (_, Some(entry)) = &fetched
                        && !self.lease_holds()
                    {
                        // Fetched across a freeze or a pause: back, untouched, no run counted.
                        self.taken_next = Some(entry.clone());
                        self.suspend()?;
                        continue;
                    }
                    fetched
                }
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
            let cap = stored.cap.unwrap_or(self.shared.max_attempts);
            if runs >= cap {
                let error = format!("started {runs} times without success (max_attempts {cap})");
                self.bury(&entry, Reason::AttemptsExhausted, &error, runs)?;
                continue;
            }
            match (self.shared.decoder)(stored.payload) {
                Ok(job) => {
                    self.in_hand = Some(InHand {
                        entry,
                        runs,
                        cap,
                        seq: None,
                    });
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
        let Some(mut held) = self.in_hand.take() else {
            return Ok(());
        };
        let seq = match held.seq {
            Some(seq) => seq,
            None => *held.seq.insert(self.next_seq()),
        };
        let runs = held.runs + 1;
        let payload = envelope::decode(&held.entry).payload;
        // If refused (reaped meanwhile), the job goes back with this run counted.
        let requeue_as = envelope::encode(runs, held.cap, backoff::random(), payload);
        let result = match &outcome {
            Ok(output) => {
                let push: &[u8] = if self.shared.keys.results.is_some() {
                    b"1"
                } else {
                    b"0"
                };
                let call = Call {
                    entry: &held.entry,
                    seq,
                    requeue_as: &requeue_as,
                    arg: output,
                    extra: push,
                };
                self.settle(Settle::Ack, call).map(|c| (c, "ack"))
            }
            Err(e) if e.is_retryable() && runs < held.cap => {
                let next = envelope::encode(runs, held.cap, backoff::random(), payload);
                let delay = self.shared.retry_backoff.delay(runs);
                let delay_ms = u64::try_from(delay.as_millis())
                    .unwrap_or(u64::MAX)
                    .to_string();
                let call = Call {
                    entry: &held.entry,
                    seq,
                    requeue_as: &requeue_as,
                    arg: &next,
                    extra: delay_ms.as_bytes(),
                };
                self.settle(Settle::Retry, call)
                    .inspect(|&(c, _)| {
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
                let record = envelope::dead_record(
                    &self.shared.keys.queue,
                    reason,
                    &e.to_string(),
                    runs,
                    Who {
                        thread: &self.thread,
                        wid: &self.wid,
                    },
                    payload,
                );
                let call = Call {
                    entry: &held.entry,
                    seq,
                    requeue_as: &requeue_as,
                    arg: &record,
                    extra: b"",
                };
                self.settle(Settle::Dead, call)
                    .inspect(|&(c, _)| {
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
            Ok(((code, requeued), what)) => {
                self.set_busy(false);
                self.note_settled(code, requeued, what);
                Ok(())
            }
            Err(error) => {
                self.in_hand = Some(held);
                Err(Unacked::new(error, job, outcome))
            }
        }
    }

    /// Puts the job the last acknowledgement took (not started) back at the head of the
    /// queue, untouched and with no run counted, in one script.
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached; the job then stays in this worker's processing list,
    /// where the next fetch finds it (or the reaper, should this process die).
    fn suspend(&mut self) -> Result<(), SourceError> {
        let Some(entry) = self.taken_next.take() else {
            return Ok(());
        };
        // Fenced too: a refused putback requeues the list with this entry untouched, where a
        // reaper or the sweep would charge it a run it never had.
        let seq = self.next_seq();
        let call = Call {
            entry: &entry,
            seq,
            requeue_as: &entry,
            arg: b"",
            extra: b"",
        };
        let (code, requeued) = match self.settle(Settle::Putback, call) {
            Ok(settled) => settled,
            Err(e) => {
                // Still ours and still unstarted: a later fetch runs it, or the release on
                // exit spares it.
                self.taken_next = Some(entry);
                return Err(e);
            }
        };
        match code {
            1 => log::debug!("{}: put its next job back before pausing", self.thread),
            // Fenced: the refusal put the job back untouched (no ack was refused, no run lost).
            -1 => {
                self.state.fence(); // not registered: the next fetch takes a new id
                log::debug!(
                    "{}: fenced; its next job and {} other(s) went back to the queue",
                    self.thread,
                    requeued.saturating_sub(1)
                );
            }
            _ => self.note_settled(code, requeued, "putting the next job back"),
        }
        Ok(())
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
