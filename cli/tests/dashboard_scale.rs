//! Figures for docs/DASHBOARD.md, not a pass/fail test (ignored by default): the dashboard
//! against 50 processes, 10 queues and 100,000 dead letters in a real redis-server, read by
//! a real headless Chromium and by 3 more HTTP pollers. Prints the page load time, the Redis
//! calls per refresh (from `INFO commandstats` deltas) and the dashboard's resident memory.
//!
//! ```text
//! cargo test -p threadtide-cli --test dashboard_scale -- --ignored --nocapture
//! ```

#[allow(dead_code)]
#[path = "../../tests/support/redis.rs"]
mod redis_server;
#[allow(dead_code)]
#[path = "support/dashboard.rs"]
mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis_server::{RedisServer, command_calls};
use support::{Chrome, Dashboard, PATIENCE, dead_record, now_ms, wait_until};

const PROCS: usize = 50;
const QUEUES: usize = 10;
const DEAD: usize = 100_000;

fn write_fleet(conn: &mut redis::Connection) {
    let now = now_ms(conn);
    let mut pipe = redis::pipe();
    for p in 0..PROCS {
        let id = format!("host{}:{}:nonce{p}", p % 5, 1000 + p);
        let key = format!("threadtide:fleet:proc:{id}");
        let process = serde_json::json!({"id": id, "host": format!("host{}", p % 5), "pid": 1000 + p,
            "version": "0.1.0", "started_ms": now - 3_600_000, "heartbeat_ms": now});
        pipe.cmd("ZADD")
            .arg("threadtide:fleet:procs")
            .arg(now + 5000)
            .arg(&id);
        pipe.cmd("HSET")
            .arg(&key)
            .arg("process")
            .arg(process.to_string());
        for q in 0..QUEUES {
            let qk = format!("fila:q{q}");
            let v = serde_json::json!({"queue": format!("q{q}"), "key": qk, "alive": 2, "busy": 1,
                "target": 2, "slots": 2, "max_threads": 10, "max_total_threads": 20, "jobs_ok": 10,
                "jobs_failed": 0, "jobs_panicked": 0, "reason": "at_demand", "coordinated": true});
            pipe.cmd("HSET").arg(&key).arg(&qk).arg(v.to_string());
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(5000);
    }
    let _: () = pipe.query(conn).unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
#[ignore = "measurement for docs/DASHBOARD.md; run with --ignored --nocapture"]
fn figures_at_50_processes_10_queues_100k_dead_letters() {
    let redis = RedisServer::start();
    let mut conn = redis.conn();
    for q in 0..QUEUES {
        let _: () = redis::cmd("SADD")
            .arg("threadtide:fleet:queues")
            .arg(format!("fila:q{q}"))
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("RPUSH")
            .arg(format!("fila:q{q}"))
            .arg((0..100).map(|i| format!("j{i}")).collect::<Vec<_>>())
            .query(&mut conn)
            .unwrap();
    }
    let now = now_ms(&mut conn);
    for chunk in 0..DEAD / 1000 {
        let recs: Vec<String> = (0..1000)
            .map(|i| dead_record("q0", &format!("d{}", chunk * 1000 + i), now))
            .collect();
        let _: () = redis::cmd("RPUSH")
            .arg("fila:q0:dead")
            .arg(recs)
            .query(&mut conn)
            .unwrap();
    }
    write_fleet(&mut conn);
    // Heartbeats of the 50 records, as their processes would.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let beat = {
        let stop = stop.clone();
        let client = redis.client();
        std::thread::spawn(move || {
            let mut c = client.get_connection().unwrap();
            while !stop.load(Ordering::Relaxed) {
                write_fleet(&mut c);
                std::thread::sleep(Duration::from_millis(1000));
            }
        })
    };

    let dash = Dashboard::start(&redis.url(), &[]);
    wait_until(PATIENCE, "a first snapshot with 50 processes", || {
        let s = dash.get_json("/api/snapshot");
        let n = s["processes"].as_array().map_or(0, Vec::len);
        if n == PROCS { Ok(()) } else { Err(n) }
    });
    // Three pollers besides the browser: Redis must not see them.
    let pollers: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            let base = dash.base.clone();
            std::thread::spawn(move || {
                let d = Dashboard {
                    proc: support::Proc(std::process::Command::new("true").spawn().unwrap()),
                    base,
                };
                while !stop.load(Ordering::Relaxed) {
                    let _ = d.request("GET", "/api/snapshot", &[], "");
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        })
        .collect();
    let chrome = Chrome::launch();
    let started = Instant::now();
    chrome.open(&dash.base);
    wait_until(PATIENCE, "the page's first data", || {
        let v = chrome.eval("document.body.dataset.firstDataMs ?? null");
        if v.is_string() { Ok(()) } else { Err(v) }
    });
    let first = chrome.eval("document.body.dataset.firstDataMs");
    let load =
        chrome.eval("Math.round(performance.getEntriesByType('navigation')[0].loadEventEnd)");
    println!(
        "page: load event {load} ms, first data drawn {first} ms after navigation start (wall {:?})",
        started.elapsed()
    );

    // Calls per refresh: deltas over 10 refreshes, counting only what the dashboard sends.
    let t0: u64 = dash.get_json("/api/snapshot")["time_ms"].as_u64().unwrap();
    wait_until(PATIENCE, "a fresh snapshot", || {
        let t = dash.get_json("/api/snapshot")["time_ms"].as_u64().unwrap();
        if t > t0 { Ok(()) } else { Err(t) }
    });
    let before = command_calls(&mut conn);
    let t1 = dash.get_json("/api/snapshot")["time_ms"].as_u64().unwrap();
    let mut seen = 0;
    let mut last = t1;
    while seen < 10 {
        let t = wait_until(PATIENCE, "the next snapshot", || {
            let t = dash.get_json("/api/snapshot")["time_ms"].as_u64().unwrap();
            if t > last { Ok(t) } else { Err(t) }
        });
        last = t;
        seen += 1;
    }
    let after = command_calls(&mut conn);
    let writer = ["zadd", "hset", "pexpire", "info", "sadd", "rpush", "time"];
    let mut client_calls = 0;
    let mut inside = 0;
    let mut rows = Vec::new();
    for (cmd, n) in &after {
        let d = n - before.get(cmd).copied().unwrap_or(0);
        if d == 0 || writer.contains(&cmd.as_str()) {
            continue;
        }
        if matches!(
            cmd.as_str(),
            "evalsha" | "eval" | "smembers" | "xrange" | "script|load" | "script"
        ) {
            client_calls += d;
        } else {
            inside += d;
        }
        rows.push(format!("{cmd}={d}"));
    }
    rows.sort();
    println!(
        "10 refreshes with 1 browser + 3 pollers: {:.1} calls from the dashboard per refresh, {:.1} commands inside its scripts per refresh ({})",
        client_calls as f64 / 10.0,
        inside as f64 / 10.0,
        rows.join(" ")
    );
    println!(
        "snapshot: {} bytes",
        dash.request("GET", "/api/snapshot", &[], "").1.len()
    );

    // Dead letters: the last page and one filtered scan over all 100,000.
    let t = Instant::now();
    let p = dash.get_json(&format!(
        "/api/dead?queue=fila:q0&offset={}&limit=50",
        DEAD - 50
    ));
    println!(
        "last page of 100,000: {} items in {:?}",
        p["items"].as_array().unwrap().len(),
        t.elapsed()
    );
    let t = Instant::now();
    let p = dash.get_json("/api/dead?queue=fila:q0&contains=no-such-text&limit=50");
    println!(
        "filtered scan of 100,000 (no match): {} items in {:?}",
        p["items"].as_array().unwrap().len(),
        t.elapsed()
    );
    println!(
        "dashboard RSS after these: {} KiB",
        rss_kib(dash.proc.pid())
    );
    stop.store(true, Ordering::Relaxed);
    beat.join().unwrap();
    for p in pollers {
        p.join().unwrap();
    }
}
