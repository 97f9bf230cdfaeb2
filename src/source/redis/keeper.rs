//! The keeper: one thread per source and process, started by `JobSource::open`. It keeps the
//! backlog count fresh (so the monitor never waits on Redis), beats for this process's
//! workers, reaps dead workers of any process, and moves due retries back to the queue.
//!
//! # Never reap on a stale view
//!
//! A worker is dead when its deadline (the score in `Q:workers`: the server's time of its last
//! heartbeat plus its own process's `worker_ttl`, so processes with different TTLs judge each
//! other by the owner's TTL) has passed *in the server's view*. That
//! view is only worth acting on if the server could receive heartbeats during the whole last
//! TTL: after a server stall (`DEBUG SLEEP`, a long script, a fork) or a stall of this process
//! (`SIGSTOP`, a paused VM), every process's beats were held up together, and the first keeper
//! through would reap everyone else's live workers. So the keeper times its own beats: when one
//! lands more than `worker_ttl / 2` after the previous one, or takes that long to land, the view
//! is stale, and it reaps again only once its beats have landed steadily for a whole TTL, which
//! gives every live process the same TTL to beat again. A new keeper waits that TTL too before
//! its first reap: it has not seen the last TTL (Redis may be just back from an outage that held
//! up everyone's beats). And the reap script itself checks, by the server's clock, that the
//! keeper's last beat is at most half a TTL old, so a stall between beat and reap (or a step of
//! either clock) reaps no one. (Half a TTL: a live worker's beat is at
//! most one heartbeat, a third of a TTL, plus that gap old, which stays under the TTL.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, select};
use redis::Connection;

use super::Shared;
use super::conn::{Link, RECONNECT, Role, redis_error};
use super::scripts::{self, OrphanSweep};
use super::{fleet, lease};
use crate::backoff::Backoff;
use crate::error::SourceError;
use crate::source::PoolInfo;

/// How many entries one script call moves at most, so no script blocks the server for long.
const BATCH: usize = 500;
/// Due retries are looked for at least this often.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// The backlog count is refreshed this often (the pool's default `rebalance_interval`).
pub(crate) const BACKLOG_EVERY: Duration = Duration::from_millis(50);
/// How long the processing lists of workers that left are still swept for jobs that a
/// `BLMOVE` left pending on the server moved there late. A server unblocks a `BLMOVE` after
/// its timeout (1 s by default), so ten minutes also covers a command delayed by TCP
/// retransmission through a network partition.
const RETIRED_GRACE: Duration = Duration::from_secs(600);
/// Keys one `SCAN` page of the orphan sweep examines (scripts.rs, `OrphanSweep`): a full pass
/// over N keys takes N / 1000 heartbeats.
const SWEEP_COUNT: usize = 1000;

pub(crate) struct Keeper {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

impl Keeper {
    /// Starts the thread, named by the pool (`{prefix}-{queue}-keeper`); its errors go to the
    /// log and to the pool's event handler.
    pub(crate) fn start<J: Send + 'static>(
        shared: Arc<Shared<J>>,
        pool: PoolInfo,
    ) -> std::io::Result<Keeper> {
        let (stop, stopped) = bounded::<()>(0);
        let name = pool.thread_name("keeper");
        let thread = thread::Builder::new().name(name.clone()).spawn(move || {
            let ttl = shared.worker_ttl;
            // Back on time after an outage: never wait longer than half a TTL between tries,
            // or this process's live workers would look dead once Redis is back.
            let backoff = Backoff {
                initial: RECONNECT.initial.min(shared.heartbeat),
                max: (ttl / 2).clamp(RECONNECT.initial.min(shared.heartbeat), RECONNECT.max),
            };
            let what = format!("redis keeper for {}", shared.keys.queue);
            let mut state = State {
                shared,
                pool,
                thread: name,
                link: Link::new(what, backoff),
                last_beat: None,
                beat_server_ms: 0,
                steady_since: None,
                last_promote: None,
                stale_noted: false,
                orphans: OrphanSweep::default(),
            };
            // A heartbeat shorter than the backlog's refresh still beats on time (and so its
            // beats are never mistaken for late ones).
            let tick = BACKLOG_EVERY.min(state.shared.heartbeat);
            loop {
                state.tick();
                select! {
                    recv(stopped) -> _ => break,
                    default(tick) => {}
                }
            }
        })?;
        Ok(Keeper { stop, thread })
    }

    /// Stops the thread and joins it (a command in flight ends within the I/O timeout).
    pub(crate) fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            log::error!("the redis keeper thread panicked");
        }
    }
}

struct State<J> {
    shared: Arc<Shared<J>>,
    pool: PoolInfo,
    thread: String,
    link: Link,
    /// When the last heartbeat landed (its reply came back).
    last_beat: Option<Instant>,
    /// The server's time of the last heartbeat: the reap script checks it is recent.
    beat_server_ms: u64,
    /// Since when beats have landed without a stall; reaping waits for a TTL of it.
    steady_since: Option<Instant>,
    last_promote: Option<Instant>,
    /// Whether the current stale stretch was logged.
    stale_noted: bool,
    /// The backstop sweep of processing lists no registered worker owns (scripts.rs).
    orphans: OrphanSweep,
}

impl<J> State<J> {
    fn tick(&mut self) {
        if self.link.waiting() {
            return; // backing off: no connection attempt before the time is up
        }
        match self.work() {
            Ok(()) => self.link.ok(),
            Err(e) => {
                let reported = self.link.failed(&e);
                if let Some(line) = reported.line {
                    self.pool
                        .report_error(&self.thread, line, reported.retry_in);
                }
            }
        }
    }

    /// One round of the keeper's duties, the heartbeat first. An error reply (a key of the
    /// wrong type, a refused command) stops only the duty that met it: a queue key an operator
    /// retyped must not stop the heartbeats, or every process would reap this one's live
    /// workers. A broken connection ends the round (the next one reconnects, with back-off).
    fn work(&mut self) -> Result<(), SourceError> {
        let mut first: Option<SourceError> = None;
        let mut note = |r: Result<(), SourceError>| -> Result<(), SourceError> {
            match r {
                Err(e) if super::conn::breaks(&e) => Err(e),
                Err(e) => {
                    first.get_or_insert(e);
                    Ok(())
                }
                Ok(()) => Ok(()),
            }
        };
        let beat_due = self
            .last_beat
            .is_none_or(|t| t.elapsed() >= self.shared.heartbeat);
        if beat_due {
            note(self.beat())?;
            let shared = Arc::clone(&self.shared);
            note(fleet::publish(&shared, self.conn()?))?;
            if self.view_is_fresh() {
                note(self.reap())?;
                note(self.sweep_orphans())?;
            } else {
                self.shared
                    .counters
                    .reaps_skipped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        if self
            .last_promote
            .is_none_or(|t| t.elapsed() >= PROMOTE_EVERY)
        {
            self.last_promote = Some(Instant::now());
            note(self.promote())?;
        }
        note(self.read_backlog())?;
        first.map_or(Ok(()), Err)
    }

    fn conn(&mut self) -> Result<&mut Connection, SourceError> {
        let shared = &self.shared;
        self.link.get(|| shared.connect(Role::Keeper))
    }

    fn read_backlog(&mut self) -> Result<(), SourceError> {
        let shared = Arc::clone(&self.shared);
        // A coordinated queue's grant reads `LLEN` too: still one round trip a tick.
        // Lapsed slots are removed only on a view this keeper can vouch for, as with reaping.
        let fresh = self
            .steady_since
            .is_some_and(|s| s.elapsed() >= shared.worker_ttl)
            && self
                .last_beat
                .is_some_and(|b| b.elapsed() <= shared.worker_ttl / 2);
        let beat_ms = self.beat_server_ms;
        if shared.fleet.coordinated() && fleet::grant(&shared, self.conn()?, fresh, beat_ms)? {
            return Ok(());
        }
        let n: u64 = redis::cmd("LLEN")
            .arg(&shared.keys.queue)
            .query(self.conn()?)
            .map_err(|e| redis_error("cannot read the backlog", e))?;
        shared.backlog.set(n, shared.ms_since_epoch());
        Ok(())
    }

    /// Refreshes the heartbeat of this process's workers, except those whose job has run past
    /// `job_timeout`; marks those the server no longer knows as fenced. Runs (and is timed)
    /// even with no worker to beat for: its timing tells whether the view is fresh.
    fn beat(&mut self) -> Result<(), SourceError> {
        let limit_ms = self
            .shared
            .job_timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
        let now_ms = self.shared.ms_since_epoch();
        // A worker past `job_timeout` is left to the reaper, but its thread still runs: its
        // fleet slot stays renewed until the thread returns and releases it (the caps count
        // every running thread).
        let (mut wids, mut timed_out) = (Vec::new(), Vec::new());
        for s in self.shared.slots.lock().values() {
            if s.state.is_fenced() {
                continue;
            }
            let within = match (limit_ms, s.state.busy_since()) {
                (Some(limit), Some(since)) => now_ms.saturating_sub(since) <= limit,
                _ => true,
            };
            if within { &mut wids } else { &mut timed_out }.push(s.wid.clone());
        }

        let shared = Arc::clone(&self.shared);
        let sent = Instant::now();
        let sent_ms = shared.ms_since_epoch();
        let mut beat = shared.scripts.heartbeat.key(&shared.keys.workers);
        if shared.fleet.coordinated() {
            beat.key(&shared.fleet.queue.slots);
        }
        let (server_ms, fenced, lost): (u64, Vec<String>, Vec<String>) = beat
            .arg(scripts::ttl_ms(&shared))
            .arg(wids.len())
            .arg(&wids)
            .arg(&timed_out)
            .invoke(self.conn()?)
            .map_err(|e| redis_error("heartbeat failed", e))?;
        let landed = Instant::now();
        if shared.fleet.coordinated() {
            lease::renewed(&shared, &wids, &lost, sent_ms);
        }
        self.beat_server_ms = server_ms;
        self.note_beat(sent, landed);
        if !fenced.is_empty() {
            let slots = shared.slots.lock();
            for slot in slots.values().filter(|s| fenced.contains(&s.wid)) {
                slot.state.fence();
            }
        }
        Ok(())
    }

    /// Times a beat that landed: see the module's docs.
    fn note_beat(&mut self, sent: Instant, landed: Instant) {
        let limit = self.shared.worker_ttl / 2;
        let took = landed - sent;
        let gap = self.last_beat.map(|prev| landed - prev);
        let stalled = took > limit || gap.is_some_and(|g| g > limit);
        if stalled {
            self.steady_since = Some(landed);
            if !self.stale_noted {
                self.stale_noted = true;
                log::warn!(
                    "redis keeper for {}: a heartbeat landed {} after the previous one (Redis or \
                     this process stalled); not reaping for {}, so that live workers of every \
                     process can beat again",
                    self.shared.keys.queue,
                    super::conn::human(gap.unwrap_or(took).max(took)),
                    super::conn::human(self.shared.worker_ttl)
                );
            }
        } else if self.steady_since.is_none() {
            // The first beat of this keeper: it has not seen the last TTL (Redis may just be
            // back from an outage that held up every process's beats), so it waits a TTL of
            // steady beats like after a stall.
            self.steady_since = Some(landed);
        }
        self.last_beat = Some(landed);
    }

    fn view_is_fresh(&mut self) -> bool {
        let fresh = self
            .steady_since
            .is_some_and(|s| s.elapsed() >= self.shared.worker_ttl);
        if fresh {
            self.stale_noted = false;
        }
        fresh
    }

    fn reap(&mut self) -> Result<(), SourceError> {
        let shared = Arc::clone(&self.shared);
        let beat_ms = self.beat_server_ms;
        let Some((workers, jobs)) =
            scripts::reap(&shared, self.conn()?, BATCH, RETIRED_GRACE, beat_ms)?
        else {
            // This keeper stalled between its beat and the reap (or the server's clock
            // stepped): its view is stale by the server's clock.
            shared
                .counters
                .reaps_skipped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        shared.counters.reaps.fetch_add(1, Ordering::Relaxed);
        if workers > 0 || jobs > 0 {
            shared.counters.recovered.fetch_add(jobs, Ordering::Relaxed);
            shared
                .counters
                .reaped_workers
                .fetch_add(workers, Ordering::Relaxed);
            log::warn!(
                "{}: reaped {workers} dead worker(s); {jobs} job(s) back in the queue",
                shared.keys.queue
            );
        }
        Ok(())
    }

    fn sweep_orphans(&mut self) -> Result<(), SourceError> {
        let shared = Arc::clone(&self.shared);
        let mut orphans = std::mem::take(&mut self.orphans);
        let jobs = orphans.step(&shared, self.conn()?, SWEEP_COUNT);
        self.orphans = orphans;
        let jobs = jobs?;
        if jobs > 0 {
            shared.counters.recovered.fetch_add(jobs, Ordering::Relaxed);
            log::warn!(
                "{}: {jobs} job(s) back in the queue from processing lists no worker owns",
                shared.keys.queue
            );
        }
        Ok(())
    }

    fn promote(&mut self) -> Result<(), SourceError> {
        let shared = Arc::clone(&self.shared);
        let k = &shared.keys;
        loop {
            let moved: usize = shared
                .scripts
                .promote
                .key(&k.delayed)
                .key(&k.queue)
                .arg(BATCH)
                .arg(if shared.retry_to_head { "1" } else { "0" })
                .invoke(self.conn()?)
                .map_err(|e| redis_error("promoting retries failed", e))?;
            if moved < BATCH {
                return Ok(());
            }
        }
    }
}
