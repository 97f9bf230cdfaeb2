//! A source written outside the crate sees the pool through `FetchContext` alone, the same view
//! the in-memory source uses: it learns of a retirement and of a shutdown while it waits, so an
//! idle worker retires and a shutdown ends at once even with an hour-long fetch timeout.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use support::{Gate, PATIENCE, wait_until};
use threadtide::{
    Consumer, FetchContext, FetchWait, JobError, JobSource, SourceError, ThreadPoolManager,
    Unacked, WorkerInfo,
};

/// Far longer than the test: a fetch that only ends at its deadline hangs the test.
const FETCH_TIMEOUT: Duration = Duration::from_secs(3600);

/// How each consumer waits for work.
#[derive(Clone, Copy, Debug)]
enum Style {
    /// Blocks in `FetchContext::recv_timeout` on the source's channel.
    Channel,
    /// Polls the channel and sleeps in `FetchContext::wait_timeout` between polls.
    Poll,
    /// Blocks on the channel in slices of its own, checking `FetchContext::is_interrupted`
    /// between them (as a source reading a socket with a timeout does).
    Slices,
}

/// A queue fed by a crossbeam channel, written as a host would write it.
#[derive(Clone)]
struct ChannelSource {
    tx: Sender<u32>,
    rx: Receiver<u32>,
    style: Style,
    done: Arc<AtomicUsize>,
}

impl ChannelSource {
    fn new(style: Style) -> Self {
        let (tx, rx) = unbounded();
        ChannelSource {
            tx,
            rx,
            style,
            done: Arc::default(),
        }
    }
}

impl JobSource for ChannelSource {
    type Job = u32;
    type Output = ();
    type Consumer = ChannelConsumer;

    fn backlog(&self) -> Result<usize, SourceError> {
        Ok(self.rx.len())
    }

    fn consumer(&self, _worker: &WorkerInfo) -> Result<ChannelConsumer, SourceError> {
        Ok(ChannelConsumer {
            source: self.clone(),
        })
    }
}

struct ChannelConsumer {
    source: ChannelSource,
}

impl Consumer for ChannelConsumer {
    type Job = u32;
    type Output = ();

    fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<u32>, SourceError> {
        let rx = &self.source.rx;
        match self.source.style {
            Style::Channel => match cx.recv_timeout(rx, Duration::MAX) {
                FetchWait::Ready(job) => Ok(Some(job)),
                FetchWait::Disconnected => Err(SourceError::new("the producer is gone")),
                _ => Ok(None),
            },
            Style::Poll => loop {
                if let Ok(job) = rx.try_recv() {
                    return Ok(Some(job));
                }
                if !cx.wait_timeout(Duration::from_secs(60)).is_timed_out()
                    || cx.remaining().is_zero()
                {
                    return Ok(None);
                }
            },
            Style::Slices => loop {
                if cx.is_interrupted() {
                    return Ok(None);
                }
                match rx.recv_timeout(Duration::from_millis(20).min(cx.remaining())) {
                    Ok(job) => return Ok(Some(job)),
                    Err(_) if cx.remaining().is_zero() => return Ok(None),
                    Err(_) => {}
                }
            },
        }
    }

    fn complete(
        &mut self,
        _job: u32,
        outcome: Result<(), JobError>,
    ) -> Result<(), Unacked<u32, ()>> {
        assert!(outcome.is_ok());
        self.source.done.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// Up to 4 workers (one per queued job), each job held at `gate` until the test opens it.
fn pool(source: &ChannelSource, gate: &Gate) -> ThreadPoolManager {
    pool_keeping(source, gate, 0)
}

/// [`pool`] with `min_threads` workers kept when idle.
fn pool_keeping(source: &ChannelSource, gate: &Gate, min_threads: usize) -> ThreadPoolManager {
    let gate = gate.clone();
    ThreadPoolManager::builder()
        .jobs_per_thread(1)
        .max_threads_per_type(4)
        .scale_down_delay(Duration::ZERO)
        .fetch_timeout(FETCH_TIMEOUT)
        .add_queue(
            threadtide::Queue::new(
                "custom",
                source.clone(),
                |_| Ok::<_, Infallible>(()),
                move |_, _job: &u32| {
                    gate.pass();
                    Ok(())
                },
            )
            .min_threads(min_threads),
        )
        .build()
        .unwrap()
}

/// A burst scales the queue up; once it is drained the idle workers must retire although their
/// fetch would only time out after an hour: the retirement request reaches them through the
/// context, whichever way they wait.
fn idle_workers_retire(style: Style) {
    let source = ChannelSource::new(style);
    let gate = Gate::default();
    let pool = pool(&source, &gate);
    pool.start().unwrap();
    for job in 0..400 {
        source.tx.send(job).unwrap();
    }
    wait_until(
        PATIENCE,
        "four workers, each holding a job of the burst",
        || gate.waiting() == 4,
        || pool.stats().total,
    );
    gate.open();
    wait_until(
        PATIENCE,
        "the burst to run",
        || source.done.load(Ordering::Acquire) == 400,
        || pool.stats().total,
    );
    wait_until(
        PATIENCE,
        &format!("{style:?}: every idle worker to retire"),
        || {
            let total = pool.stats().total;
            total.workers == 0 && total.retired == 4
        },
        || pool.stats().total,
    );
    // Retired, not ended by a deadline: the pool still serves new work.
    source.tx.send(400).unwrap();
    wait_until(
        PATIENCE,
        "a job after the retirement",
        || source.done.load(Ordering::Acquire) == 401,
        || pool.stats().total,
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    // With scale_down_delay(0) the pool above may have no worker left to stop: a pool that
    // keeps one idle worker, waiting in this style of fetch, shows the shutdown reaching it.
    let source = ChannelSource::new(style);
    let kept = pool_keeping(&source, &gate, 1);
    kept.start().unwrap();
    shutdown_promptly(&kept, style);
}

/// Shutdown reaches a worker waiting in the source at once.
fn shutdown_promptly(pool: &ThreadPoolManager, style: Style) {
    wait_until(
        PATIENCE,
        "a worker waiting in fetch",
        || pool.stats().total.workers >= 1,
        || pool.stats().total,
    );
    let started = Instant::now();
    let ended = pool.shutdown_timeout(PATIENCE);
    assert!(
        ended.is_ok(),
        "{style:?}: shutdown waited out a fetch ({ended:?} after {:?})",
        started.elapsed()
    );
}

#[test]
fn a_source_waiting_in_recv_timeout_retires_and_stops_when_asked() {
    idle_workers_retire(Style::Channel);
}

#[test]
fn a_source_sleeping_in_wait_timeout_retires_and_stops_when_asked() {
    idle_workers_retire(Style::Poll);
}

#[test]
fn a_source_checking_is_interrupted_between_slices_retires_and_stops_when_asked() {
    idle_workers_retire(Style::Slices);
}

/// The view's waits end at the limit given, and never pass the fetch's deadline.
#[test]
fn waits_end_at_their_limit_and_report_a_closed_channel() {
    let seen: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();

    struct Probe {
        seen: Arc<parking_lot::Mutex<Vec<String>>>,
        probed: bool,
    }
    impl Consumer for Probe {
        type Job = u32;
        type Output = ();
        fn fetch(&mut self, cx: &FetchContext<'_>) -> Result<Option<u32>, SourceError> {
            if !std::mem::replace(&mut self.probed, true) {
                let (tx, rx) = unbounded::<u32>();
                let mut seen = self.seen.lock();
                seen.push(format!("{:?}", cx.recv_timeout(&rx, Duration::ZERO)));
                let started = Instant::now();
                let waited = cx.wait_timeout(Duration::from_millis(30));
                let full = started.elapsed() >= Duration::from_millis(30);
                seen.push(format!("{waited:?} after the full limit: {full}"));
                tx.send(9).unwrap();
                seen.push(format!("{:?}", cx.recv_timeout(&rx, Duration::MAX)));
                drop(tx);
                seen.push(format!("{:?}", cx.recv_timeout(&rx, Duration::MAX)));
                seen.push(format!("{}", cx.is_interrupted()));
            }
            Ok(cx.recv_timeout(&crossbeam_channel::never::<u32>(), Duration::MAX)).map(|_| None)
        }
        fn complete(&mut self, _: u32, _: Result<(), JobError>) -> Result<(), Unacked<u32, ()>> {
            Ok(())
        }
    }
    struct ProbeSource(Arc<parking_lot::Mutex<Vec<String>>>);
    impl JobSource for ProbeSource {
        type Job = u32;
        type Output = ();
        type Consumer = Probe;
        fn backlog(&self) -> Result<usize, SourceError> {
            Ok(0)
        }
        fn consumer(&self, _: &WorkerInfo) -> Result<Probe, SourceError> {
            Ok(Probe {
                seen: Arc::clone(&self.0),
                probed: false,
            })
        }
    }
    let pool = ThreadPoolManager::builder()
        .fetch_timeout(FETCH_TIMEOUT)
        .add_queue(
            threadtide::Queue::new(
                "probe",
                ProbeSource(Arc::clone(&seen)),
                |_| Ok::<_, Infallible>(()),
                |_, _: &u32| Ok(()),
            )
            .min_threads(1),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "the probe to run",
        || seen.lock().len() == 5,
        || seen.lock().clone(),
    );
    assert_eq!(
        *seen.lock(),
        [
            "TimedOut",
            "TimedOut after the full limit: true",
            "Ready(9)",
            "Disconnected",
            "false"
        ]
    );
    shutdown_promptly(&pool, Style::Channel);
}
