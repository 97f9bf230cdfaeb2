//! The host's scenario: 322 jobs of 20 ms on one queue and 3 on another, caps 10 per queue and
//! 20 in all, into an idle pool. Makespan against the ideal lower bound (each queue's work over
//! the threads it may use: 322 x 20 ms / 10 = 644 ms) and against the host's original two fixed
//! threads, one per queue (322 x 20 ms = 6.44 s).
//!
//! `cargo bench -p threadtide-benches --bench host`

use std::convert::Infallible;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use threadtide::{MemorySource, ThreadPoolManager};

const JOB: Duration = Duration::from_millis(20);
const BIG: u32 = 322;
const SMALL: u32 = 3;

fn threadtide_makespan() -> Duration {
    let (a, b): (MemorySource<u32>, MemorySource<u32>) = (MemorySource::new(), MemorySource::new());
    let work = |_: &mut (), _: &u32| {
        std::thread::sleep(JOB);
        Ok(())
    };
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(50)
        .max_threads_per_type(10)
        .max_total_threads(20)
        .queue("conferencia", a.clone(), |_| Ok::<_, Infallible>(()), work)
        .queue("emissao", b.clone(), |_| Ok::<_, Infallible>(()), work)
        .build()
        .unwrap();
    pool.start().unwrap();
    std::thread::sleep(Duration::from_millis(60)); // idle
    let start = Instant::now();
    a.extend(0..BIG);
    b.extend(0..SMALL);
    while a.unfinished() + b.unfinished() > 0 {
        std::thread::sleep(Duration::from_micros(200));
    }
    let took = start.elapsed();
    pool.shutdown();
    pool.wait().unwrap();
    took
}

fn two_fixed_threads_makespan() -> Duration {
    let start = Instant::now();
    let run = |n: u32| {
        std::thread::spawn(move || {
            for _ in 0..n {
                std::thread::sleep(JOB);
            }
        })
    };
    let (x, y) = (run(BIG), run(SMALL));
    x.join().unwrap();
    y.join().unwrap();
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("host_scenario");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("threadtide_default", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| threadtide_makespan()).sum())
    });
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(70));
    group.bench_function("two_fixed_threads", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| two_fixed_threads_makespan()).sum())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
