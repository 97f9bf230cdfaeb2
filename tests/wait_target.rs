//! A queue with a wait target is sized by its measured job duration (Little's law), not by
//! `jobs_per_thread`, and shows what it learned in `stats()`.

mod support;

use std::convert::Infallible;
use std::thread;
use std::time::Duration;

use parking_lot::Mutex;
use support::{PATIENCE, wait_until};
use threadtide::{MemorySource, Queue, ThreadPoolManager};

struct Capture(Mutex<Vec<String>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("threadtide") && record.level() == log::Level::Info {
            self.0.lock().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

static LOG: Capture = Capture(Mutex::new(Vec::new()));

const JOB: Duration = Duration::from_millis(20);
const TARGET: Duration = Duration::from_millis(500);

#[test]
fn a_wait_target_sizes_the_queue_by_its_measured_duration() {
    log::set_logger(&LOG).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    let source: MemorySource<u32> = MemorySource::new();
    let queue = Queue::new(
        "conf",
        source.clone(),
        |_| Ok::<_, Infallible>(()),
        |_, _| {
            thread::sleep(JOB);
            Ok(())
        },
    )
    .target_wait(TARGET);
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("wt")
        // The divisor rule would run one thread for any backlog up to 1000.
        .jobs_per_thread(1000)
        .scale_down_delay(Duration::from_secs(600))
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    source.extend(0..3);
    wait_until(
        PATIENCE,
        "a duration estimate",
        || pool.stats().queues[0].job_duration_estimate.is_some(),
        || pool.stats(),
    );
    let stats = pool.stats();
    let q = &stats.queues[0];
    let d = q.job_duration_estimate.unwrap();
    // At least the sleep, within the histogram's 6%; a loaded machine may add a few ms.
    assert!(
        d >= JOB.mul_f64(0.94) && d < JOB * 5,
        "estimate {d:?} for {JOB:?} jobs"
    );
    let learned = q.learned_jobs_per_thread.unwrap();
    let expected = TARGET.as_secs_f64() / d.as_secs_f64();
    assert!((learned - expected).abs() < 1e-6, "{learned} vs {expected}");
    assert_eq!(q.target_wait, Some(TARGET));

    // 200 jobs of 20 ms to be waited on at most 500 ms: 200 * 0.02 / 0.5 = 8 threads (or the
    // cap of 10 if the machine makes jobs longer); the divisor would give 1.
    source.extend(0..200);
    wait_until(
        PATIENCE,
        "the wait rule to start at least 6 workers",
        || pool.stats().queues[0].workers >= 6,
        || pool.stats(),
    );
    let stats = pool.stats();
    assert!(stats.queues[0].estimated_wait.is_some(), "{stats:?}");
    // The decision's log line says what the rule saw and learned.
    let lines = LOG.0.lock().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("queue conf: ")
            && l.contains("scaling up")
            && l.contains("s target, jobs of 0.0")
            && l.contains("jobs per thread")
            && l.contains("estimated wait")),
        "{lines:#?}"
    );
    wait_until(
        PATIENCE,
        "the backlog to drain",
        || source.is_empty() && pool.stats().queues[0].busy == 0,
        || pool.stats(),
    );
    let stats = pool.stats();
    let q = &stats.queues[0];
    assert!(
        q.arrival_rate.is_some() && q.completion_rate.is_some(),
        "{q:?}"
    );
    pool.shutdown();
    pool.wait().unwrap();
}

#[test]
fn a_target_wait_outside_its_range_is_refused_by_name() {
    for bad in [Duration::ZERO, Duration::from_secs(86_401)] {
        let source: MemorySource<u32> = MemorySource::new();
        let queue =
            Queue::new("conf", source, |_| Ok::<_, Infallible>(()), |_, _| Ok(())).target_wait(bad);
        let err = ThreadPoolManager::builder()
            .add_queue(queue)
            .build()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("queue[conf].target_wait") && text.contains(&format!("{bad:?}")),
            "{text}"
        );
    }
}
