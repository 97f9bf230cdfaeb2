//! Dispatch overhead: in-memory source, fixed thread count, no-op and 1 ms jobs, against peers
//! in the same run: bare worker threads draining a crossbeam channel (the floor), the
//! `threadpool` crate, and `rayon` (`spawn` in a scope).
//!
//! `cargo bench --bench dispatch`

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use threadtide::{MemorySource, Queue, ThreadPoolManager};

/// A job: spin for its work (`None`: a no-op) and count itself done.
fn work(job: Option<Duration>) {
    if let Some(d) = job {
        thread::sleep(d);
    }
    black_box(());
}

/// Counts finished jobs; the job that reaches the target wakes the waiting producer. Every
/// peer uses it, so the producer blocks instead of spinning on a core the workers need (the
/// machine has two).
struct Done {
    count: AtomicUsize,
    target: AtomicUsize,
    tx: crossbeam_channel::Sender<()>,
    rx: crossbeam_channel::Receiver<()>,
}

impl Done {
    fn new() -> Arc<Done> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Arc::new(Done {
            count: AtomicUsize::new(0),
            target: AtomicUsize::new(usize::MAX),
            tx,
            rx,
        })
    }

    /// Called by each job when it ends.
    fn one(&self) {
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.target.load(Ordering::Acquire) {
            let _ = self.tx.try_send(());
        }
    }

    /// Runs `push` (which submits `jobs` jobs) and waits until they have all run.
    fn round(&self, jobs: usize, push: impl FnOnce()) {
        let target = self.count.load(Ordering::Acquire) + jobs;
        self.target.store(target, Ordering::Release);
        push();
        self.rx.recv().unwrap();
    }
}

fn threadtide_pool(
    threads: usize,
    done: Arc<Done>,
) -> (ThreadPoolManager, MemorySource<Option<Duration>>) {
    let source: MemorySource<Option<Duration>> = MemorySource::new();
    let queue = Queue::new(
        "bench",
        source.clone(),
        |_| Ok::<_, Infallible>(()),
        move |_, job: &Option<Duration>| {
            work(*job);
            done.one();
            Ok(())
        },
    )
    .min_threads(threads);
    let pool = ThreadPoolManager::builder()
        .max_threads_per_type(threads)
        .max_total_threads(threads)
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    (pool, source)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    for threads in [2usize, 8] {
        for (label, job, jobs) in [
            ("noop", None, 20_000usize),
            ("1ms", Some(Duration::from_millis(1)), 8 * threads),
        ] {
            group.throughput(Throughput::Elements(jobs as u64));
            let id = |peer: &str| BenchmarkId::new(format!("{label}/{peer}"), threads);

            group.bench_function(id("floor-crossbeam"), |b| {
                let done = Done::new();
                let (tx, rx) = crossbeam_channel::unbounded::<Option<Duration>>();
                let workers: Vec<_> = (0..threads)
                    .map(|_| {
                        let (rx, done) = (rx.clone(), done.clone());
                        thread::spawn(move || {
                            for job in rx {
                                work(job);
                                done.one();
                            }
                        })
                    })
                    .collect();
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        done.round(jobs, || {
                            for _ in 0..jobs {
                                tx.send(job).unwrap();
                            }
                        });
                    }
                    start.elapsed()
                });
                drop(tx);
                workers.into_iter().for_each(|w| w.join().unwrap());
            });

            group.bench_function(id("threadtide"), |b| {
                let done = Done::new();
                let (pool, source) = threadtide_pool(threads, done.clone());
                wait_for_workers(&pool, threads);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        done.round(jobs, || {
                            for _ in 0..jobs {
                                source.push(job);
                            }
                        });
                    }
                    start.elapsed()
                });
                pool.shutdown();
                pool.wait().unwrap();
            });

            group.bench_function(id("threadpool"), |b| {
                let done = Done::new();
                let pool = threadpool::ThreadPool::new(threads);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        done.round(jobs, || {
                            for _ in 0..jobs {
                                let done = done.clone();
                                pool.execute(move || {
                                    work(job);
                                    done.one();
                                });
                            }
                        });
                    }
                    start.elapsed()
                });
                pool.join();
            });

            group.bench_function(id("rayon-scope"), |b| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        pool.scope(|s| {
                            for _ in 0..jobs {
                                s.spawn(move |_| work(job));
                            }
                        });
                    }
                    start.elapsed()
                });
            });
        }
    }
    group.finish();
}

fn wait_for_workers(pool: &ThreadPoolManager, threads: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().total.workers < threads {
        assert!(Instant::now() < deadline, "workers did not start");
        thread::sleep(Duration::from_millis(1));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
