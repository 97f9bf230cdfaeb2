//! `threadtide dead list|show|requeue|purge`: the dead letters of a queue.

use std::time::Duration;

use clap::Subcommand;
use serde_json::{Value, json};
use threadtide::admin::{DeadFilter, DeadLetter, MoveReport};

use crate::common::{CliError, Global, clip, parse_duration, table, utc};

/// Dead letters: list, show, requeue, purge.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List dead letters (oldest first) with their reason, error and payload.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Start scanning at this position of the list (the `next_offset` of a previous page).
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
    /// Show one dead letter whole (INDEX from `dead list`).
    Show {
        /// The queue's list key.
        #[arg(long)]
        queue: String,
        /// Its position in the list (0 is the oldest).
        index: usize,
    },
    /// Put matching dead letters back on the queue (byte for byte); without --yes only
    /// counts them.
    Requeue {
        #[command(flatten)]
        filter: Filter,
        /// Do it (otherwise nothing changes).
        #[arg(long)]
        yes: bool,
    },
    /// Delete matching dead letters; without --yes only counts them.
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Do it (otherwise nothing changes).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(clap::Args, Debug)]
struct Filter {
    /// The queue's list key (`fila:conferencia`).
    #[arg(long)]
    queue: String,
    /// Only this reason: malformed, attempts_exhausted or permanent.
    #[arg(long)]
    reason: Option<String>,
    /// Only records whose error, worker or payload contains this text.
    #[arg(long)]
    grep: Option<String>,
    /// Only records at least this old (`30s`, `10m`, `2h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    older_than: Option<Duration>,
    /// At most this many records (for list: defaults to 50).
    #[arg(long)]
    limit: Option<usize>,
}

impl Filter {
    fn to_admin(&self) -> DeadFilter {
        let mut f = DeadFilter::default();
        f.reason = self.reason.clone();
        f.grep = self.grep.clone();
        f.older_than = self.older_than;
        f.limit = self.limit;
        f
    }
}

pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let admin = global.admin()?;
    let err = |e| global.source_error(e);
    match args.command {
        Command::List { filter, offset } => {
            let limit = filter.limit.unwrap_or(50);
            let page = admin
                .dead_page(&filter.queue, &filter.to_admin(), offset, limit)
                .map_err(err)?;
            if global.json {
                let letters: Vec<Value> = page.letters.iter().map(letter_json).collect();
                let doc = json!({
                    "queue": filter.queue, "total": page.total,
                    "more": page.next_offset.is_some(), "next_offset": page.next_offset,
                    "letters": letters,
                });
                println!("{doc}");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = page
                .letters
                .iter()
                .map(|d| {
                    vec![
                        d.index.to_string(),
                        utc(d.time_ms),
                        d.reason.clone(),
                        d.attempts.to_string(),
                        d.worker.clone(),
                        clip(d.unreadable.as_deref().unwrap_or(&d.error), 40),
                        clip(&String::from_utf8_lossy(&d.payload), 40),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "INDEX", "TIME", "REASON", "RUNS", "WORKER", "ERROR", "PAYLOAD"
                    ],
                    &rows
                )
            );
            println!(
                "{} shown of {} dead letter(s) in {}:dead{}",
                page.letters.len(),
                page.total,
                filter.queue,
                match page.next_offset {
                    Some(next) => format!(" (more may match: --offset {next})"),
                    None => String::new(),
                }
            );
        }
        Command::Show { queue, index } => {
            let Some(d) = admin.dead_show(&queue, index).map_err(err)? else {
                return Err(CliError::Failed(format!(
                    "{queue}:dead has no record at index {index}"
                )));
            };
            if global.json {
                println!("{}", letter_json(&d));
            } else {
                println!("index:     {}", d.index);
                println!("queue:     {}", d.queue);
                println!("time:      {} ({} ms)", utc(d.time_ms), d.time_ms);
                println!("reason:    {}", d.reason);
                println!("runs:      {}", d.attempts);
                println!("worker:    {} ({})", d.worker, d.worker_id);
                println!("error:     {}", d.error);
                if let Some(why) = &d.unreadable {
                    println!("unreadable: {why}");
                }
                match std::str::from_utf8(&d.payload) {
                    Ok(text) => println!("payload:   {text}"),
                    Err(_) => println!("payload (hex): {}", hex(&d.payload)),
                }
            }
        }
        Command::Requeue { filter, yes } => {
            let report = admin
                .dead_requeue(&filter.queue, &filter.to_admin(), !yes)
                .map_err(err)?;
            print_report(global, &filter.queue, "requeue", &report);
        }
        Command::Purge { filter, yes } => {
            let report = admin
                .dead_purge(&filter.queue, &filter.to_admin(), !yes)
                .map_err(err)?;
            print_report(global, &filter.queue, "purge", &report);
        }
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn letter_json(d: &DeadLetter) -> Value {
    let (payload, payload_hex) = match std::str::from_utf8(&d.payload) {
        Ok(t) => (Value::from(t), Value::Null),
        Err(_) => (Value::Null, Value::from(hex(&d.payload))),
    };
    json!({
        "index": d.index, "queue": d.queue, "reason": d.reason, "error": d.error,
        "attempts": d.attempts, "worker": d.worker, "worker_id": d.worker_id,
        "time_ms": d.time_ms, "payload": payload, "payload_hex": payload_hex,
        "unreadable": d.unreadable,
    })
}

fn print_report(global: &Global, queue: &str, verb: &str, r: &MoveReport) {
    if global.json {
        let doc = json!({
            "queue": queue, "action": verb, "dry_run": r.dry_run, "matched": r.matched,
            "moved": r.moved, "gone": r.gone, "unreadable": r.unreadable,
        });
        println!("{doc}");
        return;
    }
    if r.dry_run {
        println!(
            "{} dead letter(s) of {queue} match; nothing changed: run again with --yes to {verb} them",
            r.matched
        );
    } else {
        let done = if verb == "requeue" {
            "requeued"
        } else {
            "purged"
        };
        println!(
            "{} of {} matching dead letter(s) of {queue} {done}",
            r.moved, r.matched
        );
    }
    if r.gone > 0 {
        println!(
            "{} were gone before they could be moved (another command took them)",
            r.gone
        );
    }
    if r.unreadable > 0 {
        println!("{} are unreadable and stay (see `dead show`)", r.unreadable);
    }
}
