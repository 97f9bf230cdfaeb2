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
                json!({
                    "process": p.id, "alive": q.alive, "busy": q.busy, "target": q.target,
                    "reason": q.reason.as_str(), "text": q.reason.describe(),
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
            "{}: {} worker(s), target {}: {}",
            p.id,
            q.alive,
            q.target,
            q.reason.describe()
        );
    }
    Ok(())
}
