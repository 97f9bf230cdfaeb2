//! Stats snapshots, scaling decisions in the log at info, and events to a handler.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use parking_lot::Mutex;
use support::{Gate, PATIENCE, Recorder, wait_until};
use threadtide::{JobError, MemorySource, ScaleReason, ThreadPoolManager};

struct Capture(Mutex<Vec<(log::Level, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("threadtide") {
            self.0
                .lock()
                .push((record.level(), record.args().to_string()));
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn stats_events_and_log_lines_tell_what_the_pool_does() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let source: MemorySource<u32> = MemorySource::builder().max_attempts(1).build().unwrap();
    let gate = Gate::default();
    let recorder = Recorder::default();
    let g = gate.clone();
    let pool = ThreadPoolManager::builder()
        .scale_down_delay(Duration::ZERO)
        .event_handler(recorder.clone())
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &u32| match job {
                0 => Err(JobError::retryable("portal down")),
                1 => panic!("page crashed"),
                j if *j >= 1000 => {
                    g.pass();
                    Ok(())
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(())
                }
            },
        )
        .build()
        .unwrap();
    source.extend(1000..1322); // 322 held jobs
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "7 jobs held",
        || gate.waiting() == 7,
        || pool.stats(),
    );
    wait_until(
        PATIENCE,
        "backlog seen",
        || pool.stats().total.backlog == 315,
        || pool.stats(),
    );
    let stats = pool.stats();
    let q = stats.queue("conferencia").unwrap();
    assert_eq!(
        (q.workers, q.busy, q.target, q.backlog, q.spawned),
        (7, 7, 7, 315, 7),
        "{q:?}"
    );
    assert_eq!(stats.total.workers, 7);
    gate.open();
    wait_until(
        PATIENCE,
        "held jobs done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    source.extend(0..10);
    wait_until(
        PATIENCE,
        "jobs done",
        || source.unfinished() == 0,
        || pool.stats(),
    );
    // A worker leaves `workers` when it commits to retiring, and counts in `retired` once its
    // thread has exited: wait for the latter.
    wait_until(
        PATIENCE,
        "scaled down and exited",
        || {
            let t = pool.stats().total;
            t.workers == 0 && t.retired == t.spawned
        },
        || pool.stats(),
    );

    let stats = pool.stats();
    let q = stats.queue("conferencia").unwrap();
    assert_eq!(
        (q.jobs_ok, q.jobs_failed, q.jobs_panicked),
        (330, 1, 1),
        "{q:?}"
    );
    assert_eq!(q.spawned, q.retired, "{q:?}");
    let (mean, p99) = (q.mean_job_time.unwrap(), q.p99_job_time.unwrap());
    assert!(p99 >= mean, "{q:?}");
    assert_eq!(stats.total.jobs_ok, 330);

    let scales = recorder.scales.lock().clone();
    let first = &scales[0].1;
    assert_eq!(
        (first.backlog, first.from, first.to, first.reason),
        (322, 0, 7, ScaleReason::Up)
    );
    assert!(
        scales
            .iter()
            .any(|(_, e)| e.reason == ScaleReason::Down && e.to == 0)
    );
    assert!(recorder.starts.lock().len() >= 7);

    let lines = LOG.0.lock().clone();
    let has =
        |level: log::Level, text: &str| lines.iter().any(|(l, m)| *l == level && m.contains(text));
    assert!(
        has(
            log::Level::Info,
            "queue conferencia: 322 jobs -> scaling up 0 -> 7 threads"
        ),
        "{lines:#?}"
    );
    assert!(has(log::Level::Info, "scaling down"), "{lines:#?}");
    assert!(has(log::Level::Debug, "threads, no change"), "{lines:#?}");
    assert!(has(log::Level::Warn, "job panicked"), "{lines:#?}");
    assert!(
        !lines.iter().any(|(_, m)| m.contains("1000")),
        "a payload reached the log"
    );
}
