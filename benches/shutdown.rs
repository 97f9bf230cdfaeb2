//! Drain and shutdown: time from asking a pool to shut down while its jobs run to every
//! thread joined, against the time those jobs still had to run. Zero jobs may be lost.
//!
//! `cargo bench -p threadtide-benches --bench shutdown`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use threadtide::{MemorySource, Queue, ThreadPoolManager};

const WORKERS: usize = 4;
const QUEUED: usize = 100;

/// Starts `WORKERS` jobs of `job` length, shuts down as soon as they all run, and returns how
/// much longer than the jobs' remaining run time the shutdown took.
fn sample(job: Duration) -> Duration {
    let running = Arc::new(AtomicUsize::new(0));
    let r = running.clone();
    let source: MemorySource<u32> = MemorySource::new();
    let queue = Queue::new(
        "q",
        source.clone(),
        |_| Ok::<_, Infallible>(()),
        move |_, _| {
            r.fetch_add(1, Ordering::AcqRel);
            std::thread::sleep(job);
            Ok(())
        },
    )
    .min_threads(WORKERS);
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(WORKERS)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    source.extend(0..(WORKERS + QUEUED) as u32);
    while running.load(Ordering::Acquire) < WORKERS {
        std::thread::yield_now();
    }
    let last_start = Instant::now(); // the last of the running jobs started just before
    pool.shutdown();
    pool.wait().unwrap();
    let took = last_start.elapsed();
    assert_eq!(
        source.unfinished(),
        QUEUED,
        "a job was lost or ran after shutdown"
    );
    assert_eq!(running.load(Ordering::Acquire), WORKERS);
    took.saturating_sub(job)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("shutdown");
    group.sample_size(20);
    for ms in [50u64, 200] {
        let job = Duration::from_millis(ms);
        group.bench_function(
            BenchmarkId::new("overhead_beyond_job", format!("{ms}ms")),
            |b| b.iter_custom(|iters| (0..iters).map(|_| sample(job)).sum()),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
