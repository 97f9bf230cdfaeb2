//! Idle cost: CPU time used by an idle pool with two queues over 10 s (in-memory and Redis
//! sources, default settings), and the Redis commands per second the idle Redis pool sends.
//! Not a criterion benchmark: it measures CPU time and command counts, not latency.
//!
//! `cargo bench -p threadtide-benches --bench idle` (Linux: reads /proc/self/stat; starts its own
//! redis-server)

#[path = "../tests/support/redis.rs"]
#[allow(dead_code)]
mod server;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use threadtide::{MemorySource, Queue, RedisSource, ThreadPoolManager};

const WINDOW: Duration = Duration::from_secs(10);

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn commands_processed(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn measure(name: &str, pool: ThreadPoolManager, redis: Option<&server::RedisServer>) {
    pool.start().unwrap();
    std::thread::sleep(Duration::from_secs(1)); // settle: connections made, keepers started
    let mut conn = redis.map(|r| r.conn());
    let cmds_before = conn.as_mut().map(commands_processed);
    let (cpu_before, start) = (cpu_time(), Instant::now());
    std::thread::sleep(WINDOW);
    let (cpu, wall) = (cpu_time() - cpu_before, start.elapsed());
    let cmds = conn
        .as_mut()
        .map(|c| commands_processed(c) - cmds_before.unwrap() - 1); // minus our own INFO
    pool.shutdown();
    pool.wait().unwrap();
    print!(
        "{name:<28} cpu {:>6.3}% of one core ({:?} over {:.1?})",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        cpu,
        wall
    );
    match cmds {
        Some(n) => println!(", redis {:.1} commands/s", n as f64 / wall.as_secs_f64()),
        None => println!(),
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let memory = |name: &str, min: usize| {
        let source: MemorySource<u32> = MemorySource::new();
        Queue::new(name, source, |_| Ok::<_, Infallible>(()), |_, _| Ok(())).min_threads(min)
    };
    for min in [0, 1] {
        let pool = ThreadPoolManager::builder()
            .add_queue(memory("conferencia", min))
            .add_queue(memory("emissao", min))
            .build()
            .unwrap();
        measure(
            &format!("memory, 2 queues, {min} idle worker(s) each"),
            pool,
            None,
        );
    }

    let redis = server::RedisServer::start();
    let queue = |name: &str, key: &str, min: usize| {
        let source = RedisSource::builder(redis.url(), key)
            .results("fila:resultados")
            .build()
            .unwrap();
        Queue::new(
            name,
            source,
            |_| Ok::<_, Infallible>(()),
            |_, _: &Vec<u8>| Ok(Vec::new()),
        )
        .min_threads(min)
    };
    for min in [0, 1] {
        let pool = ThreadPoolManager::builder()
            .add_queue(queue("conferencia", "fila:conferencia", min))
            .add_queue(queue("emissao", "fila:emissao", min))
            .build()
            .unwrap();
        measure(
            &format!("redis, 2 queues, {min} idle worker(s) each"),
            pool,
            Some(&redis),
        );
    }
}
