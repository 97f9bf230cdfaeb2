//! `threadtide --redis URL COMMAND`: see `threadtide --help`.
//!
//! Exit codes: 0 success; 1 the command ran and found a problem it reports (for example a key
//! that is not a queue); 2 bad usage (clap's own code); 3 Redis unreachable; 4 Redis refused the
//! credentials or a permission. Every command takes `--json`. Bulk changes (`dead requeue`,
//! `dead purge`) print how many records match and change nothing without `--yes`.

#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

mod common;
mod dashboard;
mod dead;
mod events;
mod explain;
mod pause;
mod retries;
mod set;
mod simulate;
mod status;

use common::{CliError, Global};

/// Operate a fleet of threadtide processes that share Redis queues.
#[derive(Parser, Debug)]
#[command(name = "threadtide", version, about)]
struct Cli {
    /// The Redis server the fleet uses (`redis://[user:password@]host:port[/db]`). The password
    /// is never printed.
    #[arg(long, global = true, env = "THREADTIDE_REDIS", hide_env_values = true)]
    redis: Option<String>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that Redis answers: its version and one round trip's time.
    Ping,
    /// Run a workload profile through the scaling policies in virtual time; write charts,
    /// CSV series and a summary table into --out DIR. No Redis needed.
    Simulate(simulate::Args),
    /// Every live process, and per queue its counts, workers and the reason for its size.
    Status(status::Args),
    /// The scaling history of the fleet.
    Events(events::Args),
    /// Dead letters: list, show, requeue, purge.
    Dead(dead::Args),
    /// Delayed retries.
    Retries(retries::Args),
    /// Pause a queue fleet-wide: running jobs finish, no new job starts.
    Pause(pause::Args),
    /// Resume a paused queue.
    Resume(pause::Args),
    /// Change a queue's runtime setting fleet-wide (jobs-per-thread, fleet-max-threads).
    Set(set::Args),
    /// Why a queue has the workers it has, one line per process.
    Explain(explain::Args),
    /// Serve the live dashboard: one page and a JSON API (docs/DASHBOARD.md).
    Dashboard(dashboard::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let global = Global {
        redis: cli.redis,
        json: cli.json,
    };
    let result = match cli.command {
        Command::Ping => ping(&global),
        Command::Simulate(args) => simulate::run(&global, args),
        Command::Status(args) => status::run(&global, args),
        Command::Events(args) => events::run(&global, args),
        Command::Dead(args) => dead::run(&global, args),
        Command::Retries(args) => retries::run(&global, args),
        Command::Pause(args) => pause::run(&global, args, true),
        Command::Resume(args) => pause::run(&global, args, false),
        Command::Set(args) => set::run(&global, args),
        Command::Explain(args) => explain::run(&global, args),
        Command::Dashboard(args) => dashboard::run(&global, args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("threadtide: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn ping(global: &Global) -> Result<(), CliError> {
    let mut conn = global.connect()?;
    let started = Instant::now();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut conn)
        .map_err(|e| global.redis_error(e))?;
    let rtt = started.elapsed();
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_owned();
    if global.json {
        let doc = serde_json::json!({
            "redis": global.redacted_url(),
            "version": version,
            "rtt_us": rtt.as_micros() as u64,
        });
        println!("{doc}");
    } else {
        println!(
            "{}: Redis {version}, {} us",
            global.redacted_url(),
            rtt.as_micros()
        );
    }
    Ok(())
}
