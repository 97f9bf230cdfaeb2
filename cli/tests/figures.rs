//! The figures in docs/OPERATIONS.md, measured (not asserted: speed is written down, not
//! tested against a clock). Ignored by default; reproduce with
//!
//! ```text
//! cargo test --release -p threadtide-cli --test figures -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Each still checks what it measured is right (20 processes listed, 10,000 jobs moved).

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use support::{PATIENCE, RedisServer, Worker, json, wait_until};
use threadtide::{JobError, RedisSource, ThreadPoolManager};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn status_with_20_processes_and_4_queues() {
    let redis = RedisServer::start();
    let url = redis.url();
    let queues = [
        ("conferencia", "fila:conferencia"),
        ("emissao", "fila:emissao"),
        ("pdf", "fila:pdf"),
        ("login", "fila:login"),
    ];
    let _workers: Vec<Worker> = (0..20)
        .map(|_| {
            Worker::start(
                &redis,
                &queues,
                &["--heartbeat-ms", "1000", "--worker-ttl-ms", "5000"],
            )
        })
        .collect();
    wait_until(
        PATIENCE,
        "20 processes in status",
        || {
            json(&url, &["status"])["processes"]
                .as_array()
                .unwrap()
                .len()
                == 20
        },
        || {
            json(&url, &["status"])["processes"]
                .as_array()
                .map(Vec::len)
        },
    );
    let runs: Vec<Duration> = (0..20)
        .map(|_| {
            let t = Instant::now();
            let s = json(&url, &["status"]);
            let took = t.elapsed();
            assert_eq!(s["queues"].as_array().unwrap().len(), 4);
            took
        })
        .collect();
    println!(
        "status, 20 processes x 4 queues, whole command (spawn, connect, reads, JSON): median {:?}, max {:?}",
        median(runs.clone()),
        runs.iter().max().unwrap()
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn requeue_of_10000_dead_jobs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let key = "fila:conferencia";
    let source = RedisSource::builder(redis.url(), key)
        .max_attempts(1)
        .build()
        .unwrap();
    let payloads: Vec<Vec<u8>> = (0..10_000)
        .map(|i| format!(r#"{{"id":"{i}","ms":1,"cpf":"000.000.000-00"}}"#).into_bytes())
        .collect();
    source.push(&payloads).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _: &Vec<u8>| Err(JobError::permanent("rejected")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        Duration::from_secs(120),
        "10,000 dead letters",
        || {
            source
                .summary()
                .is_ok_and(|s| s.dead == 10_000 && s.is_idle())
        },
        || source.summary(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let t = Instant::now();
    let report = json(&url, &["dead", "requeue", "--queue", key, "--yes"]);
    let took = t.elapsed();
    assert_eq!(report["moved"], 10_000, "{report}");
    assert_eq!(source.summary().unwrap().ready, 10_000);
    println!("dead requeue --yes of 10,000 jobs, whole command: {took:?}");
}
