//! `threadtide retries list --queue KEY`: jobs waiting for a retry, soonest first.

use clap::Subcommand;
use serde_json::json;

use crate::common::{CliError, Global, clip, now_ms, table, utc};

/// Delayed retries.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List delayed retries with their due time and attempt, soonest first.
    List {
        /// The queue's list key (`fila:conferencia`).
        #[arg(long)]
        queue: String,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let Command::List { queue, limit } = args.command;
    let admin = global.admin()?;
    let err = |e| global.source_error(e);
    let total = admin.retries_len(&queue).map_err(err)?;
    let list = admin.retries(&queue, 0, limit).map_err(err)?;
    if global.json {
        let items: Vec<_> = list
            .iter()
            .map(|r| {
                json!({
                    "due_ms": r.due_ms, "attempt": r.runs + 1, "runs": r.runs,
                    "max_attempts": r.max_attempts,
                    "payload": String::from_utf8_lossy(&r.payload),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "queue": queue, "total": total, "retries": items })
        );
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            let due = if r.due_ms <= now {
                "now".to_owned()
            } else {
                format!("in {}s", (r.due_ms - now).div_ceil(1000))
            };
            vec![
                utc(r.due_ms),
                due,
                match r.max_attempts {
                    Some(cap) => format!("{} of {cap}", r.runs + 1),
                    None => (r.runs + 1).to_string(),
                },
                clip(&String::from_utf8_lossy(&r.payload), 60),
            ]
        })
        .collect();
    print!("{}", table(&["DUE", "WHEN", "ATTEMPT", "PAYLOAD"], &rows));
    println!(
        "{} shown of {total} delayed retr(ies) in {queue}:delayed",
        list.len()
    );
    Ok(())
}
