//! Redis throughput through the full reliable cycle (fetch into a processing list, run a no-op,
//! acknowledge atomically with the result) with 1, 4 and 16 workers, against the same protocol
//! as a bare loop of Redis commands without the pool (the floor for that protocol), and against
//! a plain `BLPOP` + `RPUSH` loop (what the host did before, and what loses jobs). Also prints
//! Redis commands per job for each, from `INFO commandstats`.
//!
//! `cargo bench -p threadtide-benches --bench redis` (starts its own `redis-server` on a free
//! port)

#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod server;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use redis::{Commands, Script};
use server::RedisServer;
use threadtide::{RedisSource, ThreadPoolManager};

const JOBS: usize = 2000;

/// The acknowledgement of the reliable protocol, as the source's own script does it: refuse a
/// fenced worker, remove the job from the processing list, push the result.
const ACK: &str = r"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1";

fn push_round(conn: &mut redis::Connection, queue: &str) {
    let payloads: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    for chunk in payloads.chunks(500) {
        let _: () = conn.rpush(queue, chunk).unwrap();
    }
}

/// Calls per job of each command in one round, without the bench's own INFO and DEL and the
/// producer's RPUSH (one per 500 jobs). Commands run inside scripts count too (commandstats
/// counts them): `evalsha` is the round trip, `zscore`/`lrem`/`rpush`/`llen` its insides.
fn per_job(before: &HashMap<String, u64>, after: &HashMap<String, u64>) -> String {
    let mut calls: Vec<(String, f64)> = after
        .iter()
        .filter(|(k, _)| !["info", "del"].contains(&k.as_str()))
        .map(|(k, v)| {
            let mut n = v - before.get(k).copied().unwrap_or(0);
            if k == "rpush" {
                n -= JOBS.div_ceil(500) as u64;
            }
            (k.clone(), n as f64 / JOBS as f64)
        })
        .filter(|(_, n)| *n >= 0.005)
        .collect();
    calls.sort_by(|a, b| a.0.cmp(&b.0));
    calls
        .iter()
        .map(|(k, n)| format!("{k} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One way of consuming a queue, with its own keys so that all can stay live at once.
struct Rig {
    name: &'static str,
    queue: String,
    results: String,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
    pool: Option<ThreadPoolManager>,
}

impl Rig {
    /// `bare-reliable-loop` (BLMOVE + the ack script) or `blpop-rpush-loop`.
    fn bare(server: &RedisServer, name: &'static str, workers: usize) -> Rig {
        let queue = format!("bench:{name}");
        let results = format!("{queue}:results");
        let (done, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let threads = (0..workers)
            .map(|w| {
                let mut conn = server.conn();
                let (done, stop) = (done.clone(), stop.clone());
                let (queue, results) = (queue.clone(), results.clone());
                thread::spawn(move || {
                    let wid = format!("bare-{w}");
                    let processing = format!("{queue}:processing:{wid}");
                    let workers_key = format!("{queue}:workers");
                    let ack = Script::new(ACK);
                    let _: () = conn.zadd(&workers_key, &wid, 0).unwrap();
                    while !stop.load(Ordering::Acquire) {
                        let got = if name == "bare-reliable-loop" {
                            let job: Option<Vec<u8>> = redis::cmd("BLMOVE")
                                .arg(&queue)
                                .arg(&processing)
                                .arg("LEFT")
                                .arg("LEFT")
                                .arg(0.2)
                                .query(&mut conn)
                                .unwrap();
                            job.map(|job| {
                                let _: i64 = ack
                                    .key(&processing)
                                    .key(&workers_key)
                                    .key(&results)
                                    .arg(&wid)
                                    .arg(&job)
                                    .arg(&job)
                                    .invoke(&mut conn)
                                    .unwrap();
                            })
                        } else {
                            let job: Option<(String, Vec<u8>)> = redis::cmd("BLPOP")
                                .arg(&queue)
                                .arg(0.2)
                                .query(&mut conn)
                                .unwrap();
                            job.map(|(_, job)| {
                                let _: () = conn.rpush(&results, job).unwrap();
                            })
                        };
                        if got.is_some() {
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                })
            })
            .collect();
        Rig {
            name,
            queue,
            results,
            done,
            stop,
            threads,
            pool: None,
        }
    }

    /// The pool with the Redis source: the full reliable cycle.
    fn threadtide(server: &RedisServer, workers: usize) -> Rig {
        let queue = "bench:threadtide".to_owned();
        let results = format!("{queue}:results");
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let source = RedisSource::builder(server.url(), queue.as_str())
            .results(results.as_str())
            .build()
            .unwrap();
        let q = threadtide::Queue::new(
            "q",
            source,
            |_| Ok::<_, Infallible>(()),
            move |_, job: &Vec<u8>| {
                d.fetch_add(1, Ordering::AcqRel);
                Ok(job.clone())
            },
        )
        .min_threads(workers);
        let pool = ThreadPoolManager::builder()
            .max_threads_per_type(workers)
            .max_total_threads(workers)
            .add_queue(q)
            .build()
            .unwrap();
        pool.start().unwrap();
        Rig {
            name: "threadtide",
            queue,
            results,
            done,
            stop: Arc::default(),
            threads: Vec::new(),
            pool: Some(pool),
        }
    }

    /// Pushes one round of jobs and waits until they are all done; returns the time taken.
    fn round(&self, conn: &mut redis::Connection) -> Duration {
        let _: () = redis::cmd("DEL").arg(&self.results).query(conn).unwrap();
        let target = self.done.load(Ordering::Acquire) + JOBS;
        let start = Instant::now();
        push_round(conn, &self.queue);
        let deadline = start + Duration::from_secs(60);
        while self.done.load(Ordering::Acquire) < target {
            assert!(
                Instant::now() < deadline,
                "{}: jobs did not finish",
                self.name
            );
            thread::sleep(Duration::from_micros(200));
        }
        // The pool counts a job when its executor ran; wait for its acknowledgement too.
        while conn.llen::<_, usize>(&self.results).unwrap() < JOBS {
            thread::sleep(Duration::from_micros(200));
        }
        start.elapsed()
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Release);
        self.threads.into_iter().for_each(|t| t.join().unwrap());
        if let Some(pool) = self.pool {
            pool.shutdown();
            pool.wait().unwrap();
        }
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut group = c.benchmark_group("redis");
    group.sample_size(10);
    group.throughput(Throughput::Elements(JOBS as u64));
    let mut calls = Vec::new();
    let mut interleaved = Vec::new();
    for workers in [1usize, 4, 16] {
        let rigs = [
            Rig::bare(&server, "bare-reliable-loop", workers),
            Rig::bare(&server, "blpop-rpush-loop", workers),
            Rig::threadtide(&server, workers),
        ];
        for rig in &rigs {
            let before = server::command_calls(&mut conn);
            rig.round(&mut conn);
            calls.push((
                rig.name,
                workers,
                per_job(&before, &server::command_calls(&mut conn)),
            ));
            group.bench_function(BenchmarkId::new(rig.name, workers), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rig.round(&mut conn)).sum())
            });
        }
        // The same rounds interleaved, so that drift of a shared machine hits all alike.
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); rigs.len()];
        for r in 0..15 {
            for k in 0..rigs.len() {
                let i = (r + k) % rigs.len();
                times[i].push(rigs[i].round(&mut conn));
            }
        }
        let rate = |d: Duration| JOBS as f64 / d.as_secs_f64();
        let medians: Vec<f64> = times.into_iter().map(|t| rate(median(t))).collect();
        interleaved.push((workers, medians));
        for rig in rigs {
            rig.stop();
        }
    }
    group.finish();
    println!("\nInterleaved rounds ({JOBS} jobs each, median of 15), jobs/s:");
    println!("  workers  bare-reliable  blpop-rpush  threadtide  threadtide/bare-reliable");
    for (workers, m) in interleaved {
        println!(
            "  {workers:>7}  {:>13.0}  {:>11.0}  {:>10.0}  {:>23.0}%",
            m[0],
            m[1],
            m[2],
            m[2] / m[0] * 100.0
        );
    }
    println!("\nRedis calls per job (one round; idle polling included):");
    for (name, workers, c) in calls {
        println!("  {name:<20} {workers:>2} workers: {c}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
