//! Slots as leases: the hard guarantee that a queue's fleet caps are never exceeded.
//!
//! # The invariant
//!
//! A coordinated worker starts a job only while it holds an unexpired slot in `Q:slots`
//! (member: its worker id, score: the lease's expiry in the server's time). Taking a slot (the
//! `take` script) checks, in one script, that the queue is not paused, that its live slots are
//! below the fleet's target (itself at most `fleet_max_threads`), and that the live slots of
//! all the fleet's queues are below `fleet_max_total_threads`. So at any server instant the
//! live slots never pass the caps.
//!
//! # Why a worker never runs on a lapsed lease
//!
//! - The worker's id is never reused (a new generation after every fencing), so the id is
//!   its own fencing token: releasing (`ZREM` of its own id, in the release script) can free
//!   no one else's slot, and a renewal of a lapsed lease is refused (the heartbeat renews
//!   only leases whose score is still in the future, in the same script that beats for the
//!   worker).
//! - The worker trusts its lease only until `sent + ttl` by its own monotonic clock, where
//!   `sent` is when the call that set or renewed it was *sent*: the server set the expiry to
//!   its time of execution plus the TTL, which is later, so the local bound expires first.
//!   A process frozen (`SIGSTOP`) or cut off past that bound finds its lease gone on
//!   waking, before it fetches: it must take a new slot, which fails while others hold the
//!   room.
//! - It checks before each fetch (`BLMOVE`) and again when the fetch returns (a `BLMOVE` that
//!   blocked across a freeze): a job fetched without a lease goes back to the head of the
//!   queue untouched, no run counted. The acknowledgement's take of the next job checks the
//!   lease by the server's clock inside the ack script.
//! - A job that started under a valid lease and whose lease lapsed while it ran (the process
//!   froze mid-job) belongs to a worker that was also reaped (its registration has the same
//!   TTL and is renewed by the same beat), so its acknowledgement is refused and the job runs
//!   again elsewhere: its result never counts twice, and no result of a job that overlapped
//!   someone else's slot is kept.
//!
//! Lowering a cap at runtime does not revoke slots: the excess workers retire between jobs
//! (the fleet's target, and so each process's share, falls at once).

use std::sync::atomic::Ordering;

use redis::Connection;

use super::{Shared, SlotState, redis_error, scripts};
use crate::error::SourceError;

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
        .invoke(conn)
        .map_err(|e| redis_error("cannot take a slot", e))?;
    if taken == 1 {
        state.extend_lease(sent_ms.saturating_add(scripts::ttl_ms(shared)));
    }
    Ok(taken == 1)
}
