//! `threadtide status`: every live process, and per queue its counts, the workers of each
//! process and of the fleet, and why each process has the size it has.
//!
//! Round trips: one for the processes (a script), one for the queue list, one per queue for
//! its counts (a script): 2 + queues in all.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use threadtide::admin::{Admin, ProcessRecord, QueueCounts};

use crate::common::{CliError, Global, human_duration, now_ms, table};

/// Show the fleet: processes, queues, workers and the reason for each queue's size.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {}

/// What `status` and `explain` read.
pub(crate) struct Fleet {
    pub(crate) processes: Vec<ProcessRecord>,
    pub(crate) queues: Vec<(String, QueueCounts)>,
}

/// The fleet's processes and the counts of `only` (or of every queue the fleet knows).
pub(crate) fn read(global: &Global, admin: &Admin, only: Option<&str>) -> Result<Fleet, CliError> {
    let processes = admin.processes().map_err(|e| global.source_error(e))?;
    let keys: BTreeSet<String> = match only {
        Some(k) => BTreeSet::from([k.to_owned()]),
        None => {
            let mut keys: BTreeSet<String> = admin
                .queues()
                .map_err(|e| global.source_error(e))?
                .into_iter()
                .collect();
            keys.extend(
                processes
                    .iter()
                    .flat_map(|p| p.queues.iter().map(|q| q.key.clone())),
            );
            keys
        }
    };
    let mut queues = Vec::with_capacity(keys.len());
    for key in keys {
        let counts = admin
            .queue_counts(&key)
            .map_err(|e| global.source_error(e))?;
        queues.push((key, counts));
    }
    Ok(Fleet { processes, queues })
}

pub(crate) fn run(global: &Global, _args: Args) -> Result<(), CliError> {
    let admin = global.admin()?;
    let fleet = read(global, &admin, None)?;
    if global.json {
        println!("{}", to_json(&fleet));
    } else {
        print!("{}", human(&fleet, now_ms()));
    }
    Ok(())
}

fn uptime(p: &ProcessRecord, now: u64) -> Duration {
    Duration::from_millis(now.saturating_sub(p.started_ms))
}

fn setting(v: Option<usize>) -> Value {
    v.map_or(Value::Null, |n| json!(n))
}

fn to_json(f: &Fleet) -> Value {
    let now = now_ms();
    let processes: Vec<Value> = f
        .processes
        .iter()
        .map(|p| {
            json!({
                "id": p.id, "host": p.host, "pid": p.pid, "version": p.version,
                "started_ms": p.started_ms, "heartbeat_ms": p.heartbeat_ms,
                "uptime_ms": uptime(p, now).as_millis() as u64,
            })
        })
        .collect();
    let queues: Vec<Value> = f
        .queues
        .iter()
        .map(|(key, c)| {
            let per: Vec<Value> = f
                .processes
                .iter()
                .filter_map(|p| p.queues.iter().find(|q| &q.key == key).map(|q| (p, q)))
                .map(|(p, q)| {
                    json!({
                        "process": p.id, "queue": q.queue, "alive": q.alive, "busy": q.busy,
                        "target": q.target, "slots": q.slots, "max_threads": q.max_threads,
                        "max_total_threads": q.max_total_threads, "reason": q.reason.as_str(),
                        "reason_text": q.reason.describe(), "coordinated": q.coordinated,
                        "jobs_ok": q.jobs_ok, "jobs_failed": q.jobs_failed,
                        "jobs_panicked": q.jobs_panicked,
                    })
                })
                .collect();
            let sum = |field: &str| per.iter().filter_map(|v| v[field].as_u64()).sum::<u64>();
            json!({
                "key": key, "backlog": c.backlog, "delayed": c.delayed,
                "processing": c.processing, "dead": c.dead, "registered_workers": c.workers,
                "slots": c.slots, "paused": c.paused,
                "settings": {
                    "jobs_per_thread": setting(c.jobs_per_thread),
                    "fleet_max_threads": setting(c.fleet_max_threads),
                },
                "fleet": { "alive": sum("alive"), "busy": sum("busy"), "target": sum("target") },
                "processes": per,
            })
        })
        .collect();
    json!({ "processes": processes, "queues": queues })
}

fn human(f: &Fleet, now: u64) -> String {
    let mut out = String::new();
    if f.processes.is_empty() {
        out.push_str("no live process\n");
    } else {
        let rows: Vec<Vec<String>> = f
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.id.clone(),
                    p.host.clone(),
                    p.pid.to_string(),
                    p.version.clone(),
                    human_duration(uptime(p, now)),
                ]
            })
            .collect();
        out.push_str(&table(
            &["PROCESS", "HOST", "PID", "VERSION", "UPTIME"],
            &rows,
        ));
    }
    for (key, c) in &f.queues {
        out.push('\n');
        let mut settings = Vec::new();
        if c.paused {
            settings.push("PAUSED".to_owned());
        }
        if let Some(n) = c.jobs_per_thread {
            settings.push(format!("jobs-per-thread {n}"));
        }
        if let Some(n) = c.fleet_max_threads {
            settings.push(format!("fleet-max-threads {n}"));
        }
        out.push_str(&format!(
            "{key}: backlog {}, delayed {}, processing {}, dead {}{}\n",
            c.backlog,
            c.delayed,
            c.processing,
            c.dead,
            if settings.is_empty() {
                String::new()
            } else {
                format!(" [{}]", settings.join(", "))
            }
        ));
        let mut rows = Vec::new();
        let (mut alive, mut busy, mut target) = (0, 0, 0);
        for p in &f.processes {
            if let Some(q) = p.queues.iter().find(|q| &q.key == key) {
                alive += q.alive;
                busy += q.busy;
                target += q.target;
                rows.push(vec![
                    format!("  {}", p.id),
                    q.alive.to_string(),
                    q.busy.to_string(),
                    q.target.to_string(),
                    q.reason.describe().to_owned(),
                ]);
            }
        }
        if rows.is_empty() {
            out.push_str("  no live process serves it\n");
            continue;
        }
        rows.push(vec![
            "  fleet".to_owned(),
            alive.to_string(),
            busy.to_string(),
            target.to_string(),
            String::new(),
        ]);
        out.push_str(&table(
            &["  PROCESS", "ALIVE", "BUSY", "TARGET", "REASON"],
            &rows,
        ));
    }
    out
}
