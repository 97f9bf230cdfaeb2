//! `threadtide events`: the fleet's scaling history (`F:fleet:events`), optionally followed.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use threadtide::admin::{EventFilter, ScaleRecord};

use crate::common::{CliError, Global, now_ms, parse_duration, table, utc};

/// The scaling history: one line per decision of any process.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Only this queue key.
    #[arg(long)]
    queue: Option<String>,
    /// Only decisions this recent (`30s`, `10m`, `2h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    since: Option<Duration>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Keep printing new decisions as they come (every second) until interrupted.
    #[arg(long)]
    follow: bool,
}

pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let admin = global.admin()?;
    let mut filter = EventFilter::default().limit(args.limit);
    if let Some(q) = &args.queue {
        filter = filter.queue(q.clone());
    }
    if let Some(d) = args.since {
        filter = filter.since_ms(now_ms().saturating_sub(d.as_millis() as u64));
    }
    let events = admin.events(&filter).map_err(|e| global.source_error(e))?;
    if global.json && !args.follow {
        let list: Vec<_> = events.iter().map(to_json).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    print_events(global, &events, true);
    if !args.follow {
        return Ok(());
    }
    let mut seen: HashSet<String> = events.iter().map(|e| e.id.clone()).collect();
    // Resume from the last entry's stream id (the server's clock), not its `time_ms` (the
    // clock of the process that wrote it, which may run ahead and would skip entries); the
    // id's millisecond is read again and already-seen ids are dropped, so it is exclusive.
    // With nothing shown yet: the --since start, else a minute back (nothing newer matched).
    let mut since = events.last().map_or_else(
        || {
            filter
                .since_ms
                .unwrap_or_else(|| now_ms().saturating_sub(60_000))
        },
        id_ms,
    );
    let mut header_shown = !events.is_empty();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let newer = admin
            .events(&filter.clone().since_ms(since).limit(0))
            .map_err(|e| global.source_error(e))?;
        let fresh: Vec<ScaleRecord> = newer
            .into_iter()
            .filter(|e| seen.insert(e.id.clone()))
            .collect();
        if let Some(last) = fresh.last() {
            since = id_ms(last);
        }
        if !fresh.is_empty() {
            print_events(global, &fresh, !header_shown);
            header_shown = true;
        }
    }
}

fn to_json(e: &ScaleRecord) -> serde_json::Value {
    json!({
        "id": e.id, "time_ms": e.time_ms, "process": e.process, "queue": e.queue,
        "from": e.from, "to": e.to, "change": e.change, "reason": e.reason.as_str(),
        "backlog": e.backlog,
    })
}

fn print_events(global: &Global, events: &[ScaleRecord], header: bool) {
    if global.json {
        // Following with --json: one document per line.
        for e in events {
            println!("{}", to_json(e));
        }
        return;
    }
    if events.is_empty() {
        if header {
            println!("no scaling decision recorded");
        }
        return;
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                utc(e.time_ms),
                e.queue.clone(),
                e.process.clone(),
                format!("{} -> {}", e.from, e.to),
                e.backlog.to_string(),
                e.reason.describe().to_owned(),
            ]
        })
        .collect();
    let text = table(
        &["TIME", "QUEUE", "PROCESS", "TARGET", "BACKLOG", "REASON"],
        &rows,
    );
    if header {
        print!("{text}");
    } else {
        // Without repeating the header.
        print!("{}", text.split_once('\n').map_or("", |(_, rest)| rest));
    }
}

/// The millisecond part of an entry's stream id (`MS-SEQ`, the Redis server's clock).
fn id_ms(e: &ScaleRecord) -> u64 {
    e.id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(e.time_ms)
}
