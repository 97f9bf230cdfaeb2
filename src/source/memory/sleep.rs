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

use crate::source::{FetchContext, FetchWait};

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
            FetchWait::Ready(()) => Slept::Woken,
            FetchWait::Interrupted => {
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

#[cfg(test)]
mod tests {
    //! Each step of the handshake in `sleep.md`, driven in a fixed order: a race test (see
    //! `tests/memory_source.rs`) hits the window between the spin and the registration only
    //! rarely, these hit it every time.

    use std::sync::atomic::AtomicBool;
    use std::thread;
    use std::time::{Duration, Instant};

    use crossbeam_channel::{Sender, bounded, unbounded};

    use super::*;

    /// Long enough that a test which reaches it has failed: a wake-up that comes at all comes
    /// within microseconds.
    const LIMIT: Duration = Duration::from_secs(5);

    struct Pool {
        retire_tx: Sender<()>,
        retire_rx: Receiver<()>,
        _stop_tx: Sender<()>,
        stop_rx: Receiver<()>,
        stopping: AtomicBool,
    }

    impl Pool {
        fn new() -> Pool {
            let (retire_tx, retire_rx) = unbounded();
            let (_stop_tx, stop_rx) = bounded(0);
            Pool {
                retire_tx,
                retire_rx,
                _stop_tx,
                stop_rx,
                stopping: AtomicBool::new(false),
            }
        }

        fn cx(&self) -> FetchContext<'_> {
            FetchContext::new(
                Duration::from_secs(3600),
                &self.retire_rx,
                &self.stop_rx,
                &self.stopping,
            )
        }
    }

    fn sleepers(sleep: &Sleep) -> usize {
        sleep.sleepers.load(Ordering::SeqCst)
    }

    /// The push lands after the consumer's spin gave up but before it registered, so the
    /// producer saw nobody asleep and rang no bell: only the second look can find the job.
    #[test]
    fn a_push_just_before_the_registration_is_seen_by_the_second_look() {
        let (sleep, pool) = (Sleep::new(), Pool::new());
        let (jobs_tx, jobs_rx) = unbounded::<u32>();
        jobs_tx.send(7).unwrap();
        sleep.notify_one(); // nobody registered: no bell
        assert_eq!(sleep.bell_rx.len(), 0);

        let started = Instant::now();
        let slept = sleep.sleep(&pool.cx(), LIMIT, || !jobs_rx.is_empty());
        assert_eq!(
            slept,
            Slept::Woken,
            "slept {:?} past a job",
            started.elapsed()
        );
        assert_eq!(sleepers(&sleep), 0, "the registration was taken back");
    }

    /// The push lands after the registration and after the second look (which therefore saw
    /// nothing): the producer sees the count and rings.
    #[test]
    fn a_push_after_the_registration_rings_the_sleeper() {
        let (sleep, pool) = (Sleep::new(), Pool::new());
        let (jobs_tx, _jobs_rx) = unbounded::<u32>();
        thread::scope(|s| {
            let consumer = s.spawn(|| sleep.sleep(&pool.cx(), LIMIT, || false));
            let deadline = Instant::now() + LIMIT;
            while sleepers(&sleep) == 0 {
                assert!(Instant::now() < deadline, "the consumer never registered");
                thread::yield_now();
            }
            jobs_tx.send(7).unwrap();
            sleep.notify_one();
            assert_eq!(consumer.join().unwrap(), Slept::Woken);
        });
        assert_eq!(sleepers(&sleep), 0);
        assert_eq!(sleep.bell_rx.len(), 0, "the bell was answered");
    }

    /// A retirement request wakes a sleeper at once, which takes its registration back, so the
    /// next push costs the producer no ring.
    #[test]
    fn a_retirement_request_wakes_the_sleeper_and_unregisters_it() {
        let (sleep, pool) = (Sleep::new(), Pool::new());
        thread::scope(|s| {
            let cx_pool = &pool;
            let sleep = &sleep;
            let consumer = s.spawn(move || sleep.sleep(&cx_pool.cx(), LIMIT, || false));
            let deadline = Instant::now() + LIMIT;
            while sleepers(sleep) == 0 {
                assert!(Instant::now() < deadline, "the consumer never registered");
                thread::yield_now();
            }
            pool.retire_tx.send(()).unwrap();
            assert_eq!(consumer.join().unwrap(), Slept::Interrupted);
        });
        assert_eq!(sleepers(&sleep), 0);
        assert!(pool.retire_rx.is_empty(), "the request was taken");
    }

    /// `S + B >= W`: a consumer that times out after a bell was rung for it leaves the token
    /// for the next sleeper, which wakes at once instead of sleeping through the push.
    #[test]
    fn a_bell_rung_for_a_consumer_that_left_wakes_the_next() {
        let (sleep, pool) = (Sleep::new(), Pool::new());
        // A registers; a push rings for it (S: 1 -> 0, B: 0 -> 1); A times out before
        // receiving the bell and, S being 0, takes nothing back.
        sleep.sleepers.fetch_add(1, Ordering::SeqCst);
        sleep.notify_one();
        assert!(!sleep.take_registration());
        assert_eq!((sleepers(&sleep), sleep.bell_rx.len()), (0, 1));
        // B sleeps with nothing in sight: the token left over wakes it.
        assert_eq!(sleep.sleep(&pool.cx(), LIMIT, || false), Slept::Woken);
        // B's own registration stays: one too many (S + B > W), which only costs the next
        // push one ring for nobody; it never lets a sleeper miss a push.
        assert_eq!((sleepers(&sleep), sleep.bell_rx.len()), (1, 0));
    }
}
