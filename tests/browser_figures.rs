//! The figures of docs/BENCHMARKS.md section 7 "Real browsers" (issue 13, item 11): real
//! headless Chromium workers of `examples/browser_worker.rs` on a real `redis-server`.
//! Ignored by default (minutes of browser work); run with
//!
//! ```text
//! cargo test --test browser_figures -- --ignored --nocapture
//! ```
//!
//! It prints a table: each figure is the median of `RUNS` runs, with the smallest and largest.
#![cfg(feature = "redis")]

mod browser_support;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use browser_support::browser::{Counters, Session};
use browser_support::*;
use support::redis::RedisServer;
use support::{PATIENCE, wait_until};

const RUNS: usize = 3;

/// Adds a row to the table, and prints it at once (a run that fails later keeps its figures).
fn row(rows: &mut Vec<(String, String)>, (what, value): (String, String)) {
    println!("| {what} | {value} |");
    rows.push((what, value));
}

/// "median (min-max) unit" of `values`.
fn spread(mut values: Vec<f64>, unit: &str, digits: usize) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    format!(
        "{median:.digits$} {unit} ({:.digits$}-{:.digits$})",
        values[0],
        values[values.len() - 1]
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Launch, login, PSS after login and after 100 order pages, and a recycle (drop + open)
/// with and without the carried cookie, measured on single sessions.
fn per_browser(rows: &mut Vec<(String, String)>) {
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new("figures-browser");
    let config = browser::BrowserConfig::new(site.url(), scratch.profiles());
    let (mut launch, mut login, mut pss, mut growth) = (vec![], vec![], vec![], vec![]);
    let (mut recycle_login, mut recycle_carry) = (vec![], vec![]);
    for _ in 0..RUNS {
        let mut session = Session::open(&config, "figures", None).unwrap();
        launch.push(ms(session.launch_time));
        login.push(ms(session.login_time));
        let after_login = procs::pss_tree(session.pid());
        pss.push(mib(after_login));
        for id in 1..=100 {
            jobs::conferencia(
                &mut session,
                &jobs::Job {
                    id,
                    hold: false,
                    panic: false,
                },
            )
            .unwrap();
        }
        growth.push(mib(procs::pss_tree(session.pid())) - mib(after_login));
        // A recycle: the old browser closed (reaped, profile removed), a new one ready.
        let cookie = session.cookie();
        let started = Instant::now();
        drop(session);
        let session = Session::open(&config, "figures", None).unwrap();
        recycle_login.push(ms(started.elapsed()));
        let started = Instant::now();
        drop(session);
        let mut session = Session::open(&config, "figures", Some(cookie)).unwrap();
        recycle_carry.push(ms(started.elapsed()));
        let logins = Counters::get(&config.counters.logins);
        jobs::conferencia(
            &mut session,
            &jobs::Job {
                id: 7,
                hold: false,
                panic: false,
            },
        )
        .unwrap();
        // The page took the carried cookie: the job did not have to log in again.
        assert_eq!(Counters::get(&config.counters.logins), logins);
    }
    let figures = [
        ("launch (process start to a usable tab)", launch, "ms", 0),
        ("login through the form", login, "ms", 0),
        (
            "PSS of the browser's process tree after login",
            pss,
            "MiB",
            0,
        ),
        ("PSS growth over 100 order pages", growth, "MiB", 1),
        (
            "recycle without carry-over (close + launch + login)",
            recycle_login,
            "ms",
            0,
        ),
        (
            "recycle with carry-over (close + launch + cookie)",
            recycle_carry,
            "ms",
            0,
        ),
    ];
    for (what, values, unit, digits) in figures {
        row(rows, (what.to_owned(), spread(values, unit, digits)));
    }
    assert_no_leaks(&scratch.profiles());
}

/// Jobs per second of `kind` with `browsers` workers, timed from the moment every browser is
/// ready (logged in) to the last result.
fn throughput(kind: &str, browsers: usize, jobs: u64) -> f64 {
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new(&format!("figures-{kind}-{browsers}"));
    let mut config = conferencia_config(&server, &site, &scratch, "bf");
    let key = format!("fila:{kind}");
    config.queues = vec![(kind.to_owned(), key.clone())];
    config.min_threads = Some(browsers);
    config.max_threads_per_type = Some(browsers);
    let counters = Arc::clone(&config.browser.counters);
    let pool = pool::builder(&config).unwrap().0.build().unwrap();
    pool.start().unwrap();
    wait_until(
        PATIENCE * 3,
        "every browser logged in",
        || Counters::get(&counters.logins) == browsers as u64,
        || Counters::get(&counters.logins),
    );
    let started = Instant::now();
    push(&server, &key, orders(1..=jobs));
    wait_until(
        PATIENCE * 6,
        "every job done",
        || results(&server).len() as u64 == jobs,
        || results(&server).len(),
    );
    let rate = jobs as f64 / started.elapsed().as_secs_f64();
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_no_leaks(&scratch.profiles());
    rate
}

/// A burst of 10 jobs on a pool that may start 10 browsers at once, with `init_concurrency`
/// `k`: the time until the first job is done and until all 10 browsers are logged in.
fn ramp(k: usize) -> (Duration, Duration) {
    let server = RedisServer::start();
    let site = site::Site::start().unwrap();
    let scratch = Scratch::new(&format!("figures-ramp-{k}"));
    let mut config = conferencia_config(&server, &site, &scratch, "bp");
    config.max_threads_per_type = Some(10);
    config.jobs_per_thread = Some(1);
    config.init_concurrency = Some(k);
    // Workers that find no job stay, so all 10 come up. Without fleet coordination: the
    // fleet's hold keeps slots but never adds one, so workers still waiting for their init
    // turn when the 10 jobs are done would retire.
    config.scale_down_delay = Some(Duration::from_secs(120));
    config.no_fleet = true;
    let counters = Arc::clone(&config.browser.counters);
    let pool = pool::builder(&config).unwrap().0.build().unwrap();
    push(&server, "fila:conferencia", orders(1..=10));
    let started = Instant::now();
    pool.start().unwrap();
    wait_until(
        PATIENCE * 3,
        "a first result",
        || !results(&server).is_empty(),
        || (),
    );
    let first = started.elapsed();
    wait_until(
        PATIENCE * 6,
        "10 browsers logged in",
        || Counters::get(&counters.logins) == 10,
        || Counters::get(&counters.logins),
    );
    let all = started.elapsed();
    pool.shutdown_timeout(PATIENCE).unwrap();
    assert_no_leaks(&scratch.profiles());
    (first, all)
}

#[test]
#[ignore = "minutes of real browser work; prints the figures of docs/BENCHMARKS.md section 7"]
fn browser_figures() {
    // BROWSER_FIGURES=ramp (or browser, throughput) runs one part only.
    let only = std::env::var("BROWSER_FIGURES").unwrap_or_default();
    let part = |name: &str| only.is_empty() || only == name;
    let mut rows = Vec::new();
    if part("browser") {
        per_browser(&mut rows);
    }
    let kinds = if part("throughput") {
        &[("conferencia", 60), ("emissao", 24)][..]
    } else {
        &[]
    };
    for &(kind, jobs) in kinds {
        for browsers in [1, 2, 4] {
            let rates = (0..RUNS)
                .map(|_| throughput(kind, browsers, jobs))
                .collect();
            row(
                &mut rows,
                (
                    format!("{kind}: {jobs} jobs, {browsers} browser(s)"),
                    spread(rates, "jobs/s", 1),
                ),
            );
        }
    }
    let ks: Vec<usize> = match std::env::var("BROWSER_RAMP") {
        Ok(k) => vec![k.parse().unwrap()],
        Err(_) => vec![1, 2, 10],
    };
    for k in ks.into_iter().filter(|_| part("ramp")) {
        let runs: Vec<(Duration, Duration)> = (0..RUNS).map(|_| ramp(k)).collect();
        row(
            &mut rows,
            (
                format!("burst of 10, init_concurrency {k}: first job done"),
                spread(runs.iter().map(|r| ms(r.0)).collect(), "ms", 0),
            ),
        );
        row(
            &mut rows,
            (
                format!("burst of 10, init_concurrency {k}: 10 browsers ready"),
                spread(runs.iter().map(|r| ms(r.1)).collect(), "ms", 0),
            ),
        );
    }
    println!("\n| figure | median (min-max) of {RUNS} runs |\n|---|---|");
    for (what, value) in rows {
        println!("| {what} | {value} |");
    }
}
