//! The pool in one screen, no server needed: a burst into two queues, scaling up to the caps,
//! draining back down, and a final stats table.
//!
//! ```text
//! cargo run --example quickstart
//! RUST_LOG=threadtide=info cargo run --example quickstart   # also the scaling decisions
//! ```

use std::convert::Infallible;
use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use threadtide::{JobError, MemorySource, QueueStats, ThreadPoolManager, WorkerInfo};

/// Stands in for a logged-in browser session: opening it is slow, so each worker keeps one.
struct Session {
    worker: String,
    pages: u32,
}

impl Session {
    fn open(worker: &WorkerInfo) -> Result<Session, Infallible> {
        thread::sleep(Duration::from_millis(20)); // the "login"
        Ok(Session {
            worker: worker.name().to_owned(),
            pages: 0,
        })
    }
}

/// A job: an order id and how long the simulated work takes.
#[derive(Debug, Clone, Copy)]
struct Order {
    id: u32,
    work_ms: u64,
}

fn run(session: &mut Session, order: &Order) -> Result<String, JobError> {
    thread::sleep(Duration::from_millis(order.work_ms));
    session.pages += 1;
    Ok(format!("order {} done by {}", order.id, session.worker))
}

fn main() -> Result<(), Box<dyn Error>> {
    env_logger::init();
    let conferencia: MemorySource<Order, String> = MemorySource::builder().build()?;
    let emissao: MemorySource<Order, String> = MemorySource::builder().build()?;

    let pool = ThreadPoolManager::builder()
        .jobs_per_thread(50)
        .max_threads_per_type(10)
        .max_total_threads(20)
        // The default is 30 s, sized for browsers; short here so the demo ends quickly.
        .scale_down_delay(Duration::from_millis(500))
        .queue("conferencia", conferencia.clone(), Session::open, run)
        .queue("emissao", emissao.clone(), Session::open, run)
        .build()?;
    pool.shutdown_on_signals()?;
    pool.start()?;

    println!("burst: 900 jobs into conferencia, 700 into emissao (5-15 ms each)");
    conferencia.extend((0..900).map(|id| Order {
        id,
        work_ms: 5 + u64::from(id % 11),
    }));
    emissao.extend((0..700).map(|id| Order {
        id,
        work_ms: 5 + u64::from(id % 11),
    }));

    let started = Instant::now();
    println!("{:>7}  {:>22}  {:>22}", "time", "conferencia", "emissao");
    loop {
        let stats = pool.stats();
        let line = |q: &QueueStats| {
            format!(
                "{:>4} jobs {:>2}/{:>2} threads",
                q.backlog, q.workers, q.target
            )
        };
        println!(
            "{:>6}ms  {:>22}  {:>22}",
            started.elapsed().as_millis(),
            line(&stats.queues[0]),
            line(&stats.queues[1])
        );
        let idle = conferencia.unfinished() + emissao.unfinished() == 0;
        if (idle && stats.total.workers == 0) || pool.is_shutdown() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }

    pool.shutdown();
    pool.wait()?;
    print_table(&pool.stats().queues, &pool.stats().total);
    Ok(())
}

fn print_table(queues: &[QueueStats], total: &QueueStats) {
    println!(
        "\n{:<12} {:>6} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10}",
        "queue", "ok", "failed", "panicked", "spawned", "retired", "mean", "p99"
    );
    for q in queues.iter().chain([total]) {
        println!(
            "{:<12} {:>6} {:>6} {:>8} {:>8} {:>8} {:>10.1?} {:>10.1?}",
            q.name,
            q.jobs_ok,
            q.jobs_failed,
            q.jobs_panicked,
            q.spawned,
            q.retired,
            q.mean_job_time.unwrap_or_default(),
            q.p99_job_time.unwrap_or_default()
        );
    }
}
