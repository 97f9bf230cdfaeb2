//! How often a component that keeps failing says so in the log: one line when it loses its
//! source, one when it is back (with how long it was out), and at most one a minute while it
//! stays down. Events still fire for every error; only log lines are thinned.

use std::time::{Duration, Instant};

/// The longest a component stays silent in the log while it is down.
pub(crate) const REPEAT: Duration = Duration::from_secs(60);

/// An outage of one component (a worker's source, the monitor's backlog read of one queue).
#[derive(Debug, Default)]
pub(crate) struct Outage {
    /// When it began, and when its last line was logged; `None` while all is well.
    down: Option<(Instant, Instant)>,
    /// Errors in this outage.
    errors: u32,
}

/// What to log about a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The first error of an outage.
    Lost,
    /// Still down, `for` long, `errors` errors so far: a minute passed since the last line.
    Still { down_for: Duration, errors: u32 },
    /// Nothing: a line was logged less than a minute ago.
    Quiet,
}

impl Outage {
    /// Errors in the current outage (0 while all is well), the attempt number for back-off.
    pub(crate) fn errors(&self) -> u32 {
        self.errors
    }

    #[inline(always)]
    pub(crate) fn is_down(&self) -> bool {
        self.down.is_some()
    }

    /// Counts an error at `now` and says what to log.
    pub(crate) fn failed(&mut self, now: Instant) -> Line {
        self.errors = self.errors.saturating_add(1);
        match &mut self.down {
            None => {
                self.down = Some((now, now));
                Line::Lost
            }
            Some((since, last)) => {
                if now.saturating_duration_since(*last) >= REPEAT {
                    *last = now;
                    Line::Still {
                        down_for: now.saturating_duration_since(*since),
                        errors: self.errors,
                    }
                } else {
                    Line::Quiet
                }
            }
        }
    }

    /// Ends the outage at `now`: how long it lasted and how many errors it had, if there was
    /// one.
    pub(crate) fn recovered(&mut self, now: Instant) -> Option<(Duration, u32)> {
        let (since, _) = self.down.take()?;
        let errors = std::mem::take(&mut self.errors);
        Some((now.saturating_duration_since(since), errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_down_one_a_minute_one_back() {
        let t0 = Instant::now();
        let mut o = Outage::default();
        assert_eq!(o.recovered(t0), None);
        assert_eq!(o.failed(t0), Line::Lost);
        let mut lines = 0;
        // 10 minutes of errors every 50 ms: one line a minute.
        for i in 1..=12_000u64 {
            if o.failed(t0 + Duration::from_millis(50 * i)) != Line::Quiet {
                lines += 1;
            }
        }
        assert_eq!(lines, 10);
        assert_eq!(o.errors(), 12_001);
        let back = o.recovered(t0 + Duration::from_secs(601));
        assert_eq!(back, Some((Duration::from_secs(601), 12_001)));
        assert!(!o.is_down());
        assert_eq!(o.errors(), 0);
        assert_eq!(o.failed(t0 + Duration::from_secs(602)), Line::Lost);
    }
}
