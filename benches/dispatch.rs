//! Dispatch overhead: in-memory source, fixed thread count, no-op and 1 ms jobs, against peers
//! in the same run: bare worker threads draining a crossbeam channel (the floor), the
//! `threadpool` crate, and `rayon` (`spawn` in a scope).
//!
//! Every peer stays running across its samples, and after criterion's groups the same rounds
//! run interleaved (each peer in turn, order rotating) and print medians and ratios: on a shared
//! two-core machine that table drifts less than groups measured one after another.
//!
//! `cargo bench -p threadtide-benches --bench dispatch` runs both; with `-- interleaved` (a
//! filter that matches no criterion benchmark) only the interleaved rounds run, in about 20 s.

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

/// The floor's job: the same value in a type of its own, so that crossbeam's channel code is
/// compiled for the floor alone, as in a program that has only the floor. Sharing one
/// instantiation with threadtide's (whose source also uses a channel of the job type) would
/// let threadtide's uses change how the compiler inlines the floor's receive loop.
#[derive(Clone, Copy)]
struct FloorJob(Option<Duration>);

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

/// One peer, running: its threads live across rounds, so criterion's samples and the
/// interleaved rounds measure the same thing.
enum Rig {
    Floor {
        tx: crossbeam_channel::Sender<FloorJob>,
        done: Arc<Done>,
        workers: Vec<thread::JoinHandle<()>>,
    },
    Threadtide {
        pool: ThreadPoolManager,
        source: MemorySource<Option<Duration>>,
        done: Arc<Done>,
    },
    Threadpool {
        pool: threadpool::ThreadPool,
        done: Arc<Done>,
    },
    Rayon {
        pool: rayon::ThreadPool,
    },
}

const PEERS: [&str; 4] = ["floor-crossbeam", "threadtide", "threadpool", "rayon-scope"];

impl Rig {
    fn start(peer: &str, threads: usize) -> Rig {
        let done = Done::new();
        match peer {
            "floor-crossbeam" => {
                let (tx, rx) = crossbeam_channel::unbounded::<FloorJob>();
                let workers = (0..threads)
                    .map(|_| {
                        let (rx, done) = (rx.clone(), done.clone());
                        thread::spawn(move || {
                            for FloorJob(job) in rx {
                                work(job);
                                done.one();
                            }
                        })
                    })
                    .collect();
                Rig::Floor { tx, done, workers }
            }
            "threadtide" => {
                let source: MemorySource<Option<Duration>> = MemorySource::new();
                let d = done.clone();
                let queue = Queue::new(
                    "bench",
                    source.clone(),
                    |_| Ok::<_, Infallible>(()),
                    move |_, job: &Option<Duration>| {
                        work(*job);
                        d.one();
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
                wait_for_workers(&pool, threads);
                Rig::Threadtide { pool, source, done }
            }
            "threadpool" => Rig::Threadpool {
                pool: threadpool::ThreadPool::new(threads),
                done,
            },
            "rayon-scope" => Rig::Rayon {
                pool: rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap(),
            },
            _ => unreachable!("unknown peer {peer}"),
        }
    }

    /// Submits `jobs` copies of `job` and returns once all have run.
    fn round(&self, jobs: usize, job: Option<Duration>) -> Duration {
        let start = Instant::now();
        match self {
            Rig::Floor { tx, done, .. } => done.round(jobs, || {
                for _ in 0..jobs {
                    tx.send(FloorJob(job)).unwrap();
                }
            }),
            Rig::Threadtide { source, done, .. } => done.round(jobs, || {
                for _ in 0..jobs {
                    source.push(job);
                }
            }),
            Rig::Threadpool { pool, done } => done.round(jobs, || {
                for _ in 0..jobs {
                    let done = done.clone();
                    pool.execute(move || {
                        work(job);
                        done.one();
                    });
                }
            }),
            Rig::Rayon { pool } => pool.scope(|s| {
                for _ in 0..jobs {
                    s.spawn(move |_| work(job));
                }
            }),
        }
        start.elapsed()
    }

    fn stop(self) {
        match self {
            Rig::Floor { tx, workers, .. } => {
                drop(tx);
                workers.into_iter().for_each(|w| w.join().unwrap());
            }
            Rig::Threadtide { pool, .. } => {
                pool.shutdown();
                pool.wait().unwrap();
            }
            Rig::Threadpool { pool, .. } => pool.join(),
            Rig::Rayon { .. } => {}
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(4));
    group.sample_size(30);
    let mut interleaved = Vec::new();
    for threads in [2usize, 8] {
        for (label, job, jobs) in [
            ("noop", None, 20_000usize),
            ("1ms", Some(Duration::from_millis(1)), 8 * threads),
        ] {
            group.throughput(Throughput::Elements(jobs as u64));
            let rigs: Vec<Rig> = PEERS.iter().map(|p| Rig::start(p, threads)).collect();
            for (peer, rig) in PEERS.iter().zip(&rigs) {
                let id = BenchmarkId::new(format!("{label}/{peer}"), threads);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| rig.round(jobs, job)).sum())
                });
            }
            // The same rounds interleaved (A B C D, B C D A, ...), so that drift of a shared
            // machine hits every peer alike: the ratios to read.
            for _ in 0..WARM_UP_ROUNDS {
                rigs.iter().for_each(|rig| {
                    rig.round(jobs, job);
                });
            }
            let mut ns: Vec<Vec<f64>> = vec![Vec::new(); rigs.len()];
            for r in 0..INTERLEAVED_ROUNDS {
                for k in 0..rigs.len() {
                    let i = (r + k) % rigs.len();
                    ns[i].push(rigs[i].round(jobs, job).as_nanos() as f64 / jobs as f64);
                }
            }
            interleaved.push((
                label,
                threads,
                ns.into_iter().map(median).collect::<Vec<_>>(),
            ));
            rigs.into_iter().for_each(Rig::stop);
        }
    }
    group.finish();
    println!("\nInterleaved rounds (median of {INTERLEAVED_ROUNDS}), ns per job:");
    println!(
        "  {:<5} {:>7}  {:>15}  {:>10}  {:>10}  {:>11}  {:>16}  {:>21}",
        "jobs",
        "threads",
        PEERS[0],
        PEERS[1],
        PEERS[2],
        PEERS[3],
        "threadtide/floor",
        "threadpool/threadtide"
    );
    for (label, threads, m) in interleaved {
        println!(
            "  {label:<5} {threads:>7}  {:>15.1}  {:>10.1}  {:>10.1}  {:>11.1}  {:>15.2}x  {:>20.2}x",
            m[0],
            m[1],
            m[2],
            m[3],
            m[1] / m[0],
            m[2] / m[1]
        );
    }
}

/// Rounds per peer: enough that the median holds still on a shared two-core machine.
const INTERLEAVED_ROUNDS: usize = 201;
/// Unrecorded rounds first, for a run with the criterion groups filtered out.
const WARM_UP_ROUNDS: usize = 5;

fn wait_for_workers(pool: &ThreadPoolManager, threads: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().total.workers < threads {
        assert!(Instant::now() < deadline, "workers did not start");
        thread::sleep(Duration::from_millis(1));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
