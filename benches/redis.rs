//! Redis throughput through the full reliable cycle (fetch into a processing list, run a no-op,
//! acknowledge atomically with the result) with 1, 4 and 16 workers, against the same protocol
//! as a bare loop of Redis commands without the pool (the floor for that protocol), and against
//! a plain `BLPOP` + `RPUSH` loop (what the host did before, and what loses jobs). Also prints
//! Redis commands per job for each, from `INFO commandstats`.
//!
//! `cargo bench --bench redis` (starts its own `redis-server` on a free port)

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

const Q: &str = "bench:q";
const RESULTS: &str = "bench:results";
const JOBS: usize = 2000;

/// The acknowledgement of the reliable protocol, as the source's own script does it: refuse a
/// fenced worker, remove the job from the processing list, push the result.
const ACK: &str = r"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
if redis.call('LREM', KEYS[1], 1, ARGV[2]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[3])
return 1";

fn push_round(conn: &mut redis::Connection) {
    let payloads: Vec<String> = (0..JOBS).map(|i| format!("job-{i}")).collect();
    for chunk in payloads.chunks(500) {
        let _: () = conn.rpush(Q, chunk).unwrap();
    }
}

fn reset(conn: &mut redis::Connection) {
    let _: () = redis::cmd("DEL").arg(RESULTS).query(conn).unwrap();
}

fn commands(conn: &mut redis::Connection) -> HashMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
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
    calls.iter().map(|(k, n)| format!("{k} {n:.2}")).collect::<Vec<_>>().join(", ")
}

/// Runs `workers` bare-loop threads until `stop`; each job bumps `done`.
fn bare_workers(
    server: &RedisServer,
    workers: usize,
    reliable: bool,
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Vec<thread::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let mut conn = server.conn();
            let (done, stop) = (done.clone(), stop.clone());
            thread::spawn(move || {
                let wid = format!("bare-{w}");
                let processing = format!("{Q}:processing:{wid}");
                let ack = Script::new(ACK);
                let _: () = conn.zadd(format!("{Q}:workers"), &wid, 0).unwrap();
                while !stop.load(Ordering::Acquire) {
                    if reliable {
                        let job: Option<Vec<u8>> = redis::cmd("BLMOVE")
                            .arg(Q)
                            .arg(&processing)
                            .arg("LEFT")
                            .arg("LEFT")
                            .arg(0.2)
                            .query(&mut conn)
                            .unwrap();
                        if let Some(job) = job {
                            let _: i64 = ack
                                .key(&processing)
                                .key(format!("{Q}:workers"))
                                .key(RESULTS)
                                .arg(&wid)
                                .arg(&job)
                                .arg(&job)
                                .invoke(&mut conn)
                                .unwrap();
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                    } else {
                        let job: Option<(String, Vec<u8>)> =
                            redis::cmd("BLPOP").arg(Q).arg(0.2).query(&mut conn).unwrap();
                        if let Some((_, job)) = job {
                            let _: () = conn.rpush(RESULTS, job).unwrap();
                            done.fetch_add(1, Ordering::AcqRel);
                        }
                    }
                }
            })
        })
        .collect()
}

fn wait_done(done: &AtomicUsize, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.load(Ordering::Acquire) < target {
        assert!(Instant::now() < deadline, "jobs did not finish");
        thread::sleep(Duration::from_micros(200));
    }
}

fn bench(c: &mut Criterion) {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let mut group = c.benchmark_group("redis");
    group.sample_size(10);
    group.throughput(Throughput::Elements(JOBS as u64));
    let mut per_job_report = Vec::new();
    for workers in [1usize, 4, 16] {
        for (name, reliable) in [("bare-reliable-loop", true), ("blpop-rpush-loop", false)] {
            let done = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let threads = bare_workers(&server, workers, reliable, done.clone(), stop.clone());
            let before = commands(&mut conn);
            reset(&mut conn);
            let target = done.load(Ordering::Acquire) + JOBS;
            push_round(&mut conn);
            wait_done(&done, target);
            per_job_report.push((name, workers, per_job(&before, &commands(&mut conn))));
            group.bench_function(BenchmarkId::new(name, workers), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        reset(&mut conn);
                        let target = done.load(Ordering::Acquire) + JOBS;
                        push_round(&mut conn);
                        wait_done(&done, target);
                    }
                    start.elapsed()
                })
            });
            stop.store(true, Ordering::Release);
            threads.into_iter().for_each(|t| t.join().unwrap());
        }

        let source = RedisSource::builder(server.url(), Q).results(RESULTS).build().unwrap();
        let queue = threadtide::Queue::new("q", source, |_| Ok::<_, Infallible>(()), |_, job: &Vec<u8>| {
            Ok(job.clone())
        })
        .min_threads(workers);
        let pool = ThreadPoolManager::builder()
            .max_threads_per_type(workers)
            .max_total_threads(workers)
            .add_queue(queue)
            .build()
            .unwrap();
        pool.start().unwrap();
        let ok = || pool.stats().total.jobs_ok as usize;
        let before = commands(&mut conn);
        reset(&mut conn);
        let target = ok() + JOBS;
        push_round(&mut conn);
        while ok() < target {
            thread::sleep(Duration::from_micros(200));
        }
        per_job_report.push(("threadtide", workers, per_job(&before, &commands(&mut conn))));
        group.bench_function(BenchmarkId::new("threadtide", workers), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    reset(&mut conn);
                    let target = ok() + JOBS;
                    push_round(&mut conn);
                    while ok() < target {
                        thread::sleep(Duration::from_micros(200));
                    }
                }
                start.elapsed()
            })
        });
        pool.shutdown();
        pool.wait().unwrap();
    }
    group.finish();
    println!("\nRedis calls per job (one round of {JOBS} jobs; idle polling included):");
    for (name, workers, calls) in per_job_report {
        println!("  {name:<20} {workers:>2} workers: {calls}");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
