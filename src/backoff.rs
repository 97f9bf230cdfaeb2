//! Exponential back-off with jitter, shared by init retries, source errors and job retries.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// `initial * 2^(attempt - 1)`, capped at `max`, then "equal jitter": a uniformly random delay in
/// `[d/2, d]`, so that workers failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let full = self
            .initial
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(if nanos == 0 {
            0
        } else {
            random() % (nanos + 1)
        })
    }
}

/// A thread-local xorshift generator seeded from the standard library's random hasher keys:
/// jitter needs spread, not cryptographic quality.
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(0u64) | 1);
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_with_jitter_inside_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..200 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d40 = b.delay(40);
            assert!(d40 >= Duration::from_secs(1) && d40 <= Duration::from_secs(2));
        }
    }
}
