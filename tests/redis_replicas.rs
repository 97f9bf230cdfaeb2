//! `wait_for_replicas` (issue 15 item 13) against a real primary and a real replica
//! (`--replicaof`): every settle is on the replica before the worker moves on; a replica that
//! is gone slows settles to the WAIT timeout but loses nothing.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use redis::Commands;
use support::redis::{RedisServer, command_calls};
use support::{PATIENCE, wait_until};
use threadtide::{RedisSource, RedisSourceBuilder, ThreadPoolManager};

const Q: &str = "fila:conferencia";
const RESULTS: &str = "fila:resultados";

fn replica_of(primary: &RedisServer) -> RedisServer {
    let port = primary.port.to_string();
    let replica =
        RedisServer::start_with(&["--appendonly", "no", "--replicaof", "127.0.0.1", &port]);
    let mut c = replica.conn();
    wait_until(
        PATIENCE,
        "the replica in sync",
        || {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut c).unwrap();
            info.contains("master_link_status:up")
        },
        || (),
    );
    replica
}

fn source(server: &RedisServer) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_secs(3))
        .block_timeout(Duration::from_millis(100))
}

fn run(source: &RedisSource<String>, jobs: usize, threads: usize) -> Duration {
    let ids: Vec<String> = (0..jobs).map(|i| format!("job-{i}")).collect();
    source.push(&ids).unwrap();
    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(1)
        .max_threads_per_type(threads)
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, id: &String| Ok(id.clone().into_bytes()),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    pool.start().unwrap();
    wait_until(
        PATIENCE * 3,
        "every job done",
        || source.summary().is_ok_and(|s| s.is_idle()),
        || source.summary(),
    );
    let took = started.elapsed();
    pool.shutdown();
    pool.wait().unwrap();
    took
}

#[test]
fn every_settle_is_on_the_replica_before_the_worker_moves_on() {
    let primary = RedisServer::start();
    let replica = replica_of(&primary);
    let source = source(&primary)
        .wait_for_replicas(1, Duration::from_secs(2))
        .build()
        .unwrap();
    let jobs = 300;
    run(&source, jobs, 3);
    let mut p = primary.conn();
    assert_eq!(p.llen::<_, usize>(RESULTS).unwrap(), jobs);
    let waits = command_calls(&mut p).get("wait").copied().unwrap_or(0);
    assert!(waits >= jobs as u64, "one WAIT per settle: {waits}");
    // Every worker returned from its last WAIT before the pool stopped: no waiting here.
    assert_eq!(replica.conn().llen::<_, usize>(RESULTS).unwrap(), jobs);
}

#[test]
fn a_missing_replica_slows_settles_to_the_timeout_and_loses_nothing() {
    let primary = RedisServer::start();
    let mut replica = replica_of(&primary);
    replica.kill();
    let source = source(&primary)
        .wait_for_replicas(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let jobs = 20;
    run(&source, jobs, 2);
    let mut p = primary.conn();
    assert_eq!(p.llen::<_, usize>(RESULTS).unwrap(), jobs);
    let waits = command_calls(&mut p).get("wait").copied().unwrap_or(0);
    assert!(waits >= jobs as u64, "one WAIT per settle: {waits}");
}

/// The cost of WAIT per job, against no WAIT in the same run (a measurement, not a check):
/// `cargo test --release --test redis_replicas -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it by hand"]
fn measure_wait_cost_per_job() {
    let primary = RedisServer::start();
    let _replica = replica_of(&primary);
    let jobs = 3000;
    for round in 0..2 {
        for wait in [false, true] {
            let _: () = primary.conn().del(RESULTS).unwrap();
            let mut b = source(&primary);
            if wait {
                b = b.wait_for_replicas(1, Duration::from_secs(1));
            }
            let took = run(&b.build().unwrap(), jobs, 4);
            eprintln!(
                "round {round} wait={wait}: {jobs} jobs in {took:?}: {:.1} us/job, {:.0} jobs/s",
                took.as_secs_f64() * 1e6 / jobs as f64,
                jobs as f64 / took.as_secs_f64()
            );
        }
    }
}
