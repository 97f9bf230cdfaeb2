//! Stats snapshots, scaling decisions in the log at info, and events to a handler.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use parking_lot::Mutex;
use support::{Gate, PATIENCE, Recorder, wait_until};
use threadtide::{ErrorKind, JobError, MemorySource, ScaleReason, ThreadPoolManager};

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

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&LOG).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Personal data that a panic message quotes from its job, as real executors do.
const CPF: &str = "cpf=987.654.321-00";

#[test]
fn stats_events_and_log_lines_tell_what_the_pool_does() {
    capture_logs();
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
                1 => panic!("page crashed on order {job} ({CPF})"),
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
    // The panic message quotes the job: it reaches the log only at trace, and the event
    // carries it whole, as ErrorEvent::message documents.
    let leaked: Vec<_> = lines
        .iter()
        .filter(|(l, m)| *l < log::Level::Trace && m.contains(CPF))
        .collect();
    assert!(
        leaked.is_empty(),
        "a panic message above trace: {leaked:#?}"
    );
    assert!(has(log::Level::Trace, CPF), "{lines:#?}");
    let panics: Vec<_> = recorder
        .errors
        .lock()
        .iter()
        .filter(|e| e.kind == ErrorKind::JobPanic)
        .cloned()
        .collect();
    assert_eq!(panics.len(), 1, "{panics:?}");
    assert_eq!(
        panics[0].message,
        format!("page crashed on order 1 ({CPF})")
    );
}

/// Issue 15 #10 (worker side): a worker whose source keeps failing logs one line when it
/// loses it and one when it is back, however many errors in between; every error is still an
/// event.
#[test]
fn a_failing_source_logs_one_line_down_and_one_back() {
    capture_logs();
    let source = support::Faulty::default();
    source
        .fetch_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let recorder = Recorder::default();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("out")
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .event_handler(recorder.clone())
        .add_queue(
            threadtide::Queue::new(
                "q",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                |_, _| Ok(()),
            )
            .min_threads(1),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "30 source errors",
        || recorder.errors.lock().len() >= 30,
        || pool.stats(),
    );
    source
        .fetch_fails
        .store(false, std::sync::atomic::Ordering::SeqCst);
    source.push(0..3);
    wait_until(
        PATIENCE,
        "the source back",
        || source.completed.load(std::sync::atomic::Ordering::SeqCst) == 3,
        || pool.stats(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let lines: Vec<_> = LOG
        .0
        .lock()
        .iter()
        .filter(|(_, m)| m.starts_with("out-q-"))
        .cloned()
        .collect();
    let count = |text: &str| lines.iter().filter(|(_, m)| m.contains(text)).count();
    assert_eq!(count("lost its job source"), 1, "{lines:#?}");
    assert_eq!(count("still failing"), 0, "{lines:#?}");
    assert_eq!(count("job source is back after"), 1, "{lines:#?}");
    assert!(pool.stats().total.source_errors >= 30);
    // Suspended before every back-off, and once more before exit.
    assert!(source.suspends.load(std::sync::atomic::Ordering::SeqCst) >= 30);
}

/// Issue 15 #10 (monitor side): a backlog that cannot be read is one line when it starts and
/// one when it is readable again, however many ticks fail in between; every failure is still
/// an event and a count.
#[test]
fn an_unreadable_backlog_logs_one_line_down_and_one_back() {
    capture_logs();
    let source = support::Faulty::default();
    source
        .backlog_panics
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let recorder = Recorder::default();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("bl")
        .rebalance_interval(Duration::from_millis(1))
        .event_handler(recorder.clone())
        .queue(
            "unreadable",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "30 backlog errors",
        || pool.stats().total.source_errors >= 30,
        || pool.stats(),
    );
    source
        .backlog_panics
        .store(false, std::sync::atomic::Ordering::SeqCst);
    source.push(0..3);
    wait_until(
        PATIENCE,
        "jobs run once the backlog is readable",
        || source.completed.load(std::sync::atomic::Ordering::SeqCst) == 3,
        || pool.stats(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let lines: Vec<_> = LOG
        .0
        .lock()
        .iter()
        .filter(|(_, m)| m.starts_with("queue unreadable:"))
        .cloned()
        .collect();
    let count = |text: &str| lines.iter().filter(|(_, m)| m.contains(text)).count();
    assert_eq!(count("cannot read the backlog"), 1, "{lines:#?}");
    assert_eq!(count("backlog readable again"), 1, "{lines:#?}");
    let events = recorder.errors.lock().len() as u64;
    assert!(events >= 30, "{events}");
}

/// A panic in the source's `complete` (whose message quotes the job) and in a state's `Drop`:
/// the warn and error lines say what panicked, the message itself is logged at trace only.
#[test]
fn source_and_drop_panic_messages_are_logged_at_trace_only() {
    use threadtide::{Consumer, FetchContext, JobSource, MemoryConsumer, SourceError, Unacked};
    const SECRET: &str = "cpf=123.456.789-09";
    #[derive(Clone)]
    struct Src(MemorySource<u32>);
    struct Con(MemoryConsumer<u32, ()>);
    impl JobSource for Src {
        type Job = u32;
        type Output = ();
        type Consumer = Con;
        fn backlog(&self) -> Result<usize, SourceError> {
            self.0.backlog()
        }
        fn consumer(&self, w: &threadtide::WorkerInfo) -> Result<Con, SourceError> {
            self.0.consumer(w).map(Con)
        }
    }
    impl Consumer for Con {
        type Job = u32;
        type Output = ();
        fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<u32>, SourceError> {
            self.0.fetch(cx)
        }
        fn complete(
            &mut self,
            job: u32,
            outcome: Result<(), JobError>,
        ) -> Result<(), Unacked<u32, ()>> {
            if job == 1 {
                panic!("cannot acknowledge job {job} ({SECRET} zsrc)");
            }
            self.0.complete(job, outcome)
        }
    }
    struct Browser;
    impl Drop for Browser {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                panic!("browser for {SECRET} zdrop would not close");
            }
        }
    }
    capture_logs();
    let source = Src(MemorySource::new());
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("zsp")
        .backoff(Duration::from_millis(1), Duration::from_millis(2))
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(Browser),
            |_, _| Ok(()),
        )
        .build()
        .unwrap();
    source.0.push(1);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the complete panic",
        || pool.stats().total.source_errors >= 1,
        || pool.stats(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let logs = LOG.0.lock().clone();
    let mine = |tag: &str| -> Vec<(log::Level, String)> {
        logs.iter()
            .filter(|(_, m)| m.contains(tag))
            .cloned()
            .collect()
    };
    for tag in ["zsrc", "zdrop"] {
        let lines = mine(tag);
        assert!(!lines.is_empty(), "no {tag} line at all: {logs:?}");
        assert!(
            lines.iter().all(|(level, _)| *level == log::Level::Trace),
            "{tag} message above trace: {lines:?}"
        );
    }
    assert!(
        logs.iter()
            .any(|(l, m)| *l == log::Level::Error && m.contains("a drop panicked")),
        "{logs:?}"
    );
}
