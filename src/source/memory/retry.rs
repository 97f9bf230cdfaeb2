//! Retries of the in-memory source: a failed job waits out its back-off in a heap, then moves
//! to a channel of ready retries, which consumers take before new jobs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use parking_lot::Mutex;

use crate::backoff::Backoff;

const NO_RETRY_DUE: u64 = u64::MAX;

/// A job that failed, with the runs it has had.
pub(super) struct Envelope<T> {
    pub(super) job: T,
    pub(super) attempts: u32,
}

struct Delayed<T> {
    due_ns: u64,
    seq: u64,
    envelope: Envelope<T>,
}

impl<T> PartialEq for Delayed<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due_ns, self.seq) == (other.due_ns, other.seq)
    }
}
impl<T> Eq for Delayed<T> {}
impl<T> PartialOrd for Delayed<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Delayed<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ns, self.seq).cmp(&(other.due_ns, other.seq))
    }
}

/// Retries waiting for their back-off, and those whose back-off has passed.
pub(super) struct Retries<T> {
    /// Retries whose back-off has passed, in the order they fell due.
    ready_tx: Sender<Envelope<T>>,
    ready_rx: Receiver<Envelope<T>>,
    /// Retries delayed or ready and not yet taken: while it is 0 a fetch skips retries with
    /// one load.
    pending: AtomicUsize,
    epoch: Instant,
    /// The delayed retries, earliest first, and the sequence number that keeps equal due
    /// times in the order they failed.
    delayed: Mutex<(BinaryHeap<Reverse<Delayed<T>>>, u64)>,
    /// Due time of the earliest delayed retry, in ns since `epoch`; `NO_RETRY_DUE` when none.
    next_due_ns: AtomicU64,
    backoff: Backoff,
}

impl<T> Retries<T> {
    pub(super) fn new(backoff: Backoff) -> Self {
        let (ready_tx, ready_rx) = unbounded();
        Retries {
            ready_tx,
            ready_rx,
            pending: AtomicUsize::new(0),
            epoch: Instant::now(),
            delayed: Mutex::new((BinaryHeap::new(), 0)),
            next_due_ns: AtomicU64::new(NO_RETRY_DUE),
            backoff,
        }
    }

    /// Whether any retry is delayed or ready: one atomic load.
    #[inline(always)]
    pub(super) fn any_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(NO_RETRY_DUE - 1)
    }

    /// Puts `envelope` (which ran `attempts` times) away until its back-off passes.
    pub(super) fn delay(&self, envelope: Envelope<T>) {
        let wait = self.backoff.delay(envelope.attempts);
        let due = self
            .now_ns()
            .saturating_add(u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX))
            .min(NO_RETRY_DUE - 1);
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut guard = self.delayed.lock();
        guard.1 += 1;
        let seq = guard.1;
        guard.0.push(Reverse(Delayed {
            due_ns: due,
            seq,
            envelope,
        }));
        if due < self.next_due_ns.load(Ordering::Acquire) {
            self.next_due_ns.store(due, Ordering::Release);
        }
    }

    /// Moves the retries whose back-off has passed to the ready channel; returns how many
    /// moved (the caller wakes sleeping consumers for them).
    pub(super) fn promote_due(&self) -> usize {
        let due = self.next_due_ns.load(Ordering::Acquire);
        if due == NO_RETRY_DUE || due > self.now_ns() {
            return 0;
        }
        let mut guard = self.delayed.lock();
        let now = self.now_ns();
        let mut moved = 0;
        while guard.0.peek().is_some_and(|d| d.0.due_ns <= now) {
            let Reverse(d) = guard.0.pop().expect("peeked");
            // The receiver lives in `self`, so the channel is never disconnected.
            let _ = self.ready_tx.send(d.envelope);
            moved += 1;
        }
        let next = guard.0.peek().map_or(NO_RETRY_DUE, |d| d.0.due_ns);
        self.next_due_ns.store(next, Ordering::Release);
        moved
    }

    /// Takes a ready retry without blocking.
    pub(super) fn try_take(&self) -> Option<Envelope<T>> {
        let envelope = self.ready_rx.try_recv().ok()?;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        Some(envelope)
    }

    /// Ready retries.
    pub(super) fn ready(&self) -> usize {
        self.ready_rx.len()
    }

    /// Whether no retry is ready (`SeqCst`: the second look of `sleep.md`).
    pub(super) fn none_ready(&self) -> bool {
        self.ready_rx.is_empty()
    }

    /// Retries still waiting for their back-off.
    pub(super) fn delayed(&self) -> usize {
        self.delayed.lock().0.len()
    }

    /// Time until the earliest delayed retry falls due, if any is delayed.
    pub(super) fn time_to_next_due(&self) -> Option<Duration> {
        match self.next_due_ns.load(Ordering::Acquire) {
            NO_RETRY_DUE => None,
            due => Some(Duration::from_nanos(due.saturating_sub(self.now_ns()))),
        }
    }
}
