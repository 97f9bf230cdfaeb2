//! A wait target across a fleet (issue 12): real `rpa_worker` processes on one real
//! `redis-server` measure together, size the queue by the wait rule on the fleet's numbers,
//! keep the learned duration in Redis across a restart of the whole fleet, and let old
//! measurements age out.
#![cfg(feature = "redis")]

mod fleet_support;
mod support;

use std::time::{Duration, Instant};

use fleet_support::*;
use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};
use threadtide::admin::{Admin, ProcessQueue};

/// The queue's record in the first live process that serves it (of process `pid` if given:
/// the records of processes that just exited live on for a TTL).
fn record_of(admin: &Admin, pid: Option<u32>) -> Option<ProcessQueue> {
    admin
        .processes()
        .ok()?
        .into_iter()
        .filter(|p| pid.is_none_or(|pid| p.pid == pid))
        .flat_map(|p| p.queues)
        .find(|q| q.key == Q)
}

/// Starts and finishes of the runs whose id starts with `prefix`, from one read of the
/// execution log (each process appends its lines in the order things happened).
fn starts_and_finishes(scratch: &Scratch, prefix: &str) -> (usize, usize) {
    let text = std::fs::read_to_string(scratch.path(EXEC_LOG)).unwrap_or_default();
    let mine = text
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .filter(|f| f.len() >= 5 && f[1].starts_with(prefix));
    let (mut starts, mut finishes) = (0, 0);
    for f in mine {
        if f.len() == 5 {
            starts += 1;
        } else {
            finishes += 1;
        }
    }
    (starts, finishes)
}

/// Three processes with a 4 s wait target on 600 jobs of 100 ms and a divisor that alone would
/// give one thread (`--jobs-per-thread 1000`). The fleet's numbers ask for about
/// `600 x 0.1 / 4 = 15` threads over the fleet (more as the jobs age): the fleet runs about
/// that, spread over the processes, and not the 3 x 12 that each process sizing on the whole
/// backlog by itself would start. Then, with every process gone, one is started on jobs of
/// 10 s: its record shows the 0.1 s the fleet learned, and it starts threads for it, before
/// its first job finishes.
#[test]
fn three_processes_size_by_the_fleet_wait_and_a_restart_starts_from_what_they_learned() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-wait");
    push(&mut conn, Q, "c", 600, 100);
    let common = [
        "--target-wait",
        "conferencia=4",
        "--jobs-per-thread",
        "1000",
        "--max-threads-per-type",
        "12",
        "--scale-down-delay-ms",
        "300",
    ];
    let mut extra = common.to_vec();
    extra.push("--exit-when-idle");
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&server, &scratch, &format!("p{i}"), &extra))
        .collect();
    for p in &mut procs {
        assert!(p.wait_exit(PATIENCE * 2).success());
    }
    let done = results(&mut conn);
    let (lost, dups) = lost_and_duplicates(&done, "c", 600);
    assert!(
        lost.is_empty() && dups.is_empty(),
        "lost {lost:?}, duplicates {dups:?}"
    );
    let runs = runs(&scratch);
    let fleet_peak = peak(&runs, "conferencia");
    let per_process: Vec<usize> = (0..3)
        .map(|i| {
            let pid = procs[i].pid().to_string();
            let mine: Vec<Done> = runs.iter().filter(|r| r.pid == pid).cloned().collect();
            peak(&mine, "conferencia")
        })
        .collect();
    println!("fleet-wide peak {fleet_peak}, per process {per_process:?}");
    // The divisor alone gives 1; each process sizing on the whole backlog by itself, 36.
    assert!(
        (10..=24).contains(&fleet_peak),
        "fleet-wide peak {fleet_peak} (per process {per_process:?}): the wait rule on the \
         fleet's numbers asks for about 15"
    );
    assert!(
        per_process.iter().all(|&p| p >= 2),
        "the threads spread over the processes: {per_process:?}"
    );
    // What the fleet learned is in Redis: 600 jobs went through the windows of 64.
    let prev: std::collections::HashMap<String, u64> =
        conn.hgetall(format!("{Q}:fleet:durations:prev")).unwrap();
    assert!(prev.get("jobs").is_some_and(|&n| n >= 64), "{prev:?}");

    // A restart of the whole fleet (every process has exited): one process, jobs of 10 s.
    push(&mut conn, Q, "r", 400, 10_000);
    let started = Instant::now();
    let one = Proc::start(&server, &scratch, "restarted", &common);
    let pid = Some(one.pid());
    let admin = Admin::connect(&server.url()).unwrap();
    wait_until(
        PATIENCE,
        "the restarted process's record shows a duration estimate",
        || record_of(&admin, pid).is_some_and(|q| q.job_duration_estimate.is_some()),
        || record_of(&admin, pid),
    );
    let q = record_of(&admin, pid).unwrap();
    println!(
        "restarted: the stored estimate in its record {:?} after its start",
        started.elapsed()
    );
    let d = q.job_duration_estimate.unwrap().as_secs_f64();
    assert!(
        (d - 0.1).abs() <= 0.1 / 16.0,
        "stored estimate {d} s: {q:?}"
    );
    let learned = q.learned_jobs_per_thread().unwrap();
    assert!((learned - 40.0).abs() <= 40.0 / 15.0, "{q:?}");
    assert!(q.estimated_wait.is_some(), "{q:?}");
    assert_eq!(
        starts_and_finishes(&scratch, "r").1,
        0,
        "seen before a 10 s job finished"
    );
    // 400 jobs x 0.1 s / 4 s = 10 threads by what the fleet learned (the divisor: 1), started
    // before any of its jobs finished: one read of the log shows the starts and no finish.
    let deadline = Instant::now() + PATIENCE;
    let seen = loop {
        let (starts, finishes) = starts_and_finishes(&scratch, "r");
        if starts >= 8 || Instant::now() > deadline {
            break (starts, finishes);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "restarted: {} runs started, {} finished, {:?} after its start",
        seen.0,
        seen.1,
        started.elapsed()
    );
    assert!(
        seen.0 >= 8 && seen.1 == 0,
        "runs started / finished of the 10 s jobs: {seen:?} (the record: {:?})",
        record_of(&admin, pid)
    );
}

/// The stored numbers age: after jobs of 100 ms, 300 jobs of 20 ms replace them (the two
/// windows hold at most 128 jobs), so a site that got faster is learned again.
#[test]
fn the_stored_duration_ages_out() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-wait-age");
    let admin = Admin::connect(&server.url()).unwrap();
    let extra = [
        "--target-wait",
        "2",
        "--exit-when-idle",
        "--scale-down-delay-ms",
        "300",
    ];
    let stored = |admin: &Admin, pid: u32| -> Option<f64> {
        record_of(admin, Some(pid)).and_then(|q| q.job_duration_estimate.map(|d| d.as_secs_f64()))
    };
    push(&mut conn, Q, "a", 150, 100);
    let mut p = Proc::start(&server, &scratch, "slow", &extra);
    let pid = p.pid();
    wait_until(
        PATIENCE,
        "the record shows about 0.1 s",
        || stored(&admin, pid).is_some_and(|d| (d - 0.1).abs() <= 0.1 / 16.0),
        || stored(&admin, pid),
    );
    assert!(p.wait_exit(PATIENCE * 2).success());
    push(&mut conn, Q, "b", 300, 20);
    let mut p = Proc::start(&server, &scratch, "fast", &extra);
    let pid = p.pid();
    wait_until(
        PATIENCE,
        "the record shows about 0.02 s",
        || stored(&admin, pid).is_some_and(|d| (d - 0.02).abs() <= 0.02 / 16.0),
        || stored(&admin, pid),
    );
    assert!(p.wait_exit(PATIENCE * 2).success());
    let jobs = |key: String, conn: &mut redis::Connection| -> u64 {
        conn.hget::<_, _, Option<u64>>(key, "jobs")
            .unwrap()
            .unwrap_or(0)
    };
    let (cur, prev) = (
        jobs(format!("{Q}:fleet:durations"), &mut conn),
        jobs(format!("{Q}:fleet:durations:prev"), &mut conn),
    );
    // A window turns over once it holds 64 jobs (a beat adds the jobs of one heartbeat).
    assert!(cur < 64 && prev >= 64, "windows: {cur} + {prev} jobs");
}

/// After a burst, the fleet's hold is shed by halves (the wait rule's gradual scale-down), as
/// one process's is: each hold the grant script stored, read in one atomic read with the
/// history it was computed from, is what the rule gives; and it differs from the window's
/// largest demand (the divisor's hold) while the burst is shed.
#[test]
fn the_fleet_sheds_a_burst_gradually() {
    // Target 8 s: the window is max(1 s, min(8 s / 2, 2 min)) = 4 s, the excess halving
    // every quarter of it.
    const HALF_MS: f64 = 1000.0;
    let rule = |d: u64, demand: u64, age_ms: f64| -> u64 {
        if d <= demand {
            d
        } else {
            let excess = (d - demand) as f64 * 0.5f64.powf(age_ms / HALF_MS);
            (demand + excess.floor() as u64).max(1)
        }
    };
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-wait-gradual");
    push(&mut conn, Q, "g", 600, 100);
    let extra = [
        "--target-wait",
        "8",
        "--max-threads-per-type",
        "6",
        "--scale-down-delay-ms",
        "1000",
    ];
    let _procs: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&server, &scratch, &format!("g{i}"), &extra))
        .collect();
    let (mut checked, mut shedding, mut peak) = (0usize, 0usize, 0u64);
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let (state, history): (
            std::collections::HashMap<String, String>,
            Vec<(String, f64)>,
        ) = redis::pipe()
            .atomic()
            .hgetall(format!("{Q}:fleet"))
            .zrange_withscores(format!("{Q}:fleet:history"), 0, -1)
            .query(&mut conn)
            .unwrap();
        let field = |k: &str| state.get(k).and_then(|v| v.parse::<u64>().ok());
        if let (Some(at), Some(demand), Some(hold)) = (field("at"), field("demand"), field("hold"))
            && history.iter().map(|(_, t)| *t as u64).max() == Some(at)
        {
            // The history as the grant that stored this hold left it.
            let seen: Vec<(u64, f64)> = history
                .iter()
                .map(|(d, t)| (d.parse().unwrap(), at as f64 - t))
                .collect();
            let expected = seen.iter().map(|&(d, age)| rule(d, demand, age)).max();
            assert_eq!(
                Some(hold),
                expected,
                "hold at {at} with demand {demand} over the history {seen:?}"
            );
            let largest = seen.iter().map(|&(d, _)| d).max().unwrap_or(0);
            peak = peak.max(largest);
            checked += 1;
            if hold < largest && hold > demand {
                shedding += 1;
            }
        }
        let done: usize = conn.llen("fila:resultados").unwrap();
        if done >= 600 && shedding >= 3 && field("hold").is_some_and(|h| h <= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no gradual shedding seen: {checked} holds checked, {shedding} between the \
             demand and the window's largest, peak {peak}, {done} results"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!("{checked} holds checked, {shedding} shed part-way, peak {peak}");
    assert!(peak >= 4, "a burst the fleet scaled for: peak {peak}");
}
