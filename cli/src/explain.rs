//! `threadtide explain KEY`: why the queue has the workers it has, one line per process.

use serde_json::json;

use crate::common::{CliError, Global};
use crate::status;

/// Why a queue has the workers it has: one line per process.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The queue's list key (`fila:conferencia`).
    key: String,
}

pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let admin = global.admin()?;
    admin
        .check_queue(&args.key)
        .map_err(|e| global.source_error(e))?;
    let fleet = status::read(global, &admin, Some(&args.key))?;
    let counts = &fleet.queues[0].1;
    let serving: Vec<_> = fleet
        .processes
        .iter()
        .filter_map(|p| p.queues.iter().find(|q| q.key == args.key).map(|q| (p, q)))
        .collect();
    if global.json {
        let lines: Vec<_> = serving
            .iter()
            .map(|(p, q)| {
                let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
                json!({
                    "process": p.id, "alive": q.alive, "busy": q.busy, "target": q.target,
                    "reason": q.reason.as_str(), "text": q.reason.describe(),
                    "target_wait_s": secs(q.target_wait),
                    "estimated_wait_s": secs(q.estimated_wait),
                    "job_duration_s": secs(q.job_duration_estimate),
                    "learned_jobs_per_thread": q.learned_jobs_per_thread(),
                })
            })
            .collect();
        let doc = json!({
            "key": args.key, "backlog": counts.backlog, "paused": counts.paused,
            "processes": lines,
        });
        println!("{doc}");
        return Ok(());
    }
    println!(
        "{}: backlog {}{}",
        args.key,
        counts.backlog,
        if counts.paused { ", paused" } else { "" }
    );
    if serving.is_empty() {
        println!("no live process serves {}", args.key);
    }
    for (p, q) in serving {
        println!(
            "{}: {} worker(s), target {}: {}{}",
            p.id,
            q.alive,
            q.target,
            q.reason.describe(),
            wait_note(q)
        );
    }
    Ok(())
}

/// The wait-target part of a process's line: the target, the fleet's estimated wait, its job
/// duration and the divisor learned from it (empty for a queue on `jobs_per_thread`).
fn wait_note(q: &threadtide::admin::ProcessQueue) -> String {
    let Some(target) = q.target_wait else {
        return String::new();
    };
    let scope = if q.coordinated {
        "fleet-wide"
    } else {
        "this process"
    };
    match (
        q.estimated_wait,
        q.job_duration_estimate,
        q.learned_jobs_per_thread(),
    ) {
        (Some(wait), Some(d), Some(div)) => format!(
            "; wait target {:.1}s, estimated wait {:.1}s ({scope}), jobs of {:.2}s: \
             learned {div:.1} jobs per thread",
            target.as_secs_f64(),
            wait.as_secs_f64(),
            d.as_secs_f64()
        ),
        _ => format!(
            "; wait target {:.1}s, no job timed yet: jobs_per_thread decides",
            target.as_secs_f64()
        ),
    }
}
