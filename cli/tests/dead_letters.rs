//! `threadtide dead ...` and `retries list` as an operator runs them, against a real
//! `redis-server`: dead letters written by a real pool (the library's Redis source), requeued
//! by filter byte for byte and then completed by a real `rpa_worker`, also when the requeue is
//! killed (`kill -9`) halfway; dry runs change nothing; purge removes exactly what matches.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Commands;
use support::{PATIENCE, RedisServer, Worker, json, ok, wait_until};
use threadtide::{JobError, RedisSource, ThreadPoolManager};

const Q: &str = "fila:conferencia";

/// A payload rpa_worker runs (1 ms), with bytes that JSON must escape in the dead record.
fn payload(kind: &str, i: usize) -> Vec<u8> {
    format!(r#"{{"id":"{kind}{i}","ms":1,"note":"é \" \\ \t 😀 \u0001"}}"#).into_bytes()
}

/// Dead-letters `a` jobs as `permanent` and `b` jobs as `attempts_exhausted`, through a real
/// pool on the library's Redis source. Returns the payloads of each kind.
fn make_dead(redis: &RedisServer, a: usize, b: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let pa: Vec<Vec<u8>> = (0..a).map(|i| payload("a", i)).collect();
    let pb: Vec<Vec<u8>> = (0..b).map(|i| payload("b", i)).collect();
    let source = RedisSource::builder(redis.url(), Q)
        .max_attempts(1)
        .build()
        .unwrap();
    source.push(&pa).unwrap();
    source.push(&pb).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "conferencia",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, job: &Vec<u8>| {
                if job.starts_with(b"{\"id\":\"a") {
                    Err(JobError::permanent("the form rejected it"))
                } else {
                    Err(JobError::retryable("the site timed out"))
                }
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "every job dead-lettered",
        || {
            source
                .summary()
                .is_ok_and(|s| s.dead == a + b && s.is_idle())
        },
        || source.summary(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    (pa, pb)
}

fn multiset(items: impl IntoIterator<Item = Vec<u8>>) -> BTreeMap<Vec<u8>, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_default() += 1;
    }
    m
}

/// Payloads of the dead letters still in the list (through the command's JSON).
fn dead_payloads(url: &str) -> Vec<Vec<u8>> {
    let doc = json(url, &["dead", "list", "--queue", Q, "--limit", "100000"]);
    doc["letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["payload"].as_str().unwrap().as_bytes().to_vec())
        .collect()
}

/// Waits for `n` results from rpa_worker and returns their ids.
fn result_ids(redis: &RedisServer, n: usize) -> Vec<String> {
    let mut conn = redis.conn();
    wait_until(
        PATIENCE,
        "the requeued jobs to complete",
        || conn.llen::<_, usize>("fila:resultados").unwrap() >= n,
        || redis.conn().llen::<_, usize>("fila:resultados"),
    );
    let raw: Vec<String> = conn.lrange("fila:resultados", 0, -1).unwrap();
    let mut ids: Vec<String> = raw
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

/// `connected_clients` of `INFO clients`.
fn info_clients(conn: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("clients").query(conn).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

fn ids(kind: &str, n: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..n).map(|i| format!("{kind}{i}")).collect();
    v.sort();
    v
}

#[test]
fn requeue_moves_exactly_the_filtered_jobs_byte_for_byte_and_they_complete() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (pa, pb) = make_dead(&redis, 1000, 200);
    let mut conn = redis.conn();

    // Count first: nothing changes without --yes.
    let dry = ok(
        &url,
        &["dead", "requeue", "--queue", Q, "--reason", "permanent"],
    );
    assert!(
        dry.contains("1000 dead letter(s) of fila:conferencia match"),
        "{dry}"
    );
    assert!(dry.contains("nothing changed"), "{dry}");
    assert_eq!(conn.llen::<_, usize>(format!("{Q}:dead")).unwrap(), 1200);
    assert_eq!(conn.llen::<_, usize>(Q).unwrap(), 0);
    let listed = json(
        &url,
        &[
            "dead",
            "list",
            "--queue",
            Q,
            "--reason",
            "attempts_exhausted",
            "--grep",
            "timed out",
            "--limit",
            "5",
        ],
    );
    assert_eq!(listed["letters"].as_array().unwrap().len(), 5);
    assert_eq!(listed["letters"][0]["reason"], "attempts_exhausted");
    assert_eq!(listed["more"], true);
    // The next page starts where this one stopped, and holds other records.
    let next = listed["next_offset"].as_u64().unwrap().to_string();
    let page2 = json(
        &url,
        &[
            "dead",
            "list",
            "--queue",
            Q,
            "--reason",
            "attempts_exhausted",
            "--limit",
            "5",
            "--offset",
            &next,
        ],
    );
    assert_eq!(page2["letters"].as_array().unwrap().len(), 5);
    assert!(page2["letters"][0]["index"].as_u64() > listed["letters"][4]["index"].as_u64());

    let report = json(
        &url,
        &[
            "dead",
            "requeue",
            "--queue",
            Q,
            "--reason",
            "permanent",
            "--yes",
        ],
    );
    assert_eq!(report["matched"], 1000, "{report}");
    assert_eq!(report["moved"], 1000, "{report}");
    let queued: Vec<Vec<u8>> = conn.lrange(Q, 0, -1).unwrap();
    assert_eq!(
        multiset(queued),
        multiset(pa.clone()),
        "exactly the permanent ones, byte for byte"
    );
    assert_eq!(
        multiset(dead_payloads(&url)),
        multiset(pb),
        "the others stay dead"
    );

    let _worker = Worker::start(&redis, &[("conferencia", Q)], &[]);
    assert_eq!(
        result_ids(&redis, 1000),
        ids("a", 1000),
        "each requeued job ran once"
    );
    assert_eq!(conn.llen::<_, usize>(format!("{Q}:dead")).unwrap(), 200);
}

/// Slows the server down: a script that holds it for 100 ms, again and again, so that the
/// commands' scripts of 200 jobs land one per pause (a kill falls between two, two commands
/// interleave).
struct Slower {
    slow: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Slower {
    fn start(redis: &RedisServer) -> Slower {
        let slow = Arc::new(AtomicBool::new(true));
        let thread = {
            let slow = Arc::clone(&slow);
            let mut c = redis.conn();
            std::thread::spawn(move || {
                while slow.load(Ordering::Relaxed) {
                    let _: u64 = redis::cmd("EVAL")
                        .arg("local t=redis.call('TIME'); local s=t[1]*1000000+t[2]; repeat t=redis.call('TIME') until t[1]*1000000+t[2]-s >= 100000; return 1")
                        .arg(0)
                        .query(&mut c)
                        .unwrap();
                }
            })
        };
        Slower { slow, thread }
    }

    fn stop(self) {
        self.slow.store(false, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

#[test]
fn a_requeue_killed_halfway_loses_nothing_duplicates_nothing_and_a_rerun_finishes_it() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (pa, _) = make_dead(&redis, 1000, 0);

    let slower = Slower::start(&redis);
    let mut child = Command::new(env!("CARGO_BIN_EXE_threadtide"))
        .args(["--redis", &url, "dead", "requeue", "--queue", Q, "--yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut conn = redis.conn();
    wait_until(
        PATIENCE,
        "the requeue to be part-way",
        || conn.llen::<_, usize>(Q).unwrap() > 0,
        || "no job moved yet",
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    slower.stop();
    // The server may still run a script the killed command had already sent; wait until it
    // has dropped that connection (ours is the only one left), then look at both lists in
    // one atomic read.
    wait_until(
        PATIENCE,
        "the killed command's connection to close",
        || info_clients(&mut conn) == 1,
        || {
            redis::cmd("CLIENT")
                .arg("LIST")
                .query::<String>(&mut redis.conn())
        },
    );
    let (queued, records): (Vec<Vec<u8>>, Vec<Vec<u8>>) = redis::pipe()
        .atomic()
        .lrange(Q, 0, -1)
        .lrange(format!("{Q}:dead"), 0, -1)
        .query(&mut conn)
        .unwrap();
    let dead: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(r).unwrap();
            v["payload"].as_str().unwrap().as_bytes().to_vec()
        })
        .collect();
    assert!(
        !queued.is_empty() && queued.len() < 1000,
        "killed part-way: {} of 1000 moved",
        queued.len()
    );
    let mut all = queued.clone();
    all.extend(dead);
    assert_eq!(
        multiset(all),
        multiset(pa.clone()),
        "every job in exactly one place"
    );

    let report = json(&url, &["dead", "requeue", "--queue", Q, "--yes"]);
    assert_eq!(
        report["moved"],
        1000 - queued.len(),
        "the rerun moves what is left: {report}"
    );
    let queued: Vec<Vec<u8>> = conn.lrange(Q, 0, -1).unwrap();
    assert_eq!(multiset(queued), multiset(pa));
    let _worker = Worker::start(&redis, &[("conferencia", Q)], &[]);
    assert_eq!(result_ids(&redis, 1000), ids("a", 1000));
}

#[test]
fn purge_removes_exactly_what_matches_and_retries_are_listed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_, pb) = make_dead(&redis, 30, 20);
    let dry = json(
        &url,
        &["dead", "purge", "--queue", Q, "--grep", "form rejected"],
    );
    assert_eq!(
        (dry["matched"].as_u64(), dry["moved"].as_u64()),
        (Some(30), Some(0))
    );
    assert_eq!(dead_payloads(&url).len(), 50, "a dry run changes nothing");
    let done = json(
        &url,
        &[
            "dead",
            "purge",
            "--queue",
            Q,
            "--grep",
            "form rejected",
            "--yes",
        ],
    );
    assert_eq!(done["moved"], 30);
    assert_eq!(multiset(dead_payloads(&url)), multiset(pb));
    let shown = ok(&url, &["dead", "show", "--queue", Q, "0"]);
    assert!(shown.contains("reason:    attempts_exhausted"), "{shown}");
    assert!(shown.contains("error:     the site timed out"), "{shown}");

    // Retries: a job failing with a long back-off waits in the delayed set.
    let source = RedisSource::builder(redis.url(), "fila:emissao")
        .max_attempts(3)
        .retry_backoff(Duration::from_secs(600), Duration::from_secs(600))
        .build()
        .unwrap();
    source.push(&[b"{\"id\":\"r1\"}".to_vec()]).unwrap();
    let pool = ThreadPoolManager::builder()
        .queue(
            "emissao",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            |_, _: &Vec<u8>| Err(JobError::retryable("try later")),
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE,
        "a delayed retry",
        || source.summary().is_ok_and(|s| s.delayed == 1),
        || source.summary(),
    );
    pool.shutdown_timeout(PATIENCE).unwrap();
    let retries = json(&url, &["retries", "list", "--queue", "fila:emissao"]);
    assert_eq!(retries["total"], 1, "{retries}");
    assert_eq!(retries["retries"][0]["attempt"], 2);
    assert_eq!(retries["retries"][0]["max_attempts"], 3);
    assert_eq!(retries["retries"][0]["payload"], "{\"id\":\"r1\"}");
    let human = ok(&url, &["retries", "list", "--queue", "fila:emissao"]);
    assert!(human.contains("2 of 3"), "{human}");
}

#[test]
fn a_requeue_and_a_purge_at_once_leave_every_job_in_one_place() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (_, pb) = make_dead(&redis, 1000, 1000);
    // Interleave the two kinds in the dead list (same records, byte for byte), so that each
    // command's matches sit between the other's: every record the purge removes shifts the
    // requeue's next page down, and a single pass by offset would skip matches. Each command
    // rescans until a pass finds nothing to move.
    let mut conn = redis.conn();
    let dead_key = format!("{Q}:dead");
    let records: Vec<Vec<u8>> = conn.lrange(&dead_key, 0, -1).unwrap();
    let is_a = |r: &Vec<u8>| {
        let v: serde_json::Value = serde_json::from_slice(r).unwrap();
        v["reason"] == "permanent"
    };
    let (ra, rb): (Vec<Vec<u8>>, Vec<Vec<u8>>) = records.into_iter().partition(is_a);
    assert_eq!((ra.len(), rb.len()), (1000, 1000));
    let mixed: Vec<Vec<u8>> = ra.into_iter().zip(rb).flat_map(|(a, b)| [a, b]).collect();
    let _: () = redis::pipe()
        .atomic()
        .del(&dead_key)
        .rpush(&dead_key, &mixed)
        .query(&mut conn)
        .unwrap();

    let slower = Slower::start(&redis);
    let run = |action: &'static str, reason: &'static str| {
        let url = url.clone();
        std::thread::spawn(move || {
            json(
                &url,
                &["dead", action, "--queue", Q, "--reason", reason, "--yes"],
            )
        })
    };
    let requeue = run("requeue", "attempts_exhausted");
    let purge = run("purge", "permanent");
    let (requeue, purge) = (requeue.join().unwrap(), purge.join().unwrap());
    slower.stop();
    assert_eq!(
        (requeue["moved"].as_u64(), purge["moved"].as_u64()),
        (Some(1000), Some(1000)),
        "each moved all of its kind: {requeue} {purge}"
    );
    assert!(dead_payloads(&url).is_empty(), "nothing left dead");
    let queued: Vec<Vec<u8>> = conn.lrange(Q, 0, -1).unwrap();
    assert_eq!(
        multiset(queued),
        multiset(pb),
        "the requeued kind, once each, byte for byte"
    );
}
