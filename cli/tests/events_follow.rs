//! `threadtide events --follow` against real `rpa_worker` processes on a real `redis-server`:
//! every scaling decision the processes record is printed once, none twice and none skipped,
//! while the follower resumes from the stream id of the last entry it printed (an inclusive
//! millisecond read again, its already-seen entries dropped).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use redis::Commands;
use serde_json::Value;
use support::{PATIENCE, RedisServer, Worker, json, wait_until};

/// `threadtide events --follow --json`, its lines collected by a thread; killed on drop.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    fn start(url: &str) -> Follower {
        let mut child = Command::new(env!("CARGO_BIN_EXE_threadtide"))
            .args([
                "--redis", url, "--json", "events", "--follow", "--since", "1h",
            ])
            .env_remove("THREADTIDE_REDIS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start threadtide events --follow");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Follower { child, lines }
    }

    /// How many times each event id was printed.
    fn printed(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for line in self.lines.lock().unwrap().iter() {
            let doc: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not one JSON document per line ({e}): {line}"));
            *ids.entry(doc["id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        ids
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every id in the fleet's events stream, as `events --json` lists them.
fn stored(url: &str) -> BTreeSet<String> {
    json(url, &["events", "--since", "1h", "--limit", "100000"])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn follow_prints_every_decision_exactly_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let follower = Follower::start(&url);
    // Two processes on two queues, scaling up and down fast: many decisions, several of them
    // in the same millisecond of the server's clock (the case a resume by time gets wrong).
    let queues = [
        ("conferencia", "fila:conferencia"),
        ("emissao", "fila:emissao"),
    ];
    let extra = [
        "--jobs-per-thread",
        "5",
        "--max-threads-per-type",
        "4",
        "--rebalance-interval-ms",
        "20",
        "--scale-down-delay-ms",
        "0",
    ];
    let _a = Worker::start(&redis, &queues, &extra);
    let _b = Worker::start(&redis, &queues, &extra);
    let mut conn = redis.conn();
    let results = |r: &RedisServer| -> usize { r.conn().llen("fila:resultados").unwrap() };
    for round in 0..4 {
        for key in ["fila:conferencia", "fila:emissao"] {
            let jobs: Vec<String> = (0..30)
                .map(|i| format!(r#"{{"id":"{round}-{i}","ms":20}}"#))
                .collect();
            let _: () = conn.rpush(key, &jobs).unwrap();
        }
        // The round's jobs all done before the next burst: a scale-up and a scale-down each.
        wait_until(
            PATIENCE,
            "the burst to be served",
            || results(&redis) == 60 * (round + 1),
            || results(&redis),
        );
    }
    // The processes scaled down after the last burst: wait until the stream holds the
    // decisions back to no thread, then until the follower printed everything stored.
    wait_until(
        PATIENCE,
        "the follower to print every stored decision",
        || {
            let expected = stored(&url);
            let printed = follower.printed();
            expected.len() >= 16 && expected.iter().all(|id| printed.contains_key(id))
        },
        || (stored(&url).len(), follower.printed().len()),
    );
    let printed = follower.printed();
    let twice: Vec<_> = printed.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "printed more than once: {twice:?}");
    let unknown: Vec<_> = printed
        .keys()
        .filter(|id| !stored(&url).contains(*id))
        .collect();
    assert!(
        unknown.is_empty(),
        "printed but not in the stream: {unknown:?}"
    );
}
