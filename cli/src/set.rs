//! `threadtide set KEY SETTING VALUE`: change a queue's runtime settings fleet-wide.

use clap::ValueEnum;
use serde_json::json;

use crate::common::{CliError, Global};

/// Change a queue's runtime setting for the whole fleet.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The queue's list key (`fila:conferencia`).
    key: String,
    /// Which setting.
    setting: Setting,
    /// A number of at least 1; for `fleet-max-threads`, `none` removes the cap.
    value: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Setting {
    /// Target threads = ceil(backlog / N), fleet-wide.
    JobsPerThread,
    /// The most threads the whole fleet runs for the queue.
    FleetMaxThreads,
}

pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let value: Option<usize> = match (args.setting, args.value.as_str()) {
        (Setting::FleetMaxThreads, "none") => None,
        (_, v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(CliError::Usage(format!(
                    "{}: {v:?} is not a number of at least 1{}",
                    name(args.setting),
                    match args.setting {
                        Setting::FleetMaxThreads => " (or none)",
                        Setting::JobsPerThread => "",
                    }
                )));
            }
        },
    };
    let admin = global.admin()?;
    admin
        .check_queue(&args.key)
        .map_err(|e| global.source_error(e))?;
    let done = match (args.setting, value) {
        (Setting::JobsPerThread, Some(n)) => admin.set_jobs_per_thread(&args.key, n),
        (Setting::JobsPerThread, None) => unreachable!("parsed above"),
        (Setting::FleetMaxThreads, n) => admin.set_fleet_max_threads(&args.key, n),
    };
    done.map_err(|e| global.source_error(e))?;
    if global.json {
        println!(
            "{}",
            json!({ "key": args.key, "setting": name(args.setting), "value": value })
        );
    } else {
        let shown = value.map_or("none".to_owned(), |n| n.to_string());
        println!("{}: {} = {shown}", args.key, name(args.setting));
    }
    Ok(())
}

fn name(s: Setting) -> &'static str {
    match s {
        Setting::JobsPerThread => "jobs-per-thread",
        Setting::FleetMaxThreads => "fleet-max-threads",
    }
}
