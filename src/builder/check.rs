//! The checks of `Builder::build()`: every setting of the pool and of its queues, each
//! failure a [`BuildError`] naming the field and the value. The setters never check.

use std::collections::HashSet;

use super::Queue;
use crate::config::{Config, MAX_THREADS, MAX_WAIT, MIN_WAIT};
use crate::error::BuildError;

/// The largest [`Builder::stack_size`](super::Builder::stack_size): 1 GiB.
const MAX_STACK: usize = 1 << 30;

/// The pool-wide settings: counts, waits, back-off, stack size, thread names.
pub(super) fn pool(c: &Config) -> Result<(), BuildError> {
    let positive = [
        ("jobs_per_thread", c.jobs_per_thread),
        ("max_threads_per_type", c.max_threads_per_type),
        ("max_total_threads", c.max_total_threads),
    ];
    for (field, value) in positive {
        if value == 0 {
            return Err(BuildError::new(field, value, "must be at least 1"));
        }
    }
    for (field, value) in &positive[1..] {
        if *value > MAX_THREADS {
            return Err(BuildError::new(
                *field,
                value,
                format!("must be at most {MAX_THREADS}"),
            ));
        }
    }
    let floored = [
        ("rebalance_interval", c.rebalance_interval),
        ("fetch_timeout", c.fetch_timeout),
    ];
    for (field, value) in floored {
        // Shorter waits make the monitor or every idle worker spin on a core.
        if value < MIN_WAIT {
            return Err(BuildError::new(
                field,
                format!("{value:?}"),
                format!("must be at least {MIN_WAIT:?}"),
            ));
        }
    }
    if c.backoff.initial.is_zero() {
        return Err(BuildError::new(
            "backoff.initial",
            "0s",
            "must be longer than zero",
        ));
    }
    let bounded = [
        ("rebalance_interval", c.rebalance_interval),
        ("fetch_timeout", c.fetch_timeout),
        ("backoff.initial", c.backoff.initial),
        ("backoff.max", c.backoff.max),
    ];
    for (field, value) in bounded {
        if value > MAX_WAIT {
            return Err(BuildError::new(
                field,
                format!("{value:?}"),
                "must be at most one day (86400s)",
            ));
        }
    }
    // A failing `init` or source would be retried in a tight loop.
    if c.backoff.initial < MIN_WAIT {
        return Err(BuildError::new(
            "backoff.initial",
            format!("{:?}", c.backoff.initial),
            format!("must be at least {MIN_WAIT:?}"),
        ));
    }
    if let Some(size) = c.stack_size
        && size > MAX_STACK
    {
        return Err(BuildError::new(
            "stack_size",
            size,
            format!("must be at most {MAX_STACK} bytes (1 GiB)"),
        ));
    }
    if c.backoff.max < c.backoff.initial {
        return Err(BuildError::new(
            "backoff.max",
            format!("{:?}", c.backoff.max),
            format!(
                "must not be shorter than backoff.initial ({:?})",
                c.backoff.initial
            ),
        ));
    }
    check_name("thread_name_prefix", &c.thread_name_prefix)?;
    Ok(())
}

/// The queues: at least one, unique valid names, and each queue's own settings against the
/// pool's caps.
pub(super) fn queues(queues: &[Queue], c: &Config) -> Result<(), BuildError> {
    if queues.is_empty() {
        return Err(BuildError::new("queues", "[]", "add at least one queue"));
    }
    let mut seen = HashSet::new();
    for q in queues {
        check_name("queue.name", &q.name)?;
        let field = |f: &str| format!("queue[{}].{f}", q.name);
        if !seen.insert(q.name.as_str()) {
            return Err(BuildError::new(
                field("name"),
                &q.name,
                "duplicate queue name",
            ));
        }
        if q.weight == 0 {
            return Err(BuildError::new(field("weight"), 0, "must be at least 1"));
        }
        if q.recycle_after == Some(0) {
            return Err(BuildError::new(
                field("recycle_after"),
                0,
                "must be at least 1 (leave unset to never recycle)",
            ));
        }
        if let Some(t) = q.target_wait
            && !(MIN_WAIT..=MAX_WAIT).contains(&t)
        {
            return Err(BuildError::new(
                field("target_wait"),
                format!("{t:?}"),
                format!("must be between {MIN_WAIT:?} and one day (86400s)"),
            ));
        }
        crate::life_config::check(q, &field)?;
        if q.min_threads > c.max_threads_per_type {
            return Err(BuildError::new(
                field("min_threads"),
                q.min_threads,
                format!("exceeds max_threads_per_type ({})", c.max_threads_per_type),
            ));
        }
    }
    if c.min_free_memory == Some(0) {
        return Err(BuildError::new(
            "min_free_memory",
            0,
            "must be at least 1 byte (leave unset for no memory gate)",
        ));
    }
    let mins: usize = queues.iter().map(|q| q.min_threads).sum();
    if mins > c.max_total_threads {
        return Err(BuildError::new(
            "max_total_threads",
            c.max_total_threads,
            format!("is below the sum of the queues' min_threads ({mins})"),
        ));
    }
    Ok(())
}

fn check_name(field: &str, name: &str) -> Result<(), BuildError> {
    if name.is_empty() {
        return Err(BuildError::new(field, "\"\"", "must not be empty"));
    }
    if name.contains('\0') {
        return Err(BuildError::new(
            field,
            format!("{name:?}"),
            "must not contain NUL",
        ));
    }
    Ok(())
}
