//! `threadtide simulate PROFILE --out DIR`: runs a workload profile through the three scaling
//! policies in virtual time (the library's `sim` module, the pool's own policy code) and
//! writes into DIR:
//!
//! * `summary.csv` and `summary.md`: per policy and queue (and `all`), p50 / p95 / max wait,
//!   worker-seconds and their lower bound, peak workers, worker starts, flaps;
//! * `series.csv`: every sample of every queue under every policy (backlog, workers, the
//!   oldest job's wait);
//! * `backlog.svg`, `workers.svg`, `wait.svg`: the policies overlaid (backlog and workers
//!   summed over the queues, the wait the longest of the queues).
//!
//! PROFILE is a file in the line format of `threadtide::sim` or the name of a shipped one:
//! `host`, `working-day`, `slow-site`, `flood` (files under `cli/profiles/`).

mod chart;

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use threadtide::sim::{Policy, Profile, Run, simulate};

use crate::common::{CliError, Global};

/// The shipped profiles, by name.
pub(crate) const SHIPPED: [(&str, &str); 4] = [
    ("host", include_str!("../../profiles/host.profile")),
    (
        "working-day",
        include_str!("../../profiles/working-day.profile"),
    ),
    (
        "slow-site",
        include_str!("../../profiles/slow-site.profile"),
    ),
    ("flood", include_str!("../../profiles/flood.profile")),
];

/// Arguments of `threadtide simulate`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// A profile file, or a shipped profile: host, working-day, slow-site, flood.
    profile: String,
    /// Directory for the charts, the CSV series and the summary (created if missing).
    #[arg(long)]
    out: PathBuf,
}

/// Runs the command.
pub(crate) fn run(global: &Global, args: Args) -> Result<(), CliError> {
    let text = match SHIPPED.iter().find(|(n, _)| *n == args.profile) {
        Some((_, text)) => (*text).to_owned(),
        None => fs::read_to_string(&args.profile).map_err(|e| {
            CliError::Usage(format!(
                "profile {}: {e} (shipped profiles: {})",
                args.profile,
                SHIPPED.map(|(n, _)| n).join(", ")
            ))
        })?,
    };
    let profile =
        Profile::parse(&text).map_err(|e| CliError::Usage(format!("{}: {e}", args.profile)))?;
    let runs: Vec<Run> = Policy::ALL.iter().map(|&p| simulate(&profile, p)).collect();
    write_all(&args.out, &profile, &runs)
        .map_err(|e| CliError::Failed(format!("--out {}: {e}", args.out.display())))?;
    if global.json {
        println!("{}", json(&profile, &runs));
    } else {
        print!("{}", table(&profile, &runs));
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

fn write_all(out: &Path, profile: &Profile, runs: &[Run]) -> Result<(), String> {
    fs::create_dir_all(out).map_err(|e| e.to_string())?;
    let write = |name: &str, body: String| {
        fs::write(out.join(name), body).map_err(|e| format!("{name}: {e}"))
    };
    write("summary.csv", summary_csv(runs))?;
    write("summary.md", table(profile, runs))?;
    write("series.csv", series_csv(profile, runs))?;
    chart::all(out, profile, runs)
}

const SUMMARY_HEADER: &str = "policy,queue,jobs,failed,p50_wait_s,p95_wait_s,max_wait_s,\
worker_seconds,lower_bound_seconds,cost_ratio,peak_workers,worker_starts,flaps,max_flaps_per_hour";

fn summary_csv(runs: &[Run]) -> String {
    let mut s = format!("{SUMMARY_HEADER}\n");
    for r in runs {
        for q in &r.summaries {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.3},{:.3},{:.3},{:.1},{:.1},{:.3},{},{},{},{}",
                r.policy,
                q.queue,
                q.jobs,
                q.failed,
                q.p50_wait.as_secs_f64(),
                q.p95_wait.as_secs_f64(),
                q.max_wait.as_secs_f64(),
                q.worker_seconds,
                q.lower_bound_seconds,
                ratio(q.worker_seconds, q.lower_bound_seconds),
                q.peak_workers,
                q.worker_starts,
                q.flaps,
                q.max_flaps_per_hour,
            );
        }
    }
    s
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

fn series_csv(profile: &Profile, runs: &[Run]) -> String {
    let mut s = "policy,t_s,queue,backlog,workers,wait_s\n".to_owned();
    for r in runs {
        for x in &r.series {
            let _ = writeln!(
                s,
                "{},{:.3},{},{},{},{:.3}",
                r.policy,
                x.at.as_secs_f64(),
                profile.queues[x.queue].name,
                x.backlog,
                x.workers,
                x.wait.as_secs_f64()
            );
        }
    }
    s
}

/// A Markdown table of every policy's figures over all queues, then per queue.
fn table(profile: &Profile, runs: &[Run]) -> String {
    let mut s = format!(
        "profile {}: {} queue(s), horizon {:?}\n\n\
         | policy | queue | jobs | p50 wait | p95 wait | max wait | worker-s | vs lower bound | peak workers | starts | flaps (max/h) |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        profile.name,
        profile.queues.len(),
        profile.horizon
    );
    for r in runs {
        let mut rows: Vec<_> = r.summaries.iter().collect();
        if rows.len() == 2 {
            rows.truncate(1); // one queue: "all" is the same row
        } else {
            rows.rotate_right(1); // "all" first
        }
        for q in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.2}x | {} | {} | {} ({}) |",
                r.policy,
                q.queue,
                q.jobs,
                human(q.p50_wait.as_secs_f64()),
                human(q.p95_wait.as_secs_f64()),
                human(q.max_wait.as_secs_f64()),
                q.worker_seconds,
                ratio(q.worker_seconds, q.lower_bound_seconds),
                q.peak_workers,
                q.worker_starts,
                q.flaps,
                q.max_flaps_per_hour,
            );
        }
    }
    s
}

fn human(secs: f64) -> String {
    if secs >= 120.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{secs:.1} s")
    }
}

fn json(profile: &Profile, runs: &[Run]) -> serde_json::Value {
    let policies: Vec<_> = runs
        .iter()
        .map(|r| {
            let queues: Vec<_> = r
                .summaries
                .iter()
                .map(|q| {
                    serde_json::json!({
                        "queue": q.queue,
                        "jobs": q.jobs,
                        "failed": q.failed,
                        "p50_wait_s": q.p50_wait.as_secs_f64(),
                        "p95_wait_s": q.p95_wait.as_secs_f64(),
                        "max_wait_s": q.max_wait.as_secs_f64(),
                        "worker_seconds": q.worker_seconds,
                        "lower_bound_seconds": q.lower_bound_seconds,
                        "peak_workers": q.peak_workers,
                        "worker_starts": q.worker_starts,
                        "flaps": q.flaps,
                        "max_flaps_per_hour": q.max_flaps_per_hour,
                    })
                })
                .collect();
            serde_json::json!({ "policy": r.policy, "end_s": r.end.as_secs_f64(), "queues": queues })
        })
        .collect();
    serde_json::json!({ "profile": profile.name, "policies": policies })
}
