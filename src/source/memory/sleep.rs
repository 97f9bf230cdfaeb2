//! How idle consumers of the in-memory source sleep and how a push wakes one: a sleepers count,
//! a second look at the queue, and a bell. Why no wake-up is lost: `sleep.md` beside this file.
//!
//! The job channel itself cannot be what idle consumers block on: a fetch must stay exactly
//! crossbeam's inlined `recv` loop (see `fetch` in `consumer.rs`), and waiting on the job
//! channel in a `select!` costs every fetch that inlining. So consumers sleep on a separate
//! bell, and producers pay one `SeqCst` load per push to learn whether anyone sleeps.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, unbounded};
use crossbeam_utils::CachePadded;

use crate::source::{FetchContext, Wait};

/// The sleep/wake state shared by a source's producers and consumers.
pub(super) struct Sleep {
    /// Consumers registered to sleep, minus bells rung for them (`S` in `sleep.md`). Read by
    /// every push, written only when a consumer sleeps or is woken: a cache line of its own.
    sleepers: CachePadded<AtomicUsize>,
    /// One token per wake-up rung (`B` in `sleep.md`: the tokens not yet received).
    bell_tx: Sender<()>,
    bell_rx: Receiver<()>,
}

/// How [`Sleep::sleep`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slept {
    /// A bell rang, or the second look found work: look at the queue.
    Woken,
    /// The limit or the fetch deadline passed.
    TimedOut,
    /// The fetch was interrupted (retire or shutdown): return without a job.
    Interrupted,
}

impl Sleep {
    pub(super) fn new() -> Self {
        let (bell_tx, bell_rx) = unbounded();
        Sleep {
            sleepers: CachePadded::new(AtomicUsize::new(0)),
            bell_tx,
            bell_rx,
        }
    }

    /// The producer's side, called after work was made visible (sent on a channel whose
    /// `is_empty` the consumers' second look reads): wakes one sleeping consumer, if any.
    ///
    /// One `SeqCst` load while nobody sleeps. It must follow the send: the send's `SeqCst`
    /// update of the channel and this load are half of the handshake in `sleep.md`.
    #[inline(always)]
    pub(super) fn notify_one(&self) {
        if self.sleepers.load(Ordering::SeqCst) != 0 {
            self.ring();
        }
    }

    /// Takes one registration back and rings the bell for it; nothing if none is left (every
    /// sleeper already has a bell on its way).
    #[cold]
    #[inline(never)]
    fn ring(&self) {
        if self.take_registration() {
            // The receiver lives in `self`, so the channel is never disconnected.
            let _ = self.bell_tx.send(());
        }
    }

    /// Takes one registration back; false when the count is already 0.
    fn take_registration(&self) -> bool {
        self.sleepers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The consumer's side: registers, looks once more with `has_work`, and if it still sees
    /// none sleeps on the bell until it rings, `limit` or the fetch deadline passes, or the
    /// fetch is interrupted. Every way out but a bell takes one registration back.
    ///
    /// `has_work` must read, with `SeqCst`, what producers send before calling
    /// [`notify_one`](Self::notify_one) (crossbeam's `is_empty` does).
    pub(super) fn sleep(
        &self,
        cx: &FetchContext<'_>,
        limit: Duration,
        has_work: impl FnOnce() -> bool,
    ) -> Slept {
        self.sleepers.fetch_add(1, Ordering::SeqCst);
        if has_work() {
            self.take_registration();
            return Slept::Woken;
        }
        match cx.recv_timeout(&self.bell_rx, limit) {
            // The ringer took this registration back.
            Wait::Ready(()) => Slept::Woken,
            Wait::Interrupted => {
                self.take_registration();
                Slept::Interrupted
            }
            // Timed out (`Disconnected` cannot happen: `self` holds a sender). When the count
            // is already 0, a bell was rung for this consumer and stays in the channel: the
            // next consumer to sleep wakes once for nothing and sleeps again.
            _ => {
                self.take_registration();
                Slept::TimedOut
            }
        }
    }
}
