//! A worker state's life: when it is recycled (jobs, age, jitter), its health check, the
//! carry-over stash its successors start from, and the start ramp (turns to run `init`).
//!
//! The job loop pays one branch per job for all of it when no age and no health check are
//! set ([`Life::watch`]); the job limit replaces the `recycle_after` comparison it had.
//!
//! What holds, and why:
//!
//! * **At most `init_concurrency` `init`s of a queue run at once.** A turn is a token in a
//!   bounded channel filled with `limit` tokens; a worker takes one before `init` and the
//!   [`Turn`] guard gives it back when `init` returns (it runs under `catch_unwind`, and the
//!   guard is dropped on every path). A worker waiting for a turn waits in a `select!` with
//!   the pool's stop and its queue's wake-ups, so it leaves at once, and it holds no job: its
//!   consumer has fetched nothing yet or was suspended before the rebuild.
//! * **`starting` counts the workers between their spawn (or a rebuild's start) and the end
//!   of that `init`.** The spawn raises it with `alive` and `live`, under the roster's lock;
//!   the worker lowers it when `init` returns, and its exit guard when it leaves first
//!   ([`Worker::started`] is idempotent through its flag).
//! * **With the memory gate on, each reading sees the workers started before it.** The monitor
//!   reads free memory once per tick, before it spawns, and spawns at most
//!   `limit - starting` workers of a queue: a worker's memory is in the next reading unless its
//!   `init` is still running, and those are bounded by the ramp. A worker already spawned
//!   waits for the gate before it takes a turn, and checks it again once it has one (giving
//!   the turn back if the gate closed), before its first `init`; a rebuild does not wait for
//!   memory (the old state was just dropped), and no turn is held by a worker waiting for
//!   memory, so rebuilds are never stuck behind the gate.
//! * **A carried value is offered once.** The stash is a per-queue list, newest last,
//!   bounded by `max_threads_per_type` (the oldest is dropped first); `take_carry` takes the
//!   newest if it has the asked type. A state is carried only when it is dropped whole (a
//!   recycle, a failed health check, the worker's exit), never after a job or the health
//!   check panicked.

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::panic::{AssertUnwindSafe, catch_unwind};

use crossbeam_channel::{Receiver, Sender, bounded, select};
use parking_lot::Mutex;

use crate::backoff::Backoff;
use crate::config::QueueConfig;
use crate::event::ExitReason;
use crate::queue::Handlers;
use crate::source::WorkerInfo;
use crate::threads::{drop_payload, panic_message};
use crate::worker::{Served, Worker, drop_guarded, drop_state};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A queue's health check, typed by its state.
pub(crate) type HealthFn<St> =
    Box<dyn Fn(&mut St, &WorkerInfo) -> Result<(), BoxError> + Send + Sync>;
/// A queue's carry-over, typed by its state; the carried value is erased.
pub(crate) type CarryFn<St> =
    Box<dyn Fn(St, &WorkerInfo) -> Option<Box<dyn Any + Send>> + Send + Sync>;

/// A hook given to a [`Queue`](crate::Queue) setter, whose state type is checked against
/// the queue's in `build()`.
pub(crate) struct Erased {
    hook: Box<dyn Any + Send + Sync>,
    state_type: &'static str,
}

impl Erased {
    pub(crate) fn health<St: 'static>(check: HealthFn<St>) -> Self {
        Erased {
            hook: Box::new(check),
            state_type: std::any::type_name::<St>(),
        }
    }

    pub(crate) fn carry<St: 'static>(carry: CarryFn<St>) -> Self {
        Erased {
            hook: Box::new(carry),
            state_type: std::any::type_name::<St>(),
        }
    }

    /// The hook as a `T`, or the name of the state type it was written for.
    fn into<T: 'static>(self) -> Result<T, &'static str> {
        let state_type = self.state_type;
        self.hook
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| state_type)
    }
}

impl fmt::Debug for Erased {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fn(&mut {}, ..)", self.state_type)
    }
}

/// A queue's health check and carry-over with their state type known.
pub(crate) struct Hooks<St> {
    pub(crate) health: Option<HealthFn<St>>,
    pub(crate) carry: Option<CarryFn<St>>,
}

impl<St> Default for Hooks<St> {
    fn default() -> Self {
        Hooks {
            health: None,
            carry: None,
        }
    }
}

/// A hook whose state type is not the queue's: which setter, and the type it was given.
#[derive(Debug)]
pub(crate) struct WrongState {
    pub(crate) field: &'static str,
    pub(crate) given: &'static str,
    /// The queue's state type.
    pub(crate) state: &'static str,
}

impl<St: 'static> Hooks<St> {
    /// Takes the hooks set on the queue, checking that each was written for `St`.
    pub(crate) fn install(
        &mut self,
        health: Option<Erased>,
        carry: Option<Erased>,
    ) -> Result<(), WrongState> {
        if let Some(h) = health {
            let check = h.into::<HealthFn<St>>().map_err(|given| WrongState {
                field: "health_check",
                given,
                state: std::any::type_name::<St>(),
            })?;
            self.health = Some(check);
        }
        if let Some(c) = carry {
            let carry = c.into::<CarryFn<St>>().map_err(|given| WrongState {
                field: "carry_over",
                given,
                state: std::any::type_name::<St>(),
            })?;
            self.carry = Some(carry);
        }
        Ok(())
    }
}

/// splitmix64 (Steele, Lea and Flood): the step of the small generator the jitter draws
/// from.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fraction a state's recycle limits are shortened by, in `[0, jitter)`: the draw
/// `u = (splitmix64(splitmix64(index) ^ generation) >> 11) / 2^53`, times `jitter`. The same
/// worker index and generation always give the same fraction.
pub(crate) fn jitter_fraction(index: u64, generation: u64, jitter: f64) -> f64 {
    let x = splitmix64(splitmix64(index) ^ generation);
    let u = (x >> 11) as f64 / (1u64 << 53) as f64;
    jitter * u
}

/// `jobs` shortened by the fraction `f` (in `[0, 1)`): `jobs - floor(jobs * f)`, at least 1.
pub(crate) fn job_limit(jobs: u64, f: f64) -> u64 {
    let cut = (jobs as f64 * f).floor() as u64;
    jobs.saturating_sub(cut).max(1)
}

/// The limits of one state, fixed when its `init` returns.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Life {
    /// Jobs the state runs before it is recycled (`u64::MAX`: no limit).
    pub(crate) jobs: u64,
    /// When the state is recycled by age.
    pub(crate) age_deadline: Option<Instant>,
    /// When the health check is next due (with a check configured).
    pub(crate) next_health: Option<Instant>,
    /// Whether anything must be looked at between jobs (an age limit or a health check): the
    /// one branch the job loop pays for this module.
    pub(crate) watch: bool,
    /// No fetch yet on this state: its age is not looked at before the first, so a state
    /// always serves at least one fetch (an age shorter than `init` cannot spin on rebuilds).
    pub(crate) fresh: bool,
}

impl Life {
    /// The limits of a state built at `now` by worker `index`, its `generation`-th.
    pub(crate) fn new(
        config: &QueueConfig,
        health: bool,
        index: u64,
        generation: u64,
        now: Instant,
    ) -> Self {
        let f = jitter_fraction(index, generation, config.recycle_jitter);
        // `age - age * f`, not `age * (1 - f)`: the latter overflows `Duration` (a panic) for
        // an age near `Duration::MAX`; an age too long for an `Instant` means never.
        let age_deadline = config.recycle_after_age.and_then(|age| {
            let cut = Duration::try_from_secs_f64(age.as_secs_f64() * f).unwrap_or(Duration::ZERO);
            now.checked_add(age.saturating_sub(cut))
        });
        Life {
            jobs: config.recycle_after.map_or(u64::MAX, |n| job_limit(n, f)),
            age_deadline,
            next_health: if health {
                now.checked_add(config.health_check_every)
            } else {
                None
            },
            watch: health || config.recycle_after_age.is_some(),
            fresh: true,
        }
    }
}

impl Default for Life {
    fn default() -> Self {
        Life {
            jobs: u64::MAX,
            age_deadline: None,
            next_health: None,
            watch: false,
            fresh: true,
        }
    }
}

/// A worker's run of failed health checks: states that failed before running a job. The
/// first failure of a run rebuilds at once; each further one backs off before the next `init`.
#[derive(Debug, Default)]
pub(crate) struct FailedChecks(u32);

impl FailedChecks {
    /// A state failed its check after `jobs` jobs: the delay before the next `init`.
    pub(crate) fn fail(&mut self, jobs: u64, backoff: Backoff) -> Duration {
        self.0 = if jobs == 0 {
            self.0.saturating_add(1)
        } else {
            1
        };
        if self.0 > 1 {
            backoff.delay(self.0 - 1)
        } else {
            Duration::ZERO
        }
    }

    /// A state ran a job or recycled: its successor's failure starts a new run.
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }
}

/// What a queue's dropped states carried over, waiting for the next `init` of the queue.
pub(crate) struct Stash {
    values: Mutex<VecDeque<Box<dyn Any + Send>>>,
    capacity: usize,
    /// Values handed to an `init`.
    pub(crate) carried: AtomicU64,
}

impl fmt::Debug for Stash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stash")
            .field("waiting", &self.values.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Stash {
    pub(crate) fn new(capacity: usize) -> Self {
        Stash {
            values: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            carried: AtomicU64::new(0),
        }
    }

    /// Keeps `value` for a later `init`; the oldest waiting value is dropped (outside the
    /// lock) when the stash is full.
    pub(crate) fn put(&self, value: Box<dyn Any + Send>) -> Option<Box<dyn Any + Send>> {
        let mut values = self.values.lock();
        values.push_back(value);
        if values.len() > self.capacity {
            values.pop_front()
        } else {
            None
        }
    }

    /// The most recently carried value if it is a `C`.
    pub(crate) fn take<C: 'static>(&self) -> Option<C> {
        let mut values = self.values.lock();
        if !values.back().is_some_and(|v| v.is::<C>()) {
            return None;
        }
        let value = values.pop_back()?.downcast::<C>().ok()?;
        drop(values);
        self.carried.fetch_add(1, Ordering::Relaxed);
        Some(*value)
    }
}

/// The start ramp: a queue's turns to run `init`, as tokens in a channel (a worker waits for
/// one in a `select!` with the pool's stop and its queue's wake-ups, so it still leaves at
/// once).
pub(crate) struct InitTurns {
    tx: Sender<()>,
    pub(crate) rx: Receiver<()>,
    pub(crate) limit: usize,
}

impl InitTurns {
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        let (tx, rx) = bounded(limit);
        for _ in 0..limit {
            let _ = tx.try_send(());
        }
        InitTurns { tx, rx, limit }
    }

    /// Gives a turn back (a worker's `init` returned).
    pub(crate) fn give_back(&self) {
        let _ = self.tx.try_send(());
    }
}

/// A turn taken from [`InitTurns`]; given back when dropped, even by a panic.
pub(crate) struct Turn<'a>(pub(crate) &'a InitTurns);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// Waits, before a worker's first `init`, for the memory gate to open, then for one of the
/// queue's init turns. Returns why the worker must leave instead if the pool stops or the
/// queue sheds this worker meanwhile. The worker holds no job while it waits (its consumer is
/// suspended or has fetched nothing yet), and no turn while it waits for memory, so that the
/// rebuilds of running workers (which do not wait for memory: the old state was just dropped)
/// still get theirs.
pub(crate) fn init_turn<'q>(w: &Worker<'q>, first: bool) -> Result<Turn<'q>, ExitReason> {
    w.starting();
    let turns = &w.queue.turns;
    loop {
        while first && w.pool.memory.holding() {
            select! {
                recv(w.pool.stop_rx) -> _ => return Err(ExitReason::Shutdown),
                recv(w.queue.wake_rx) -> _ => {
                    if w.try_retire() {
                        return Err(ExitReason::Retired);
                    }
                }
                default(w.pool.config.rebalance_interval) => {}
            }
        }
        select! {
            recv(turns.rx) -> _ => {}
            recv(w.pool.stop_rx) -> _ => return Err(ExitReason::Shutdown),
            recv(w.queue.wake_rx) -> _ => {
                if w.try_retire() {
                    return Err(ExitReason::Retired);
                }
                continue;
            }
        }
        let turn = Turn(turns);
        // The turn and the stop may have come together: leave rather than start an `init`.
        if let Some(reason) = w.should_exit() {
            return Err(reason);
        }
        // The gate may have closed while this worker waited for its turn: give it back.
        if first && w.pool.memory.holding() {
            continue;
        }
        return Ok(turn);
    }
}

/// What is due between two jobs on a watched state ([`Life::watch`]): a recycle by age, or the
/// health check. Kept out of line: the job loop only pays for the branch that calls it.
#[cold]
#[inline(never)]
pub(crate) fn between_jobs<H: Handlers>(
    h: &H,
    w: &Worker<'_>,
    st: &mut H::State,
    info: &WorkerInfo,
    life: &mut Life,
) -> Option<Served> {
    let now = Instant::now();
    let fresh = std::mem::replace(&mut life.fresh, false);
    if !fresh && life.age_deadline.is_some_and(|d| now >= d) {
        return Some(Served::Recycle);
    }
    let check = h.hooks().health.as_ref()?;
    if life.next_health.is_some_and(|due| now < due) {
        return None;
    }
    let result = catch_unwind(AssertUnwindSafe(|| check(st, info)));
    life.next_health = now.checked_add(w.queue.config.health_check_every);
    match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Served::Unhealthy {
            message: e.to_string(),
            panicked: false,
        }),
        Err(p) => {
            let m = panic_message(&*p);
            drop_payload(p);
            Some(Served::Unhealthy {
                message: format!("the health check panicked: {m}"),
                panicked: true,
            })
        }
    }
}

/// Drops a worker's state for a rebuild or the worker's exit, through the queue's
/// `carry_over` if it has one (its value goes to the stash). A panic in `carry_over` is
/// caught: nothing is carried.
pub(crate) fn carry_or_drop<H: Handlers>(
    h: &H,
    w: &Worker<'_>,
    state: &mut Option<H::State>,
    info: &WorkerInfo,
) {
    let Some(carry) = h.hooks().carry.as_ref() else {
        return drop_state(state, w);
    };
    let Some(st) = state.take() else {
        return;
    };
    match catch_unwind(AssertUnwindSafe(|| carry(st, info))) {
        Ok(Some(value)) => drop_guarded(w.queue.stash.put(value), w),
        Ok(None) => {}
        Err(p) => {
            log::error!(
                "{}: carry_over panicked: nothing carried (the panic message is logged at trace)",
                info.name()
            );
            log::trace!(
                "{}: carry_over panic message: {}",
                info.name(),
                panic_message(&*p)
            );
            drop_payload(p);
        }
    }
}

/// The default `init_concurrency`: the CPUs this process may use (cgroup quotas and CPU
/// affinity included).
pub(crate) fn default_init_concurrency() -> usize {
    num_cpus::get().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_limit_is_shortened_by_less_than_the_jitter() {
        assert_eq!(job_limit(10, 0.0), 10);
        assert_eq!(job_limit(10, 0.09), 10);
        assert_eq!(job_limit(10, 0.499), 6);
        assert_eq!(job_limit(1, 0.9), 1);
        assert_eq!(job_limit(u64::MAX, 0.0), u64::MAX);
        for index in 0..50 {
            for generation in 0..50 {
                let f = jitter_fraction(index, generation, 0.5);
                assert!((0.0..0.5).contains(&f), "{f}");
                assert!((5..=10).contains(&job_limit(10, f)));
            }
        }
        assert_eq!(jitter_fraction(3, 4, 0.0), 0.0);
        assert_eq!(jitter_fraction(3, 4, 0.5), jitter_fraction(3, 4, 0.5));
    }

    #[test]
    fn the_stash_hands_out_the_newest_value_of_the_asked_type_and_keeps_its_capacity() {
        let stash = Stash::new(2);
        assert!(stash.put(Box::new(1u32)).is_none());
        assert!(stash.put(Box::new(2u32)).is_none());
        let dropped = stash.put(Box::new(3u32)).expect("the oldest goes");
        assert_eq!(*dropped.downcast::<u32>().unwrap(), 1);
        assert_eq!(stash.take::<String>(), None);
        assert_eq!(stash.take::<u32>(), Some(3));
        assert_eq!(stash.take::<u32>(), Some(2));
        assert_eq!(stash.take::<u32>(), None);
        assert_eq!(stash.carried.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn turns_are_given_back() {
        let turns = InitTurns::new(2);
        let a = turns.rx.try_recv();
        let b = turns.rx.try_recv();
        assert!(a.is_ok() && b.is_ok());
        assert!(turns.rx.try_recv().is_err());
        drop(Turn(&turns));
        assert!(turns.rx.try_recv().is_ok());
    }
}
