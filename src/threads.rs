//! The pool's threads: their names, which pool a thread belongs to, and panics on them.

use std::any::Any;
use std::cell::{Cell, OnceCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once};

use crate::counters::Counters;

/// Linux keeps this many bytes of a thread name (`TASK_COMM_LEN` - 1); `ps -L`, `top -H` and
/// `/proc/*/task/*/comm` show no more.
pub(crate) const NAME_BYTES: usize = 15;

/// The name of a pool thread: `{prefix}-{queue}-{tail}` (`tail` is a worker's number or a role
/// such as `keeper`), or `{prefix}-{tail}` without a queue, in at most [`NAME_BYTES`] bytes.
///
/// The tail is always kept whole, so every worker's number stays visible; the prefix and the
/// queue name are shortened (the queue keeps at least half of the room left) when the whole
/// name does not fit. A name that fits is not changed.
pub(crate) fn thread_name(prefix: &str, queue: Option<&str>, tail: &str) -> String {
    let full = match queue {
        Some(q) => format!("{prefix}-{q}-{tail}"),
        None => format!("{prefix}-{tail}"),
    };
    if full.len() <= NAME_BYTES {
        return full;
    }
    // Room for the prefix and the queue, after the tail and the dashes.
    let dashes = if queue.is_some() { 2 } else { 1 };
    let room = NAME_BYTES.saturating_sub(tail.len() + dashes);
    match queue {
        None => format!("{}-{tail}", cut(prefix, room.max(1))),
        Some(q) => {
            let q_room = q
                .len()
                .min(room.saturating_sub(prefix.len()).max(room.div_ceil(2)));
            let p_room = room.saturating_sub(q_room).max(1);
            format!("{}-{}-{tail}", cut(prefix, p_room), cut(q, q_room.max(1)))
        }
    }
}

/// The longest start of `s` within `bytes` bytes that ends on a character boundary.
fn cut(s: &str, bytes: usize) -> &str {
    let mut end = bytes.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

thread_local! {
    /// The id of the pool whose worker or monitor runs on this thread (0: none).
    static POOL_OF_THREAD: Cell<usize> = const { Cell::new(0) };
    /// The counters of the worker running on this thread: their `busy` flag says whether a
    /// job's executor is running (set once per thread, so the hot path pays nothing).
    static WORKER: OnceCell<Arc<Counters>> = const { OnceCell::new() };
}

/// Whether the calling thread belongs to the pool `id`.
pub(crate) fn on_pool_thread(id: usize) -> bool {
    POOL_OF_THREAD.with(Cell::get) == id
}

pub(crate) fn mark_pool_thread(id: usize) {
    POOL_OF_THREAD.with(|c| c.set(id));
}

/// Marks the calling thread as a worker with these counters, for [`silence_job_panics`].
pub(crate) fn mark_worker_thread(counters: &Arc<Counters>) {
    WORKER.with(|w| {
        let _ = w.set(Arc::clone(counters));
    });
}

/// Whether the calling thread is a worker running a job's executor right now.
fn in_job() -> bool {
    WORKER
        .try_with(|w| w.get().is_some_and(|c| c.busy.load(Ordering::Relaxed)))
        .unwrap_or(false)
}

/// The text of a panic payload (`panic!` gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Drops a caught panic's payload, surviving a payload whose own `Drop` panics (it is leaked).
pub(crate) fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Stops the standard library from printing the panics of jobs, which the pool already
/// catches, counts and reports (an [`ErrorEvent`](crate::ErrorEvent) and a `warn` line).
///
/// By default a panicking job is printed twice: once by std's panic hook on stderr (with a
/// backtrace under `RUST_BACKTRACE=1`, often kilobytes per panic) and once by the pool's log
/// line. After this call, std's hook (or whatever hook was installed before) is skipped for a
/// panic raised inside a job's executor on a pool's worker thread; every other panic, in
/// `init`, in a source, on any other thread, is printed as before. Installs a process-wide
/// hook with [`std::panic::set_hook`], once: calling it again does nothing. A hook the host
/// installs later replaces it.
///
/// A host can also do this itself: `std::panic::set_hook(Box::new(|_| {}))` silences every
/// panic of the process.
///
/// # Examples
///
/// ```
/// threadtide::silence_job_panics();
/// ```
pub fn silence_job_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !in_job() {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_fifteen_bytes_and_keep_the_number() {
        for (prefix, queue, tail, want) in [
            ("rpa", Some("pdf"), "3", "rpa-pdf-3"),
            ("threadtide", Some("conferencia"), "12", "threa-confer-12"),
            ("rpa", Some("conferencia"), "6", "rpa-conferenc-6"),
            ("threadtide", Some("q"), "7", "threadtide-q-7"),
            ("threadtide", Some("emissao"), "keeper", "thr-emis-keeper"),
            ("threadtide", None, "monitor", "threadt-monitor"),
            ("rpa", None, "monitor", "rpa-monitor"),
            (
                "p",
                Some("q"),
                "18446744073709551615",
                "p-q-18446744073709551615",
            ),
        ] {
            let name = thread_name(prefix, queue, tail);
            assert_eq!(name, want);
            assert!(name.ends_with(tail));
            assert!(
                name.len() <= NAME_BYTES || tail.len() + 4 > NAME_BYTES,
                "{name}"
            );
        }
    }

    #[test]
    fn names_cut_on_character_boundaries() {
        let name = thread_name("çççççç", Some("ãããããããã"), "1");
        assert!(name.len() <= NAME_BYTES, "{name}");
        assert!(name.ends_with("-1"));
    }
}
