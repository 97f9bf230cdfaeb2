//! `threadtide pause KEY` and `threadtide resume KEY`: stop and restart a queue fleet-wide.

use serde_json::json;

use crate::common::{CliError, Global};

/// A queue key.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The queue's list key (`fila:conferencia`).
    key: String,
}

/// Pauses (`true`) or resumes the queue, after checking it is one.
pub(crate) fn run(global: &Global, args: Args, pause: bool) -> Result<(), CliError> {
    let admin = global.admin()?;
    admin
        .check_queue(&args.key)
        .map_err(|e| global.source_error(e))?;
    let done = if pause {
        admin.pause(&args.key)
    } else {
        admin.resume(&args.key)
    };
    done.map_err(|e| global.source_error(e))?;
    if global.json {
        println!("{}", json!({ "key": args.key, "paused": pause }));
    } else if pause {
        println!(
            "{}: paused (running jobs finish; no new job starts until `threadtide resume {}`)",
            args.key, args.key
        );
    } else {
        println!("{}: resumed", args.key);
    }
    Ok(())
}
