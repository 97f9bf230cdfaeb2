//! `wait_for_replicas` (issue 15 item 13) against a real primary and a real replica
//! (`--replicaof`): every settle is on the replica before the worker moves on; a replica that
//! is gone slows settles to the WAIT timeout but loses nothing.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use redis::Commands;
use support::proxy::Proxy;
use support::redis::{RedisServer, command_calls};
use support::{PATIENCE, wait_until};
use threadtide::{RedisSource, RedisSourceBuilder, ThreadPoolManager};

const Q: &str = "fila:conferencia";
const RESULTS: &str = "fila:resultados";

fn replica_of(primary: &RedisServer) -> RedisServer {
    replica_via(primary.port)
}

/// A replica of the server on `port` (a primary, or a proxy in front of one).
fn replica_via(port: u16) -> RedisServer {
    let port = port.to_string();
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

/// Failover with a lagging replica, with and without WAIT (a measurement, not a check):
/// 400 jobs, all replicated before the pool starts; the replica replicates through a proxy;
/// after 100 results the proxy goes silent (the replica lags), the pool works on for up to 1 s,
/// the primary is killed (`kill -9`) and the proxy's connections reset (what was not
/// replicated is gone), the replica is promoted (`REPLICAOF NO ONE`), and a new pool on it
/// finishes the work.
/// Counts jobs lost (in no place on the new primary) and duplicate executions and results.
/// `cargo test --test redis_replicas measure_failover -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement; run it by hand"]
fn measure_failover_loss_with_and_without_wait() {
    for wait in [false, true] {
        let mut primary = RedisServer::start();
        let link = Proxy::start(primary.port);
        let replica = replica_via(link.port);
        let jobs = 400;
        let ids: Vec<String> = (0..jobs).map(|i| format!("job-{i}")).collect();
        let mut r = replica.conn();
        let runs: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
        let pool_on = |server: &RedisServer, wait: bool| {
            let mut b = source(server);
            if wait {
                b = b.wait_for_replicas(1, Duration::from_secs(5));
            }
            let source = b.build().unwrap();
            let log = std::sync::Arc::clone(&runs);
            let pool = ThreadPoolManager::builder()
                .jobs_per_thread(1)
                .max_threads_per_type(4)
                .queue(
                    "conferencia",
                    source.clone(),
                    |_| Ok::<_, Infallible>(()),
                    move |_, id: &String| {
                        log.lock().push(id.clone());
                        std::thread::sleep(Duration::from_millis(2));
                        Ok(id.clone().into_bytes())
                    },
                )
                .build()
                .unwrap();
            (source, pool)
        };
        let (first, pool) = pool_on(&primary, wait);
        first.push(&ids).unwrap();
        wait_until(
            PATIENCE,
            "jobs replicated",
            || r.llen::<_, usize>(Q).unwrap() == jobs,
            || (),
        );
        pool.start().unwrap();
        let mut p = primary.conn();
        wait_until(
            PATIENCE,
            "100 results",
            || p.llen::<_, usize>(RESULTS).unwrap() >= 100,
            || (),
        );
        link.go_silent();
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && p.llen::<_, usize>(RESULTS).unwrap() < 250 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let on_primary: usize = p.llen(RESULTS).unwrap();
        primary.kill();
        link.reset_all();
        let _ = pool.shutdown_timeout(Duration::from_secs(3));
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut r)
            .unwrap();
        let on_replica_at_promotion: usize = r.llen(RESULTS).unwrap();
        let (second, pool) = pool_on(&replica, false);
        pool.start().unwrap();
        wait_until(
            PATIENCE,
            "the new primary finished",
            || {
                second.summary().is_ok_and(|s| s.is_idle())
                    && r.llen::<_, usize>(RESULTS).unwrap() >= jobs
            },
            || second.summary(),
        );
        pool.shutdown();
        pool.wait().unwrap();
        let results: Vec<String> = r.lrange(RESULTS, 0, -1).unwrap();
        let lost = ids.iter().filter(|id| !results.contains(id)).count();
        let runs = std::mem::take(&mut *runs.lock());
        let dup_exec = runs.len().saturating_sub(jobs);
        let dup_results = results.len().saturating_sub(jobs);
        eprintln!(
            "failover wait={wait}: {jobs} jobs; results on the old primary at the kill \
             {on_primary}, on the replica at promotion {on_replica_at_promotion}; lost {lost}, \
             duplicate executions {dup_exec}, duplicate results {dup_results}"
        );
    }
}
