//! Reaction time: from pushing a burst (1, 60, 322 jobs) into an idle pool with default
//! settings to (a) the first job starting and (b) the target number of threads running.
//!
//! `cargo bench -p threadtide-benches --bench reaction`
//!
//! The host's old pool checked every 60 s; with a burst arriving at a random moment it waited
//! 30 s on average and 60 s at worst before starting a thread (computed, not measured here: a
//! sample would take a minute). `docs/BENCHMARKS.md` compares the two.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use parking_lot::{Condvar, Mutex};
use threadtide::{MemorySource, ThreadPoolManager};

/// Holds jobs until released, and remembers when the first one started.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    first_start: Mutex<Option<Instant>>,
}

impl Gate {
    fn pass(&self) {
        let now = Instant::now();
        self.first_start.lock().get_or_insert(now);
        let mut open = self.open.lock();
        while !*open {
            self.cv.wait(&mut open);
        }
    }
    fn release(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }
}

/// Pushes `burst` jobs into an idle pool with default settings and measures what `until`
/// says, from the push.
fn sample(burst: usize, until: impl Fn(&ThreadPoolManager, &Gate) -> Option<Instant>) -> Duration {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let source: MemorySource<u32> = MemorySource::new();
    let pool = ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, _| {
                g.pass();
                Ok(())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    // Idle, and at a random phase of the monitor's 50 ms tick, as a real burst would be.
    let phase = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        % 50_000_000;
    std::thread::sleep(Duration::from_millis(60) + Duration::from_nanos(u64::from(phase)));
    let pushed = Instant::now();
    source.extend(0..burst as u32);
    let deadline = pushed + Duration::from_secs(10);
    let reached = loop {
        if let Some(t) = until(&pool, &gate) {
            break t;
        }
        assert!(Instant::now() < deadline, "the pool never reacted");
        std::thread::sleep(Duration::from_micros(100));
    };
    gate.release();
    pool.shutdown();
    pool.wait().unwrap();
    reached.saturating_duration_since(pushed)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("reaction");
    group.sample_size(20);
    for burst in [1usize, 60, 322] {
        let target = burst.div_ceil(50).min(10);
        group.bench_function(BenchmarkId::new("first_job_started", burst), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| sample(burst, |_, g| *g.first_start.lock()))
                    .sum()
            })
        });
        group.bench_function(
            BenchmarkId::new(format!("{target}_threads_running"), burst),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            sample(burst, |p, _| {
                                let t = p.stats().total;
                                (t.workers >= target && t.busy >= target).then(Instant::now)
                            })
                        })
                        .sum()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
