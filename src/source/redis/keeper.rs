//! The keeper: one thread per source and process that beats for this process's workers,
//! reaps dead workers of any process, and moves due retries back to the queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, select};
use redis::Connection;

use super::scripts::{self, OrphanSweep};
use super::{Shared, redis_error};
use crate::error::SourceError;

/// How many entries one script call moves at most, so no script blocks the server for long.
const BATCH: usize = 500;
/// Due retries are looked for at least this often.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
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
    pub(crate) fn start<J: Send + 'static>(shared: Arc<Shared<J>>) -> std::io::Result<Keeper> {
        let (stop, stopped) = bounded::<()>(0);
        let name = format!("tt-keeper-{}", shared.keys.queue);
        let thread = thread::Builder::new().name(name).spawn(move || {
            let mut state = State {
                shared,
                conn: None,
                failing: false,
                last_beat: None,
                orphans: OrphanSweep::default(),
            };
            let tick = state.shared.heartbeat.min(PROMOTE_EVERY);
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

    /// Stops the thread and joins it.
    pub(crate) fn stop(self) {
        drop(self.stop);
        if self.thread.join().is_err() {
            log::error!("the redis keeper thread panicked");
        }
    }
}

struct State<J> {
    shared: Arc<Shared<J>>,
    conn: Option<Connection>,
    failing: bool,
    last_beat: Option<Instant>,
    /// The backstop sweep of processing lists no worker owns (redis-scripts engineer).
    orphans: OrphanSweep,
}

impl<J> State<J> {
    fn tick(&mut self) {
        let beat_due = self
            .last_beat
            .is_none_or(|t| t.elapsed() >= self.shared.heartbeat);
        let result = self.promote().and_then(|()| {
            if beat_due {
                self.beat()?;
                self.reap()?;
                self.sweep_orphans()?;
                self.last_beat = Some(Instant::now());
            }
            Ok(())
        });
        match result {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.conn = None;
                if !self.failing {
                    log::warn!("redis keeper for {}: {e}; retrying", self.shared.keys.queue);
                }
                self.failing = true;
            }
        }
    }

    fn conn(&mut self) -> Result<&mut Connection, SourceError> {
        if self.conn.is_none() {
            self.conn = Some(self.shared.connect()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Refreshes the heartbeat of this process's workers, except those whose job has run past
    /// `job_timeout`; marks those the server no longer knows as fenced.
    fn beat(&mut self) -> Result<(), SourceError> {
        let limit_ms = self.shared.job_timeout.map(|t| t.as_millis() as u64);
        let now_ms = self.shared.ms_since_epoch();
        let wids: Vec<String> = self
            .shared
            .slots
            .lock()
            .values()
            .filter(|s| !s.state.is_fenced())
            .filter(|s| match (limit_ms, s.state.busy_since()) {
                (Some(limit), Some(since)) => now_ms.saturating_sub(since) <= limit,
                _ => true,
            })
            .map(|s| s.wid.clone())
            .collect();
        if wids.is_empty() {
            return Ok(());
        }
        let shared = Arc::clone(&self.shared);
        let fenced: Vec<String> = shared
            .scripts
            .heartbeat
            .key(&shared.keys.workers)
            .arg(&wids)
            .invoke(self.conn()?)
            .map_err(|e| redis_error("heartbeat failed", e))?;
        if !fenced.is_empty() {
            let slots = shared.slots.lock();
            for slot in slots.values().filter(|s| fenced.contains(&s.wid)) {
                slot.state.fence();
            }
        }
        Ok(())
    }

    fn reap(&mut self) -> Result<(), SourceError> {
        let shared = Arc::clone(&self.shared);
        let (workers, jobs) = scripts::reap(&shared, self.conn()?, BATCH, RETIRED_GRACE)?;
        if workers > 0 || jobs > 0 {
            shared.counters.recovered.fetch_add(jobs, Ordering::Relaxed);
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
