//! Reaping decides on a view every process can stand behind (issue 15, review items 1, 3, 4):
//! a new keeper does not trust its first view, each worker is judged by its own process's TTL,
//! and an id that is registered is never swept as retired. Real `redis-server` processes; the
//! "other process" is a second source (its own keeper and identity) or the test writing the
//! keys that process would write.
#![cfg(feature = "redis")]

mod support;

use std::convert::Infallible;
use std::time::Duration;

use redis::Commands;
use support::redis::RedisServer;
use support::{Gate, PATIENCE, wait_until};
use threadtide::{RedisSource, RedisSourceBuilder, ThreadPoolManager};

const Q: &str = "fila:reaping";

fn source(server: &RedisServer, ttl_ms: u64, beat_ms: u64) -> RedisSourceBuilder<String> {
    RedisSource::builder(server.url(), Q)
        .results(format!("{Q}:results"))
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .heartbeat_interval(Duration::from_millis(beat_ms))
        .worker_ttl(Duration::from_millis(ttl_ms))
}

/// A pool whose workers never fetch (`init` fails): only its keeper acts.
fn keeper_only(source: &RedisSource<String>) -> ThreadPoolManager {
    ThreadPoolManager::builder()
        .queue(
            "q",
            source.clone(),
            |_| Err::<(), _>("no"),
            |_, _: &String| Ok(Vec::new()),
        )
        .build()
        .unwrap()
}

fn server_ms(c: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(c).unwrap();
    s * 1000 + us / 1000
}

/// A worker of another process whose beats were held up by an outage longer than the TTL:
/// when Redis is back, its score is stale, and its process beats again within a heartbeat. A
/// keeper that started meanwhile must not reap it on its first view.
#[test]
fn a_new_keeper_does_not_reap_on_its_first_view() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let ghost = "vm:4242:00000000cafe:0:0";
    // Its deadline passed during the outage.
    let _: () = c.zadd(format!("{Q}:workers"), ghost, 1).unwrap();
    let _: () = c
        .rpush(format!("{Q}:processing:{ghost}"), "running")
        .unwrap();
    let src = source(&server, 500, 100).build().unwrap();
    let pool = keeper_only(&src);
    pool.start().unwrap();
    // The new keeper's first beat has landed (and its first reap decision was made) ...
    wait_until(
        PATIENCE,
        "the keeper's first beat",
        || {
            let s = src.stats();
            s.reaps + s.reaps_skipped >= 1
        },
        || src.stats(),
    );
    // ... and now the ghost's own process is back and beats (deadline: now + its TTL).
    let beat = |c: &mut redis::Connection| {
        let now = server_ms(c);
        let _: () = c.zadd(format!("{Q}:workers"), ghost, now + 5000).unwrap();
    };
    beat(&mut c);
    wait_until(
        PATIENCE,
        "ten reaps after the keeper's view became fresh",
        || {
            beat(&mut c);
            src.stats().reaps >= 10
        },
        || src.stats(),
    );
    let held: Vec<String> = c.lrange(format!("{Q}:processing:{ghost}"), 0, -1).unwrap();
    assert_eq!(held, vec!["running".to_string()], "{:?}", src.stats());
    assert_eq!(src.stats().reaped_workers, 0);
    pool.shutdown();
}

/// Two processes on one queue with different TTLs: the one with TTL 500 ms (beats every
/// 100 ms) must not reap the live worker of the one with TTL 3 s (beats every second), whose
/// last beat is routinely older than 500 ms.
#[test]
fn a_short_ttl_process_does_not_reap_a_long_ttl_processs_live_worker() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let gate = Gate::default();
    let slow = source(&server, 3000, 1000).build().unwrap();
    let g = gate.clone();
    let busy = ThreadPoolManager::builder()
        .queue(
            "lento",
            slow.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &String| {
                g.pass();
                Ok(job.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    let _open = support::OpenOnDrop(gate.clone()); // after `busy`: a failure does not hang
    busy.start().unwrap();
    let _: () = c.rpush(Q, "long-job").unwrap();
    wait_until(PATIENCE, "the job running", || gate.waiting() == 1, || ());
    let fast = source(&server, 500, 100).build().unwrap();
    let reaper = keeper_only(&fast);
    reaper.start().unwrap();
    // 20 reaps 100 ms apart span two of the slow process's beat intervals.
    wait_until(
        PATIENCE,
        "20 reaps by the short-TTL process",
        || fast.stats().reaps >= 20,
        || fast.stats(),
    );
    assert_eq!(fast.stats().reaped_workers, 0, "{:?}", fast.stats());
    assert_eq!(
        c.llen::<_, usize>(Q).unwrap(),
        0,
        "the running job was requeued"
    );
    gate.open();
    wait_until(
        PATIENCE,
        "the job's result",
        || c.llen::<_, usize>(format!("{Q}:results")).unwrap() == 1,
        || slow.stats(),
    );
    assert_eq!(slow.stats().acks_refused, 0);
    busy.shutdown();
    reaper.shutdown();
}

/// An id in both `Q:workers` and `Q:retired` (its registration applied, the reply lost, the
/// id reaped, then registered again): the retired sweep must leave the live worker's job alone.
#[test]
fn the_retired_sweep_skips_an_id_that_is_registered_again() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let wid = "vm:4242:00000000beef:0:0";
    let now = server_ms(&mut c);
    let _: () = c
        .zadd(format!("{Q}:workers"), wid, now + 3_600_000)
        .unwrap();
    let _: () = c.zadd(format!("{Q}:retired"), wid, now).unwrap();
    let _: () = c.rpush(format!("{Q}:processing:{wid}"), "mine").unwrap();
    let src = source(&server, 500, 100).build().unwrap();
    let pool = keeper_only(&src);
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "ten reaps",
        || src.stats().reaps >= 10,
        || src.stats(),
    );
    let held: Vec<String> = c.lrange(format!("{Q}:processing:{wid}"), 0, -1).unwrap();
    assert_eq!(held, vec!["mine".to_string()], "{:?}", src.stats());
    assert_eq!(src.stats().recovered, 0);
    pool.shutdown();
}

/// A retired worker's processing key turned into a string (an operator mistake) must not stop
/// the reaper: the dead worker next to it still gets its job back in the queue.
#[test]
fn a_wrong_typed_retired_list_does_not_stop_the_reaper() {
    let server = RedisServer::start();
    let mut c = server.conn();
    let now = server_ms(&mut c);
    let retired = "vm:4242:00000000f00d:0:0";
    let _: () = c.zadd(format!("{Q}:retired"), retired, now).unwrap();
    let _: () = c
        .set(format!("{Q}:processing:{retired}"), "not a list")
        .unwrap();
    let dead = "vm:4242:00000000dead:0:0";
    let _: () = c.zadd(format!("{Q}:workers"), dead, 1).unwrap();
    let _: () = c.rpush(format!("{Q}:processing:{dead}"), "orphan").unwrap();
    let src = source(&server, 500, 100).build().unwrap();
    let pool = keeper_only(&src);
    pool.start().unwrap();
    // The keeper counts a reap after the script's reply: wait for the count too, not only for
    // the job the server already moved.
    wait_until(
        PATIENCE,
        "the dead worker's job back in the queue, and the reap counted",
        || c.llen::<_, usize>(Q).unwrap() == 1 && src.stats().reaped_workers >= 1,
        || src.stats(),
    );
    assert_eq!(src.stats().reaped_workers, 1);
    let kind: String = redis::cmd("TYPE")
        .arg(format!("{Q}:processing:{retired}"))
        .query(&mut c)
        .unwrap();
    assert_eq!(kind, "string", "the mistake is left for the operator");
    pool.shutdown();
}
