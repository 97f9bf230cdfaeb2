//! The fleet caps under faults (issue 9): three real `rpa_worker` processes, a fleet cap of 6
//! on a queue, while one process is `kill -9`ed, another `SIGSTOP`ped past the worker TTL
//! and resumed, and Redis restarted with its data; then a rolling restart of every process.
//! The cap is checked on what counts, the results: no more jobs ran at once than the cap
//! (from each result's start and finish times), none lost, none twice.
#![cfg(feature = "redis")]

mod fleet_support;
mod support;

use std::time::Instant;

use fleet_support::*;
use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};
use threadtide::admin::Admin;

fn registered_by(conn: &mut redis::Connection, pid: u32) -> usize {
    let wids: Vec<String> = conn.zrange(format!("{Q}:workers"), 0, -1).unwrap();
    wids.iter()
        .filter(|w| w.contains(&format!(":{pid}:")))
        .count()
}

/// Slots the live processes say they hold for `Q`, and how many processes there are.
fn held(admin: &Admin) -> (usize, usize) {
    let procs = admin.processes().unwrap();
    let slots = procs
        .iter()
        .flat_map(|p| p.queues.iter().filter(|q| q.key == Q).map(|q| q.slots))
        .sum();
    (slots, procs.len())
}

#[test]
fn a_fleet_cap_of_6_holds_through_kill_9_sigstop_and_a_redis_restart() {
    const JOBS: usize = 2000;
    let mut server = RedisServer::start_durable();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-cap6");
    let admin = Admin::connect(&server.url()).unwrap();
    push(&mut conn, Q, "j", JOBS, 10);
    let extra = [
        "--fleet-max-threads-per-type",
        "6",
        "--jobs-per-thread",
        "10",
        "--scale-down-delay-ms",
        "300",
    ];
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&server, &scratch, &format!("p{i}"), &extra))
        .collect();
    wait_until(
        PATIENCE,
        "300 results",
        || result_count(&mut conn) >= 300,
        || (),
    );

    // kill -9: the others take up its share once its leases lapse (one TTL).
    let killed_at = Instant::now();
    procs[0].kill9();
    wait_until(
        PROPAGATION,
        "the two others hold all 6 slots",
        || held(&admin) == (6, 2),
        || held(&admin),
    );
    let recovery = killed_at.elapsed();

    // SIGSTOP past the TTL: its workers are reaped, their slots lapse; then it wakes.
    wait_until(
        PATIENCE,
        "800 results",
        || result_count(&mut conn) >= 800,
        || (),
    );
    let frozen = procs[1].pid();
    procs[1].signal("STOP");
    // Once `kill` returned: a run the process started up to here (even in the same
    // millisecond) was stopped with it.
    let stopped_ms = unix_ms();
    wait_until(
        PATIENCE,
        "the frozen process's workers reaped",
        || registered_by(&mut conn, frozen) == 0,
        || registered_by(&mut server.conn(), frozen),
    );
    procs[1].signal("CONT");
    let continued_ms = unix_ms();

    // Redis restarts with its data (AOF, fsync always).
    wait_until(
        PATIENCE,
        "1300 results",
        || result_count(&mut conn) >= 1300,
        || (),
    );
    server.stop_gracefully();
    server.restart();
    let mut conn = server.conn();
    wait_until(
        PATIENCE * 3,
        "every job has a result",
        || result_count(&mut conn) >= JOBS && conn.llen::<_, usize>(Q).unwrap() == 0,
        || admin_counts(&server),
    );
    for p in &procs[1..] {
        p.signal("TERM");
    }
    for p in &mut procs[1..] {
        assert!(p.wait_exit(PATIENCE).success());
    }
    let done = results(&mut conn);
    let (lost, dups) = lost_and_duplicates(&done, "j", JOBS);
    // Every run, kept or not. A run the frozen process had started ran nothing while it was
    // stopped (its remainder after SIGCONT is the documented exception, refused at settle):
    // it counts until the SIGSTOP. Anything it started after waking counts in full.
    let mut all = runs(&scratch);
    let pid = frozen.to_string();
    let (frozen_runs, _): (Vec<_>, Vec<_>) = all.iter().partition(|d| d.pid == pid);
    let spanning = frozen_runs
        .iter()
        .filter(|d| d.started_ms <= stopped_ms && d.finished_ms > stopped_ms)
        .count();
    for d in all.iter_mut().filter(|d| d.pid == pid) {
        if d.started_ms <= stopped_ms && d.finished_ms > stopped_ms {
            d.finished_ms = stopped_ms;
        }
    }
    let woke_and_started = all
        .iter()
        .filter(|d| d.pid == pid && d.started_ms >= continued_ms)
        .count();
    let top = peak(&all, "conferencia");
    println!(
        "cap 6: {} runs ({spanning} across the freeze, {woke_and_started} started after it), peak {top}, {} results, lost {}, duplicates {}; kill -9 share taken up in {recovery:?} (TTL {TTL_MS} ms)",
        all.len(),
        done.len(),
        lost.len(),
        dups.len()
    );
    assert!(lost.is_empty(), "lost {lost:?}");
    assert!(dups.is_empty(), "duplicate results {dups:?}");
    assert!(
        top <= 6,
        "peak {top} over the fleet cap of 6 (stopped {stopped_ms}, continued {continued_ms}): {:#?}",
        at_peak(&all, "conferencia")
    );
    assert_eq!(top, 6, "the cap should be reached with 2000 jobs waiting");
}

fn admin_counts(server: &RedisServer) -> String {
    Admin::connect(&server.url())
        .and_then(|a| a.queue_counts(Q))
        .map_or_else(|e| e.to_string(), |c| format!("{c:?}"))
}

#[test]
fn a_rolling_restart_under_load_keeps_the_fleet_cap_and_loses_nothing() {
    const JOBS: usize = 900;
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-rolling");
    push(&mut conn, Q, "r", JOBS, 10);
    let extra = [
        "--fleet-max-threads-per-type",
        "4",
        "--jobs-per-thread",
        "10",
        "--scale-down-delay-ms",
        "300",
    ];
    let mut procs: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&server, &scratch, &format!("p{i}"), &extra))
        .collect();
    let mut restarted = 0;
    for (i, p) in procs.iter_mut().enumerate() {
        let goal = 150 * (i + 1);
        wait_until(
            PATIENCE,
            "progress",
            || result_count(&mut conn) >= goal,
            || (),
        );
        p.signal("TERM");
        assert!(p.wait_exit(PATIENCE).success());
        *p = Proc::start(&server, &scratch, &format!("p{i}-again"), &extra);
        restarted += 1;
    }
    wait_until(
        PATIENCE * 2,
        "every job has a result",
        || result_count(&mut conn) >= JOBS,
        || admin_counts(&server),
    );
    for p in &procs {
        p.signal("TERM");
    }
    for p in &mut procs {
        assert!(p.wait_exit(PATIENCE).success());
    }
    let done = results(&mut conn);
    let (lost, dups) = lost_and_duplicates(&done, "r", JOBS);
    let top = peak(&runs(&scratch), "conferencia");
    println!(
        "rolling restart of {restarted} processes, cap 4: peak {top}, lost {}, duplicates {}",
        lost.len(),
        dups.len()
    );
    assert!(
        lost.is_empty() && dups.is_empty(),
        "lost {lost:?} dup {dups:?}"
    );
    assert!(top <= 4, "peak {top} over the fleet cap of 4");
}

/// The fleet total cap over two queues: the value an operator stored in Redis (3) wins over the
/// builders' (5); both queues are served; the processes say why they are smaller.
#[test]
fn a_fleet_total_cap_in_redis_holds_over_two_queues() {
    const JOBS: usize = 300;
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-total");
    let admin = Admin::connect(&server.url()).unwrap();
    admin.set_fleet_max_total_threads(Some(3)).unwrap();
    push(&mut conn, Q, "a", JOBS, 10);
    push(&mut conn, Q2, "b", JOBS, 10);
    let extra = [
        "--fleet-max-total-threads",
        "5",
        "--jobs-per-thread",
        "10",
        "--scale-down-delay-ms",
        "300",
    ];
    let procs: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&server, &scratch, &format!("p{i}"), &extra))
        .collect();
    let reasons = || -> Vec<threadtide::SizeReason> {
        admin
            .processes()
            .unwrap()
            .iter()
            .flat_map(|p| p.queues.iter().map(|q| q.reason))
            .collect()
    };
    wait_until(
        PATIENCE,
        "a process reports the fleet total cap",
        || reasons().contains(&threadtide::SizeReason::FleetTotalCap),
        reasons,
    );
    wait_until(
        PATIENCE * 2,
        "every job has a result",
        || result_count(&mut conn) >= 2 * JOBS,
        || admin_counts(&server),
    );
    for p in &procs {
        p.signal("TERM");
    }
    let done = results(&mut conn);
    let (lost_a, dup_a) = lost_and_duplicates(&done, "a", JOBS);
    let (lost_b, dup_b) = lost_and_duplicates(&done, "b", JOBS);
    assert!(lost_a.is_empty() && lost_b.is_empty() && dup_a.is_empty() && dup_b.is_empty());
    let (top, a, b) = (
        peak_all(&runs(&scratch)),
        peak(&runs(&scratch), "conferencia"),
        peak(&runs(&scratch), "emissao"),
    );
    println!(
        "fleet total cap 3 over two queues: combined peak {top} (conferencia {a}, emissao {b})"
    );
    assert!(
        top <= 3,
        "combined peak {top} over the fleet total cap of 3"
    );
    assert_eq!(top, 3);
    assert!(a >= 1 && b >= 1);
}

/// A queue's fleet cap set at runtime in Redis: lowered while three processes run, it is
/// reached as workers finish their job, and nothing that starts afterwards passes it.
#[test]
fn a_fleet_cap_lowered_at_runtime_holds_for_every_job_started_after() {
    // A first batch runs uncapped; the second is pushed only once the cap holds, so every one
    // of its jobs runs after the bound however loaded the machine is (a single batch could be
    // nearly done by the time the cap is reached, leaving too few runs to judge).
    const FIRST: usize = 400;
    const LATER: usize = 200;
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-runtime-cap");
    let admin = Admin::connect(&server.url()).unwrap();
    push(&mut conn, Q, "k", FIRST, 10);
    let extra = ["--jobs-per-thread", "10", "--scale-down-delay-ms", "300"];
    let procs: Vec<Proc> = (0..3)
        .map(|i| Proc::start(&server, &scratch, &format!("p{i}"), &extra))
        .collect();
    wait_until(
        PATIENCE,
        "100 results",
        || result_count(&mut conn) >= 100,
        || (),
    );
    admin.set_fleet_max_threads(Q, Some(2)).unwrap();
    // Reached as running jobs (10 ms) finish, within a grant and a heartbeat: 3 TTLs is ample
    // on a loaded machine, and every run going on after that counts, kept or not.
    let capped_from = unix_ms() + 3 * TTL_MS;
    wait_until(
        PATIENCE,
        "the fleet down to 2 slots and the bound passed",
        || {
            held(&admin).0 <= 2
                && admin.queue_counts(Q).unwrap().slots <= 2
                && unix_ms() > capped_from
        },
        || held(&admin),
    );
    push(&mut conn, Q, "l", LATER, 10);
    wait_until(
        PATIENCE * 2,
        "every job has a result",
        || result_count(&mut conn) >= FIRST + LATER,
        || admin_counts(&server),
    );
    for p in &procs {
        p.signal("TERM");
    }
    let done = results(&mut conn);
    for (prefix, n) in [("k", FIRST), ("l", LATER)] {
        let (lost, dups) = lost_and_duplicates(&done, prefix, n);
        assert!(
            lost.is_empty() && dups.is_empty(),
            "lost {lost:?} dup {dups:?}"
        );
    }
    let all = runs(&scratch);
    let before = peak(&all, "conferencia");
    let after: Vec<Done> = all
        .iter()
        .filter(|d| d.finished_ms > capped_from)
        .cloned()
        .collect();
    let top = peak(&after, "conferencia");
    println!(
        "runtime fleet cap 2: peak {before} before, {top} for the {} jobs started after",
        after.len()
    );
    assert!(before > 2, "the cap should have lowered something");
    assert!(
        after.len() >= LATER,
        "every job of the later batch runs after the bound"
    );
    assert!(top <= 2, "peak {top} over the runtime fleet cap of 2");
}

/// Builder caps that differ between processes: the strictest one a live process asks for
/// holds fleet-wide (no value in Redis), whichever process takes the slot.
#[test]
fn the_strictest_builder_cap_of_the_live_processes_holds() {
    const JOBS: usize = 400;
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-mixed-caps");
    push(&mut conn, Q, "m", JOBS, 10);
    let base = ["--jobs-per-thread", "10", "--scale-down-delay-ms", "300"];
    let capped = [&base[..], &["--fleet-max-threads-per-type", "3"]].concat();
    let procs = [
        Proc::start(&server, &scratch, "capped", &capped),
        Proc::start(&server, &scratch, "uncapped", &base),
    ];
    wait_until(
        PATIENCE * 2,
        "every job has a result",
        || result_count(&mut conn) >= JOBS,
        || admin_counts(&server),
    );
    for p in &procs {
        p.signal("TERM");
    }
    let done = results(&mut conn);
    let (lost, dups) = lost_and_duplicates(&done, "m", JOBS);
    assert!(
        lost.is_empty() && dups.is_empty(),
        "lost {lost:?} dup {dups:?}"
    );
    let all = runs(&scratch);
    let top = peak(&all, "conferencia");
    let by: std::collections::HashSet<&str> = all.iter().map(|d| d.pid.as_str()).collect();
    println!(
        "caps 3 and none: peak {top} over {} runs by {} processes",
        all.len(),
        by.len()
    );
    assert!(top <= 3, "peak {top} over the strictest builder cap of 3");
    assert_eq!(top, 3, "the cap should be reached with {JOBS} jobs waiting");
}

/// A job past `job_timeout` is left to the reaper (it runs again elsewhere), but its thread
/// still runs: its slot stays counted until the thread returns, so with a fleet cap of 1
/// nothing else runs meanwhile (while the other process's thread asks for a slot).
#[test]
fn a_job_past_job_timeout_keeps_its_slot_until_its_thread_returns() {
    let server = RedisServer::start();
    let mut conn = server.conn();
    let scratch = Scratch::new("fleet-timeout");
    push(&mut conn, Q, "long", 1, 2000);
    push(&mut conn, Q, "s", 20, 10);
    let extra = [
        "--fleet-max-threads-per-type",
        "1",
        "--jobs-per-thread",
        "1",
        "--job-timeout-ms",
        "300",
        "--max-attempts",
        "1",
        // Every process keeps a thread: the other one waits for a slot the whole time.
        "--min-threads",
        "1",
        "--scale-down-delay-ms",
        "300",
    ];
    let mut procs = [
        Proc::start(&server, &scratch, "p0", &extra),
        Proc::start(&server, &scratch, "p1", &extra),
    ];
    wait_until(
        PATIENCE,
        "the 20 short jobs done",
        || result_count(&mut conn) >= 20,
        || admin_counts(&server),
    );
    for p in &procs {
        p.signal("TERM");
    }
    // A drained exit: every run's finish is on record.
    for p in &mut procs {
        assert!(p.wait_exit(PATIENCE).success());
    }
    let all = runs(&scratch);
    let long = all
        .iter()
        .find(|d| d.id == "long0")
        .expect("the long job ran");
    let top = peak(&all, "conferencia");
    println!(
        "job_timeout 300 ms, a 2 s job, fleet cap 1: peak {top} over {} runs (the long run {} ms)",
        all.len(),
        long.finished_ms - long.started_ms
    );
    assert!(
        top <= 1,
        "peak {top}: the timed-out job's slot was given away"
    );
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
