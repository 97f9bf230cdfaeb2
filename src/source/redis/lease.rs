//! Slots as leases: the hard guarantee that a queue's fleet caps hold for every job started
//! (the exceptions for running jobs are in `docs/FLEET.md`, "Where the caps can be passed").
//!
//! # The invariant
//!
//! A coordinated worker starts a job only while it holds a slot in `Q:slots` (member: its
//! worker id, score: the lease's expiry in the server's time). Taking a slot (the `take`
//! script) checks, in one script, that the queue is not paused, that its slots are below the
//! fleet's target (itself at most `fleet_max_threads`), and that the slots of all the fleet's
//! queues are below `fleet_max_total_threads`. A slot counts from the moment it is taken
//! until it is removed, lapsed or not, so at any server instant the slots never pass the
//! caps. A slot is removed only by its own worker (leaving, or fenced) or, once its lease has
//! lapsed by the server's clock, by a grant from a keeper whose view is fresh (its beats
//! landed steadily for a whole TTL, and its last one is under half a TTL old by the server's
//! clock: the reaper's rule). So a server stall that lapses every lease at once frees no
//! room: every process renews its leases (a renewal needs the slot to be there, lapsed or
//! not) before anyone may remove them. A process frozen or cut off is judged by the others,
//! whose views are fresh.
//!
//! # Why a worker never runs without its slot
//!
//! - The worker's id is never reused (a new generation after every fencing), so the id is
//!   its own fencing token: releasing (`ZREM` of its own id, in the release script) can free
//!   no one else's slot, and a removed slot is never renewed (the heartbeat renews only
//!   slots still there, in the same script that beats for the worker).
//! - The worker trusts its lease only until `sent + ttl` by its own monotonic clock, where
//!   `sent` is when the call that set or renewed it was *sent*: the server set the expiry to
//!   its time of execution plus the TTL, which is later, so the local bound expires first.
//!   A process frozen (`SIGSTOP`) or cut off past that bound finds its lease gone on
//!   waking, before it fetches: it must take a new slot, which fails while others hold the
//!   room.
//! - It checks before each fetch (`BLMOVE`) and again when the fetch returns (a `BLMOVE` that
//!   blocked across a freeze): a job fetched without a lease goes back to the head of the
//!   queue untouched, no run counted. The acknowledgement's take of the next job checks the
//!   lease by the server's clock inside the ack script (the slot there and its score not
//!   lapsed), and the worker checks its local lease again before starting that job.
//! - A worker that gives up its connection drops its local lease (Redis may have restarted
//!   having lost the slot), so it takes its slot again before fetching.
//! - A worker past `job_timeout` is left to the reaper, but its slot is renewed until its
//!   thread returns and releases it: the thread still runs.
//! - A settle (ack, retry, dead letter) of a worker whose slot was removed is refused like
//!   one of a reaped worker, and the job runs again elsewhere: no result is kept of a job
//!   that may have overlapped someone else's use of its room. (Its slot was there for the
//!   whole job otherwise, counted against the caps.)
//!
//! Lowering a cap at runtime does not revoke slots: the excess workers retire between jobs
//! (the fleet's target, and so each process's share, falls at once).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redis::Connection;

use super::{Shared, redis_error, scripts};
use crate::error::SourceError;

/// The parts of a slot its worker updates on every job: atomics, so the worker never takes the
/// shared slots lock on its hot path (the keeper reads them once a beat).
#[derive(Debug, Default)]
pub(crate) struct SlotState {
    /// When the job in hand started, in ms since the source's epoch, plus one; 0 when idle.
    busy_since_ms: AtomicU64,
    /// Set when the server no longer knows this worker (it was reaped).
    fenced: AtomicBool,
    /// Until when (source ms clock) its slot lease surely holds; 0: no slot (lease.rs).
    pub(crate) lease_until_ms: AtomicU64,
}

impl SlotState {
    pub(crate) fn set_busy(&self, since: Option<u64>) {
        self.busy_since_ms
            .store(since.map_or(0, |ms| ms + 1), Ordering::Release);
    }

    /// Milliseconds since the source's epoch when the job in hand started.
    pub(crate) fn busy_since(&self) -> Option<u64> {
        match self.busy_since_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(ms - 1),
        }
    }

    pub(crate) fn fence(&self) {
        self.lease_until_ms.store(0, Ordering::Release); // a new id holds no slot
        self.fenced.store(true, Ordering::Release);
    }

    pub(crate) fn unfence(&self) {
        self.fenced.store(false, Ordering::Release);
    }

    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }
}

impl SlotState {
    /// Whether this worker's lease surely holds at `now_ms` (the source's clock).
    pub(crate) fn lease_holds(&self, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms.load(Ordering::Acquire)
    }

    /// The lease holds until `until_ms` (never shortens a newer lease).
    pub(crate) fn extend_lease(&self, until_ms: u64) {
        self.lease_until_ms.fetch_max(until_ms, Ordering::AcqRel);
    }

    /// The lease is gone, unless it was set after `sent_ms + ttl` by a newer call.
    pub(crate) fn drop_lease(&self, not_after_ms: u64) {
        let _ = self
            .lease_until_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v <= not_after_ms).then_some(0)
            });
    }
}

/// After a heartbeat sent at `sent_ms` for `wids`: the leases not in `lost` hold until
/// `sent_ms + ttl`; those in `lost` are gone. Also counts the slots this process holds.
pub(crate) fn renewed<J>(shared: &Shared<J>, wids: &[String], lost: &[String], sent_ms: u64) {
    let until = sent_ms.saturating_add(scripts::ttl_ms(shared));
    let slots = shared.slots.lock();
    let mut held = 0;
    for slot in slots.values() {
        if !wids.contains(&slot.wid) {
            continue;
        }
        if lost.contains(&slot.wid) {
            slot.state.drop_lease(until);
        } else {
            slot.state.extend_lease(until);
            held += 1;
        }
    }
    shared.fleet.slots_held.store(held, Ordering::Relaxed);
}

/// Takes a slot for the worker `wid` (or confirms the one it has). Returns whether it holds
/// one now; on `true` its lease is set.
pub(crate) fn take<J>(
    shared: &Shared<J>,
    conn: &mut Connection,
    wid: &str,
    state: &SlotState,
) -> Result<bool, SourceError> {
    let fleet = &shared.fleet;
    let sent_ms = shared.ms_since_epoch();
    let total = fleet
        .settings
        .max_total_threads
        .map_or_else(String::new, |n| n.to_string());
    let taken: i64 = shared
        .fleet_scripts
        .take
        .key(&fleet.queue.slots)
        .key(&fleet.queue.state)
        .key(&fleet.queue.settings)
        .key(&fleet.keys.queues)
        .key(&fleet.keys.settings)
        .arg(wid)
        .arg(scripts::ttl_ms(shared))
        .arg(total)
        .arg(
            fleet
                .settings
                .max_threads
                .map_or_else(String::new, |n| n.to_string()),
        )
        .invoke(conn)
        .map_err(|e| redis_error("cannot take a slot", e))?;
    if taken == 1 {
        state.extend_lease(sent_ms.saturating_add(scripts::ttl_ms(shared)));
    }
    Ok(taken == 1)
}
