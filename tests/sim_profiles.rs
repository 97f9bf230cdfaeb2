//! The simulator runs the shipped profiles under the three policies, deterministically, and
//! the wait-target policy meets its goals where the load fits under the caps.
#![cfg(feature = "simulate")]

use std::time::Duration;

use threadtide::sim::{Policy, Profile, Run, simulate};

fn shipped(name: &str) -> Profile {
    let path = format!("{}/cli/profiles/{name}.profile", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Profile::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn runs(p: &Profile) -> Vec<Run> {
    Policy::ALL.iter().map(|&pol| simulate(p, pol)).collect()
}

fn show(p: &Profile, runs: &[Run]) {
    for r in runs {
        let a = r.all();
        eprintln!(
            "{:12} {:12} jobs {:5} p50 {:7.1}s p95 {:7.1}s max {:7.1}s ws {:8.0} (lb {:8.0}, {:.2}x) peak {:2} starts {:4} flaps {:3} (max/h {})",
            p.name,
            r.policy,
            a.jobs,
            a.p50_wait.as_secs_f64(),
            a.p95_wait.as_secs_f64(),
            a.max_wait.as_secs_f64(),
            a.worker_seconds,
            a.lower_bound_seconds,
            a.worker_seconds / a.lower_bound_seconds,
            a.peak_workers,
            a.worker_starts,
            a.flaps,
            a.max_flaps_per_hour,
        );
    }
}

/// One run of every shipped profile under every policy (a few seconds each in a debug
/// build), checked for what every run must show and for the goals the wait target meets.
#[test]
fn shipped_profiles() {
    for name in ["host", "working-day", "slow-site", "flood"] {
        let p = shipped(name);
        let r = runs(&p);
        show(&p, &r);
        let jobs = r[0].all().jobs;
        assert!(jobs > 0, "{name}");
        for run in &r {
            assert_eq!(
                run.all().jobs,
                jobs,
                "{name}/{}: every job runs",
                run.policy
            );
            assert!(run.all().worker_seconds >= run.all().busy_seconds, "{name}");
        }
        let (divisor, wait) = (r[1].all(), r[2].all());
        assert!(
            wait.p95_wait < divisor.p95_wait,
            "{name}: the wait target waits less: {wait:?} vs {divisor:?}"
        );
        // The goals for the wait target (docs/SCALING.md, "Goals: met and missed").
        assert!(
            wait.max_flaps_per_hour <= 1,
            "{name}: at most one down-then-up within 2 minutes per queue per hour: {wait:?}"
        );
        let ratio = wait.worker_seconds / wait.lower_bound_seconds;
        if name == "working-day" {
            // Missed (1.22x): two small queues near a thread boundary; see the doc. Checked
            // so that it does not grow back towards the 1.30x it was.
            assert!(ratio <= 1.25, "{name}: {ratio:.3}x {wait:?}");
        } else {
            assert!(
                ratio <= 1.2,
                "{name}: {ratio:.3}x the lower bound: {wait:?}"
            );
        }
        if name == "slow-site" || name == "working-day" {
            // The load fits under the caps: the p95 wait is within the 5-minute target.
            assert!(
                wait.p95_wait <= Duration::from_secs(300),
                "{name}: {wait:?}"
            );
        }
        if name == "slow-site" {
            assert_eq!(
                simulate(&p, Policy::WaitTarget),
                r[2],
                "{name}: deterministic"
            );
        }
    }
}

#[test]
fn the_hosts_manager_reacts_at_its_60_second_check_and_threadtide_at_once() {
    let p = Profile::parse(
        "horizon 10m\nqueue q\n burst 1s 10\n duration 5s 0\n init 2s\n target_wait 1m\n",
    )
    .unwrap();
    let host = simulate(&p, Policy::Host);
    let divisor = simulate(&p, Policy::Divisor);
    // The host checks at 0 s and 60 s: a burst at 1 s starts at 60 s, plus the 2 s login.
    assert!(
        host.all().p50_wait >= Duration::from_secs(61),
        "{:?}",
        host.all()
    );
    // threadtide sees it at the next 50 ms tick: one thread (10 jobs / 50), 2 s login, 5 s
    // jobs: the 10th job starts at 1 s + 2 s + 9 x 5 s.
    assert!(
        divisor.all().max_wait <= Duration::from_millis(47_100),
        "{:?}",
        divisor.all()
    );
    assert_eq!(divisor.all().worker_starts, 1);
    // The host's thread ends when its pop times out (30 s after the last job), threadtide's
    // after the 30 s scale-down delay: both cost the jobs, the login and about 30 s idle.
    assert!(
        (host.all().worker_seconds - (2.0 + 50.0 + 30.0)).abs() < 0.1,
        "{:?}",
        host.all()
    );
}
