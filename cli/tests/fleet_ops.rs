//! `status`, `pause` / `resume`, `set` and `explain` against real `rpa_worker` processes on a
//! real `redis-server`: what the command shows is what the processes run, a pause holds every
//! job in Redis until resumed, and explain names the reason for each case (no backlog, the
//! per-queue cap, the total cap, the fleet cap, paused, held by stabilisation).

mod support;

use redis::Commands;
use serde_json::Value;
use support::{PATIENCE, RedisServer, Worker, json, ok, wait_until};

fn jobs(n: usize, ms: u64) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"id":"{i}","ms":{ms}}}"#))
        .collect()
}

fn push(redis: &RedisServer, key: &str, payloads: &[String]) {
    let _: () = redis.conn().rpush(key, payloads).unwrap();
}

/// The `status --json` entry of queue `key`.
fn queue<'a>(status: &'a Value, key: &str) -> Option<&'a Value> {
    status["queues"]
        .as_array()?
        .iter()
        .find(|q| q["key"] == key)
}

/// explain's reason per process for `key`, sorted.
fn reasons(url: &str, key: &str) -> Vec<String> {
    let doc = json(url, &["explain", key]);
    let mut r: Vec<String> = doc["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["reason"].as_str().unwrap().to_owned())
        .collect();
    r.sort();
    r
}

#[test]
fn status_shows_what_the_processes_run_and_drops_a_killed_one() {
    let redis = RedisServer::start();
    let url = redis.url();
    let queues = [
        ("conferencia", "fila:conferencia"),
        ("emissao", "fila:emissao"),
    ];
    let extra = ["--jobs-per-thread", "10", "--max-threads-per-type", "3"];
    let a = Worker::start(&redis, &queues, &extra);
    let mut b = Worker::start(&redis, &queues, &extra);
    push(&redis, "fila:conferencia", &jobs(200, 60_000));
    let pids = |s: &Value| -> Vec<u64> {
        let mut p: Vec<u64> = s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect();
        p.sort();
        p
    };
    let mut expected = vec![u64::from(a.pid()), u64::from(b.pid())];
    expected.sort();
    // Both processes at their cap of 3 on conferencia, idle on emissao.
    let settled = |s: &Value| {
        let Some(q) = queue(s, "fila:conferencia") else {
            return false;
        };
        pids(s) == expected
            && q["fleet"]["alive"] == 6
            && q["fleet"]["busy"] == 6
            && q["processes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["alive"] == 3 && p["target"] == 3)
    };
    wait_until(
        PATIENCE,
        "status to show both processes at their cap",
        || settled(&json(&url, &["status"])),
        || (&expected, json(&url, &["status"])),
    );
    let s = json(&url, &["status"]);
    let conf = queue(&s, "fila:conferencia").unwrap();
    // The processes' records agree with the queue's own registry and lists.
    assert_eq!(conf["registered_workers"], 6, "{conf}");
    assert_eq!(conf["processing"], 6, "{conf}");
    assert_eq!(conf["backlog"], 194, "{conf}");
    for p in s["processes"].as_array().unwrap() {
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            p["id"]
                .as_str()
                .unwrap()
                .contains(&format!(":{}:", p["pid"])),
            "{p}"
        );
    }
    let emissao = queue(&s, "fila:emissao").unwrap();
    assert_eq!(
        emissao["processes"].as_array().unwrap().len(),
        2,
        "both serve emissao"
    );
    assert!(
        emissao["processes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reason"] == "no_backlog")
    );
    let human = ok(&url, &["status"]);
    assert!(human.contains("fila:conferencia: backlog 194"), "{human}");

    // The scaling history: each process's scale-up of conferencia, newest last.
    let events = json(
        &url,
        &["events", "--queue", "fila:conferencia", "--since", "1h"],
    );
    let ups: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["from"] == 0 && e["to"].as_u64().is_some_and(|t| t > 0))
        .collect();
    let mut from: Vec<&str> = ups.iter().map(|e| e["process"].as_str().unwrap()).collect();
    from.sort();
    from.dedup();
    assert_eq!(from.len(), 2, "one scale-up per process: {events}");
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["queue"] == "fila:conferencia")
    );
    let table = ok(&url, &["events", "--queue", "fila:conferencia"]);
    assert!(
        table.starts_with("TIME") && table.contains("0 -> "),
        "{table}"
    );

    b.kill(); // kill -9
    let alone = vec![u64::from(a.pid())];
    wait_until(
        PATIENCE,
        "the killed process to leave status",
        || pids(&json(&url, &["status"])) == alone,
        || json(&url, &["status"]),
    );
}

#[test]
fn a_paused_queue_runs_nothing_until_resumed() {
    let redis = RedisServer::start();
    let url = redis.url();
    let key = "fila:conferencia";
    let _w = Worker::start(&redis, &[("conferencia", key)], &[]);
    push(&redis, key, &jobs(1, 1));
    let mut conn = redis.conn();
    wait_until(
        PATIENCE,
        "a first job to run",
        || conn.llen::<_, usize>("fila:resultados").unwrap() == 1,
        || (),
    );
    let out = ok(&url, &["pause", key]);
    assert!(out.contains("paused"), "{out}");
    wait_until(
        PATIENCE,
        "the process to report the pause",
        || reasons(&url, key) == ["paused"],
        || reasons(&url, key),
    );
    push(&redis, key, &jobs(50, 1));
    // Several heartbeats later (each rewrites the process record), still nothing ran.
    let beat = || -> u64 {
        let s = json(&url, &["status"]);
        s["processes"][0]["heartbeat_ms"].as_u64().unwrap()
    };
    let first = beat();
    wait_until(
        PATIENCE,
        "five more heartbeats",
        || beat() >= first + 500,
        beat,
    );
    assert_eq!(
        conn.llen::<_, usize>("fila:resultados").unwrap(),
        1,
        "a job ran while paused"
    );
    assert_eq!(
        conn.llen::<_, usize>(key).unwrap(),
        50,
        "every job stays in the queue"
    );
    let status = json(&url, &["status"]);
    assert_eq!(queue(&status, key).unwrap()["paused"], true);

    ok(&url, &["resume", key]);
    wait_until(
        PATIENCE,
        "the 50 jobs after resume",
        || conn.llen::<_, usize>("fila:resultados").unwrap() == 51,
        || conn_len(&redis),
    );
    assert_eq!(
        queue(&json(&url, &["status"]), key).unwrap()["paused"],
        false
    );
}

fn conn_len(redis: &RedisServer) -> usize {
    redis.conn().llen("fila:resultados").unwrap()
}

#[test]
fn explain_names_the_reason_for_each_case() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Local caps: processes that scale on their own (`--no-fleet`): one with a per-queue cap
    // of 2 and a long stabilisation window, one with a total cap of 2 over two busy queues.
    // Fleet settings (pause, fleet cap): a coordinated process.
    let local = [
        ("idle", "fila:idle"),
        ("capped", "fila:capped"),
        ("stab", "fila:stab"),
    ];
    let _a = Worker::start(
        &redis,
        &local,
        &[
            "--no-fleet",
            "--max-threads-per-type",
            "2",
            "--jobs-per-thread",
            "10",
            "--scale-down-delay-ms",
            "600000",
        ],
    );
    let _b = Worker::start(
        &redis,
        &[("t1", "fila:t1"), ("t2", "fila:t2")],
        &[
            "--no-fleet",
            "--max-total-threads",
            "2",
            "--jobs-per-thread",
            "10",
        ],
    );
    let _c = Worker::start(
        &redis,
        &[("fleet", "fila:fleet"), ("paused", "fila:paused")],
        &["--jobs-per-thread", "10"],
    );
    // The per-queue cap of a coordinated process: its share is its room.
    let _d = Worker::start(
        &redis,
        &[("ccap", "fila:ccap")],
        &["--max-threads-per-type", "2", "--jobs-per-thread", "10"],
    );
    // Queues that exist before their first job (so the commands accept them).
    let mut conn = redis.conn();
    wait_until(
        PATIENCE,
        "the four processes in status",
        || {
            json(&url, &["status"])["processes"]
                .as_array()
                .unwrap()
                .len()
                == 4
        },
        || json(&url, &["status"]),
    );
    for key in ["fila:paused", "fila:fleet"] {
        let _: () = conn.rpush(key, r#"{"id":"warm","ms":1}"#).unwrap();
    }
    wait_until(
        PATIENCE,
        "the warm-up jobs",
        || conn.llen::<_, usize>("fila:resultados").unwrap() == 2,
        || (),
    );
    ok(&url, &["pause", "fila:paused"]);
    ok(&url, &["set", "fila:fleet", "fleet-max-threads", "1"]);
    push(&redis, "fila:capped", &jobs(100, 20_000));
    push(&redis, "fila:ccap", &jobs(100, 20_000));
    push(&redis, "fila:fleet", &jobs(100, 20_000));
    push(&redis, "fila:paused", &jobs(100, 20_000));
    push(&redis, "fila:t1", &jobs(100, 20_000));
    push(&redis, "fila:t2", &jobs(100, 20_000));
    push(&redis, "fila:stab", &jobs(30, 1));

    let cases = [
        ("fila:idle", "no_backlog", "no backlog"),
        (
            "fila:capped",
            "queue_cap",
            "at this process's per-queue cap",
        ),
        ("fila:ccap", "queue_cap", "at this process's per-queue cap"),
        (
            "fila:stab",
            "stabilising",
            "held by scale-down stabilisation",
        ),
        ("fila:fleet", "fleet_cap", "at the queue's fleet cap"),
        ("fila:paused", "paused", "paused"),
    ];
    for (key, reason, words) in cases {
        wait_until(
            PATIENCE,
            &format!("{key} explained as {reason}"),
            || reasons(&url, key) == [reason],
            || reasons(&url, key),
        );
        let line = ok(&url, &["explain", key]);
        assert!(line.contains(words), "{key}: {line}");
    }
    // The total cap of 2 over two queues that each want 10: at least one is held by it.
    wait_until(
        PATIENCE,
        "t1 or t2 at the total cap",
        || {
            [reasons(&url, "fila:t1"), reasons(&url, "fila:t2")]
                .iter()
                .any(|r| r == &["total_cap"])
        },
        || (reasons(&url, "fila:t1"), reasons(&url, "fila:t2")),
    );
}

/// explain shows, for a coordinated queue with a wait target, the target, the fleet's
/// estimated wait, its job duration and the divisor learned from it (`target / duration`).
#[test]
fn explain_shows_the_wait_target_the_estimated_wait_and_the_learned_divisor() {
    let redis = RedisServer::start();
    let url = redis.url();
    let _w = Worker::start(
        &redis,
        &[("wait", "fila:wait")],
        &["--target-wait", "4", "--jobs-per-thread", "1000"],
    );
    // 20 jobs of 100 ms are timed; then jobs of a minute keep a backlog (and never finish,
    // so the estimate stays the 100 ms one).
    push(&redis, "fila:wait", &jobs(20, 100));
    push(&redis, "fila:wait", &jobs(40, 60_000));
    let process = || json(&url, &["explain", "fila:wait"])["processes"][0].clone();
    let results = || -> usize { redis.conn().llen("fila:resultados").unwrap() };
    wait_until(
        PATIENCE,
        "the 20 short jobs done and explain showing the learned divisor",
        || results() >= 20 && process()["learned_jobs_per_thread"].is_number(),
        || (results(), process()),
    );
    // The text and the JSON give the same figures (read until a beat did not change them
    // between the two reads).
    let last = std::cell::RefCell::new((Value::Null, String::new()));
    wait_until(
        PATIENCE,
        "the text to show the figures of the JSON",
        || {
            let p = process();
            let line = ok(&url, &["explain", "fila:wait"]);
            let d = p["job_duration_s"].as_f64().unwrap_or(0.0);
            let shown = format!("(fleet-wide), jobs of {d:.2}s: learned ");
            *last.borrow_mut() = (p, line.clone());
            line.contains("wait target 4.0s, estimated wait ") && line.contains(&shown)
        },
        || last.borrow().clone(),
    );
    let p = process();
    assert_eq!(p["target_wait_s"], 4.0, "{p}");
    // Jobs of 100 ms: a sleep takes at least that, more on a loaded machine; the histogram's
    // median is within 1/16 of what it saw.
    let d = p["job_duration_s"].as_f64().unwrap();
    assert!((0.1 - 0.1 / 16.0..=0.2).contains(&d), "{p}");
    let learned = p["learned_jobs_per_thread"].as_f64().unwrap();
    assert!((learned - 4.0 / d).abs() < 1e-6, "{p}");
    assert!(p["estimated_wait_s"].as_f64().unwrap() > 0.0, "{p}");
}
