//! The whole job cycle as a Redis ACL user that has only the commands and key patterns
//! `docs/RELIABILITY.md` ("A minimal ACL") lists, and a clear start-up error when one is missing.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::Commands;
use support::redis::RedisServer;
use support::{PATIENCE, Recorder, wait_until};
use threadtide::{JobError, RedisSource, StartError, ThreadPoolManager};

const Q: &str = "fila:acl";
const RESULTS: &str = "fila:acl-results";

/// The `+command` rules of the documented `ACL SETUSER` line.
fn documented_commands() -> Vec<String> {
    let docs = include_str!("../docs/RELIABILITY.md");
    let section = &docs[docs.find("## A minimal ACL").expect("ACL section")..];
    let block = section.split("```").nth(1).expect("the ACL SETUSER block");
    block
        .split_whitespace()
        .filter(|w| w.starts_with('+'))
        .map(str::to_owned)
        .collect()
}

fn set_user(admin: &mut redis::Connection, user: &str, commands: &[String]) {
    let mut cmd = redis::cmd("ACL");
    cmd.arg("SETUSER")
        .arg(user)
        .arg("reset")
        .arg("on")
        .arg(format!(">{user}-Pw"))
        .arg(format!("~{Q}"))
        .arg(format!("~{Q}:*"))
        .arg(format!("~{RESULTS}"))
        .arg("~threadtide:fleet:*")
        .arg("resetchannels")
        .arg("-@all");
    for c in commands {
        cmd.arg(c);
    }
    let _: () = cmd.query(admin).unwrap();
}

#[test]
fn the_documented_acl_runs_the_whole_cycle_and_a_missing_command_fails_start() {
    let server = RedisServer::start();
    let mut admin = server.conn();
    let commands = documented_commands();
    assert!(commands.len() >= 20, "{commands:?}");
    set_user(&mut admin, "worker", &commands);
    let url = server.url_as("worker", "worker-Pw");

    let source = RedisSource::builder(url.as_str(), Q)
        .results(RESULTS)
        .decoder(|b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| e.to_string()))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(100))
        .worker_ttl(Duration::from_millis(500))
        .block_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let events = Recorder::default();
    let f = failed_once.clone();
    let pool = ThreadPoolManager::builder()
        .thread_name_prefix("acl")
        .event_handler(events.clone())
        .queue(
            "q",
            source.clone(),
            |_| Ok::<_, Infallible>(()),
            move |_, job: &String| {
                if job.starts_with("flaky") && f.lock().insert(job.clone()) {
                    return Err(JobError::retryable("first run fails"));
                }
                Ok(job.clone().into_bytes())
            },
        )
        .build()
        .unwrap();
    pool.start().unwrap();
    // Pushed by the restricted user itself (RPUSH), as a producer would.
    let mut jobs: Vec<Vec<u8>> = (0..40).map(|i| format!("job{i}").into_bytes()).collect();
    jobs.extend((0..5).map(|i| format!("flaky{i}").into_bytes()));
    jobs.push(vec![0xff, 0xfe]); // not UTF-8: dead-lettered as malformed
    source.push(&jobs).unwrap();
    wait_until(
        PATIENCE,
        "every job settled",
        || {
            source.summary().is_ok_and(|s| s.is_idle() && s.dead == 1)
                && admin.llen::<_, usize>(RESULTS).unwrap() == 45
        },
        || {
            (
                source.summary(),
                source.stats(),
                events.errors.lock().clone(),
            )
        },
    );
    let stats = source.stats();
    assert_eq!((stats.retried, stats.dead_malformed), (5, 1), "{stats:?}");
    pool.shutdown();
    pool.wait().unwrap();
    let refused: Vec<_> = events
        .errors
        .lock()
        .iter()
        .filter(|e| e.message.contains("NOPERM") || e.message.contains("permission"))
        .cloned()
        .collect();
    assert!(refused.is_empty(), "{refused:?}");

    // Without one of them, start() says which.
    for missing in ["+lmove", "+zremrangebyscore", "+evalsha"] {
        let user = format!("no{}", &missing[1..]);
        let fewer: Vec<String> = commands.iter().filter(|c| *c != missing).cloned().collect();
        set_user(&mut admin, &user, &fewer);
        let source = RedisSource::builder(server.url_as(&user, &format!("{user}-Pw")), Q)
            .build()
            .unwrap();
        let pool = ThreadPoolManager::builder()
            .queue(
                "q",
                source,
                |_| Ok::<_, Infallible>(()),
                |_, j: &Vec<u8>| Ok(j.clone()),
            )
            .build()
            .unwrap();
        match pool.start() {
            Err(StartError::Source { error, .. }) => {
                let text = error.to_string();
                assert!(error.is_permanent(), "{text}");
                assert!(text.contains(&missing[1..]), "{missing}: {text}");
            }
            other => panic!("{missing}: expected a start error, got {other:?}"),
        }
    }
}
