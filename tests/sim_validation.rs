//! The simulator against the real pool: a scaled-down profile (milliseconds for minutes) runs
//! on a real pool with the in-memory source, then the simulator replays the same jobs (their
//! arrival and measured run times); its p95 wait and worker-seconds are within 15% of the real
//! pool's.
//!
//! Jobs last ~30 ms and the waits are hundreds of milliseconds, so that a few milliseconds of
//! scheduling noise on a loaded 2-core machine stay small next to the figures compared.
#![cfg(feature = "simulate")]

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use support::{PATIENCE, wait_until};
use threadtide::sim::{JobSpec, Policy, Profile, simulate_jobs};
use threadtide::{EventHandler, MemorySource, Queue, ThreadPoolManager, WorkerEvent};

const PROFILE: &str = "
name validation
horizon 5s
tick 50ms
sample 100ms
scale_down_delay 200ms
jobs_per_thread 50
max_threads_per_type 10
max_total_threads 20
queue q
  burst 125ms 150          # a burst: 4.5 worker-seconds
  rate 500ms 5s 72000      # then 20 jobs a second: 0.6 busy workers
  duration 30ms 0.3
  init 10ms
  target_wait 400ms
";

/// Worker lifetimes, from the pool's events.
/// A worker's name, start and exit.
type Life = (String, Instant, Option<Instant>);
/// Per job: when it was pushed, and when it started and ended.
type Times = Vec<(Option<Instant>, Option<(Instant, Instant)>)>;

#[derive(Default, Clone)]
struct Lives(Arc<Mutex<Vec<Life>>>);

impl EventHandler for Lives {
    fn on_worker_start(&self, e: &WorkerEvent) {
        self.0.lock().push((e.worker.clone(), Instant::now(), None));
    }
    fn on_worker_exit(&self, e: &WorkerEvent) {
        let now = Instant::now();
        if let Some(w) = self
            .0
            .lock()
            .iter_mut()
            .find(|w| w.0 == e.worker && w.2.is_none())
        {
            w.2 = Some(now);
        }
    }
}

struct Real {
    p95_wait: Duration,
    worker_seconds: f64,
    /// The jobs as they ran: arrival (push) time and measured run time.
    ran: Vec<JobSpec>,
}

fn run_real(profile: &Profile, policy: Policy) -> Real {
    let jobs = profile.jobs(0);
    let n = jobs.len();
    let qp = &profile.queues[0];
    let times: Arc<Mutex<Times>> = Arc::new(Mutex::new(vec![(None, None); n]));
    let source: MemorySource<usize> = MemorySource::new();
    let lives = Lives::default();
    let (init, spec) = (qp.init, jobs.clone());
    let t = Arc::clone(&times);
    let mut queue = Queue::new(
        "q",
        source.clone(),
        move |_| {
            thread::sleep(init);
            Ok::<_, Infallible>(())
        },
        move |_, &i: &usize| {
            let start = Instant::now();
            thread::sleep(spec[i].duration);
            t.lock()[i].1 = Some((start, Instant::now()));
            Ok(())
        },
    );
    if policy == Policy::WaitTarget {
        queue = queue.target_wait(qp.target_wait.unwrap());
    }
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("simv")
        .jobs_per_thread(profile.jobs_per_thread)
        .max_threads_per_type(profile.max_threads_per_type)
        .max_total_threads(profile.max_total_threads)
        .rebalance_interval(profile.tick)
        .scale_down_delay(profile.scale_down_delay)
        .event_handler(lives.clone())
        .add_queue(queue)
        .build()
        .unwrap();
    pool.start().unwrap();
    let t0 = Instant::now();
    let mut i = 0;
    while i < n {
        let due = t0 + jobs[i].arrival;
        let now = Instant::now();
        if now < due {
            thread::sleep(due - now);
        }
        // Every job due by now goes in (a burst in one go).
        let now = Instant::now();
        let mut batch = Vec::new();
        while i < n && t0 + jobs[i].arrival <= now {
            times.lock()[i].0 = Some(now);
            batch.push(i);
            i += 1;
        }
        source.extend(batch);
    }
    wait_until(
        PATIENCE,
        "every job run",
        || times.lock().iter().all(|t| t.1.is_some()),
        || pool.stats(),
    );
    let last = times.lock().iter().filter_map(|t| t.1).map(|t| t.1).max();
    let end = last.unwrap().max(t0 + profile.horizon);
    wait_until(PATIENCE, "the horizon", || Instant::now() >= end, || ());
    let worker_seconds: f64 = lives
        .0
        .lock()
        .iter()
        .map(|(_, start, exit)| {
            exit.unwrap_or(end)
                .min(end)
                .saturating_duration_since(*start)
                .as_secs_f64()
        })
        .sum();
    pool.shutdown();
    pool.wait().unwrap();
    let times = times.lock();
    let mut waits: Vec<Duration> = times
        .iter()
        .map(|(pushed, ran)| ran.unwrap().0 - pushed.unwrap())
        .collect();
    waits.sort();
    let p95_wait = waits[(waits.len() * 95).div_ceil(100) - 1];
    let ran = times
        .iter()
        .map(|(pushed, ran)| {
            let (start, stop) = ran.unwrap();
            JobSpec {
                arrival: pushed.unwrap() - t0,
                duration: stop - start,
                fails: false,
            }
        })
        .collect();
    Real {
        p95_wait,
        worker_seconds,
        ran,
    }
}

fn within(what: &str, sim: f64, real: f64, tolerance: f64) {
    let off = (sim - real).abs() / real;
    eprintln!(
        "{what}: simulated {sim:.4}, real {real:.4} ({:.1}% off)",
        off * 100.0
    );
    assert!(
        off <= tolerance,
        "{what}: simulated {sim:.4} vs real {real:.4}: {:.1}% apart (at most {:.0}%)",
        off * 100.0,
        tolerance * 100.0
    );
}

fn validate(policy: Policy) {
    let profile = Profile::parse(PROFILE).unwrap();
    let real = run_real(&profile, policy);
    let sim = simulate_jobs(&profile, policy, std::slice::from_ref(&real.ran));
    let all = sim.all();
    within(
        &format!("{} p95 wait", policy.name()),
        all.p95_wait.as_secs_f64(),
        real.p95_wait.as_secs_f64(),
        0.15,
    );
    within(
        &format!("{} worker-seconds", policy.name()),
        all.worker_seconds,
        real.worker_seconds,
        0.15,
    );
}

#[test]
fn the_simulated_wait_target_policy_matches_the_real_pool() {
    validate(Policy::WaitTarget);
}

#[test]
fn the_simulated_divisor_policy_matches_the_real_pool() {
    validate(Policy::Divisor);
}
