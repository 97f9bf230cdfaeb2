//! A workload profile and its line format (`profile_format.md`, shown in the module docs).

use std::fmt;
use std::time::Duration;

/// A workload: the pool's settings and, per queue, its arrivals and job durations.
///
/// Fields are public so a profile can be built in code; [`Profile::parse`] reads the line
/// format of the [module docs](crate::sim).
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Shown in reports. Defaults to `"profile"`.
    pub name: String,
    /// Arrivals happen within `[0, horizon)`; the run continues until every job is done.
    pub horizon: Duration,
    /// The monitor's tick (`rebalance_interval`). Defaults to 50 ms.
    pub tick: Duration,
    /// Interval between two samples of the series. Defaults to `horizon / 600`.
    pub sample: Duration,
    /// Seed of the pseudo-random arrivals and durations. Defaults to 1.
    pub seed: u64,
    /// The divisor rule's `jobs_per_thread`. Defaults to 50.
    pub jobs_per_thread: usize,
    /// Defaults to 10.
    pub max_threads_per_type: usize,
    /// Defaults to 20.
    pub max_total_threads: usize,
    /// Defaults to 30 s.
    pub scale_down_delay: Duration,
    /// The host's original manager checks the backlogs this often. Defaults to 60 s.
    pub host_check: Duration,
    /// The host's idle thread ends when its blocking pop times out after this. Defaults to
    /// 30 s (an assumption: the host's code does not say).
    pub host_pop_timeout: Duration,
    /// The queues, in order.
    pub queues: Vec<QueueProfile>,
}

/// One queue of a [`Profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct QueueProfile {
    /// The queue's name.
    pub name: String,
    /// How jobs arrive.
    pub arrivals: Vec<Arrival>,
    /// Median job duration. Defaults to 1 s.
    pub median: Duration,
    /// Sigma of the log-normal duration (0: every job lasts the median). Defaults to 0.3.
    pub sigma: f64,
    /// Periods when jobs last longer.
    pub slow: Vec<Slowdown>,
    /// A worker's start-up time (`init`: the login). Defaults to 0.
    pub init: Duration,
    /// Fraction of jobs that fail, in `[0, 1]`. Defaults to 0.
    pub failure: f64,
    /// The wait target. Defaults to none (the wait-target policy then uses the divisor).
    pub target_wait: Option<Duration>,
    /// Defaults to 1.
    pub weight: u32,
    /// Defaults to 0.
    pub min_threads: usize,
}

/// Jobs arriving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// `jobs` jobs at once, at `at`.
    Burst {
        /// When.
        at: Duration,
        /// How many.
        jobs: u64,
    },
    /// A Poisson process of `per_hour` jobs an hour between `from` and `to`.
    Rate {
        /// Start.
        from: Duration,
        /// End (exclusive).
        to: Duration,
        /// Mean arrivals per hour.
        per_hour: f64,
    },
}

/// Jobs started in `[from, to)` last `factor` times as long.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slowdown {
    /// Start.
    pub from: Duration,
    /// End (exclusive).
    pub to: Duration,
    /// Duration multiplier (> 0).
    pub factor: f64,
}

/// A line of a profile that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// 1-based line number (0: the profile as a whole).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "profile: {}", self.message)
        } else {
            write!(f, "profile line {}: {}", self.line, self.message)
        }
    }
}

impl std::error::Error for ProfileError {}

impl QueueProfile {
    /// A queue with every default and no arrivals.
    pub fn new(name: impl Into<String>) -> Self {
        QueueProfile {
            name: name.into(),
            arrivals: Vec::new(),
            median: Duration::from_secs(1),
            sigma: 0.3,
            slow: Vec::new(),
            init: Duration::ZERO,
            failure: 0.0,
            target_wait: None,
            weight: 1,
            min_threads: 0,
        }
    }
}

impl Profile {
    /// A profile with every default, a one-hour horizon and no queue.
    pub fn new(name: impl Into<String>) -> Self {
        let horizon = Duration::from_secs(3600);
        Profile {
            name: name.into(),
            horizon,
            tick: Duration::from_millis(50),
            sample: horizon / 600,
            seed: 1,
            jobs_per_thread: 50,
            max_threads_per_type: 10,
            max_total_threads: 20,
            scale_down_delay: Duration::from_secs(30),
            host_check: Duration::from_secs(60),
            host_pop_timeout: Duration::from_secs(30),
            queues: Vec::new(),
        }
    }

    /// Reads the line format of the [module docs](crate::sim).
    ///
    /// # Errors
    ///
    /// A [`ProfileError`] naming the line and what is wrong: an unknown key, a missing or
    /// unreadable value, a queue setting before any `queue` line, or an invalid profile (see
    /// [`Profile::check`]).
    pub fn parse(text: &str) -> Result<Profile, ProfileError> {
        let mut p = Profile::new("profile");
        let mut sample = None;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let content = raw.split('#').next().unwrap_or("").trim();
            if content.is_empty() {
                continue;
            }
            let words: Vec<&str> = content.split_whitespace().collect();
            let err = |m: String| ProfileError { line, message: m };
            let arg = |i: usize| -> Result<&str, ProfileError> {
                words
                    .get(i)
                    .copied()
                    .ok_or_else(|| err(format!("`{}` needs {i} value(s)", words[0])))
            };
            let dur = |i: usize| arg(i).and_then(|w| duration(w).map_err(err));
            let num = |i: usize| -> Result<f64, ProfileError> {
                let w = arg(i)?;
                w.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| err(format!("`{w}` is not a non-negative number")))
            };
            let int = |i: usize| -> Result<usize, ProfileError> {
                let w = arg(i)?;
                w.parse::<usize>()
                    .map_err(|_| err(format!("`{w}` is not a whole number")))
            };
            match words[0] {
                "name" => p.name = arg(1)?.to_owned(),
                "horizon" => p.horizon = dur(1)?,
                "tick" => p.tick = dur(1)?,
                "sample" => sample = Some(dur(1)?),
                "seed" => p.seed = int(1)? as u64,
                "jobs_per_thread" => p.jobs_per_thread = int(1)?,
                "max_threads_per_type" => p.max_threads_per_type = int(1)?,
                "max_total_threads" => p.max_total_threads = int(1)?,
                "scale_down_delay" => p.scale_down_delay = dur(1)?,
                "host_check" => p.host_check = dur(1)?,
                "host_pop_timeout" => p.host_pop_timeout = dur(1)?,
                "queue" => p.queues.push(QueueProfile::new(arg(1)?)),
                key => {
                    let Some(q) = p.queues.last_mut() else {
                        return Err(err(format!("unknown setting `{key}`")));
                    };
                    match key {
                        "burst" => q.arrivals.push(Arrival::Burst {
                            at: dur(1)?,
                            jobs: int(2)? as u64,
                        }),
                        "rate" => q.arrivals.push(Arrival::Rate {
                            from: dur(1)?,
                            to: dur(2)?,
                            per_hour: num(3)?,
                        }),
                        "duration" => {
                            q.median = dur(1)?;
                            if words.len() > 2 {
                                q.sigma = num(2)?;
                            }
                        }
                        "slow" => q.slow.push(Slowdown {
                            from: dur(1)?,
                            to: dur(2)?,
                            factor: num(3)?,
                        }),
                        "init" => q.init = dur(1)?,
                        "failure" => q.failure = num(1)?,
                        "target_wait" => q.target_wait = Some(dur(1)?),
                        "weight" => q.weight = int(1)? as u32,
                        "min_threads" => q.min_threads = int(1)?,
                        _ => return Err(err(format!("unknown setting `{key}`"))),
                    }
                }
            }
        }
        p.sample = sample.unwrap_or(p.horizon / 600);
        p.check()
            .map_err(|message| ProfileError { line: 0, message })?;
        Ok(p)
    }

    /// Checks the values a run needs.
    ///
    /// # Errors
    ///
    /// Names the field and the value: no queue, a zero horizon, tick or sample, a zero
    /// divisor or cap, a weight of 0, minimums above the caps, a failure rate above 1, a zero
    /// median, a slowdown factor of 0, a wait target of 0.
    pub fn check(&self) -> Result<(), String> {
        let zero = |f: &str, d: Duration| {
            if d.is_zero() {
                Err(format!("{f} must be longer than 0"))
            } else {
                Ok(())
            }
        };
        zero("horizon", self.horizon)?;
        zero("tick", self.tick)?;
        zero("sample", self.sample)?;
        zero("host_check", self.host_check)?;
        zero("host_pop_timeout", self.host_pop_timeout)?;
        for (f, v) in [
            ("jobs_per_thread", self.jobs_per_thread),
            ("max_threads_per_type", self.max_threads_per_type),
            ("max_total_threads", self.max_total_threads),
        ] {
            if v == 0 {
                return Err(format!("{f} must be at least 1"));
            }
        }
        if self.queues.is_empty() {
            return Err("add at least one `queue`".to_owned());
        }
        let mins: usize = self.queues.iter().map(|q| q.min_threads).sum();
        if mins > self.max_total_threads {
            return Err(format!(
                "the queues' min_threads ({mins}) pass max_total_threads"
            ));
        }
        for q in &self.queues {
            let f = |k: &str| format!("queue[{}].{k}", q.name);
            if q.weight == 0 {
                return Err(format!("{} must be at least 1", f("weight")));
            }
            if q.min_threads > self.max_threads_per_type {
                return Err(format!(
                    "{} ({}) passes max_threads_per_type",
                    f("min_threads"),
                    q.min_threads
                ));
            }
            if q.failure > 1.0 {
                return Err(format!(
                    "{} ({}) must be at most 1",
                    f("failure"),
                    q.failure
                ));
            }
            zero(&f("duration"), q.median)?;
            if let Some(t) = q.target_wait {
                zero(&f("target_wait"), t)?;
            }
            if q.slow.iter().any(|s| s.factor <= 0.0) {
                return Err(format!("{} factor must be above 0", f("slow")));
            }
        }
        Ok(())
    }
}

/// `250ms`, `30s`, `1.5m`, `2h`.
fn duration(word: &str) -> Result<Duration, String> {
    let split = word
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{word}` needs a unit (ms, s, m, h)"))?;
    let (num, unit) = word.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{word}` is not a duration"))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{word}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("`{word}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_format() {
        let p = Profile::parse(
            "name t\nhorizon 2h\nqueue a # c\n burst 1s 322\n rate 0s 1h 60\n duration 20s 0.5\n \
             slow 1h 2h 2\n init 8s\n target_wait 5m\n",
        )
        .unwrap();
        assert_eq!(p.horizon, Duration::from_secs(7200));
        assert_eq!(p.sample, Duration::from_secs(12));
        let q = &p.queues[0];
        assert_eq!(q.arrivals.len(), 2);
        assert_eq!((q.median, q.sigma), (Duration::from_secs(20), 0.5));
        assert_eq!(q.target_wait, Some(Duration::from_secs(300)));
    }

    #[test]
    fn errors_name_the_line() {
        let e = Profile::parse("horizon 1h\nqueue a\n rate 0s 1x 3\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.to_string().contains("1x"), "{e}");
        let e = Profile::parse("horizon 1h\nburst 1s 3\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Profile::parse("horizon 1h\n").unwrap_err();
        assert!(e.to_string().contains("queue"), "{e}");
    }
}
